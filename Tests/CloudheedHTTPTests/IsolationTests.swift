import CloudheedDomain
import Foundation
import HTTPTypes
import Hummingbird
import Testing

@Suite("Cross-account isolation and the error shape")
struct IsolationTests {
    @Test("Another account's database, backup and restore answer 404 on every route, exactly as missing ones")
    func isolation() async throws {
        let service = try TestService()
        try await service.withClient { api in
            let (_, owner) = try await api.account("owner")
            let (_, intruder) = try await api.account("intruder")
            let db = try #require(try await api.database(owner, name: "secret")["id"]?.stringValue)
            let backup = try #require(try await api.completedBackup(owner, database: db)["id"]?.stringValue)
            let restore = try #require(try await api.call(.post, "/v1/databases/\(db)/backups/\(backup)/restore", token: owner)["restore"]?["id"]?.stringValue)
            try await service.runJobs()

            let routes: [(HTTPRequest.Method, String, String?)] = [
                (.get, "/v1/databases/\(db)", nil),
                (.patch, "/v1/databases/\(db)", #"{"tier":"free"}"#),
                (.delete, "/v1/databases/\(db)", nil),
                (.get, "/v1/databases/\(db)/backups", nil),
                (.post, "/v1/databases/\(db)/backups", nil),
                (.get, "/v1/databases/\(db)/backups/\(backup)", nil),
                (.delete, "/v1/databases/\(db)/backups/\(backup)", nil),
                (.post, "/v1/databases/\(db)/backups/\(backup)/restore", #"{"target_database_name":"stolen"}"#),
                (.post, "/v1/databases/\(db)/backups/\(backup)/verify", nil),
                (.get, "/v1/restores/\(restore)", nil),
            ]
            for (method, uri, body) in routes {
                let foreign = try await api.call(method, uri, token: intruder, body: body)
                let missing = try await api.call(method, uri.replacingOccurrences(of: db, with: "db-doesnotexist").replacingOccurrences(of: restore, with: "restore-doesnotexist"), token: intruder, body: body)
                #expect(foreign.status == .notFound, "\(method) \(uri)")
                #expect(foreign.json == missing.json, "\(method) \(uri)")
            }
            #expect(try await api.call(.get, "/v1/databases", token: intruder)["databases"]?.arrayValue?.isEmpty == true)
            // The intruder's own database cannot reach the owner's backup either.
            let own = try #require(try await api.database(intruder, name: "mine")["id"]?.stringValue)
            #expect(try await api.call(.get, "/v1/databases/\(own)/backups/\(backup)", token: intruder).status == .notFound)
            #expect(try await api.call(.post, "/v1/databases/\(own)/backups/\(backup)/restore", token: intruder).status == .notFound)

            // The owner's data is intact.
            #expect(try await api.call(.get, "/v1/databases/\(db)", token: owner)["status"]?.stringValue == "available")
            #expect(try await api.call(.get, "/v1/databases/\(db)/backups/\(backup)", token: owner).status == .ok)
            #expect(try await api.call(.get, "/v1/databases", token: owner)["databases"]?.arrayValue?.count == 2)
        }
    }

    @Test("Bodies over 64 KiB get 413; unknown routes get a JSON 404")
    func limitsAndUnknownRoutes() async throws {
        try await TestService().withClient { api in
            let (_, token) = try await api.account()
            let huge = #"{"name":"\#(String(repeating: "a", count: 70_000))","tier":"free"}"#
            let tooLarge = try await api.call(.post, "/v1/databases", token: token, body: huge)
            #expect(tooLarge.status == .contentTooLarge)
            #expect(tooLarge.errorCode == "payload_too_large")
            let unknown = try await api.call(.get, "/v1/nothing-here", token: token)
            #expect(unknown.status == .notFound)
            #expect(unknown.errorCode == "not_found")
        }
    }

    @Test("Every response, errors included, names its request in X-Request-Id, the id its log lines carry")
    func requestIDs() async throws {
        try await TestService().withClient { api in
            let (_, token) = try await api.account()
            let ok = try await api.call(.get, "/v1/databases", token: token)
            let denied = try await api.call(.get, "/v1/databases", token: "wrong")
            let missing = try await api.call(.get, "/v1/nothing-here", token: token)
            let ids = [ok, denied, missing].compactMap { $0.headers[HTTPField.Name("X-Request-Id")!] }
            #expect(ids.count == 3)
            #expect(Set(ids).count == 3)
            #expect(ids.allSatisfy { !$0.isEmpty })
        }
    }
}
