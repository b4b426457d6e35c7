import Foundation

/// How often the service proves a database's latest backup restores: it restores it into a
/// scratch location, checks it, and throws the copy away.
public enum RestoreDrills: String, CaseIterable, Codable, Sendable {
    case off, weekly, daily

    public static func parse(_ raw: String) throws(DomainError) -> RestoreDrills {
        guard let value = RestoreDrills(rawValue: raw) else {
            throw .invalidField("restore_drills", "'restore_drills' must be one of off, weekly, daily; not '\(raw)'")
        }
        return value
    }

    public var period: TimeInterval? {
        switch self {
        case .off: nil
        case .weekly: 7 * 86_400
        case .daily: 86_400
        }
    }

    /// The first drill of a new database: a couple of hours after its first backup window
    /// opens, so that backup has had time to complete.
    public func firstDrill(firstBackupAt: Date) -> Date? {
        period == nil ? nil : firstBackupAt.addingTimeInterval(2 * 3600)
    }
}

public enum DrillOutcome: String, CaseIterable, Codable, Sendable {
    case passed, failed
}

/// What one drill found: `last_drill` on the backup it restored and on its database.
public struct DrillResult: Sendable, Equatable {
    public var at: Date
    public var result: DrillOutcome
    public var durationMs: Int64
    public var error: ErrorInfo?

    public init(at: Date, result: DrillOutcome, durationMs: Int64, error: ErrorInfo?) {
        self.at = at
        self.result = result
        self.durationMs = durationMs
        self.error = error
    }
}

/// Rows per table of a database, as counted in the backup's snapshot and again in a restored copy.
public struct TableCounts: Sendable, Equatable, Codable {
    public var rows: [String: Int64]
    public init(_ rows: [String: Int64]) { self.rows = rows }

    /// Why `restored` does not match these counts, or nil when it does.
    public func mismatch(restored: TableCounts) -> String? {
        var problems: [String] = []
        for (table, expected) in rows.sorted(by: { $0.key < $1.key }) {
            switch restored.rows[table] {
            case nil: problems.append("table \(table) is missing")
            case let found? where found != expected: problems.append("table \(table) has \(found) rows, the backup recorded \(expected)")
            default: break
            }
        }
        for table in restored.rows.keys.sorted() where rows[table] == nil { problems.append("table \(table) was not in the backup") }
        return problems.isEmpty ? nil : problems.prefix(5).joined(separator: "; ")
    }

    public var json: String { String(decoding: JSONValue.sortedObject(rows.mapValues { .int($0) }).serialized(), as: UTF8.self) }

    public static func parse(json: String) -> TableCounts? {
        guard case .object(let members)? = try? JSONValue.parse(Array(json.utf8)) else { return nil }
        var rows: [String: Int64] = [:]
        for (key, value) in members {
            guard let count = value.intValue else { return nil }
            rows[key] = count
        }
        return TableCounts(rows)
    }
}
