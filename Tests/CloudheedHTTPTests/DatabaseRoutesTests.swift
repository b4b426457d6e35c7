import CloudheedDomain
import Foundation
import Hummingbird
import Testing

@Suite("Databases")
struct DatabaseRoutesTests {
    @Test("POST /v1/databases creates an SQLite file the application can write to")
    func create() async throws {
        try await TestService().withClient { api in
            let (_, token) = try await api.account()
            let database = try await api.database(token, name: "shop", tier: "small")
            #expect(database["id"]?.stringValue?.hasPrefix("db-") == true)
            #expect(database["name"]?.stringValue == "shop")
            #expect(database["tier"]?.stringValue == "small")
            #expect(database["engine"]?.stringValue == "sqlite")
            #expect(database["status"]?.stringValue == "available")
            #expect(database["created_at"]?.stringValue == "2026-03-17T03:00:00Z")
            let window = try #require(database["backup_window"]?.stringValue)
            #expect(try BackupWindow.parse(window).durationMinutes == 60)
            let uri = try #require(database["connection"]?["uri"]?.stringValue)
            #expect(uri.hasPrefix("file:///") && uri.hasSuffix(".sqlite3"))
            let path = try filePath(ofURI: uri)
            try writeRows(path: path, values: ["a", "b"])
            #expect(try readRows(path: path) == ["a", "b"])
        }
    }

    @Test("An explicit backup window, possibly crossing midnight, is kept")
    func explicitWindow() async throws {
        try await TestService().withClient { api in
            let (_, token) = try await api.account()
            let database = try await api.database(token, window: "23:30-00:15")
            #expect(database["backup_window"]?.stringValue == "23:30-00:15")
        }
    }

    @Test("Bad database input is refused with a clear error and nothing is created")
    func invalidInput() async throws {
        let service = try TestService()
        try await service.withClient { api in
            let (_, token) = try await api.account()
            let cases: [(String, HTTPResponse.Status, String)] = [
                (#"{"name":"Shop","tier":"micro"}"#, .unprocessableContent, "invalid_name"),
                (#"{"name":"1shop","tier":"micro"}"#, .unprocessableContent, "invalid_name"),
                (#"{"name":"\#(String(repeating: "a", count: 64))","tier":"micro"}"#, .unprocessableContent, "invalid_name"),
                (#"{"name":"shop_1","tier":"micro"}"#, .unprocessableContent, "invalid_name"),
                (#"{"name":"shop","tier":"huge"}"#, .unprocessableContent, "invalid_tier"),
                (#"{"name":"shop"}"#, .unprocessableContent, "missing_tier"),
                (#"{"name":"shop","tier":"micro","engine":"oracle"}"#, .unprocessableContent, "invalid_engine"),
                // Known, but this service was started without --postgres-url.
                (#"{"name":"shop","tier":"micro","engine":"postgres"}"#, .unprocessableContent, "engine_unavailable"),
                (#"{"name":"shop","tier":"micro","backup_window":"03:00-03:20"}"#, .unprocessableContent, "invalid_backup_window"),
                (#"{"name":"shop","tier":"micro","backup_window":"25:00-26:00"}"#, .unprocessableContent, "invalid_backup_window"),
                (#"{"name":"shop","tier":"micro","backup_window":"3am"}"#, .unprocessableContent, "invalid_backup_window"),
                (#"{"name":"shop","tier":1}"#, .unprocessableContent, "invalid_tier"),
                (#"{"name":"shop","tier":"micro","size":3}"#, .unprocessableContent, "unknown_field"),
                (#"{"name":"shop""#, .badRequest, "invalid_json"),
            ]
            for (body, status, code) in cases {
                let response = try await api.call(.post, "/v1/databases", token: token, body: body)
                #expect(response.status == status, "\(body)")
                #expect(response.errorCode == code, "\(body)")
            }
            let unavailable = try await api.call(.post, "/v1/databases", token: token, body: #"{"name":"shop","tier":"micro","engine":"postgres"}"#)
            #expect(unavailable["error"]?["message"]?.stringValue?.contains("--postgres-url") == true)
            #expect(try await api.call(.get, "/v1/databases", token: token)["databases"]?.arrayValue?.isEmpty == true)
            let files = try FileManager.default.contentsOfDirectory(atPath: service.directory + "/databases")
            #expect(files.isEmpty)
        }
    }

    @Test("Names are unique among the account's live databases, and free again once deleted")
    func uniqueNames() async throws {
        try await TestService().withClient { api in
            let (_, token) = try await api.account()
            let first = try await api.database(token, name: "shop")
            let duplicate = try await api.call(.post, "/v1/databases", token: token, body: #"{"name":"shop","tier":"free"}"#)
            #expect(duplicate.status == .conflict)
            #expect(duplicate.errorCode == "database_name_taken")
            // Another account may use the same name.
            let (_, other) = try await api.account("other")
            _ = try await api.database(other, name: "shop")

            #expect(try await api.call(.delete, "/v1/databases/\(first["id"]!.stringValue!)", token: token).status == .ok)
            _ = try await api.database(token, name: "shop")
        }
    }

    @Test("GET lists and shows databases; PATCH changes tier and window; bad PATCH input is refused")
    func listShowPatch() async throws {
        try await TestService().withClient { api in
            let (_, token) = try await api.account()
            let a = try await api.database(token, name: "a")
            let b = try await api.database(token, name: "b")
            let list = try await api.call(.get, "/v1/databases", token: token)
            #expect(list["databases"]?.arrayValue?.compactMap { $0["name"]?.stringValue } == ["a", "b"])
            let id = try #require(b["id"]?.stringValue)
            #expect(try await api.call(.get, "/v1/databases/\(id)", token: token).json == b)

            let patched = try await api.call(.patch, "/v1/databases/\(id)", token: token, body: #"{"tier":"large","backup_window":"01:00-02:00"}"#)
            #expect(patched.status == .ok)
            #expect(patched["tier"]?.stringValue == "large")
            #expect(patched["backup_window"]?.stringValue == "01:00-02:00")
            #expect(try await api.call(.get, "/v1/databases/\(id)", token: token)["tier"]?.stringValue == "large")

            for (body, code) in [(#"{"tier":"gold"}"#, "invalid_tier"), (#"{"backup_window":"01:00-01:10"}"#, "invalid_backup_window"), (#"{"name":"x"}"#, "unknown_field")] {
                let response = try await api.call(.patch, "/v1/databases/\(id)", token: token, body: body)
                #expect(response.status == .unprocessableContent)
                #expect(response.errorCode == code)
            }
            #expect(try await api.call(.patch, "/v1/databases/db-missing", token: token, body: #"{"tier":"free"}"#).status == .notFound)
            #expect(try await api.call(.get, "/v1/databases/db-missing", token: token).errorCode == "database_not_found")
            _ = a
        }
    }

    @Test("DELETE removes the file and automatic backups; manual backups stay listable, restorable and counted")
    func deleteKeepsManualBackups() async throws {
        let service = try TestService()
        try await service.withClient { api in
            let (_, token) = try await api.account()
            // Created inside its window, so the scheduler takes an automatic backup at once.
            let database = try await api.database(token, window: "03:00-04:00")
            let id = try #require(database["id"]?.stringValue)
            let path = try filePath(ofURI: database["connection"]?["uri"]?.stringValue)
            try writeRows(path: path, values: ["kept"])
            try await service.components.scheduler.tick()
            try await service.runJobs()
            let manual = try await api.completedBackup(token, database: id, name: "keep-me")
            #expect(try await api.call(.get, "/v1/databases/\(id)/backups?type=automatic", token: token)["backups"]?.arrayValue?.count == 1)

            let deleted = try await api.call(.delete, "/v1/databases/\(id)", token: token)
            #expect(deleted.status == .ok)
            #expect(deleted["status"]?.stringValue == "deleted")
            #expect(deleted["deleted_at"]?.stringValue != nil)
            #expect(!FileManager.default.fileExists(atPath: path))

            let backups = try await api.call(.get, "/v1/databases/\(id)/backups", token: token)
            #expect(backups["backups"]?.arrayValue?.map { $0["id"] } == [manual["id"]])
            #expect(try await api.call(.get, "/v1/account", token: token)["storage_used_bytes"] == manual["stored_bytes"])
            // The manual backup's manifest is layered on the automatic one's, so garbage collection
            // keeps both; the restore below proves nothing it needs was removed. (Segment objects,
            // `<layer>-<n>`, left aside: a delta without changes has none.)
            let headers = { repositoryObjects(service, "manifests").filter { !$0.contains("-") } }
            #expect(headers().count == 2)
            try await service.components.collector.run()
            #expect(headers().count == 2)

            // Hidden from the default list, shown on request and by id.
            #expect(try await api.call(.get, "/v1/databases", token: token)["databases"]?.arrayValue?.isEmpty == true)
            #expect(try await api.call(.get, "/v1/databases?include_deleted=true", token: token)["databases"]?.arrayValue?.count == 1)
            #expect(try await api.call(.get, "/v1/databases?include_deleted=maybe", token: token).status == .unprocessableContent)

            // A deleted database takes no new backups, no changes, no second delete.
            #expect(try await api.call(.post, "/v1/databases/\(id)/backups", token: token).errorCode == "database_deleted")
            #expect(try await api.call(.patch, "/v1/databases/\(id)", token: token, body: #"{"tier":"free"}"#).errorCode == "database_deleted")
            #expect(try await api.call(.delete, "/v1/databases/\(id)", token: token).errorCode == "database_deleted")
            // The scheduler leaves it alone.
            service.clock.advance(by: 86_400)
            #expect(try await service.components.scheduler.tick().backupsCreated == 0)

            // Its manual backup still restores.
            let restore = try await api.call(.post, "/v1/databases/\(id)/backups/\(manual["id"]!.stringValue!)/restore", token: token, body: #"{"target_database_name":"revived"}"#)
            #expect(restore.status == .accepted)
            try await service.runJobs()
            let revived = try await api.call(.get, "/v1/databases/\(restore["database"]!["id"]!.stringValue!)", token: token)
            #expect(revived["status"]?.stringValue == "available")
            #expect(try readRows(path: try filePath(ofURI: revived["connection"]?["uri"]?.stringValue)) == ["kept"])
        }
    }
}
