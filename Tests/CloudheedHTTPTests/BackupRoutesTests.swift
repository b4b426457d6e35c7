@testable import CloudheedHTTP
import CloudheedDomain
import CloudheedStorage
import Foundation
import Hummingbird
import Testing

@Suite("Backups")
struct BackupRoutesTests {
    @Test("POST /backups returns 202 with the new manual backup; it completes with its size")
    func createManual() async throws {
        let service = try TestService()
        try await service.withClient { api in
            let (_, token) = try await api.account()
            let database = try await api.database(token)
            let id = try #require(database["id"]?.stringValue)
            try writeRows(path: try filePath(ofURI: database["connection"]?["uri"]?.stringValue), values: ["x", "y"])

            let created = try await api.call(.post, "/v1/databases/\(id)/backups", token: token, body: #"{"name":"pre-migration-backup"}"#)
            #expect(created.status == .accepted)
            #expect(created["id"]?.stringValue?.hasPrefix("backup-") == true)
            #expect(created["database_id"]?.stringValue == id)
            #expect(created["name"]?.stringValue == "pre-migration-backup")
            #expect(created["type"]?.stringValue == "manual")
            #expect(["pending", "in_progress"].contains(created["status"]?.stringValue))
            #expect(created["size_bytes"] == .null)
            #expect(created["expires_at"] == .null)
            #expect(created["completed_at"] == .null)
            #expect(created["error"] == .null)
            #expect(created["created_at"]?.stringValue == "2026-03-17T03:00:00Z")

            try await service.runJobs()
            let done = try await api.call(.get, "/v1/databases/\(id)/backups/\(created["id"]!.stringValue!)", token: token)
            #expect(done["status"]?.stringValue == "completed")
            #expect((done["size_bytes"]?.intValue ?? 0) > 0)
            #expect(done["completed_at"]?.stringValue != nil)
            #expect(done["expires_at"] == .null)
        }
    }

    @Test("A manual backup with no name, or no body at all, gets a generated name")
    func generatedName() async throws {
        try await TestService().withClient { api in
            let (_, token) = try await api.account()
            let id = try #require(try await api.database(token)["id"]?.stringValue)
            #expect(try await api.call(.post, "/v1/databases/\(id)/backups", token: token)["name"]?.stringValue == "manual-20260317-030000")
            #expect(try await api.call(.post, "/v1/databases/\(id)/backups", token: token, body: "{}")["name"]?.stringValue == "manual-20260317-030000")
            for body in [#"{"name":""}"#, #"{"name":5}"#, #"{"label":"x"}"#] {
                #expect(try await api.call(.post, "/v1/databases/\(id)/backups", token: token, body: body).status == .unprocessableContent)
            }
        }
    }

    @Test("GET /backups lists newest first with the documented fields, and filters by type and status")
    func listAndFilter() async throws {
        let service = try TestService()
        try await service.withClient { api in
            let (_, token) = try await api.account()
            let database = try await api.database(token, tier: "micro", window: "03:00-04:00")
            let id = try #require(database["id"]?.stringValue)
            try await service.components.scheduler.tick()
            try await service.runJobs()
            service.clock.advance(by: 60)
            let manual = try await api.completedBackup(token, database: id)
            service.clock.advance(by: 60)
            let pending = try await api.call(.post, "/v1/databases/\(id)/backups", token: token, body: #"{"name":"later"}"#)

            let all = try #require(try await api.call(.get, "/v1/databases/\(id)/backups", token: token)["backups"]?.arrayValue)
            #expect(all.count == 3)
            #expect(all[0]["id"] == pending["id"])
            #expect(all[1]["id"] == manual["id"])
            let automatic = all[2]
            #expect(automatic["type"]?.stringValue == "automatic")
            #expect(automatic["status"]?.stringValue == "completed")
            #expect(automatic["created_at"]?.stringValue == "2026-03-17T03:00:00Z")
            #expect(automatic["expires_at"]?.stringValue == "2026-03-24T03:00:00Z")
            let keys = ["id", "database_id", "name", "type", "status", "size_bytes", "created_at", "completed_at", "expires_at", "error"]
            for key in keys { #expect(automatic[key] != nil, "missing \(key)") }

            let manualOnly = try await api.call(.get, "/v1/databases/\(id)/backups?type=manual", token: token)
            #expect(manualOnly["backups"]?.arrayValue?.count == 2)
            let completedManual = try await api.call(.get, "/v1/databases/\(id)/backups?type=manual&status=completed", token: token)
            #expect(completedManual["backups"]?.arrayValue?.map { $0["id"] } == [manual["id"]])
            let pendingOnly = try await api.call(.get, "/v1/databases/\(id)/backups?status=pending", token: token)
            #expect(pendingOnly["backups"]?.arrayValue?.map { $0["id"] } == [pending["id"]])

            #expect(try await api.call(.get, "/v1/databases/\(id)/backups?type=weekly", token: token).errorCode == "invalid_type")
            #expect(try await api.call(.get, "/v1/databases/\(id)/backups?status=done", token: token).errorCode == "invalid_status")
            #expect(try await api.call(.get, "/v1/databases/db-nope/backups", token: token).status == .notFound)
        }
    }

    @Test("Only finished manual backups can be deleted: automatic 403, pending or running 409, deleted data removed")
    func deleteRules() async throws {
        let service = try TestService()
        try await service.withClient { api in
            let (_, token) = try await api.account()
            let id = try #require(try await api.database(token, window: "03:00-04:00")["id"]?.stringValue)
            try await service.components.scheduler.tick()
            try await service.runJobs()
            let automatic = try #require(try await api.call(.get, "/v1/databases/\(id)/backups", token: token)["backups"]?.arrayValue?.first)

            let refused = try await api.call(.delete, "/v1/databases/\(id)/backups/\(automatic["id"]!.stringValue!)", token: token)
            #expect(refused.status == .forbidden)
            #expect(refused.errorCode == "automatic_backup_not_deletable")
            #expect(try await api.call(.get, "/v1/databases/\(id)/backups/\(automatic["id"]!.stringValue!)", token: token).status == .ok)

            let running = try await api.call(.post, "/v1/databases/\(id)/backups", token: token)
            let pendingDelete = try await api.call(.delete, "/v1/databases/\(id)/backups/\(running["id"]!.stringValue!)", token: token)
            #expect(pendingDelete.status == .conflict)
            #expect(pendingDelete.errorCode == "backup_in_progress")
            // Claimed by a worker: in progress.
            let claimed = try #require(try await service.components.service.catalog.claimJob(
                leaseToken: "held", now: service.clock.now(), leaseDuration: .seconds(60), maxAttempts: 3))
            #expect(try await api.call(.get, "/v1/databases/\(id)/backups/\(running["id"]!.stringValue!)", token: token)["status"]?.stringValue == "in_progress")
            let runningDelete = try await api.call(.delete, "/v1/databases/\(id)/backups/\(running["id"]!.stringValue!)", token: token)
            #expect(runningDelete.status == .conflict)
            #expect(runningDelete.errorCode == "backup_in_progress")
            try await service.components.service.catalog.releaseJob(claimed)
            try await service.runJobs()

            let manifestsBefore = repositoryObjects(service, "manifests").count
            let deleted = try await api.call(.delete, "/v1/databases/\(id)/backups/\(running["id"]!.stringValue!)", token: token)
            #expect(deleted.status == .noContent)
            #expect(try await api.call(.get, "/v1/databases/\(id)/backups/\(running["id"]!.stringValue!)", token: token).status == .notFound)
            try await service.components.collector.run()
            #expect(repositoryObjects(service, "manifests").count == manifestsBefore - 1)
            #expect(try await api.call(.delete, "/v1/databases/\(id)/backups/backup-nope", token: token).errorCode == "backup_not_found")
        }
    }

    @Test("Completed manual backups count toward the quota, automatic ones do not; at the quota new manual backups get 403")
    func quota() async throws {
        let service = try TestService()
        try await service.withClient { api in
            let (_, token) = try await api.account(quota: 1)
            let id = try #require(try await api.database(token, window: "03:00-04:00")["id"]?.stringValue)
            try await service.components.scheduler.tick()
            try await service.runJobs()
            #expect(try await api.call(.get, "/v1/account", token: token)["storage_used_bytes"]?.intValue == 0)

            let manual = try await api.completedBackup(token, database: id)
            let used = try #require(try await api.call(.get, "/v1/account", token: token)["storage_used_bytes"]?.intValue)
            #expect(used > 0)
            #expect(used == manual["stored_bytes"]?.intValue)

            let refused = try await api.call(.post, "/v1/databases/\(id)/backups", token: token)
            #expect(refused.status == .forbidden)
            #expect(refused.errorCode == "storage_quota_exceeded")
            #expect(try await api.call(.get, "/v1/databases/\(id)/backups?type=manual", token: token)["backups"]?.arrayValue?.count == 1)

            // Automatic backups still happen over quota.
            service.clock.advance(by: 86_400)
            #expect(try await service.components.scheduler.tick().backupsCreated == 1)

            // Freeing space makes room again.
            #expect(try await api.call(.delete, "/v1/databases/\(id)/backups/\(manual["id"]!.stringValue!)", token: token).status == .noContent)
            #expect(try await api.call(.post, "/v1/databases/\(id)/backups", token: token).status == .accepted)
        }
    }

    @Test("A backup of a database whose file vanished fails with an error, and the service carries on")
    func failedBackup() async throws {
        let service = try TestService()
        try await service.withClient { api in
            let (_, token) = try await api.account()
            let database = try await api.database(token)
            let id = try #require(database["id"]?.stringValue)
            try FileManager.default.removeItem(atPath: try filePath(ofURI: database["connection"]?["uri"]?.stringValue))
            let created = try await api.call(.post, "/v1/databases/\(id)/backups", token: token)
            try await service.runJobs()
            let failed = try await api.call(.get, "/v1/databases/\(id)/backups/\(created["id"]!.stringValue!)", token: token)
            #expect(failed["status"]?.stringValue == "failed")
            #expect(failed["error"]?["code"]?.stringValue == "database_file_missing")
            #expect(failed["size_bytes"] == .null)
            // Failed manual backups can be deleted.
            #expect(try await api.call(.delete, "/v1/databases/\(id)/backups/\(created["id"]!.stringValue!)", token: token).status == .noContent)
        }
    }
}

@Suite("Verification and sizes")
struct VerificationRoutesTests {
    @Test("POST /verify re-reads the backup: a sound one becomes verified, a tampered one corrupt; its restore then fails")
    func verifyEndpoint() async throws {
        let service = try TestService()
        try await service.withClient { api in
            let (_, token) = try await api.account()
            let database = try await api.database(token)
            let id = try #require(database["id"]?.stringValue)
            try writeRows(path: try filePath(ofURI: database["connection"]?["uri"]?.stringValue), values: (0..<300).map { "row \($0)" })
            let backup = try await api.completedBackup(token, database: id)
            let backupID = try #require(backup["id"]?.stringValue)
            #expect(backup["integrity"]?.stringValue == "unverified")
            #expect(backup["verified_at"] == .null)
            #expect((backup["stored_bytes"]?.intValue ?? 0) > 0)
            #expect((backup["stored_bytes"]?.intValue ?? 0) < (backup["size_bytes"]?.intValue ?? 0))
            #expect((backup["unique_bytes"]?.intValue ?? 0) > 0)

            let requested = try await api.call(.post, "/v1/databases/\(id)/backups/\(backupID)/verify", token: token)
            #expect(requested.status == .accepted)
            try await service.runJobs()
            let verified = try await api.call(.get, "/v1/databases/\(id)/backups/\(backupID)", token: token)
            #expect(verified["integrity"]?.stringValue == "verified")
            #expect(verified["verified_at"]?.stringValue == "2026-03-17T03:00:00Z")

            let pack = service.directory + "/repository/packs/" + (try #require(repositoryObjects(service, "packs").first))
            var bytes = try Data(contentsOf: URL(fileURLWithPath: pack))
            bytes[bytes.count / 3] ^= 0x10
            try bytes.write(to: URL(fileURLWithPath: pack))
            #expect(try await api.call(.post, "/v1/databases/\(id)/backups/\(backupID)/verify", token: token).status == .accepted)
            try await service.runJobs()
            #expect(try await api.call(.get, "/v1/databases/\(id)/backups/\(backupID)", token: token)["integrity"]?.stringValue == "corrupt")

            let restore = try await api.call(.post, "/v1/databases/\(id)/backups/\(backupID)/restore", token: token)
            try await service.runJobs()
            let polled = try await api.call(.get, "/v1/restores/\(restore["restore"]!["id"]!.stringValue!)", token: token)
            #expect(polled["restore"]?["status"]?.stringValue == "failed")
            #expect(polled["restore"]?["error"]?["code"]?.stringValue == "backup_data_corrupt")
            #expect(polled["database"]?["status"]?.stringValue == "failed")
        }
    }

    @Test("Only completed backups can be verified; repeated requests while one waits enqueue one job")
    func verifyRules() async throws {
        let service = try TestService()
        try await service.withClient { api in
            let (_, token) = try await api.account()
            let id = try #require(try await api.database(token)["id"]?.stringValue)
            let pending = try await api.call(.post, "/v1/databases/\(id)/backups", token: token)
            let early = try await api.call(.post, "/v1/databases/\(id)/backups/\(pending["id"]!.stringValue!)/verify", token: token)
            #expect(early.status == .conflict)
            #expect(early.errorCode == "backup_not_verifiable")
            try await service.runJobs()
            for _ in 0..<3 {
                #expect(try await api.call(.post, "/v1/databases/\(id)/backups/\(pending["id"]!.stringValue!)/verify", token: token).status == .accepted)
            }
            #expect(try await service.components.service.catalog.jobCounts() == (pending: 1, running: 0))
            #expect(try await api.call(.post, "/v1/databases/\(id)/backups/backup-nope/verify", token: token).status == .notFound)
            #expect(try await api.call(.post, "/v1/databases/\(id)/backups/\(pending["id"]!.stringValue!)/verify", token: token, body: #"{"deep":true}"#).errorCode == "unknown_field")
        }
    }
}

@Suite("Backup list cache")
struct BackupListCacheRoutesTests {
    @Test("GET /backups is served from its cache only while nothing it shows has changed: a backup of the database, or what the account's other backups share with it")
    func servedWhileCurrent() async throws {
        let service = try TestService()
        try await service.withClient { api in
            let (_, token) = try await api.account()
            // Two databases with the same rows: their backups share most chunks (dedup is per account).
            let rows = (0..<30_000).map { "row \($0) " + String(repeating: "x", count: 90) }
            var ids: [String] = []
            for name in ["shop", "copy"] {
                let database = try await api.database(token, name: name)
                try writeRows(path: try filePath(ofURI: database["connection"]?["uri"]?.stringValue), values: rows)
                ids.append(try #require(database["id"]?.stringValue))
            }
            let (shop, copy) = (ids[0], ids[1])
            let cache = service.components.listCache
            func list(_ id: String) async throws -> [JSONValue] {
                try #require(try await api.call(.get, "/v1/databases/\(id)/backups", token: token)["backups"]?.arrayValue)
            }
            /// The list as the cache gives it, checked item by item against GET of each backup (never cached).
            func checkedList(_ id: String) async throws -> [JSONValue] {
                let items = try await list(id)
                for item in items {
                    let fresh = try await api.call(.get, "/v1/databases/\(id)/backups/\(item["id"]?.stringValue ?? "")", token: token)
                    #expect(fresh.json == item)
                }
                return items
            }

            #expect(try await list(shop).isEmpty)
            #expect(try await list(shop).isEmpty)
            #expect(cache.statistics == (hits: 1, misses: 1))

            let created = try await api.call(.post, "/v1/databases/\(shop)/backups", token: token)
            #expect(try await list(shop).map { $0["status"] } == [.string("pending")])
            try await service.runJobs()
            let completed = try #require(try await checkedList(shop).first)
            #expect(completed["id"] == created["id"] && completed["status"] == .string("completed"))
            let alone = try #require(completed["unique_bytes"]?.intValue)
            #expect(alone > 0)
            let before = cache.statistics
            #expect(try await list(shop) == [completed])
            #expect(cache.statistics.hits == before.hits + 1)

            // A backup of the other database shares the chunks: the first one alone holds less,
            // although nothing of the first database changed.
            let twin = try await api.completedBackup(token, database: copy)
            let shared = try #require(try await checkedList(shop).first)
            #expect(try #require(shared["unique_bytes"]?.intValue) < alone)
            // Deleting the twin gives them back.
            #expect(try await api.call(.delete, "/v1/databases/\(copy)/backups/\(twin["id"]?.stringValue ?? "")", token: token).status == .noContent)
            #expect(try await checkedList(shop).first?["unique_bytes"]?.intValue == alone)

            // Verification changes the list; so does deletion.
            _ = try await api.call(.post, "/v1/databases/\(shop)/backups/\(created["id"]?.stringValue ?? "")/verify", token: token)
            try await service.runJobs()
            #expect(try await checkedList(shop).first?["integrity"] == .string("verified"))
            #expect(try await api.call(.delete, "/v1/databases/\(shop)/backups/\(created["id"]?.stringValue ?? "")", token: token).status == .noContent)
            #expect(try await list(shop).isEmpty)

            // Filters are cached apart; another account never gets this account's list.
            #expect(try await api.call(.get, "/v1/databases/\(shop)/backups?type=automatic", token: token)["backups"]?.arrayValue == [])
            let (_, stranger) = try await api.account("other")
            #expect(try await api.call(.get, "/v1/databases/\(shop)/backups", token: stranger).status == .notFound)
            #expect(try await api.call(.get, "/v1/databases/\(shop)/backups", token: token + "x").status == .unauthorized)
        }
    }

    @Test("With --list-cache-mb 0 nothing is kept, and the lists are the same")
    func disabled() async throws {
        let service = try TestService(listCacheBytes: 0)
        try await service.withClient { api in
            let (_, token) = try await api.account()
            let id = try #require(try await api.database(token)["id"]?.stringValue)
            let backup = try await api.completedBackup(token, database: id)
            for _ in 0..<2 {
                #expect(try await api.call(.get, "/v1/databases/\(id)/backups", token: token)["backups"]?.arrayValue == [backup])
            }
            #expect(service.components.listCache.statistics.hits == 0)
        }
    }
}

@Suite("Backup list cache, by itself")
struct BackupListCacheTests {
    @Test("Bodies are kept within the byte budget, oldest out first; a replaced body counts once; the version must match exactly")
    func budget() {
        let cache = BackupListCache(budgetBytes: 10_000)
        let v1: Int64 = 1
        func key(_ n: Int) -> BackupListCache.Key { .init(accountID: "a", databaseID: "db\(n)", type: nil, status: nil) }
        func body(_ size: Int) -> ByteBuffer { ByteBuffer(repeating: 0x20, count: size) }
        cache.store(body(2_000), for: key(1), version: v1)
        cache.store(body(2_000), for: key(2), version: v1)
        // Replaced twice: still 2,000 bytes, and it stays the newest.
        cache.store(body(2_000), for: key(1), version: v1)
        cache.store(body(2_000), for: key(1), version: v1)
        cache.store(body(2_000), for: key(3), version: v1)
        cache.store(body(2_000), for: key(4), version: v1)
        #expect(cache.body(for: key(2), version: v1) != nil)
        cache.store(body(2_000), for: key(5), version: v1)
        cache.store(body(2_000), for: key(6), version: v1)
        // 12,000 bytes were asked for: the oldest position (db2's) went.
        #expect(cache.body(for: key(2), version: v1) == nil)
        for n in [1, 3, 4, 5, 6] { #expect(cache.body(for: key(n), version: v1)?.readableBytes == 2_000) }
        #expect(cache.body(for: key(1), version: 2) == nil)
        // A body larger than a quarter of the budget is not kept.
        cache.store(body(3_000), for: key(7), version: v1)
        #expect(cache.body(for: key(7), version: v1) == nil)
        // Many replacements of one key do not grow anything without bound.
        for _ in 0..<10_000 { cache.store(body(10), for: key(8), version: v1) }
        #expect(cache.body(for: key(8), version: v1)?.readableBytes == 10)
    }
}
