/// Every error a client can cause or observe. The HTTP layer maps `kind` to a status code in one
/// place; `code` and `message` go out as `{"error": {"code", "message"}}`.
public struct DomainError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        case badRequest, unauthorized, forbidden, notFound, conflict, payloadTooLarge, unprocessable, unavailable, internalError
    }

    public let kind: Kind
    public let code: String
    public let message: String

    public init(_ kind: Kind, code: String, message: String) {
        self.kind = kind
        self.code = code
        self.message = message
    }

    public var description: String { "\(code): \(message)" }
    public var info: ErrorInfo { ErrorInfo(code: code, message: message) }

    public static func invalidField(_ field: String, _ message: String) -> DomainError {
        DomainError(.unprocessable, code: "invalid_\(field)", message: message)
    }
    public static let unauthorized = DomainError(.unauthorized, code: "unauthorized", message: "a valid Bearer token is required")
    public static let adminRequired = DomainError(.unauthorized, code: "unauthorized", message: "this route requires the admin token")
    public static let accountNotFound = DomainError(.notFound, code: "account_not_found", message: "no such account")
    public static let databaseNotFound = DomainError(.notFound, code: "database_not_found", message: "no such database")
    public static let backupNotFound = DomainError(.notFound, code: "backup_not_found", message: "no such backup")
    public static let webhookNotFound = DomainError(.notFound, code: "webhook_not_found", message: "no such webhook")
    public static let restoreNotFound = DomainError(.notFound, code: "restore_not_found", message: "no such restore")
    public static func databaseNameTaken(_ name: String) -> DomainError {
        DomainError(.conflict, code: "database_name_taken", message: "a database named '\(name)' already exists in this account")
    }
    public static let databaseDeleted = DomainError(.conflict, code: "database_deleted", message: "the database has been deleted")
    /// Deleting the database would remove the automatic backup a running restore reads.
    public static let databaseReadByRestore = DomainError(
        .conflict, code: "database_busy", message: "a restore from one of this database's automatic backups is running; delete the database once it has finished")
    public static func databaseNotAvailable(_ status: DatabaseStatus) -> DomainError {
        DomainError(.conflict, code: "database_not_available", message: "the database is \(status.rawValue), not available")
    }
    public static let automaticBackupNotDeletable = DomainError(
        .forbidden, code: "automatic_backup_not_deletable",
        message: "automatic backups are managed by the system and expire with the tier's retention; only manual backups can be deleted")
    public static let backupRunning = DomainError(.conflict, code: "backup_in_progress", message: "the backup is still running; delete it once it has completed or failed")
    public static func backupNotRestorable(_ status: BackupStatus) -> DomainError {
        DomainError(.conflict, code: "backup_not_restorable", message: "only a completed backup can be restored; this one is \(status.rawValue)")
    }
    public static let storageQuotaExceeded = DomainError(
        .forbidden, code: "storage_quota_exceeded",
        message: "manual backups already use the account's whole storage quota; delete manual backups or raise the quota")
}
