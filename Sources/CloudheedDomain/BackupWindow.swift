import Foundation

/// A daily UTC backup window `HH:MM-HH:MM`, at least 30 minutes long, possibly crossing midnight.
///
/// Each window *occurrence* starts on one UTC day; that day names the occurrence, so the
/// automatic backup of a window crossing midnight belongs to the day its window opened.
public struct BackupWindow: Sendable, Equatable, CustomStringConvertible {
    /// Minutes after 00:00 UTC.
    public let startMinute: Int
    /// Length in minutes, 30 ... 1439.
    public let durationMinutes: Int

    public static let minimumMinutes = 30

    public init(startMinute: Int, durationMinutes: Int) throws(DomainError) {
        guard (0..<1440).contains(startMinute), (Self.minimumMinutes..<1440).contains(durationMinutes) else {
            throw .invalidField("backup_window", "backup window must start within the day and last 30 minutes to 23 hours 59 minutes")
        }
        self.startMinute = startMinute
        self.durationMinutes = durationMinutes
    }

    /// Parses `HH:MM-HH:MM` (UTC).
    public static func parse(_ text: String) throws(DomainError) -> BackupWindow {
        let invalid = DomainError.invalidField("backup_window", "backup_window must look like HH:MM-HH:MM (UTC) and span at least 30 minutes; got '\(text)'")
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 2, let start = minuteOfDay(parts[0]), let end = minuteOfDay(parts[1]) else { throw invalid }
        let duration = (end - start + 1440) % 1440
        guard duration >= minimumMinutes else { throw invalid }
        return try BackupWindow(startMinute: start, durationMinutes: duration)
    }

    private static func minuteOfDay(_ s: Substring) -> Int? {
        let b = Array(s.utf8)
        guard b.count == 5, b[2] == UInt8(ascii: ":") else { return nil }
        let digits = [b[0], b[1], b[3], b[4]]
        guard digits.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
        let hour = Int(b[0] - 0x30) * 10 + Int(b[1] - 0x30)
        let minute = Int(b[3] - 0x30) * 10 + Int(b[4] - 0x30)
        guard hour < 24, minute < 60 else { return nil }
        return hour * 60 + minute
    }

    /// The default window of a database: one hour, its start derived from the id
    /// (a stable FNV-1a hash, not Swift's per-process seeded `hashValue`), spread over the
    /// 48 half-hour slots of the day.
    public static func defaultWindow(forDatabaseID id: String) -> BackupWindow {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in id.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x100_0000_01b3
        }
        // Total over the valid range, so this cannot throw.
        return try! BackupWindow(startMinute: Int(hash % 48) * 30, durationMinutes: 60)
    }

    public var description: String {
        let end = (startMinute + durationMinutes) % 1440
        return "\(Self.hhmm(startMinute))-\(Self.hhmm(end))"
    }

    private static func hhmm(_ minutes: Int) -> String {
        let h = minutes / 60, m = minutes % 60
        return (h < 10 ? "0" : "") + "\(h):" + (m < 10 ? "0" : "") + "\(m)"
    }

    // MARK: Occurrences

    /// Start of the latest occurrence that opened at or before `date`.
    public func latestStart(atOrBefore date: Date) -> Date {
        let dayStart = UTCFormat.startOfDay(date)
        let todays = dayStart.addingTimeInterval(TimeInterval(startMinute * 60))
        return todays <= date ? todays : todays.addingTimeInterval(-86_400)
    }

    public func contains(_ date: Date) -> Bool {
        date < latestStart(atOrBefore: date).addingTimeInterval(TimeInterval(durationMinutes * 60))
    }

    /// The first occurrence a database created at `date` must be backed up in: the one open at
    /// that moment, else the next one.
    public func firstDueStart(createdAt date: Date) -> Date {
        let latest = latestStart(atOrBefore: date)
        return contains(date) ? latest : latest.addingTimeInterval(86_400)
    }
}
