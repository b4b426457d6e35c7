import Foundation

/// Work the service does in the background, durably recorded in the catalog.
public enum JobKind: String, Sendable, Codable, CaseIterable {
    case backup, restore
    /// Re-reads every chunk of a completed backup; the subject is the backup.
    case verify
    /// Restores a completed backup into a scratch location, checks it and throws it away; the subject is the backup.
    case drill
}

/// A job a worker holds under a lease. `leaseToken` fences the worker: once the lease is lost
/// (another worker took the job over), its writes to the job are refused.
public struct ClaimedJob: Sendable, Equatable {
    public var id: String
    public var kind: JobKind
    /// The backup id or restore id the job works on.
    public var subjectID: String
    public var attempt: Int
    public var leaseToken: String
    public var leaseExpiresAt: Date

    public init(id: String, kind: JobKind, subjectID: String, attempt: Int, leaseToken: String, leaseExpiresAt: Date) {
        self.id = id
        self.kind = kind
        self.subjectID = subjectID
        self.attempt = attempt
        self.leaseToken = leaseToken
        self.leaseExpiresAt = leaseExpiresAt
    }
}

/// How a finished job ends; applied to the job and its subject in one transaction.
public enum JobOutcome: Sendable, Equatable {
    case backupCompleted(StoredObject)
    case restoreCompleted
    case verified(BackupIntegrity)
    /// A drill ran to its end, whether the backup passed or not.
    case drilled(DrillResult)
    case failed(ErrorInfo)
}
