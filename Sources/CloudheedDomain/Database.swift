import Foundation

/// Which engine holds a database's data. New engines plug in behind `DatabaseEngine`.
public enum EngineKind: String, CaseIterable, Codable, Sendable {
    case sqlite
    case postgres

    public static func parse(_ raw: String) throws(DomainError) -> EngineKind {
        guard let engine = EngineKind(rawValue: raw) else {
            throw .invalidField("engine", "unknown engine '\(raw)'; expected one of \(EngineKind.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return engine
    }
}

public enum DatabaseStatus: String, CaseIterable, Codable, Sendable {
    case creating, restoring, available, failed, deleted
}

/// A database the service owns and backs up.
public struct ManagedDatabase: Sendable, Equatable {
    public var id: String
    public var accountID: String
    public var name: String
    public var tier: Tier
    public var engine: EngineKind
    public var status: DatabaseStatus
    public var backupWindow: BackupWindow
    /// Where the engine keeps the data (a file path for SQLite).
    public var location: String
    public var createdAt: Date
    public var deletedAt: Date?
    /// Start of the next backup-window occurrence that still needs its automatic backup.
    public var nextBackupAt: Date
    public var error: ErrorInfo?
    public var restoreDrills: RestoreDrills
    /// When the next drill is due; nil when drills are off.
    public var nextDrillAt: Date?
    /// The most recent drill of any of its backups.
    public var lastDrill: DrillResult?

    public init(
        id: String, accountID: String, name: String, tier: Tier, engine: EngineKind, status: DatabaseStatus,
        backupWindow: BackupWindow, location: String, createdAt: Date, deletedAt: Date? = nil,
        nextBackupAt: Date, error: ErrorInfo? = nil, restoreDrills: RestoreDrills = .weekly, nextDrillAt: Date? = nil,
        lastDrill: DrillResult? = nil
    ) {
        self.restoreDrills = restoreDrills
        self.nextDrillAt = nextDrillAt
        self.lastDrill = lastDrill
        self.id = id
        self.accountID = accountID
        self.name = name
        self.tier = tier
        self.engine = engine
        self.status = status
        self.backupWindow = backupWindow
        self.location = location
        self.createdAt = createdAt
        self.deletedAt = deletedAt
        self.nextBackupAt = nextBackupAt
        self.error = error
    }
}

public enum DatabaseName {
    /// 1-63 characters of lowercase letters, digits and hyphens, starting with a letter.
    public static func validate(_ name: String, field: String = "name") throws(DomainError) {
        let bytes = Array(name.utf8)
        guard (1...63).contains(bytes.count),
              let first = bytes.first, (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(first),
              bytes.allSatisfy({ ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D })
        else {
            throw .invalidField(field, "'\(field)' must be 1-63 characters of lowercase letters, digits and hyphens, starting with a letter")
        }
    }

    /// The name a restore gets when none is given: source name, '-', UTC yyyyMMdd-HHmmss.
    /// The source part is shortened so the result still fits in 63 characters.
    public static func restoreDefault(sourceName: String, at date: Date) -> String {
        let stamp = UTCFormat.compactStamp(date)
        let room = 63 - 1 - stamp.count
        var base = String(sourceName.prefix(room))
        while base.hasSuffix("-") { base.removeLast() }
        return "\(base)-\(stamp)"
    }
}

extension ManagedDatabase {
    /// Only a settled database can be deleted: not one deleted already, nor one still being
    /// created or restored into.
    public func checkDeletable() throws(DomainError) {
        switch status {
        case .deleted: throw .databaseDeleted
        case .creating, .restoring:
            throw DomainError(.conflict, code: "database_busy", message: "the database is \(status.rawValue); delete it once that has finished")
        case .available, .failed: break
        }
    }
}
