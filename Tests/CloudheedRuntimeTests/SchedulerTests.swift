import CloudheedDomain
import CloudheedRuntime
import Foundation
import Testing

@Suite("Scheduler and retention, on a test clock")
struct SchedulerTests {
    @Test("Given a 03:00-04:00 window, exactly one automatic backup is taken inside it each UTC day, none outside")
    func insideWindowOncePerDay() async throws {
        let f = try RuntimeFixture(start: utc("2026-03-17T01:00:00Z"))
        defer { f.cleanup() }
        let database = try await f.database(try await f.account(), window: "03:00-04:00")
        for time in ["2026-03-17T01:30:00Z", "2026-03-17T02:59:59Z"] {
            #expect(try await f.tick(at: time).backupsCreated == 0, "\(time)")
        }
        #expect(try await f.tick(at: "2026-03-17T03:00:00Z").backupsCreated == 1)
        for time in ["2026-03-17T03:01:00Z", "2026-03-17T03:59:00Z", "2026-03-17T12:00:00Z", "2026-03-17T23:59:59Z", "2026-03-18T02:00:00Z"] {
            #expect(try await f.tick(at: time).backupsCreated == 0, "\(time)")
        }
        #expect(try await f.tick(at: "2026-03-18T03:20:00Z").backupsCreated == 1)
        let backups = try await f.automaticBackups(database)
        #expect(backups.map(\.createdAt) == [utc("2026-03-18T03:20:00Z"), utc("2026-03-17T03:00:00Z")])
        #expect(backups.allSatisfy { $0.type == .automatic && $0.status == .pending })
        #expect(backups.map(\.expiresAt) == [utc("2026-03-25T03:20:00Z"), utc("2026-03-24T03:00:00Z")])

        try await f.runJobs()
        #expect(try await f.automaticBackups(database).allSatisfy { $0.status == .completed && ($0.sizeBytes ?? 0) > 0 })
    }

    @Test("A window crossing midnight gives one backup per occurrence, named by the day it opened")
    func crossingMidnight() async throws {
        let f = try RuntimeFixture(start: utc("2026-03-17T20:00:00Z"))
        defer { f.cleanup() }
        let database = try await f.database(try await f.account(), window: "23:30-00:30")
        #expect(try await f.tick(at: "2026-03-17T23:29:00Z").backupsCreated == 0)
        #expect(try await f.tick(at: "2026-03-17T23:40:00Z").backupsCreated == 1)
        #expect(try await f.tick(at: "2026-03-18T00:10:00Z").backupsCreated == 0)
        #expect(try await f.tick(at: "2026-03-18T00:29:00Z").backupsCreated == 0)
        #expect(try await f.tick(at: "2026-03-18T12:00:00Z").backupsCreated == 0)
        // The next occurrence, first seen after midnight, still belongs to the 18th.
        #expect(try await f.tick(at: "2026-03-19T00:05:00Z").backupsCreated == 1)
        #expect(try await f.tick(at: "2026-03-19T23:31:00Z").backupsCreated == 1)
        let names = try await f.automaticBackups(database).map(\.name)
        #expect(names == ["automatic-2026-03-19", "automatic-2026-03-18", "automatic-2026-03-17"])
    }

    @Test("A window missed while the service was down is caught up once at the next start, not once per missed day")
    func catchUpAfterDowntime() async throws {
        let f = try RuntimeFixture(start: utc("2026-03-17T02:00:00Z"))
        defer { f.cleanup() }
        let database = try await f.database(try await f.account(), window: "03:00-04:00")
        // Down from before the first window until three days later.
        #expect(try await f.tick(at: "2026-03-20T10:00:00Z").backupsCreated == 1)
        #expect(try await f.tick(at: "2026-03-20T10:01:00Z").backupsCreated == 0)
        #expect(try await f.tick(at: "2026-03-20T23:00:00Z").backupsCreated == 0)
        #expect(try await f.tick(at: "2026-03-21T03:05:00Z").backupsCreated == 1)
        #expect(try await f.automaticBackups(database).map(\.name) == ["automatic-2026-03-21", "automatic-2026-03-20"])
    }

    @Test("A database created after today's window waits for tomorrow's; one created inside it is backed up at once")
    func newDatabases() async throws {
        let f = try RuntimeFixture(start: utc("2026-03-17T05:00:00Z"))
        defer { f.cleanup() }
        let account = try await f.account()
        let late = try await f.database(account, window: "03:00-04:00")
        let inside = try await f.database(account, window: "04:30-05:30")
        #expect(try await f.tick(at: "2026-03-17T05:00:00Z").backupsCreated == 1)
        #expect(try await f.automaticBackups(late).isEmpty)
        #expect(try await f.automaticBackups(inside).count == 1)
        #expect(try await f.tick(at: "2026-03-18T03:00:00Z").backupsCreated == 1)
    }

    @Test("Changing the window takes effect without a second backup for a day that has one")
    func windowChange() async throws {
        let f = try RuntimeFixture(start: utc("2026-03-17T02:00:00Z"))
        defer { f.cleanup() }
        let database = try await f.database(try await f.account(), window: "03:00-04:00")
        #expect(try await f.tick(at: "2026-03-17T03:10:00Z").backupsCreated == 1)
        _ = try await f.service.updateDatabase(accountID: database.accountID, id: database.id, tier: nil, backupWindow: try BackupWindow.parse("05:00-06:00"))
        #expect(try await f.tick(at: "2026-03-17T05:10:00Z").backupsCreated == 0)
        #expect(try await f.tick(at: "2026-03-18T03:10:00Z").backupsCreated == 0)
        #expect(try await f.tick(at: "2026-03-18T05:10:00Z").backupsCreated == 1)
    }

    @Test("Automatic backups expire after their tier's retention, with their stored data",
          arguments: [(Tier.free, 1), (.micro, 7), (.small, 14), (.medium, 14), (.large, 30), (.xlarge, 30)])
    func expiryPerTier(_ tier: Tier, _ days: Int) async throws {
        let f = try RuntimeFixture(start: utc("2026-03-17T02:00:00Z"), grace: 0)
        defer { f.cleanup() }
        let database = try await f.database(try await f.account(), window: "03:00-04:00", tier: tier)
        try await f.tick(at: "2026-03-17T03:00:00Z")
        try await f.runJobs()
        let backup = try #require(try await f.automaticBackups(database).first)
        let key = try #require(backup.object?.key)
        #expect(f.objects("manifests").contains(key))
        #expect(f.objects("packs").count == 1)

        f.clock.set(utc("2026-03-17T03:00:00Z").addingTimeInterval(Double(days) * 86_400 - 1))
        #expect(try await f.scheduler.tick().backupsExpired == 0)
        #expect(try await f.service.catalog.backup(id: backup.id) != nil)
        f.clock.set(utc("2026-03-17T03:00:00Z").addingTimeInterval(Double(days) * 86_400))
        #expect(try await f.scheduler.tick().backupsExpired == 1)
        #expect(try await f.service.catalog.backup(id: backup.id) == nil)
        // Its data goes with the next garbage collection.
        let report = try await f.collector.run()
        #expect(report.chunksDeleted > 0 && report.packsRetired == 1)
        #expect(!f.objects("manifests").contains(key))
        #expect(f.objects("packs").isEmpty)
    }

    @Test("A tier change applies the new retention to existing automatic backups; manual backups never expire")
    func tierChange() async throws {
        let f = try RuntimeFixture(start: utc("2026-03-17T02:00:00Z"))
        defer { f.cleanup() }
        let database = try await f.database(try await f.account(), window: "03:00-04:00", tier: .large)
        try await f.tick(at: "2026-03-17T03:00:00Z")
        let manual = try await f.service.createManualBackup(accountID: database.accountID, databaseID: database.id, name: "keep")
        try await f.runJobs()
        f.clock.set(utc("2026-03-19T12:00:00Z"))
        #expect(try await f.scheduler.tick().backupsExpired == 0)
        _ = try await f.service.updateDatabase(accountID: database.accountID, id: database.id, tier: .free, backupWindow: nil)
        let oldest = try #require(try await f.automaticBackups(database).last)
        #expect(oldest.createdAt == utc("2026-03-17T03:00:00Z"))
        #expect(oldest.expiresAt == utc("2026-03-18T03:00:00Z"))
        let report = try await f.scheduler.tick()
        #expect(report.backupsExpired == 1)
        f.clock.set(utc("2027-03-19T12:00:00Z"))
        try await f.scheduler.tick()
        #expect(try await f.service.catalog.backup(id: manual.id)?.status == .completed)
    }
}
