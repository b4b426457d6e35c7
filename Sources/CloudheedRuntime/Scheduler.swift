import CloudheedDomain
import CloudheedStorage
import Foundation
import Logging
import ServiceLifecycle

/// Daily automatic backups and their expiry.
///
/// Each database keeps `next_backup_at`, the start of the next window occurrence that still needs
/// its backup. A tick takes the databases whose occurrence has started (inside the window now, or
/// missed while the service was down) and enqueues one automatic backup for the day the latest
/// occurrence opened; a unique (database, day) constraint makes a second one for the same day
/// impossible. The tick's work grows with the number of due databases, not with the total.
public struct Scheduler: Sendable {
    let service: BackupService
    let logger: Logger
    let batchSize = 500

    public init(service: BackupService, logger: Logger) {
        self.service = service
        self.logger = logger
    }

    public struct TickReport: Sendable, Equatable {
        public var backupsCreated = 0
        public var backupsExpired = 0
        public var drillsQueued = 0
    }

    @discardableResult
    public func tick() async throws -> TickReport {
        var report = TickReport()
        let now = service.clock.now()
        while true {
            let due = try await service.catalog.dueDatabases(now: now, limit: batchSize)
            for database in due {
                if try await enqueue(database, now: now) { report.backupsCreated += 1 }
            }
            if due.count < batchSize { break }
        }
        report.drillsQueued = try await queueDrills(now: now)
        if report.backupsCreated > 0 || report.drillsQueued > 0 { service.signal.notify() }
        report.backupsExpired = try await expire(now: now)
        return report
    }

    /// Queues a drill of each due database's latest completed backup; a database without one
    /// yet is looked at again in an hour. One batch per tick: drills are not urgent, and a
    /// backlog drains over the next ticks.
    func queueDrills(now: Date) async throws -> Int {
        var queued = 0
        for database in try await service.catalog.dueDrills(now: now, limit: batchSize) {
            let period = database.restoreDrills.period ?? RestoreDrills.weekly.period!
            if let backup = try await service.catalog.enqueueDrill(
                databaseID: database.id, jobID: service.ids.make(.job), now: now, next: now.addingTimeInterval(period),
                retryWithoutBackup: now.addingTimeInterval(3600)) {
                logger.info("restore drill queued", metadata: ["database.id": "\(database.id)", "backup.id": "\(backup)"])
                queued += 1
            }
        }
        return queued
    }

    func enqueue(_ database: ManagedDatabase, now: Date) async throws -> Bool {
        let occurrence = database.backupWindow.latestStart(atOrBefore: now)
        let day = UTCFormat.day(occurrence)
        let backup = Backup(
            id: service.ids.make(.backup), accountID: database.accountID, databaseID: database.id,
            name: BackupName.automatic(day: day), type: .automatic, status: .pending, engine: database.engine,
            createdAt: now, expiresAt: now.addingTimeInterval(database.tier.retention.seconds), scheduledDay: day)
        let inserted = try await service.catalog.enqueueAutomaticBackup(
            backup, jobID: service.ids.make(.job), nextBackupAt: occurrence.addingTimeInterval(86_400), now: now, basedOn: database)
        if inserted {
            logger.info("automatic backup scheduled", metadata: ["database.id": "\(database.id)", "backup.id": "\(backup.id)", "backup.day": "\(day)"])
        }
        return inserted
    }

    /// Deletes automatic backups past `expires_at`; their data is released with them and GC removes it.
    func expire(now: Date) async throws -> Int {
        var count = 0
        while true {
            let expired = try await service.catalog.expiredBackups(now: now, limit: batchSize)
            for candidate in expired {
                if let deleted = try await service.catalog.deleteExpiredBackup(id: candidate.id, now: now) {
                    logger.info("automatic backup expired", metadata: ["backup.id": "\(deleted.id)", "database.id": "\(deleted.databaseID)"])
                    count += 1
                }
            }
            if expired.count < batchSize { break }
        }
        return count
    }
}

/// Runs the repository's garbage collection with the injected clock.
public struct GarbageCollector: Sendable {
    let service: BackupService
    let logger: Logger

    public init(service: BackupService, logger: Logger) {
        self.service = service
        self.logger = logger
    }

    @discardableResult
    public func run() async throws -> GarbageReport {
        let report = try await service.repository.collectGarbage(now: service.clock.now())
        if report != GarbageReport() {
            logger.info("garbage collected", metadata: [
                "gc.layers": "\(report.layersDropped)", "gc.chunks": "\(report.chunksDeleted)", "gc.packs": "\(report.packsRetired)", "gc.rewritten": "\(report.packsRewritten)",
                "gc.objects": "\(report.objectsDeleted)", "gc.orphans": "\(report.orphansDeleted)",
            ])
        }
        return report
    }
}

/// Runs scheduler ticks, and garbage collection every `gcInterval` (ten minutes by default), until shutdown.
public struct SchedulerService: Service {
    let scheduler: Scheduler
    let collector: GarbageCollector
    let interval: Duration
    let gcInterval: Duration
    let logger: Logger

    public init(scheduler: Scheduler, collector: GarbageCollector, interval: Duration, gcInterval: Duration = .seconds(600), logger: Logger) {
        self.scheduler = scheduler
        self.collector = collector
        self.interval = interval
        self.gcInterval = gcInterval
        self.logger = logger
    }

    public func run() async throws {
        var lastSweep: ContinuousClock.Instant?
        while !Task.isCancelled, !Task.isShuttingDownGracefully {
            do {
                try await scheduler.tick()
                if lastSweep.map({ ContinuousClock.now - $0 >= gcInterval }) ?? true {
                    try await collector.run()
                    lastSweep = .now
                }
            } catch {
                logger.error("scheduler tick failed", metadata: ["error": "\(error)"])
            }
            // Graceful shutdown cuts the wait short instead of holding the process for a whole interval.
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: self.interval) }
        }
    }
}
