import CloudheedDomain
import CloudheedEngines
import CloudheedStorage
import Foundation
import Logging
import ServiceLifecycle

/// Claims jobs from the catalog and runs them under a lease kept alive by a heartbeat.
///
/// A worker that dies (kill -9, power loss) stops renewing; once the lease expires any worker
/// claims the job again. A worker that loses its lease stops its work and writes nothing: the
/// catalog refuses its outcome. On graceful shutdown a running job is cancelled and handed back
/// as pending, so the next start takes it up at once.
public struct JobRunner: Sendable {
    let service: BackupService
    let logger: Logger

    public init(service: BackupService, logger: Logger) {
        self.service = service
        self.logger = logger
    }

    var catalog: any Catalog { service.catalog }
    var settings: RuntimeSettings { service.settings }

    enum Event: Sendable {
        case finished(JobOutcome)
        case leaseLost
        case shutdown
    }

    static let processID = ProcessInfo.processInfo.processIdentifier

    /// Claims one job of `kinds` and runs it to its end; false when there was nothing to claim.
    @discardableResult
    public func runNextJob(kinds: Set<JobKind> = Set(JobKind.allCases)) async throws -> Bool {
        // Names the process holding the job ("p<pid>-…"), so an operator looking at the jobs of
        // several nodes sees whose a lease is; the random part keeps each claim's token unique.
        let token = "p\(Self.processID)-" + service.ids.randomString(count: 12)
        guard let job = try await catalog.claimJob(
            leaseToken: token, now: service.clock.now(), leaseDuration: settings.leaseDuration, maxAttempts: settings.maxAttempts, kinds: kinds)
        else { return false }
        var jobLogger = self.logger
        jobLogger[metadataKey: "job.id"] = "\(job.id)"
        jobLogger[metadataKey: "\(job.kind.rawValue).id"] = "\(job.subjectID)"
        let logger = jobLogger
        logger.info("job claimed", metadata: ["job.attempt": "\(job.attempt)"])
        let metrics = JobMetrics(catalog: catalog)
        let labels = await metrics.labels(job)
        if let labels, job.attempt == 1 { metrics.started(job, labels: labels) }
        let started = ContinuousClock.now

        let meter = ProgressMeter()
        let event: Event = await withTaskGroup(of: Event?.self) { group in
            group.addTask { .finished(await ProgressMeter.$current.withValue(meter) { await self.execute(job, logger: logger) }) }
            group.addTask { await self.heartbeat(job, logger: logger) }
            group.addTask { await self.reportProgress(job, meter: meter, logger: logger) }
            group.addTask {
                do { try await gracefulShutdown() } catch { return nil }
                return .shutdown
            }
            var first: Event?
            while first == nil, let next = await group.next() { first = next }
            group.cancelAll()
            return first ?? .shutdown
        }

        switch event {
        case .finished(let outcome):
            let finish = try await record(outcome, of: job, logger: logger)
            let elapsed = ContinuousClock.now - started
            if finish == .applied, let labels { metrics.finished(job, outcome: outcome, labels: labels, elapsed: elapsed) }
            switch (finish, outcome) {
            case (.applied, .failed(let error)):
                logger.warning("job failed", metadata: ["error.code": "\(error.code)", "error.message": "\(error.message)", "duration": "\(elapsed)"])
            case (.applied, .drilled(let result)) where result.result == .failed:
                logger.error("restore drill failed", metadata: ["error.code": "\(result.error?.code ?? "")", "error.message": "\(result.error?.message ?? "")"])
            case (.applied, _):
                logger.info("job completed", metadata: ["duration": "\(elapsed)"])
            case (.leaseLost, _), (.subjectGone, _):
                // What this attempt stored is referenced by nobody; garbage collection removes it.
                logger.notice("job outcome discarded", metadata: ["reason": "\(finish)"])
            }
        case .leaseLost:
            logger.warning("lease lost; another worker owns the job now")
        case .shutdown:
            try await catalog.releaseJob(job)
            logger.info("job handed back for the next start")
        }
        return true
    }

    /// Records the outcome, trying again for up to a minute while the catalog cannot be reached
    /// (a restarting catalog server): the work is done, and only the recording is missing. The
    /// lease may lapse meanwhile; the outcome still applies unless another worker took the job.
    func record(_ outcome: JobOutcome, of job: ClaimedJob, logger: Logger) async throws -> JobFinish {
        let deadline = ContinuousClock.now + .seconds(60)
        var delay = Duration.milliseconds(250)
        while true {
            do {
                return try await catalog.finishJob(job, outcome: outcome, at: service.clock.now())
            } catch let error as DomainError where error.kind == .unavailable && ContinuousClock.now + delay < deadline {
                logger.warning("outcome not recorded yet; the catalog is unavailable", metadata: ["error.message": "\(error.message)"])
                try await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(5))
            }
        }
    }

    /// Records the job's progress on its backup or restore at once and then every second while
    /// it changes; nil when cancelled (the job ended).
    func reportProgress(_ job: ClaimedJob, meter: ProgressMeter, logger: Logger) async -> Event? {
        guard job.kind == .backup || job.kind == .restore else { return nil }
        var last: (Int64, Int64?)?
        while !Task.isCancelled {
            let now = meter.snapshot
            if last == nil || last! != now {
                do {
                    try await catalog.recordProgress(job, done: now.done, total: now.total, at: service.clock.now())
                    last = now
                } catch {
                    logger.debug("progress not recorded", metadata: ["error": "\(error)"])
                }
            }
            do { try await Task.sleep(for: .seconds(1)) } catch { return nil }
        }
        return nil
    }

    /// Renews the lease every third of its duration; returns `.leaseLost` when the catalog says
    /// the job is no longer ours, nil when cancelled.
    func heartbeat(_ job: ClaimedJob, logger: Logger) async -> Event? {
        let interval = settings.leaseDuration / 3
        while true {
            do { try await Task.sleep(for: interval) } catch { return nil }
            do {
                if try await !catalog.renewLease(jobID: job.id, leaseToken: job.leaseToken, clock: service.clock, duration: settings.leaseDuration) {
                    return .leaseLost
                }
            } catch {
                // The catalog may be briefly unreachable; the lease has slack for two more tries.
                logger.warning("lease renewal failed", metadata: ["error": "\(error)"])
            }
        }
    }

    func execute(_ job: ClaimedJob, logger: Logger) async -> JobOutcome {
        do {
            switch job.kind {
            case .backup: return try await executeBackup(job)
            case .restore: return try await executeRestore(job, logger: logger)
            case .verify: return try await executeVerify(job, logger: logger)
            case .drill: return try await executeDrill(job, logger: logger)
            }
        } catch is CancellationError {
            return .failed(ErrorInfo(code: "cancelled", message: "the job was cancelled"))
        } catch {
            if let known = Self.knownFailure(error) { return .failed(known) }
            logger.error("job failed unexpectedly", metadata: ["error": "\(error)"])
            return .failed(ErrorInfo(code: "internal_error", message: "the job failed unexpectedly: \(error.localizedDescription)"))
        }
    }

    /// The code and message of an error the domain, an engine or the repository raised; nil for any other.
    static func knownFailure(_ error: any Error) -> ErrorInfo? {
        switch error {
        case let error as DomainError: error.info
        case let error as EngineError: error.info
        case let error as RepositoryError: error.info
        default: nil
        }
    }

    func executeBackup(_ job: ClaimedJob) async throws -> JobOutcome {
        guard let backup = try await catalog.backup(id: job.subjectID) else {
            return .failed(ErrorInfo(code: "backup_not_found", message: "the backup no longer exists"))
        }
        guard let database = try await catalog.database(id: backup.databaseID) else { throw DomainError.databaseNotFound }
        switch database.status {
        case .available: break
        case .deleted: throw DomainError.databaseDeleted
        default: throw DomainError.databaseNotAvailable(database.status)
        }
        let engine = try service.engines.engine(database.engine)
        // Each attempt writes its own manifest; the catalog records only the winning attempt's,
        // so a stale worker still writing can never replace a finished backup.
        let parent = try await catalog.latestCompletedBackup(databaseID: database.id)?.object
        let object = try await engine.backup(
            at: database.location, into: service.repository,
            target: BackupTarget(accountID: backup.accountID, backupID: backup.id, parent: parent))
        return .backupCompleted(object)
    }

    func executeVerify(_ job: ClaimedJob, logger: Logger) async throws -> JobOutcome {
        guard let backup = try await catalog.backup(id: job.subjectID), let object = backup.object else {
            return .failed(ErrorInfo(code: "backup_not_found", message: "the backup no longer exists"))
        }
        let report = try await service.repository.verify(object, accountID: backup.accountID)
        for problem in report.problems.prefix(20) {
            logger.error("backup verification found a problem", metadata: ["problem": "\(problem)"])
        }
        logger.info("backup verified", metadata: ["chunks": "\(report.chunksChecked)", "packs": "\(report.packsChecked)", "problems": "\(report.problems.count)"])
        return .verified(report.isSound ? .verified : .corrupt)
    }

    /// Restores the backup into a scratch location, checks it and compares its row counts with
    /// those recorded at backup time. Any failure (a damaged backup, a mismatch, an engine that
    /// cannot restore it now) is the drill's result, not a job error: it must alert.
    func executeDrill(_ job: ClaimedJob, logger: Logger) async throws -> JobOutcome {
        guard let backup = try await catalog.backup(id: job.subjectID), let object = backup.object else {
            return .failed(ErrorInfo(code: "backup_not_found", message: "the backup no longer exists"))
        }
        let started = ContinuousClock.now
        func result(_ error: ErrorInfo?) -> JobOutcome {
            let elapsed = ContinuousClock.now - started
            let ms = elapsed.components.seconds * 1000 + elapsed.components.attoseconds / 1_000_000_000_000_000
            return .drilled(DrillResult(at: service.clock.now(), result: error == nil ? .passed : .failed, durationMs: ms, error: error))
        }
        do {
            let counts = try await service.engines.engine(backup.engine).drill(object, from: service.repository, accountID: backup.accountID)
            if let expected = object.tableCounts, let mismatch = expected.mismatch(restored: counts) {
                return result(ErrorInfo(code: "drill_row_counts_differ", message: mismatch))
            }
            logger.info("restore drill passed", metadata: ["drill.tables": "\(counts.rows.count)", "drill.rows": "\(counts.rows.values.reduce(0, +))"])
            return result(nil)
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            return result(Self.knownFailure(error) ?? ErrorInfo(code: "drill_failed", message: "\(error)"))
        }
    }

    func executeRestore(_ job: ClaimedJob, logger: Logger) async throws -> JobOutcome {
        guard let restore = try await catalog.restore(id: job.subjectID) else {
            return .failed(ErrorInfo(code: "restore_not_found", message: "the restore no longer exists"))
        }
        guard let target = try await catalog.database(id: restore.targetDatabaseID) else { throw DomainError.databaseNotFound }
        let engine = try service.engines.engine(target.engine)
        guard let backup = try await catalog.backup(id: restore.backupID), let object = backup.object, backup.status == .completed else {
            throw DomainError(.conflict, code: "backup_not_found", message: "the backup being restored no longer exists")
        }
        // The engine leaves nothing at the target when it fails; the runner must not delete the
        // target itself: an attempt that lost its lease would delete the winner's database.
        try await engine.restore(object, from: service.repository, accountID: restore.accountID, to: target.location)
        return .restoreCompleted
    }
}

/// The job workers as one service: `settings.workers` loops, each running one job at a time.
public struct JobWorkerService: Service {
    let runner: JobRunner
    let signal: WorkSignal
    let settings: RuntimeSettings
    let logger: Logger

    public init(runner: JobRunner, signal: WorkSignal, settings: RuntimeSettings, logger: Logger) {
        self.runner = runner
        self.signal = signal
        self.settings = settings
        self.logger = logger
    }

    /// Backups, restores and verifications.
    static let mainKinds: Set<JobKind> = [.backup, .restore, .verify]

    public func run() async throws {
        await withTaskGroup(of: Void.self) { group in
            for index in 0..<max(1, settings.workers) {
                group.addTask { await self.loop(index, kinds: Self.mainKinds) }
            }
            // Drills get one loop of their own at low priority: they never take a worker a
            // scheduled backup is waiting for.
            group.addTask(priority: .low) { await self.loop(-1, kinds: [.drill]) }
        }
    }

    func loop(_ index: Int, kinds: Set<JobKind>) async {
        while !Task.isCancelled, !Task.isShuttingDownGracefully {
            do {
                if try await runner.runNextJob(kinds: kinds) { continue }
            } catch {
                logger.error("worker could not reach the catalog", metadata: ["worker": "\(index)", "error": "\(error)"])
            }
            await signal.wait(timeout: settings.pollInterval)
        }
    }
}
