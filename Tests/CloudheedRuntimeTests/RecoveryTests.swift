import CloudheedDomain
import CloudheedRuntime
import CloudheedStorage
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import Testing

@Suite("Jobs: crash recovery, fencing, clean-up and concurrency")
struct RecoveryTests {
    @Test("A backup left in progress by a dead worker is taken up after its lease expires and completes")
    func deadWorkerRecovered() async throws {
        let f = try RuntimeFixture(start: utc("2026-03-17T10:00:00Z"))
        defer { f.cleanup() }
        let database = try await f.database(try await f.account(), window: "03:00-04:00", rows: 500)
        let backup = try await f.service.createManualBackup(accountID: database.accountID, databaseID: database.id, name: nil)

        // A worker claims the job and dies without a word (kill -9): the catalog keeps its lease.
        let dead = try #require(try await f.service.catalog.claimJob(
            leaseToken: "deadworker01", now: f.clock.now(), leaseDuration: .seconds(60), maxAttempts: 3))
        // It had stored the backup's data before dying, and will never record it.
        let orphan = try await f.service.engines.engine(.sqlite).backup(
            at: database.location, into: f.service.repository, target: BackupTarget(accountID: database.accountID, backupID: backup.id, parent: nil))
        #expect(try await f.service.catalog.backup(id: backup.id)?.status == .inProgress)

        // While the lease lives, nobody else takes the job.
        f.clock.advance(by: 30)
        #expect(try await f.runner.runNextJob() == false)
        // Once it expired, the next worker does, and finishes it.
        f.clock.advance(by: 31)
        #expect(try await f.runner.runNextJob())
        let recovered = try #require(try await f.service.catalog.backup(id: backup.id))
        #expect(recovered.status == .completed)
        #expect(recovered.object?.key != orphan.key)
        #expect(try await f.service.catalog.jobCounts() == (pending: 0, running: 0))
        // The dead worker's late outcome is refused.
        #expect(try await f.service.catalog.finishJob(dead, outcome: .backupCompleted(orphan), at: f.clock.now()) == .leaseLost)

        // Garbage collection drops the orphaned manifest (header and segment) once past the grace
        // period, and keeps the live one.
        let live = recovered.object!.key
        #expect(f.objects("manifests") == [orphan.key, orphan.key + "-0", live, live + "-0"])
        #expect(try await f.collector.run().layersDropped == 0)
        f.clock.advance(by: 3601)
        #expect(try await f.collector.run().layersDropped == 1)
        f.clock.advance(by: 3601)
        try await f.collector.run()
        #expect(f.objects("manifests") == [live, live + "-0"])

        // And the recovered backup restores.
        let (restore, _, _) = try await f.service.restore(accountID: database.accountID, databaseID: database.id, backupID: backup.id, targetName: "recovered")
        try await f.runJobs()
        #expect(try await f.service.catalog.restore(id: restore.id)?.status == .completed)
    }

    @Test("A restore whose worker keeps dying ends failed with worker_lost, its new database failed; deleting it leaves nothing on disk")
    func restoreGivenUp() async throws {
        let f = try RuntimeFixture(start: utc("2026-03-17T10:00:00Z"), settings: RuntimeSettings(workers: 1, leaseDuration: .seconds(10), maxAttempts: 2))
        defer { f.cleanup() }
        let database = try await f.database(try await f.account(), window: "03:00-04:00")
        let backup = try await f.service.createManualBackup(accountID: database.accountID, databaseID: database.id, name: nil)
        try await f.runJobs()
        let (restore, target, _) = try await f.service.restore(accountID: database.accountID, databaseID: database.id, backupID: backup.id, targetName: nil)
        for attempt in 1...2 {
            _ = try #require(try await f.service.catalog.claimJob(leaseToken: "dead\(attempt)", now: f.clock.now(), leaseDuration: .seconds(10), maxAttempts: 2))
            // Each dead attempt had begun writing its partial file.
            FileManager.default.createFile(atPath: target.location + ".restoring-dead\(attempt)", contents: Data(repeating: 1, count: 4096))
            f.clock.advance(by: 11)
        }
        #expect(try await f.runner.runNextJob() == false)
        let failed = try #require(try await f.service.catalog.restore(id: restore.id))
        #expect(failed.status == .failed)
        #expect(failed.error?.code == "worker_lost")
        #expect(try await f.service.catalog.database(id: target.id)?.status == .failed)
        #expect(!FileManager.default.fileExists(atPath: target.location))
        // Deleting the failed database removes what the dead attempts left.
        try await f.service.deleteDatabase(accountID: target.accountID, id: target.id)
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: (target.location as NSString).deletingLastPathComponent)
            .filter { $0.hasPrefix(target.id) }
        #expect(leftovers.isEmpty, "\(leftovers)")
    }

    @Test("At most `workers` jobs run at once; the rest wait as pending, and all complete")
    func workerLimit() async throws {
        let f = try RuntimeFixture(start: utc("2026-03-17T10:00:00Z"), settings: RuntimeSettings(workers: 2, pollInterval: .milliseconds(50)))
        defer { f.cleanup() }
        let account = try await f.account()
        var backups: [Backup] = []
        for _ in 0..<3 {
            let database = try await f.database(account, window: "03:00-04:00", rows: 20_000)
            for _ in 0..<2 {
                backups.append(try await f.service.createManualBackup(accountID: account.id, databaseID: database.id, name: nil))
            }
        }
        let workers = JobWorkerService(runner: f.runner, signal: f.service.signal, settings: f.service.settings, logger: f.logger)
        let maxRunning = Mutex(0)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await workers.run() }
            while true {
                let counts = try await f.service.catalog.jobCounts()
                maxRunning.withLock { $0 = max($0, counts.running) }
                if counts.pending + counts.running == 0 { break }
                try await Task.sleep(for: .milliseconds(2))
            }
            group.cancelAll()
        }
        #expect(maxRunning.withLock { $0 } <= 2)
        for backup in backups {
            #expect(try await f.service.catalog.backup(id: backup.id)?.status == .completed)
        }
    }

    @Test("On graceful shutdown a running job is handed back as pending and the next start completes it")
    func gracefulShutdownHandsBack() async throws {
        let f = try RuntimeFixture(start: utc("2026-03-17T10:00:00Z"), settings: RuntimeSettings(workers: 1, pollInterval: .milliseconds(20)))
        defer { f.cleanup() }
        let database = try await f.database(try await f.account(), window: "03:00-04:00", rows: 400_000)
        let backup = try await f.service.createManualBackup(accountID: database.accountID, databaseID: database.id, name: nil)
        let workers = JobWorkerService(runner: f.runner, signal: f.service.signal, settings: f.service.settings, logger: f.logger)
        let group = ServiceGroup(configuration: .init(services: [workers], logger: f.logger))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            // Shut down as soon as the backup is running.
            while try await f.service.catalog.backup(id: backup.id)?.status != .inProgress {
                try await Task.sleep(for: .milliseconds(1))
            }
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
        let afterShutdown = try #require(try await f.service.catalog.backup(id: backup.id))
        // Either the backup beat the shutdown, or it was handed back for the next start.
        if afterShutdown.status != .completed {
            #expect(try await f.service.catalog.jobCounts() == (pending: 1, running: 0))
            #expect(try await f.runner.runNextJob())
        }
        #expect(try await f.service.catalog.backup(id: backup.id)?.status == .completed)
    }
}
