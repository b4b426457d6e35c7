import Foundation

public enum BackupType: String, CaseIterable, Codable, Sendable {
    case automatic, manual

    public static func parse(_ raw: String) throws(DomainError) -> BackupType {
        guard let value = BackupType(rawValue: raw) else {
            throw .invalidField("type", "unknown backup type '\(raw)'; expected automatic or manual")
        }
        return value
    }
}

/// The status values of the documentation page.
public enum BackupStatus: String, CaseIterable, Codable, Sendable {
    case pending, inProgress = "in_progress", completed, failed

    public static func parse(_ raw: String) throws(DomainError) -> BackupStatus {
        guard let value = BackupStatus(rawValue: raw) else {
            throw .invalidField("status", "unknown backup status '\(raw)'; expected one of \(BackupStatus.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return value
    }

    public var isFinished: Bool { self == .completed || self == .failed }
}

/// A code and message recorded when a backup, restore or database fails.
public struct ErrorInfo: Sendable, Equatable, Codable {
    public var code: String
    public var message: String
    public init(code: String, message: String) {
        self.code = code
        self.message = message
    }
}

/// Where and how a backup's bytes are stored, as the repository reported it.
public struct StoredObject: Sendable, Equatable {
    /// The repository's handle of the backup: its manifest.
    public var key: String
    /// Logical size: what a restore produces.
    public var sizeBytes: Int64
    /// Lowercase hex SHA-256 of the stored manifest; every read checks it.
    public var checksum: String
    /// Compressed, encrypted bytes of the chunks the backup references.
    public var storedBytes: Int64
    /// Rows per table in the snapshot, where the engine counts them (PostgreSQL); a drill
    /// compares its restored copy against these.
    public var tableCounts: TableCounts?
    public init(key: String, sizeBytes: Int64, checksum: String, storedBytes: Int64 = 0, tableCounts: TableCounts? = nil) {
        self.tableCounts = tableCounts
        self.key = key
        self.sizeBytes = sizeBytes
        self.checksum = checksum
        self.storedBytes = storedBytes
    }
}

/// What the last verification of a backup found.
public enum BackupIntegrity: String, CaseIterable, Codable, Sendable {
    case unverified, verified, corrupt
}

public struct Backup: Sendable, Equatable {
    public var id: String
    public var accountID: String
    public var databaseID: String
    public var name: String
    public var type: BackupType
    public var status: BackupStatus
    public var engine: EngineKind
    public var createdAt: Date
    public var startedAt: Date?
    public var completedAt: Date?
    /// automatic: createdAt + the tier's retention; manual: nil (never expires).
    public var expiresAt: Date?
    /// UTC day (yyyy-MM-dd) of the backup window an automatic backup belongs to.
    public var scheduledDay: String?
    public var object: StoredObject?
    public var error: ErrorInfo?
    public var integrity: BackupIntegrity
    public var verifiedAt: Date?
    /// While in progress: what the worker last reported.
    public var progress: JobProgress?
    /// What the last restore drill of this backup found.
    public var lastDrill: DrillResult?

    public init(
        id: String, accountID: String, databaseID: String, name: String, type: BackupType, status: BackupStatus,
        engine: EngineKind, createdAt: Date, startedAt: Date? = nil, completedAt: Date? = nil, expiresAt: Date?,
        scheduledDay: String? = nil, object: StoredObject? = nil, error: ErrorInfo? = nil,
        integrity: BackupIntegrity = .unverified, verifiedAt: Date? = nil
    ) {
        self.id = id
        self.accountID = accountID
        self.databaseID = databaseID
        self.name = name
        self.type = type
        self.status = status
        self.engine = engine
        self.createdAt = createdAt
        self.startedAt = startedAt
        self.completedAt = completedAt
        self.expiresAt = expiresAt
        self.scheduledDay = scheduledDay
        self.object = object
        self.error = error
        self.integrity = integrity
        self.verifiedAt = verifiedAt
    }

    /// Logical size of the snapshot, known once the backup completed.
    public var sizeBytes: Int64? { status == .completed ? object?.sizeBytes : nil }

    /// Only manual backups are deletable, and only once they stopped running.
    public func checkDeletable() throws(DomainError) {
        guard type == .manual else { throw .automaticBackupNotDeletable }
        guard status.isFinished else { throw .backupRunning }
    }

    public func checkRestorable() throws(DomainError) {
        guard status == .completed, object != nil else {
            throw .backupNotRestorable(status)
        }
    }
}

public enum BackupName {
    /// Manual backup names are free text for people: 1-128 characters, no control characters.
    public static func validate(_ name: String) throws(DomainError) {
        guard (1...128).contains(name.count), !name.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            throw .invalidField("name", "'name' must be 1-128 characters without control characters")
        }
    }

    public static func manualDefault(at date: Date) -> String { "manual-\(UTCFormat.compactStamp(date))" }
    public static func automatic(day: String) -> String { "automatic-\(day)" }
}

/// How far a running backup or restore is: bytes read or written so far, of how many (nil when
/// the engine cannot know, as for a PostgreSQL dump), since when.
public struct JobProgress: Sendable, Equatable {
    public var bytesDone: Int64
    public var bytesTotal: Int64?
    public var startedAt: Date
    public init(bytesDone: Int64, bytesTotal: Int64?, startedAt: Date) {
        self.bytesDone = bytesDone
        self.bytesTotal = bytesTotal
        self.startedAt = startedAt
    }
}

public enum RestoreStatus: String, CaseIterable, Codable, Sendable {
    case pending, inProgress = "in_progress", completed, failed
}

public struct Restore: Sendable, Equatable {
    public var id: String
    public var accountID: String
    public var backupID: String
    public var sourceDatabaseID: String
    public var targetDatabaseID: String
    public var status: RestoreStatus
    public var createdAt: Date
    public var completedAt: Date?
    public var error: ErrorInfo?
    /// While in progress: what the worker last reported.
    public var progress: JobProgress?

    public init(
        id: String, accountID: String, backupID: String, sourceDatabaseID: String, targetDatabaseID: String,
        status: RestoreStatus, createdAt: Date, completedAt: Date? = nil, error: ErrorInfo? = nil
    ) {
        self.id = id
        self.accountID = accountID
        self.backupID = backupID
        self.sourceDatabaseID = sourceDatabaseID
        self.targetDatabaseID = targetDatabaseID
        self.status = status
        self.createdAt = createdAt
        self.completedAt = completedAt
        self.error = error
    }
}
