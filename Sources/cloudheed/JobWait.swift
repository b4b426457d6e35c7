import CloudheedDomain
import Foundation

/// `--wait`: polls a job until it ends, showing its progress. Backups and restores end in
/// `completed` or `failed`; a verification has no status of its own and ends when the backup's
/// `verified_at` moves.
enum JobWait {
    /// The service records progress about once a second; polling twice as often shows each change.
    static let pollInterval: Duration = .milliseconds(500)

    /// How long a wait rides out a service it cannot reach (a restart hands running jobs back
    /// and takes them up again) before it gives up with exit 3.
    static let outageTolerance: Duration = .seconds(60)

    /// The last snapshot, once it is no longer running. Throws `timedOut` after `limit`.
    static func run(limit: Duration?, display: ProgressDisplay, poll: () async throws -> JobSnapshot) async throws -> JobSnapshot {
        let clock = ContinuousClock()
        let start = clock.now
        var reporter = ProgressReporter(display: display)
        var lastAnswer = clock.now
        while true {
            let snapshot: JobSnapshot
            do {
                snapshot = try await poll()
                lastAnswer = clock.now
            } catch let failure as ClientFailure
                where failure.exit == .unavailable && lastAnswer.duration(to: clock.now) < outageTolerance
                && limit.map({ start.duration(to: clock.now) < $0 }) ?? true
            {
                try await Task.sleep(for: pollInterval * 2)
                continue
            }
            let elapsed = start.duration(to: clock.now)
            reporter.show(snapshot, elapsed: elapsed.seconds)
            if snapshot.phase != .running { return snapshot }
            if let limit, elapsed >= limit {
                if display == .terminal { Console.out("\n") }
                throw ClientFailure(
                    exit: .timedOut,
                    message: "gave up after \(Format.duration(limit.seconds)) waiting for \(snapshot.subject), still \(snapshot.status) (timed_out)")
            }
            try await Task.sleep(for: pollInterval)
        }
    }

    /// The failure a waited-for job ended with, for stderr and exit code 4.
    static func failure(_ snapshot: JobSnapshot) -> ClientFailure? {
        guard case .failed(let reason) = snapshot.phase else { return nil }
        return ClientFailure(exit: .jobFailed, message: "\(snapshot.subject) \(reason)")
    }
}

extension JobSnapshot {
    /// A backup: `progress` while running; once completed its size is all of it.
    static func backup(_ response: APIResponse) -> JobSnapshot {
        let backup = response.json ?? .null
        let status = backup["status"]?.stringValue ?? "unknown"
        var done = backup["progress"]?["bytes_done"]?.intValue
        var total = backup["progress"]?["bytes_total"]?.intValue
        if status == "completed", let size = backup["size_bytes"]?.intValue { (done, total) = (size, size) }
        return JobSnapshot(
            subject: backup["id"]?.stringValue ?? "backup", status: status, bytesDone: done, bytesTotal: total,
            phase: phase(status, error: backup["error"]), response: response)
    }

    /// `{"restore", "database"}` from `GET /v1/restores/{id}`.
    static func restore(_ response: APIResponse) -> JobSnapshot {
        let restore = response["restore"] ?? .null
        let status = restore["status"]?.stringValue ?? "unknown"
        return JobSnapshot(
            subject: restore["id"]?.stringValue ?? "restore", status: status,
            bytesDone: restore["progress"]?["bytes_done"]?.intValue, bytesTotal: restore["progress"]?["bytes_total"]?.intValue,
            phase: phase(status, error: restore["error"]), response: response)
    }

    /// A backup being verified: done once `verified_at` differs from what it was when the
    /// verification was requested; `integrity` then says how it went.
    static func verification(_ response: APIResponse, before: JSONValue?) -> JobSnapshot {
        let backup = response.json ?? .null
        let subject = backup["id"]?.stringValue ?? "backup"
        guard let verifiedAt = backup["verified_at"], verifiedAt != .null, verifiedAt != (before ?? .null) else {
            return JobSnapshot(subject: subject, status: "verifying", bytesDone: nil, bytesTotal: nil, phase: .running, response: response)
        }
        let integrity = backup["integrity"]?.stringValue ?? "unknown"
        return JobSnapshot(
            subject: subject, status: integrity, bytesDone: nil, bytesTotal: nil,
            phase: integrity == "verified" ? .succeeded : .failed("is \(integrity): verification found damaged or missing data (backup_\(integrity))"),
            response: response)
    }

    static func phase(_ status: String, error: JSONValue?) -> Phase {
        switch status {
        case "completed": .succeeded
        case "failed": .failed("failed: \(Format.error(error))")
        default: .running
        }
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
