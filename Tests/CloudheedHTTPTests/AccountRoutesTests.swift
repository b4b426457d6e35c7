import CloudheedDomain
import CloudheedHTTP
import Foundation
import Hummingbird
import Synchronization
import Testing

@Suite("Accounts, tokens and authentication")
struct AccountRoutesTests {
    @Test("GET /healthz answers without auth")
    func health() async throws {
        try await TestService().withClient { api in
            let response = try await api.call(.get, "/healthz")
            #expect(response.status == .ok)
            #expect(response["status"]?.stringValue == "ok")
        }
    }

    @Test("Given the admin token, POST /v1/accounts creates an account and shows its token once")
    func createAccount() async throws {
        try await TestService().withClient { api in
            let response = try await api.call(.post, "/v1/accounts", token: TestService.adminToken, body: #"{"name":"acme","storage_quota_bytes":5000}"#)
            #expect(response.status == .created)
            let account = try #require(response["account"])
            #expect(account["id"]?.stringValue?.hasPrefix("acct-") == true)
            #expect(account["name"]?.stringValue == "acme")
            #expect(account["storage_quota_bytes"]?.intValue == 5000)
            #expect(account["created_at"]?.stringValue == "2026-03-17T03:00:00Z")
            let token = try #require(response["token"]?.stringValue)

            let me = try await api.call(.get, "/v1/account", token: token)
            #expect(me.status == .ok)
            #expect(me["id"] == account["id"])
            #expect(me["storage_used_bytes"]?.intValue == 0)
        }
    }

    @Test("An account created without a quota gets the configured default")
    func defaultQuota() async throws {
        try await TestService(quotaBytes: 12345).withClient { api in
            let (_, token) = try await api.account()
            #expect(try await api.call(.get, "/v1/account", token: token)["storage_quota_bytes"]?.intValue == 12345)
        }
    }

    @Test("Admin routes refuse missing, wrong and account tokens with 401")
    func adminOnly() async throws {
        try await TestService().withClient { api in
            let (id, token) = try await api.account()
            for presented in [nil, "wrong", token] {
                let response = try await api.call(.post, "/v1/accounts", token: presented, body: #"{"name":"x"}"#)
                #expect(response.status == .unauthorized)
                #expect(response.errorCode == "unauthorized")
                #expect(response.headers[.wwwAuthenticate] == "Bearer")
                #expect(try await api.call(.post, "/v1/accounts/\(id)/tokens", token: presented).status == .unauthorized)
            }
        }
    }

    @Test("POST /v1/accounts/{id}/tokens issues another working token; unknown accounts are 404")
    func issueToken() async throws {
        try await TestService().withClient { api in
            let (id, _) = try await api.account()
            let issued = try await api.call(.post, "/v1/accounts/\(id)/tokens", token: TestService.adminToken)
            #expect(issued.status == .created)
            let second = try #require(issued["token"]?.stringValue)
            #expect(try await api.call(.get, "/v1/account", token: second)["id"]?.stringValue == id)

            let missing = try await api.call(.post, "/v1/accounts/acct-nope/tokens", token: TestService.adminToken)
            #expect(missing.status == .notFound)
            #expect(missing.errorCode == "account_not_found")
        }
    }

    @Test("Account routes refuse a missing, malformed, unknown or admin token with 401")
    func accountAuth() async throws {
        try await TestService().withClient { api in
            let (_, token) = try await api.account()
            // Same id, altered secret: found by id, refused by the hash comparison.
            let altered = String(token.dropLast()) + (token.hasSuffix("a") ? "b" : "a")
            for presented in [nil, "", "garbage", "chd_short_x", altered, TestService.adminToken] {
                for (method, uri) in [(HTTPRequest.Method.get, "/v1/account"), (.get, "/v1/databases"), (.get, "/v1/restores/restore-x")] {
                    let response = try await api.call(method, uri, token: presented)
                    #expect(response.status == .unauthorized, "\(uri) with \(presented ?? "no token")")
                    #expect(response.errorCode == "unauthorized")
                }
            }
        }
    }

    @Test("Invalid account bodies get 4xx JSON errors and create nothing")
    func invalidAccounts() async throws {
        try await TestService().withClient { api in
            let cases: [(String, HTTPResponse.Status, String)] = [
                ("{", .badRequest, "invalid_json"),
                ("[]", .badRequest, "invalid_body"),
                ("{}", .unprocessableContent, "missing_name"),
                (#"{"name":7}"#, .unprocessableContent, "invalid_name"),
                (#"{"name":""}"#, .unprocessableContent, "invalid_name"),
                (#"{"name":"a","storage_quota_bytes":-1}"#, .unprocessableContent, "invalid_storage_quota_bytes"),
                (#"{"name":"a","storage_quota_bytes":"big"}"#, .unprocessableContent, "invalid_storage_quota_bytes"),
                (#"{"name":"a","storage_quota_bytes":1.5}"#, .unprocessableContent, "invalid_storage_quota_bytes"),
                (#"{"name":"a","colour":"red"}"#, .unprocessableContent, "unknown_field"),
            ]
            for (body, status, code) in cases {
                let response = try await api.call(.post, "/v1/accounts", token: TestService.adminToken, body: body)
                #expect(response.status == status, "\(body)")
                #expect(response.errorCode == code, "\(body)")
                #expect(response["error"]?["message"]?.stringValue?.isEmpty == false)
            }
            let missingBody = try await api.call(.post, "/v1/accounts", token: TestService.adminToken)
            #expect(missingBody.status == .badRequest)
        }
    }

    @Test("Tokens are stored only as hashes")
    func tokensHashed() async throws {
        let service = try TestService()
        try await service.withClient { api in
            let (_, token) = try await api.account()
            let catalog = try Data(contentsOf: URL(fileURLWithPath: service.directory + "/catalog.sqlite3"))
            let wal = (try? Data(contentsOf: URL(fileURLWithPath: service.directory + "/catalog.sqlite3-wal"))) ?? Data()
            let secret = Data(String(token.split(separator: "_")[2]).utf8)
            #expect(catalog.range(of: secret) == nil)
            #expect(wal.range(of: secret) == nil)
        }
    }
}

@Suite("Account deletion")
struct AccountDeletionTests {
    @Test("DELETE /v1/accounts/{id} removes its databases and backups, revokes its tokens and destroys its data key; other accounts are untouched")
    func deleteAccount() async throws {
        let service = try TestService()
        try await service.withClient { api in
            let (gone, goneToken) = try await api.account("gone")
            let (_, keptToken) = try await api.account("kept")
            let database = try await api.database(goneToken)
            let path = try filePath(ofURI: database["connection"]?["uri"]?.stringValue)
            try writeRows(path: path, values: (0..<200).map { "gone \($0)" })
            _ = try await api.completedBackup(goneToken, database: try #require(database["id"]?.stringValue))
            let keptDatabase = try await api.database(keptToken)
            try writeRows(path: try filePath(ofURI: keptDatabase["connection"]?["uri"]?.stringValue), values: (0..<200).map { "kept \($0)" })
            let kept = try await api.completedBackup(keptToken, database: try #require(keptDatabase["id"]?.stringValue))
            let packsBefore = repositoryObjects(service, "packs")
            #expect(packsBefore.count == 2)

            #expect(try await api.call(.delete, "/v1/accounts/\(gone)", token: keptToken).status == .unauthorized)
            #expect(try await api.call(.delete, "/v1/accounts/\(gone)", token: TestService.adminToken).status == .noContent)
            #expect(try await api.call(.delete, "/v1/accounts/\(gone)", token: TestService.adminToken).errorCode == "account_not_found")
            #expect(try await api.call(.get, "/v1/account", token: goneToken).status == .unauthorized)
            #expect(try await api.call(.post, "/v1/accounts/\(gone)/tokens", token: TestService.adminToken).status == .notFound)
            #expect(!FileManager.default.fileExists(atPath: path))

            // Only the other account's data key is left, and GC removes the deleted account's packs.
            let accountsWithKeys = Mutex<[String]>([])
            _ = try await service.components.catalog.rewrapAllDataKeys { accountID, wrapped in
                accountsWithKeys.withLock { $0.append(accountID) }
                return wrapped
            }
            #expect(accountsWithKeys.withLock { $0.count == 1 && $0[0] != gone })
            service.clock.advance(by: 1)
            try await service.components.collector.run()
            #expect(repositoryObjects(service, "packs").count == 1)

            let keptID = try #require(keptDatabase["id"]?.stringValue)
            let restore = try await api.call(.post, "/v1/databases/\(keptID)/backups/\(kept["id"]!.stringValue!)/restore", token: keptToken)
            try await service.runJobs()
            #expect(try await api.call(.get, "/v1/restores/\(restore["restore"]!["id"]!.stringValue!)", token: keptToken)["restore"]?["status"]?.stringValue == "completed")
        }
    }
}
