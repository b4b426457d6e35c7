import CloudheedDomain
import CloudheedStorage
import Foundation
import Metrics

/// What the job runner reports through swift-metrics (exported as Prometheus at `/metrics`).
/// Labels are kinds (type, engine, tier), never an account, database or backup id.
struct JobMetrics: Sendable {
    let catalog: any Catalog

    /// The labels of a job's subject, read from the catalog; nil when it is gone.
    func labels(_ job: ClaimedJob) async -> [(String, String)]? {
        switch job.kind {
        case .backup, .verify, .drill:
            guard let backup = try? await catalog.backup(id: job.subjectID) else { return nil }
            let tier = (try? await catalog.database(id: backup.databaseID))?.tier.rawValue ?? "unknown"
            return [("type", backup.type.rawValue), ("engine", backup.engine.rawValue), ("tier", tier)]
        case .restore:
            guard let restore = try? await catalog.restore(id: job.subjectID),
                  let target = try? await catalog.database(id: restore.targetDatabaseID) else { return nil }
            return [("engine", target.engine.rawValue), ("tier", target.tier.rawValue)]
        }
    }

    /// `backups`, `restores`, `verifications`, `drills`.
    static func noun(_ kind: JobKind) -> String { kind == .verify ? "verifications" : "\(kind.rawValue)s" }

    func started(_ job: ClaimedJob, labels: [(String, String)]) {
        Counter(label: "cloudheed_\(Self.noun(job.kind))_started_total", dimensions: labels).increment()
    }

    /// An outcome the catalog applied (a discarded late attempt is not counted).
    func finished(_ job: ClaimedJob, outcome: JobOutcome, labels: [(String, String)], elapsed: Duration) {
        let failure: ErrorInfo?
        switch outcome {
        case .failed(let error): failure = error
        // A drill that found the backup unsound ran to its end, but it is a failure to count and alert on.
        case .drilled(let drill) where drill.result == .failed: failure = drill.error ?? ErrorInfo(code: "drill_failed", message: "")
        default: failure = nil
        }
        let result: String
        if let failure {
            result = "failed"
            Counter(label: "cloudheed_\(Self.noun(job.kind))_failed_total", dimensions: labels + [("code", failure.code)]).increment()
        } else {
            result = "completed"
            Counter(label: "cloudheed_\(Self.noun(job.kind))_completed_total", dimensions: labels).increment()
        }
        if job.kind == .backup || job.kind == .restore {
            Metrics.Timer(label: "cloudheed_\(job.kind.rawValue)_duration_seconds", dimensions: labels + [("result", result)])
                .recordNanoseconds(elapsed.components.seconds * 1_000_000_000 + elapsed.components.attoseconds / 1_000_000_000)
        }
    }
}
