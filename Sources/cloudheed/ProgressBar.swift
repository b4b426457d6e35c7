import Foundation

/// A running job as one poll saw it.
struct JobSnapshot: Sendable {
    enum Phase: Sendable, Equatable {
        case running
        case succeeded
        case failed(String)
    }

    /// What is waited for, e.g. `backup-abc…`.
    let subject: String
    /// The API's status (`pending`, `in_progress`, `completed`, `failed`), or `verifying`.
    let status: String
    let bytesDone: Int64?
    let bytesTotal: Int64?
    let phase: Phase
    let response: APIResponse
}

/// Transfer rate as the client measures it. The service records progress about once a second,
/// so the rate is taken between the first sample and the latest *change* (not the latest poll,
/// which would sag between records), and the time left counts down from that change.
struct RateMeter {
    private var first: (seconds: Double, bytes: Int64)?
    private var latest: (seconds: Double, bytes: Int64)?

    mutating func add(bytes: Int64, at seconds: Double) {
        guard let first else {
            first = (seconds, bytes)
            return
        }
        if bytes != (latest ?? first).bytes { latest = (seconds, bytes) }
    }

    /// Bytes a second, once the bytes have moved at least once since the first sample.
    var rate: Double? {
        guard let first, let latest, latest.seconds - first.seconds > 0, latest.bytes > first.bytes else { return nil }
        return Double(latest.bytes - first.bytes) / (latest.seconds - first.seconds)
    }

    /// Seconds until `total`, counted down from the latest change.
    func remaining(total: Int64, at seconds: Double) -> Double? {
        guard let rate, let latest, total > latest.bytes else { return nil }
        return max(0, Double(total - latest.bytes) / rate - (seconds - latest.seconds))
    }
}

/// The words of a progress display, shared by the terminal bar and the plain lines.
enum ProgressText {
    /// `51%  96.0 MiB / 188.0 MiB  61.1 MiB/s  ETA 2s`, leaving out what is not known yet.
    static func figures(done: Int64?, total: Int64?, rate: Double?, remaining: Double?, separator: String = "  ") -> String {
        guard let done else { return "" }
        var parts: [String] = []
        if let total, total > 0 {
            parts.append("\(percent(done, total))%")
            parts.append("\(Format.bytes(done)) / \(Format.bytes(total))")
        } else {
            parts.append(Format.bytes(done))
        }
        if let rate, rate > 0 { parts.append("\(Format.bytes(Int64(rate)))/s") }
        if let remaining { parts.append("ETA \(Format.duration(remaining))") }
        return parts.joined(separator: separator)
    }

    static func percent(_ done: Int64, _ total: Int64) -> Int {
        Int(min(100, max(0, Double(done) * 100 / Double(total))).rounded(.down))
    }

    /// The terminal's line, redrawn in place: a bar while bytes move toward a known total, the
    /// status otherwise. Never wider than `width - 1`, so it cannot wrap and `\r` always
    /// returns to its start.
    static func barLine(_ snapshot: JobSnapshot, rate: Double?, remaining: Double?, elapsed: Double, width: Int) -> String {
        let status = snapshot.status.replacingOccurrences(of: "_", with: " ")
        let line: String
        if snapshot.phase != .running {
            let figures = figures(done: snapshot.bytesDone, total: nil, rate: rate, remaining: nil)
            line = [status, figures, "in \(Format.duration(elapsed))"].filter { !$0.isEmpty }.joined(separator: "  ")
        } else if let done = snapshot.bytesDone, let total = snapshot.bytesTotal, total > 0 {
            let figures = figures(done: done, total: total, rate: rate, remaining: remaining)
            let cells = min(30, width - 1 - figures.count - 4)
            if cells >= 5 {
                let filled = Int(Double(cells) * Double(min(done, total)) / Double(total))
                line = "[" + String(repeating: "#", count: filled) + String(repeating: ".", count: cells - filled) + "]  " + figures
            } else {
                line = figures
            }
        } else {
            let figures = figures(done: snapshot.bytesDone, total: snapshot.bytesTotal, rate: rate, remaining: nil)
            line = [status, figures.isEmpty ? Format.duration(elapsed) : figures].joined(separator: "  ")
        }
        return String(line.prefix(max(10, width - 1)))
    }

    /// A plain line for logs and pipes: `backup-abc: in_progress 51%, 96.0 MiB / 188.0 MiB, ...`.
    static func plainLine(_ snapshot: JobSnapshot, rate: Double?, remaining: Double?, elapsed: Double) -> String {
        let running = snapshot.phase == .running
        let figures = figures(
            done: snapshot.bytesDone, total: running ? snapshot.bytesTotal : nil, rate: rate, remaining: running ? remaining : nil, separator: ", ")
        return "\(snapshot.subject): \(snapshot.status)\(figures.isEmpty ? "" : " " + figures) (\(running ? "after" : "in") \(Format.duration(elapsed)))"
    }
}

/// How `--wait` shows a job: redrawn in place on a terminal, a line at a time elsewhere, or not
/// at all for `--json` (stdout holds only the document).
enum ProgressDisplay {
    case terminal
    case lines
    case silent

    static func forStandardOutput(json: Bool) -> ProgressDisplay {
        json ? .silent : (Console.stdoutIsTerminal ? .terminal : .lines)
    }
}

/// Draws one job's progress as polls come in.
struct ProgressReporter {
    /// Plain lines come at most this often, and whenever the status changes.
    static let lineInterval = 5.0

    let display: ProgressDisplay
    private var meter = RateMeter()
    private var drawnWidth: Int?
    private var lastLine: (seconds: Double, status: String)?

    init(display: ProgressDisplay) { self.display = display }

    mutating func show(_ snapshot: JobSnapshot, elapsed: Double) {
        if let done = snapshot.bytesDone { meter.add(bytes: done, at: elapsed) }
        let rate = meter.rate
        let remaining = snapshot.bytesTotal.flatMap { meter.remaining(total: $0, at: elapsed) }
        switch display {
        case .silent:
            return
        case .terminal:
            if drawnWidth == nil { Console.out("Waiting for \(snapshot.subject) (Ctrl-C stops the waiting, not the job).\n") }
            let line = ProgressText.barLine(snapshot, rate: rate, remaining: remaining, elapsed: elapsed, width: Console.width)
            let padding = String(repeating: " ", count: max(0, (drawnWidth ?? 0) - line.count))
            drawnWidth = line.count
            Console.out("\r" + line + padding + (snapshot.phase == .running ? "" : "\n"))
        case .lines:
            let changed = lastLine?.status != snapshot.status
            let due = lastLine.map { elapsed - $0.seconds >= Self.lineInterval } ?? true
            guard changed || due || snapshot.phase != .running else { return }
            lastLine = (elapsed, snapshot.status)
            Console.out(ProgressText.plainLine(snapshot, rate: rate, remaining: remaining, elapsed: elapsed) + "\n")
        }
    }
}
