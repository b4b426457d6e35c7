import CloudheedDomain
import Foundation
import Hummingbird
import Testing

@Suite("Restores")
struct RestoreRoutesTests {
    @Test("A restore creates a new database holding exactly the backed-up data and leaves the source untouched")
    func restoreRoundTrip() async throws {
        let service = try TestService()
        try await service.withClient { api in
            let (_, token) = try await api.account()
            let source = try await api.database(token, name: "shop", tier: "small")
            let sourceID = try #require(source["id"]?.stringValue)
            let sourcePath = try filePath(ofURI: source["connection"]?["uri"]?.stringValue)
            try writeRows(path: sourcePath, values: ["one", "two", "three"])
            let backup = try await api.completedBackup(token, database: sourceID)
            // Writes after the backup belong to the source only.
            try writeRows(path: sourcePath, values: ["four"])

            let response = try await api.call(
                .post, "/v1/databases/\(sourceID)/backups/\(backup["id"]!.stringValue!)/restore", token: token,
                body: #"{"target_database_name":"restored-db"}"#)
            #expect(response.status == .accepted)
            let restore = try #require(response["restore"])
            let target = try #require(response["database"])
            #expect(restore["id"]?.stringValue?.hasPrefix("restore-") == true)
            #expect(restore["status"]?.stringValue == "pending")
            #expect(restore["backup_id"] == backup["id"])
            #expect(restore["source_database_id"]?.stringValue == sourceID)
            #expect(restore["target_database_id"] == target["id"])
            #expect(restore["completed_at"] == .null)
            #expect(target["status"]?.stringValue == "restoring")
            #expect(target["name"]?.stringValue == "restored-db")
            #expect(target["tier"]?.stringValue == "small")
            #expect(target["id"] != source["id"])

            try await service.runJobs()
            let polled = try await api.call(.get, "/v1/restores/\(restore["id"]!.stringValue!)", token: token)
            #expect(polled["restore"]?["status"]?.stringValue == "completed")
            #expect(polled["restore"]?["completed_at"]?.stringValue != nil)
            #expect(polled["database"]?["status"]?.stringValue == "available")
            let restoredPath = try filePath(ofURI: polled["database"]?["connection"]?["uri"]?.stringValue)
            #expect(restoredPath != sourcePath)
            #expect(try readRows(path: restoredPath) == ["one", "two", "three"])
            #expect(try readRows(path: sourcePath) == ["one", "two", "three", "four"])
            #expect(try await api.call(.get, "/v1/databases/\(sourceID)", token: token)["status"]?.stringValue == "available")
        }
    }

    @Test("Without a name, the restored database is named source name + UTC timestamp")
    func defaultName() async throws {
        let service = try TestService()
        try await service.withClient { api in
            let (_, token) = try await api.account()
            let id = try #require(try await api.database(token, name: "shop")["id"]?.stringValue)
            let backup = try await api.completedBackup(token, database: id)
            service.clock.advance(by: 3_725)
            let response = try await api.call(.post, "/v1/databases/\(id)/backups/\(backup["id"]!.stringValue!)/restore", token: token)
            #expect(response.status == .accepted)
            #expect(response["database"]?["name"]?.stringValue == "shop-20260317-040205")
        }
    }

    @Test("Only completed backups restore; taken or invalid names are refused; nothing is created by a refusal")
    func refusals() async throws {
        let service = try TestService()
        try await service.withClient { api in
            let (_, token) = try await api.account()
            let id = try #require(try await api.database(token, name: "shop")["id"]?.stringValue)
            _ = try await api.database(token, name: "taken")
            let pending = try await api.call(.post, "/v1/databases/\(id)/backups", token: token)
            let early = try await api.call(.post, "/v1/databases/\(id)/backups/\(pending["id"]!.stringValue!)/restore", token: token)
            #expect(early.status == .conflict)
            #expect(early.errorCode == "backup_not_restorable")
            try await service.runJobs()
            let backupID = try #require(pending["id"]?.stringValue)

            let cases: [(String, HTTPResponse.Status, String)] = [
                (#"{"target_database_name":"taken"}"#, .conflict, "database_name_taken"),
                (#"{"target_database_name":"shop"}"#, .conflict, "database_name_taken"),
                (#"{"target_database_name":"Bad Name"}"#, .unprocessableContent, "invalid_target_database_name"),
                (#"{"target_database_name":42}"#, .unprocessableContent, "invalid_target_database_name"),
                (#"{"target":"x"}"#, .unprocessableContent, "unknown_field"),
            ]
            for (body, status, code) in cases {
                let response = try await api.call(.post, "/v1/databases/\(id)/backups/\(backupID)/restore", token: token, body: body)
                #expect(response.status == status, "\(body)")
                #expect(response.errorCode == code, "\(body)")
            }
            #expect(try await api.call(.post, "/v1/databases/\(id)/backups/backup-nope/restore", token: token).status == .notFound)
            #expect(try await api.call(.get, "/v1/databases", token: token)["databases"]?.arrayValue?.count == 2)
            #expect(try await api.call(.get, "/v1/restores/restore-nope", token: token).errorCode == "restore_not_found")
        }
    }

    @Test("A restore from tampered stored data fails, removes the partial file and marks the new database failed")
    func corruptBackup() async throws {
        let service = try TestService()
        try await service.withClient { api in
            let (_, token) = try await api.account()
            let source = try await api.database(token)
            let id = try #require(source["id"]?.stringValue)
            try writeRows(path: try filePath(ofURI: source["connection"]?["uri"]?.stringValue), values: (0..<200).map { "row \($0)" })
            let backup = try await api.completedBackup(token, database: id)
            let object = service.directory + "/repository/packs/" + (try #require(repositoryObjects(service, "packs").first))
            var bytes = try Data(contentsOf: URL(fileURLWithPath: object))
            bytes[bytes.count / 2] ^= 0xFF
            try bytes.write(to: URL(fileURLWithPath: object))

            let response = try await api.call(.post, "/v1/databases/\(id)/backups/\(backup["id"]!.stringValue!)/restore", token: token)
            try await service.runJobs()
            let polled = try await api.call(.get, "/v1/restores/\(response["restore"]!["id"]!.stringValue!)", token: token)
            #expect(polled["restore"]?["status"]?.stringValue == "failed")
            #expect(polled["restore"]?["error"]?["code"]?.stringValue == "backup_data_corrupt")
            #expect(polled["database"]?["status"]?.stringValue == "failed")
            #expect(polled["database"]?["error"]?["code"]?.stringValue == "backup_data_corrupt")
            let targetPath = try filePath(ofURI: response["database"]?["connection"]?["uri"]?.stringValue)
            let leftovers = try FileManager.default.contentsOfDirectory(atPath: service.directory + "/databases")
                .filter { $0.hasPrefix(URL(fileURLWithPath: targetPath).lastPathComponent) }
            #expect(leftovers.isEmpty)
            // The source is untouched and a failed database can be deleted.
            #expect(try await api.call(.get, "/v1/databases/\(id)", token: token)["status"]?.stringValue == "available")
            #expect(try await api.call(.delete, "/v1/databases/\(response["database"]!["id"]!.stringValue!)", token: token).status == .ok)
        }
    }
}

@Suite("Restore progress")
struct RestoreProgressTests {
    @Test("A running restore shows what its worker last recorded; a worker that lost the lease records nothing")
    func restoreProgress() async throws {
        let service = try TestService()
        try await service.withClient { api in
            let (_, token) = try await api.account()
            let database = try await api.database(token)
            let id = try #require(database["id"]?.stringValue)
            try writeRows(path: try filePath(ofURI: database["connection"]?["uri"]?.stringValue), values: ["a", "b"])
            let backup = try await api.completedBackup(token, database: id)
            let requested = try await api.call(.post, "/v1/databases/\(id)/backups/\(backup["id"]!.stringValue!)/restore", token: token)
            let restoreID = try #require(requested["restore"]?["id"]?.stringValue)
            #expect(requested["restore"]?["progress"] == .null)
            let catalog = service.components.catalog
            let job = try #require(try await catalog.claimJob(leaseToken: "worker-1", now: service.clock.now(), leaseDuration: .seconds(60), maxAttempts: 3))
            #expect(job.kind == .restore)
            try await catalog.recordProgress(job, done: 1234, total: 5678, at: service.clock.now())
            var stale = job
            stale.leaseToken = "worker-0"
            try await catalog.recordProgress(stale, done: 9999, total: 9999, at: service.clock.now())
            let shown = try await api.call(.get, "/v1/restores/\(restoreID)", token: token)
            #expect(shown["restore"]?["status"]?.stringValue == "in_progress")
            #expect(shown["restore"]?["progress"]?["bytes_done"]?.intValue == 1234)
            #expect(shown["restore"]?["progress"]?["bytes_total"]?.intValue == 5678)
            #expect(shown["restore"]?["progress"]?["started_at"]?.stringValue != nil)
        }
    }
}
