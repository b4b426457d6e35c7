import CloudheedDomain
import CloudheedStorage
import Foundation
import GRDB
import Hummingbird
import Testing

@Suite("Automatic restore drills")
struct DrillRoutesTests {
    /// Moves the clock past the database's next drill and runs a scheduler tick; returns how many drills it queued.
    func tickAtNextDrill(_ service: TestService, _ api: API, token: String, database: String) async throws -> Int {
        let next = try #require(try await api.call(.get, "/v1/databases/\(database)", token: token)["next_drill_at"]?.stringValue)
        let due = try #require(ISO8601DateFormatter().date(from: next))
        let now = service.clock.now()
        if due > now { service.clock.advance(by: due.timeIntervalSince(now) + 1) }
        return try await service.components.scheduler.tick().drillsQueued
    }

    @Test("Weekly by default: a drill restores the latest backup, checks it, records passed on backup and database, and leaves nothing behind")
    func passingDrill() async throws {
        let service = try TestService()
        try await service.withClient { api in
            let (_, token) = try await api.account()
            let database = try await api.database(token)
            let id = try #require(database["id"]?.stringValue)
            #expect(database["restore_drills"]?.stringValue == "weekly")
            #expect(database["last_drill"] == .null)
            try writeRows(path: try filePath(ofURI: database["connection"]?["uri"]?.stringValue), values: (0..<500).map { "row \($0)" })
            let backup = try #require(try await api.completedBackup(token, database: id)["id"]?.stringValue)

            #expect(try await tickAtNextDrill(service, api, token: token, database: id) == 1)
            // Drills never run in the lane backups use: with that lane drained (the day's
            // automatic backup ran), the drill still waits for its own.
            while try await service.components.runner.runNextJob(kinds: [.backup, .restore, .verify]) {}
            #expect(try await service.components.catalog.jobCounts().pending == 1)
            #expect(try await service.components.runner.runNextJob(kinds: [.drill]))

            let drilled = try await api.call(.get, "/v1/databases/\(id)/backups/\(backup)", token: token)
            #expect(drilled["last_drill"]?["result"]?.stringValue == "passed", "\(String(describing: drilled.json))")
            #expect(drilled["last_drill"]?["error"] == .null)
            #expect(drilled["last_drill"]?["duration_ms"]?.intValue != nil)
            let shown = try await api.call(.get, "/v1/databases/\(id)", token: token)
            #expect(shown["last_drill"]?["result"]?.stringValue == "passed")
            #expect(shown["last_drill"]?["at"] == drilled["last_drill"]?["at"])
            // The next drill is a week on; the scratch copy is gone.
            #expect(try await service.components.scheduler.tick().drillsQueued == 0)
            #expect(try FileManager.default.contentsOfDirectory(atPath: service.directory + "/tmp").isEmpty)
            // Row counts were recorded at backup time for the drill to compare against.
            let counts = try await service.components.catalog.backup(id: backup)?.object?.tableCounts
            #expect(counts == TableCounts(["items": 500]))
        }
    }

    @Test("A tampered backup fails its drill, is recorded failed, and alerts drill.failed; so does a row count that differs")
    func failingDrills() async throws {
        let service = try TestService()
        try await service.withClient { api in
            let (_, token) = try await api.account()
            let hook = try #require(try await api.call(.post, "/v1/webhooks", token: token, body: #"{"url":"http://127.0.0.1:9/x","events":["drill.failed"]}"#)["id"]?.stringValue)
            let database = try await api.database(token, tier: "small")
            let id = try #require(database["id"]?.stringValue)
            try writeRows(path: try filePath(ofURI: database["connection"]?["uri"]?.stringValue), values: (0..<300).map { "row \($0)" })
            let backup = try #require(try await api.completedBackup(token, database: id)["id"]?.stringValue)

            // A changed row count in the catalog's record: the restored copy does not match it.
            let catalog = try DatabaseQueue(path: service.directory + "/catalog.sqlite3")
            try await catalog.write { db in
                try db.execute(sql: "UPDATE backups SET table_counts = ? WHERE id = ?", arguments: [#"{"items":301}"#, backup])
            }
            try catalog.close()
            #expect(try await tickAtNextDrill(service, api, token: token, database: id) == 1)
            try await service.runJobs()
            let drilled = try await api.call(.get, "/v1/databases/\(id)/backups/\(backup)", token: token)
            #expect(drilled["last_drill"]?["result"]?.stringValue == "failed")
            #expect(drilled["last_drill"]?["error"]?["code"]?.stringValue == "drill_row_counts_differ")
            #expect(drilled["last_drill"]?["error"]?["message"]?.stringValue?.contains("items has 300 rows, the backup recorded 301") == true)

            // A flipped bit in a pack: the restore inside the drill fails. (The drill now takes the
            // day's automatic backup, the latest; it shares every chunk with the manual one.)
            let pack = service.directory + "/repository/packs/" + (try #require(repositoryObjects(service, "packs").first))
            var bytes = try Data(contentsOf: URL(fileURLWithPath: pack))
            bytes[bytes.count / 3] ^= 0x10
            try bytes.write(to: URL(fileURLWithPath: pack))
            #expect(try await tickAtNextDrill(service, api, token: token, database: id) == 1)
            try await service.runJobs()
            let shown = try await api.call(.get, "/v1/databases/\(id)", token: token)
            #expect(shown["last_drill"]?["result"]?.stringValue == "failed")
            #expect(shown["last_drill"]?["error"]?["code"]?.stringValue == "backup_data_corrupt")
            let backups = try #require(try await api.call(.get, "/v1/databases/\(id)/backups", token: token)["backups"]?.arrayValue)
            #expect(backups.contains { $0["last_drill"]?["error"]?["code"]?.stringValue == "backup_data_corrupt" })

            let deliveries = try #require(try await api.call(.get, "/v1/webhooks/\(hook)/deliveries", token: token)["deliveries"]?.arrayValue)
            #expect(deliveries.map { $0["event"]?.stringValue } == ["drill.failed", "drill.failed"])
            #expect(try FileManager.default.contentsOfDirectory(atPath: service.directory + "/tmp").isEmpty)
        }
    }

    @Test("restore_drills: daily and off through create and PATCH; off queues nothing; a bad value gets 422")
    func settings() async throws {
        let service = try TestService()
        try await service.withClient { api in
            let (_, token) = try await api.account()
            let created = try await api.call(.post, "/v1/databases", token: token, body: #"{"name":"quiet","tier":"micro","restore_drills":"off"}"#)
            #expect(created["restore_drills"]?.stringValue == "off")
            #expect(created["next_drill_at"] == .null)
            let id = try #require(created["id"]?.stringValue)
            _ = try await api.completedBackup(token, database: id)
            service.clock.advance(by: 30 * 86_400)
            #expect(try await service.components.scheduler.tick().drillsQueued == 0)

            let daily = try await api.call(.patch, "/v1/databases/\(id)", token: token, body: #"{"restore_drills":"daily"}"#)
            #expect(daily["restore_drills"]?.stringValue == "daily")
            #expect(try await service.components.scheduler.tick().drillsQueued == 1)
            let off = try await api.call(.patch, "/v1/databases/\(id)", token: token, body: #"{"restore_drills":"off"}"#)
            #expect(off["next_drill_at"] == .null)

            let bad = try await api.call(.patch, "/v1/databases/\(id)", token: token, body: #"{"restore_drills":"hourly"}"#)
            #expect(bad.status == .unprocessableContent)
            #expect(bad.errorCode == "invalid_restore_drills")
        }
    }
}
