import CloudheedDomain
import Foundation

/// An API token as the catalog keeps it: only a hash of the secret part is stored.
public struct StoredToken: Sendable, Equatable {
    public var id: String
    public var accountID: String
    /// SHA-256 of the token's secret part.
    public var secretHash: [UInt8]
    public var createdAt: Date

    public init(id: String, accountID: String, secretHash: [UInt8], createdAt: Date) {
        self.id = id
        self.accountID = accountID
        self.secretHash = secretHash
        self.createdAt = createdAt
    }
}

/// What a request's token and the database in its path look like now, read together: enough to
/// authenticate the request and to tell whether an answer cached about that database is current.
public struct AccessCheck: Sendable, Equatable {
    public var token: StoredToken
    /// The token's account (not deleted).
    public var account: Account
    /// The version of the database asked about, when it is the account's (deleted or not); nil
    /// otherwise. The catalog's own triggers raise it in the transaction of every change that can
    /// alter what the database's backup list shows:
    /// - any insert, update or delete of one of its backups;
    /// - a chunk reference added or removed elsewhere in the account that makes one of its
    ///   backups' layers the only holder of a chunk, or no longer the only one (`unique_bytes`);
    /// - a change of the reference count of one of its backups' layers (an incremental backup
    ///   built on it).
    /// So a rendering of the list is current exactly while the version is unchanged.
    public var databaseVersion: Int64?

    public init(token: StoredToken, account: Account, databaseVersion: Int64?) {
        self.token = token
        self.account = account
        self.databaseVersion = databaseVersion
    }
}

/// Result of applying a finished job's outcome.
public enum JobFinish: Sendable, Equatable {
    /// The outcome was recorded.
    case applied
    /// Another worker holds the job now (our lease expired); nothing was written.
    case leaseLost
    /// The job's subject no longer exists (e.g. the database was deleted with its automatic backups).
    case subjectGone
}

/// Changes a PATCH may make to a database.
public struct DatabaseChanges: Sendable {
    public var tier: Tier?
    public var backupWindow: BackupWindow?
    /// The next occurrence due, recomputed by the caller when the window changes.
    public var nextBackupAt: Date?
    /// A new drill setting, with the next drill due (nil when off).
    public var restoreDrills: RestoreDrills?
    public var nextDrillAt: Date?
    public init(tier: Tier? = nil, backupWindow: BackupWindow? = nil, nextBackupAt: Date? = nil, restoreDrills: RestoreDrills? = nil, nextDrillAt: Date? = nil) {
        self.restoreDrills = restoreDrills
        self.nextDrillAt = nextDrillAt
        self.tier = tier
        self.backupWindow = backupWindow
        self.nextBackupAt = nextBackupAt
    }
}

/// The service's durable state. Every method that changes more than one row does so in one
/// transaction; implementations keep their SQL dialect to themselves. Rules decided by the
/// domain (names, windows, retention) arrive as values; the catalog enforces the invariants
/// that need atomicity (unique live names, one automatic backup per day, the quota check).
///
/// Deleting a backup releases its manifest's references in the same transaction, so stored data
/// becomes garbage exactly when the last backup using it goes.
///
/// Methods taking an `accountID` return nil / throw not-found for rows of other accounts,
/// exactly as for rows that do not exist.
public protocol Catalog: Sendable {
    // MARK: Accounts and tokens
    func createAccount(_ account: Account, token: StoredToken) async throws
    /// Throws `DomainError.accountNotFound` when the account does not exist.
    func addToken(_ token: StoredToken) async throws
    func account(id: String) async throws -> Account?
    /// The token `tokenID` with its live account and, when `databaseID` is given, that database's
    /// version, in one read; nil when the token or its account does not exist. The caller still
    /// compares the secret's hash.
    func accessCheck(tokenID: String, databaseID: String?) async throws -> AccessCheck?
    /// Deletes the account: its databases are marked deleted, every backup goes (releasing its
    /// data for GC), running restores fail, its tokens and its data key are destroyed, in one
    /// transaction. Returns the databases that were live, whose files the caller removes.
    func deleteAccount(id: String, at: Date) async throws -> [ManagedDatabase]
    /// Sum of `stored_bytes` (compressed, encrypted size) of the account's completed manual backups.
    func storageUsedBytes(accountID: String) async throws -> Int64

    // MARK: Databases
    /// Throws `DomainError.databaseNameTaken` when a live database of the account has the name.
    func insertDatabase(_ database: ManagedDatabase) async throws
    func database(id: String, accountID: String) async throws -> ManagedDatabase?
    func database(id: String) async throws -> ManagedDatabase?
    func databases(accountID: String, includeDeleted: Bool) async throws -> [ManagedDatabase]
    /// Applies the changes; a tier change re-dates the expiry of the database's automatic backups.
    func updateDatabase(id: String, accountID: String, changes: DatabaseChanges) async throws -> ManagedDatabase
    /// Marks the database deleted and removes its automatic backups (and their pending jobs),
    /// returning the removed backups so their stored data can be deleted.
    func markDatabaseDeleted(id: String, accountID: String, at: Date) async throws -> [Backup]
    func databaseNameInUse(accountID: String, name: String) async throws -> Bool

    // MARK: Backups
    /// Inserts a pending manual backup and its job, refusing with `storageQuotaExceeded` when the
    /// account's completed manual backups already use `quota` or more, all in one transaction.
    func enqueueManualBackup(_ backup: Backup, jobID: String, now: Date) async throws
    /// Inserts the automatic backup of `backup.scheduledDay` unless the database already has one
    /// for that day, and moves the database's next due occurrence; returns whether it inserted.
    /// Does nothing if the database's tier, window or due time changed since `basedOn` was read
    /// (a concurrent PATCH): the next tick decides again with the new values.
    func enqueueAutomaticBackup(_ backup: Backup, jobID: String, nextBackupAt: Date, now: Date, basedOn: ManagedDatabase) async throws -> Bool
    func backups(databaseID: String, accountID: String, type: BackupType?, status: BackupStatus?) async throws -> [Backup]
    func backup(id: String, databaseID: String, accountID: String) async throws -> Backup?
    func backup(id: String) async throws -> Backup?
    /// Deletes a manual backup that has finished, re-checking inside the transaction.
    func deleteManualBackup(id: String, databaseID: String, accountID: String, at: Date) async throws -> Backup
    /// Databases that are available and whose next due occurrence started at or before `now`.
    func dueDatabases(now: Date, limit: Int) async throws -> [ManagedDatabase]
    /// Automatic, finished backups whose `expires_at` passed and that no running restore reads.
    func expiredBackups(now: Date, limit: Int) async throws -> [Backup]
    /// Deletes an expired backup if it is still expired and unused; returns it when deleted.
    func deleteExpiredBackup(id: String, now: Date) async throws -> Backup?

    /// Records what verifying the backup found.
    func recordVerification(backupID: String, integrity: BackupIntegrity, at: Date) async throws
    /// The database's most recent completed backup, the parent a new backup is layered on.
    func latestCompletedBackup(databaseID: String) async throws -> Backup?
    /// Enqueues verification of a completed backup unless one is already waiting or running;
    /// returns whether it enqueued.
    func enqueueVerification(backupID: String, jobID: String, now: Date) async throws -> Bool

    // MARK: Restores
    /// Creates the target database (status `restoring`), the restore and its job in one transaction,
    /// re-checking that the backup is completed and the name is free.
    func enqueueRestore(_ restore: Restore, target: ManagedDatabase, jobID: String, now: Date) async throws
    func restore(id: String, accountID: String) async throws -> Restore?
    func restore(id: String) async throws -> Restore?

    // MARK: Jobs
    /// Claims the oldest runnable job: pending, or running under an expired lease (its worker died).
    /// A job whose lease expired after `maxAttempts` attempts is failed instead, with its subject.
    /// Only jobs of `kinds` are claimed: drills have a lane of their own, so they never hold up a backup.
    func claimJob(leaseToken: String, now: Date, leaseDuration: Duration, maxAttempts: Int, kinds: Set<JobKind>) async throws -> ClaimedJob?
    /// Extends the lease to `duration` from the moment the catalog applies it (not from when the
    /// call was made, which may be long before under a busy writer); false when it is no longer ours.
    func renewLease(jobID: String, leaseToken: String, clock: any WallClock, duration: Duration) async throws -> Bool
    /// Records the outcome on the subject and removes the job, if the lease is still ours.
    func finishJob(_ job: ClaimedJob, outcome: JobOutcome, at: Date) async throws -> JobFinish
    /// Gives a job back (graceful shutdown): pending again, the attempt not counted.
    func releaseJob(_ job: ClaimedJob) async throws
    func jobCounts() async throws -> (pending: Int, running: Int)
    /// A running job's progress, recorded on its backup or restore while `job` still holds the
    /// lease (a worker that lost it writes nothing).
    func recordProgress(_ job: ClaimedJob, done: Int64, total: Int64?, at: Date) async throws
    /// When the longest-waiting pending job was queued (nil: none is pending).
    func oldestPendingJob() async throws -> Date?
    /// Available databases created before `cutoff` without a backup completed since.
    func databasesWithoutBackup(since cutoff: Date) async throws -> Int

    /// Answers promptly whether the catalog can be reached now (readiness); throws if not.
    func probe() async throws

    // MARK: Restore drills
    /// Available databases with drills on whose next drill is due.
    func dueDrills(now: Date, limit: Int) async throws -> [ManagedDatabase]
    /// Queues a drill of the database's latest completed backup and moves its next drill to
    /// `next`; returns the backup's id. Without a completed backup it only moves the next drill
    /// to `retryWithoutBackup`, and returns nil (as it does when a drill of that backup is queued already).
    func enqueueDrill(databaseID: String, jobID: String, now: Date, next: Date, retryWithoutBackup: Date) async throws -> String?

    // MARK: Webhooks
    // Events are enqueued by `finishJob` in the transaction that records the outcome, one
    // delivery per subscribed webhook, so an event is never lost between the two.

    /// Throws `webhook_limit_reached` when the account already has `Webhook.limitPerAccount`.
    func insertWebhook(_ webhook: Webhook, sealedSecret: [UInt8]) async throws
    func webhooks(accountID: String) async throws -> [Webhook]
    func webhook(id: String, accountID: String) async throws -> Webhook?
    /// Deletes the webhook and its deliveries; false when there is no such webhook.
    func deleteWebhook(id: String, accountID: String) async throws -> Bool
    /// The webhook's most recent deliveries, newest first, with their attempts.
    func deliveries(webhookID: String, accountID: String, limit: Int) async throws -> [WebhookDelivery]
    /// Pending deliveries whose next attempt is due, locked for `lease` so no other sender takes them meanwhile.
    func claimDeliveries(now: Date, lease: Duration, limit: Int) async throws -> [DueDelivery]
    /// Records an attempt: delivered when it succeeded, else pending until `retryAt`, or failed for good when nil.
    func recordDeliveryAttempt(_ delivery: DueDelivery, attempt: DeliveryAttempt, retryAt: Date?) async throws
    /// Removes finished deliveries older than `before`; returns how many.
    func pruneDeliveries(before: Date) async throws -> Int
}

extension Catalog {
    /// Claims a job of any kind.
    public func claimJob(leaseToken: String, now: Date, leaseDuration: Duration, maxAttempts: Int) async throws -> ClaimedJob? {
        try await claimJob(leaseToken: leaseToken, now: now, leaseDuration: leaseDuration, maxAttempts: maxAttempts, kinds: Set(JobKind.allCases))
    }
}

/// A delivery a sender holds: what to POST where, and the sealed secret to sign it with.
public struct DueDelivery: Sendable, Equatable {
    public var id: String
    public var webhookID: String
    public var accountID: String
    public var url: String
    public var event: WebhookEvent
    public var payload: String
    public var sealedSecret: [UInt8]
    public var createdAt: Date
    /// 1 for the first attempt.
    public var attempt: Int

    public init(
        id: String, webhookID: String, accountID: String, url: String, event: WebhookEvent, payload: String, sealedSecret: [UInt8],
        createdAt: Date, attempt: Int
    ) {
        self.id = id
        self.webhookID = webhookID
        self.accountID = accountID
        self.url = url
        self.event = event
        self.payload = payload
        self.sealedSecret = sealedSecret
        self.createdAt = createdAt
        self.attempt = attempt
    }
}
