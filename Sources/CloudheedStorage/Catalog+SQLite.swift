import CloudheedDomain
import Foundation
import GRDB

/// The embedded catalog: one SQLite file in WAL mode through a single GRDB `DatabasePool`.
/// Timestamps are stored as integer milliseconds since 1970 so comparisons are plain integer ones.
public final class SQLiteCatalog: Catalog {
    let pool: DatabasePool
    /// How long an object no backup refers to any more is kept before deletion, so readers
    /// that already looked it up can finish.
    let garbageGrace: TimeInterval
    /// Commits that changed what the access check reads, and its answers (Catalog+SQLiteAccess).
    let changes = CatalogChangeCounter()
    let memo = AccessMemo()

    /// Opens (creating if needed) the catalog at `path` and runs its migrations.
    public init(path: String, garbageGrace: TimeInterval = 3600) throws {
        self.garbageGrace = garbageGrace
        var configuration = Configuration()
        configuration.foreignKeysEnabled = true
        configuration.busyMode = .timeout(10)
        configuration.label = "catalog"
        // Reads through a memory map instead of a read() and a copy per page: a busy list route
        // spent a fifth of its time in the kernel copying catalog pages (bench/run_api.py).
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA mmap_size = 4294967296; PRAGMA cache_size = -16384")
        }
        pool = try DatabasePool(path: path, configuration: configuration)
        try Self.migrator.migrate(pool)
        pool.add(transactionObserver: changes, extent: .databaseLifetime)
    }

    /// Runs the migrations the catalog at `path` has not had yet; returns their names.
    public static func migrate(path: String) throws -> [String] {
        var configuration = Configuration()
        configuration.busyMode = .timeout(10)
        let pool = try DatabasePool(path: path, configuration: configuration)
        defer { try? pool.close() }
        let pending = try pool.read { db in try migrator.appliedIdentifiers(db) }
        try migrator.migrate(pool)
        return migrator.migrations.filter { !pending.contains($0) }
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(sql: """
                CREATE TABLE accounts (
                    id TEXT PRIMARY KEY,
                    name TEXT NOT NULL,
                    storage_quota_bytes INTEGER NOT NULL CHECK (storage_quota_bytes >= 0),
                    created_at INTEGER NOT NULL
                );
                CREATE TABLE tokens (
                    id TEXT PRIMARY KEY,
                    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
                    secret_hash BLOB NOT NULL,
                    created_at INTEGER NOT NULL
                );
                CREATE TABLE databases (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    id TEXT NOT NULL UNIQUE,
                    account_id TEXT NOT NULL REFERENCES accounts(id),
                    name TEXT NOT NULL,
                    tier TEXT NOT NULL CHECK (tier IN ('free','micro','small','medium','large','xlarge')),
                    engine TEXT NOT NULL,
                    status TEXT NOT NULL CHECK (status IN ('creating','restoring','available','failed','deleted')),
                    window_start_minute INTEGER NOT NULL CHECK (window_start_minute BETWEEN 0 AND 1439),
                    window_minutes INTEGER NOT NULL CHECK (window_minutes BETWEEN 30 AND 1439),
                    location TEXT NOT NULL,
                    created_at INTEGER NOT NULL,
                    deleted_at INTEGER,
                    next_backup_at INTEGER NOT NULL,
                    error_code TEXT,
                    error_message TEXT
                );
                CREATE UNIQUE INDEX databases_live_name ON databases(account_id, name) WHERE status <> 'deleted';
                CREATE INDEX databases_by_account ON databases(account_id, created_at);
                CREATE INDEX databases_due ON databases(next_backup_at) WHERE status = 'available';
                CREATE TABLE backups (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    id TEXT NOT NULL UNIQUE,
                    account_id TEXT NOT NULL REFERENCES accounts(id),
                    database_id TEXT NOT NULL REFERENCES databases(id),
                    name TEXT NOT NULL,
                    type TEXT NOT NULL CHECK (type IN ('automatic','manual')),
                    status TEXT NOT NULL CHECK (status IN ('pending','in_progress','completed','failed')),
                    engine TEXT NOT NULL,
                    created_at INTEGER NOT NULL,
                    started_at INTEGER,
                    completed_at INTEGER,
                    expires_at INTEGER,
                    scheduled_day TEXT,
                    object_key TEXT,
                    size_bytes INTEGER,
                    checksum TEXT,
                    error_code TEXT,
                    error_message TEXT,
                    CHECK ((type = 'automatic') = (scheduled_day IS NOT NULL)),
                    CHECK (status <> 'completed' OR (object_key IS NOT NULL AND size_bytes IS NOT NULL AND checksum IS NOT NULL))
                );
                CREATE UNIQUE INDEX backups_one_automatic_per_day ON backups(database_id, scheduled_day) WHERE scheduled_day IS NOT NULL;
                CREATE INDEX backups_by_database ON backups(database_id, created_at, seq);
                CREATE INDEX backups_expiry ON backups(expires_at) WHERE expires_at IS NOT NULL;
                CREATE INDEX backups_manual_usage ON backups(account_id) WHERE type = 'manual' AND status = 'completed';
                CREATE TABLE restores (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    id TEXT NOT NULL UNIQUE,
                    account_id TEXT NOT NULL REFERENCES accounts(id),
                    backup_id TEXT NOT NULL,
                    source_database_id TEXT NOT NULL REFERENCES databases(id),
                    target_database_id TEXT NOT NULL REFERENCES databases(id),
                    status TEXT NOT NULL CHECK (status IN ('pending','in_progress','completed','failed')),
                    created_at INTEGER NOT NULL,
                    completed_at INTEGER,
                    error_code TEXT,
                    error_message TEXT
                );
                CREATE INDEX restores_active_by_backup ON restores(backup_id) WHERE status IN ('pending','in_progress');
                CREATE TABLE jobs (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    id TEXT NOT NULL UNIQUE,
                    kind TEXT NOT NULL CHECK (kind IN ('backup','restore')),
                    subject_id TEXT NOT NULL UNIQUE,
                    status TEXT NOT NULL CHECK (status IN ('pending','running')),
                    attempts INTEGER NOT NULL DEFAULT 0,
                    lease_token TEXT,
                    lease_expires_at INTEGER,
                    created_at INTEGER NOT NULL
                );
                CREATE INDEX jobs_pending ON jobs(seq) WHERE status = 'pending';
                CREATE INDEX jobs_leases ON jobs(lease_expires_at) WHERE status = 'running';
                """)
        }
        registerRepositoryMigration(&migrator)
        migrator.registerMigration("v3-account-deletion") { db in
            try db.execute(sql: "ALTER TABLE accounts ADD COLUMN deleted_at INTEGER")
        }
        // Manifests in segments (`ManifestHeader`): a layer's objects are its header and its segments.
        migrator.registerMigration("v4-manifest-segments") { db in
            try db.execute(sql: "ALTER TABLE layers ADD COLUMN segments INTEGER NOT NULL DEFAULT 0")
        }
        // What a running job last reported (`progress` in the API).
        migrator.registerMigration("v5-progress") { db in
            for table in ["backups", "restores"] {
                try db.execute(sql: "ALTER TABLE \(table) ADD COLUMN progress_done INTEGER")
                try db.execute(sql: "ALTER TABLE \(table) ADD COLUMN progress_total INTEGER")
                try db.execute(sql: "ALTER TABLE \(table) ADD COLUMN progress_started_at INTEGER")
            }
        }
        registerWebhookMigration(&migrator)
        registerDrillMigration(&migrator)
        registerVersionsMigration(&migrator)
        return migrator
    }

    // MARK: Accounts and tokens

    public func createAccount(_ account: Account, token: StoredToken) async throws {
        try await pool.write { db in
            try db.execute(
                sql: "INSERT INTO accounts (id, name, storage_quota_bytes, created_at) VALUES (?, ?, ?, ?)",
                arguments: [account.id, account.name, account.storageQuotaBytes, ms(account.createdAt)])
            try Self.insertToken(token, db)
        }
    }

    public func addToken(_ token: StoredToken) async throws {
        try await pool.write { db in
            guard try Bool.fetchOne(db, sql: "SELECT 1 FROM accounts WHERE id = ? AND deleted_at IS NULL", arguments: [token.accountID]) != nil else {
                throw DomainError.accountNotFound
            }
            try Self.insertToken(token, db)
        }
    }

    static func insertToken(_ token: StoredToken, _ db: GRDB.Database) throws {
        try db.execute(
            sql: "INSERT INTO tokens (id, account_id, secret_hash, created_at) VALUES (?, ?, ?, ?)",
            arguments: [token.id, token.accountID, Data(token.secretHash), ms(token.createdAt)])
    }

    public func account(id: String) async throws -> Account? {
        try await pool.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM accounts WHERE id = ? AND deleted_at IS NULL", arguments: [id]).map { row in
                Account(id: row["id"], name: row["name"], storageQuotaBytes: row["storage_quota_bytes"], createdAt: date(row["created_at"]))
            }
        }
    }

    public func deleteAccount(id: String, at: Date) async throws -> [ManagedDatabase] {
        try await pool.write { db in
            guard try Bool.fetchOne(db, sql: "SELECT 1 FROM accounts WHERE id = ? AND deleted_at IS NULL", arguments: [id]) != nil else {
                throw DomainError.accountNotFound
            }
            let databases = try Row.fetchAll(db, sql: "SELECT * FROM databases WHERE account_id = ? AND status <> 'deleted'", arguments: [id]).map(CatalogRows.database)
            // Jobs first (their subjects go), then every backup, releasing its manifest.
            try db.execute(
                sql: """
                    DELETE FROM jobs WHERE subject_id IN (SELECT id FROM backups WHERE account_id = ?)
                       OR subject_id IN (SELECT id FROM restores WHERE account_id = ?)
                    """,
                arguments: [id, id])
            let manifests = try String.fetchAll(db, sql: "SELECT object_key FROM backups WHERE account_id = ? AND status = 'completed'", arguments: [id])
            try db.execute(sql: "DELETE FROM backups WHERE account_id = ?", arguments: [id])
            for manifest in manifests { try Self.releaseLayer(manifest, now: at, grace: garbageGrace, db) }
            try db.execute(
                sql: "UPDATE restores SET status = 'failed', completed_at = ?, error_code = 'account_deleted', error_message = 'the account was deleted' WHERE account_id = ? AND status IN ('pending','in_progress')",
                arguments: [ms(at), id])
            try db.execute(sql: "UPDATE databases SET status = 'deleted', deleted_at = COALESCE(deleted_at, ?) WHERE account_id = ?", arguments: [ms(at), id])
            try db.execute(sql: "DELETE FROM tokens WHERE account_id = ?", arguments: [id])
            try db.execute(sql: "DELETE FROM webhooks WHERE account_id = ?", arguments: [id])
            // Destroying the data key makes whatever storage still holds unreadable for good.
            try db.execute(sql: "DELETE FROM account_keys WHERE account_id = ?", arguments: [id])
            try db.execute(sql: "UPDATE accounts SET deleted_at = ? WHERE id = ?", arguments: [ms(at), id])
            return databases
        }
    }

    public func storageUsedBytes(accountID: String) async throws -> Int64 {
        try await pool.read { db in try Self.usage(accountID, db) }
    }

    static func usage(_ accountID: String, _ db: GRDB.Database) throws -> Int64 {
        try Int64.fetchOne(
            db, sql: "SELECT COALESCE(SUM(COALESCE(stored_bytes, size_bytes)), 0) FROM backups WHERE account_id = ? AND type = 'manual' AND status = 'completed'",
            arguments: [accountID]) ?? 0
    }

    // MARK: Databases

    public func insertDatabase(_ database: ManagedDatabase) async throws {
        try await pool.write { db in try Self.insertDatabase(database, db) }
    }

    static func insertDatabase(_ d: ManagedDatabase, _ db: GRDB.Database) throws {
        if try nameInUse(d.accountID, d.name, db) { throw DomainError.databaseNameTaken(d.name) }
        try db.execute(
            sql: """
                INSERT INTO databases (id, account_id, name, tier, engine, status, window_start_minute, window_minutes,
                    location, created_at, deleted_at, next_backup_at, error_code, error_message, restore_drills, next_drill_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """,
            arguments: [
                d.id, d.accountID, d.name, d.tier.rawValue, d.engine.rawValue, d.status.rawValue,
                d.backupWindow.startMinute, d.backupWindow.durationMinutes, d.location, ms(d.createdAt),
                d.deletedAt.map(ms), ms(d.nextBackupAt), d.error?.code, d.error?.message, d.restoreDrills.rawValue, d.nextDrillAt.map(ms),
            ])
    }

    static func nameInUse(_ accountID: String, _ name: String, _ db: GRDB.Database) throws -> Bool {
        try Bool.fetchOne(
            db, sql: "SELECT 1 FROM databases WHERE account_id = ? AND name = ? AND status <> 'deleted'",
            arguments: [accountID, name]) != nil
    }

    public func databaseNameInUse(accountID: String, name: String) async throws -> Bool {
        try await pool.read { db in try Self.nameInUse(accountID, name, db) }
    }

    public func database(id: String, accountID: String) async throws -> ManagedDatabase? {
        try await pool.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM databases WHERE id = ? AND account_id = ?", arguments: [id, accountID]).map(CatalogRows.database)
        }
    }

    public func database(id: String) async throws -> ManagedDatabase? {
        try await pool.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM databases WHERE id = ?", arguments: [id]).map(CatalogRows.database)
        }
    }

    public func databases(accountID: String, includeDeleted: Bool) async throws -> [ManagedDatabase] {
        try await pool.read { db in
            try Row.fetchAll(
                db,
                sql: "SELECT * FROM databases WHERE account_id = ? AND (? OR status <> 'deleted') ORDER BY created_at, seq",
                arguments: [accountID, includeDeleted]
            ).map(CatalogRows.database)
        }
    }

    public func updateDatabase(id: String, accountID: String, changes: DatabaseChanges) async throws -> ManagedDatabase {
        try await pool.write { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT * FROM databases WHERE id = ? AND account_id = ?", arguments: [id, accountID]) else {
                throw DomainError.databaseNotFound
            }
            var database = CatalogRows.database(row)
            guard database.status != .deleted else { throw DomainError.databaseDeleted }
            if let tier = changes.tier {
                database.tier = tier
                // The new retention applies to the backups already taken: expiry is creation + retention.
                try db.execute(
                    sql: "UPDATE backups SET expires_at = created_at + ? WHERE database_id = ? AND type = 'automatic'",
                    arguments: [Int64(tier.retentionDays) * 86_400_000, id])
            }
            if let window = changes.backupWindow { database.backupWindow = window }
            if let next = changes.nextBackupAt { database.nextBackupAt = next }
            if let drills = changes.restoreDrills {
                database.restoreDrills = drills
                database.nextDrillAt = changes.nextDrillAt
            }
            try db.execute(
                sql: "UPDATE databases SET tier = ?, window_start_minute = ?, window_minutes = ?, next_backup_at = ?, restore_drills = ?, next_drill_at = ? WHERE id = ?",
                arguments: [
                    database.tier.rawValue, database.backupWindow.startMinute, database.backupWindow.durationMinutes, ms(database.nextBackupAt),
                    database.restoreDrills.rawValue, database.nextDrillAt.map(ms), id,
                ])
            return database
        }
    }

    public func markDatabaseDeleted(id: String, accountID: String, at: Date) async throws -> [Backup] {
        try await pool.write { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT * FROM databases WHERE id = ? AND account_id = ?", arguments: [id, accountID]) else {
                throw DomainError.databaseNotFound
            }
            let database = CatalogRows.database(row)
            try database.checkDeletable()
            // Its automatic backups go with it; not while a restore is reading one of them.
            if try Bool.fetchOne(
                db,
                sql: """
                    SELECT 1 FROM restores r JOIN backups b ON b.id = r.backup_id
                    WHERE b.database_id = ? AND b.type = 'automatic' AND r.status IN ('pending','in_progress')
                    """,
                arguments: [id]) != nil {
                throw DomainError.databaseReadByRestore
            }
            let automatic = try Row.fetchAll(db, sql: "SELECT * FROM backups WHERE database_id = ? AND type = 'automatic'", arguments: [id]).map(CatalogRows.backup)
            try db.execute(sql: "DELETE FROM jobs WHERE kind IN ('backup','verify') AND subject_id IN (SELECT id FROM backups WHERE database_id = ? AND type = 'automatic')", arguments: [id])
            // Restores reading these backups keep their history; the backup rows go.
            try db.execute(sql: "DELETE FROM backups WHERE database_id = ? AND type = 'automatic'", arguments: [id])
            for backup in automatic { try Self.releaseLayer(backup.object?.key, now: at, grace: garbageGrace, db) }
            try db.execute(sql: "UPDATE databases SET status = 'deleted', deleted_at = ? WHERE id = ?", arguments: [ms(at), id])
            return automatic
        }
    }

    // MARK: Backups

    public func enqueueManualBackup(_ backup: Backup, jobID: String, now: Date) async throws {
        try await pool.write { db in
            guard let quota = try Int64.fetchOne(db, sql: "SELECT storage_quota_bytes FROM accounts WHERE id = ?", arguments: [backup.accountID]) else {
                throw DomainError.accountNotFound
            }
            guard try Self.usage(backup.accountID, db) < quota else { throw DomainError.storageQuotaExceeded }
            try Self.requireAvailable(backup.databaseID, db)
            try Self.insertBackup(backup, db)
            try Self.insertJob(id: jobID, kind: .backup, subject: backup.id, now: now, db)
        }
    }

    public func enqueueAutomaticBackup(_ backup: Backup, jobID: String, nextBackupAt: Date, now: Date, basedOn: ManagedDatabase) async throws -> Bool {
        try await pool.write { db in
            guard let current = try Row.fetchOne(db, sql: "SELECT * FROM databases WHERE id = ?", arguments: [backup.databaseID]).map(CatalogRows.database),
                  current.tier == basedOn.tier, current.backupWindow == basedOn.backupWindow, current.nextBackupAt == basedOn.nextBackupAt
            else { return false }
            let exists = try Bool.fetchOne(
                db, sql: "SELECT 1 FROM backups WHERE database_id = ? AND scheduled_day = ?",
                arguments: [backup.databaseID, backup.scheduledDay]) != nil
            let status = try String.fetchOne(db, sql: "SELECT status FROM databases WHERE id = ?", arguments: [backup.databaseID])
            let inserted = !exists && status == DatabaseStatus.available.rawValue
            if inserted {
                try Self.insertBackup(backup, db)
                try Self.insertJob(id: jobID, kind: .backup, subject: backup.id, now: now, db)
            }
            try db.execute(sql: "UPDATE databases SET next_backup_at = ? WHERE id = ?", arguments: [ms(nextBackupAt), backup.databaseID])
            return inserted
        }
    }

    static func requireAvailable(_ databaseID: String, _ db: GRDB.Database) throws {
        guard let raw = try String.fetchOne(db, sql: "SELECT status FROM databases WHERE id = ?", arguments: [databaseID]),
              let status = DatabaseStatus(rawValue: raw)
        else { throw DomainError.databaseNotFound }
        if status == .deleted { throw DomainError.databaseDeleted }
        guard status == .available else { throw DomainError.databaseNotAvailable(status) }
    }

    static func insertBackup(_ b: Backup, _ db: GRDB.Database) throws {
        try db.execute(
            sql: """
                INSERT INTO backups (id, account_id, database_id, name, type, status, engine, created_at, started_at, completed_at,
                    expires_at, scheduled_day, object_key, size_bytes, checksum, error_code, error_message)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """,
            arguments: [
                b.id, b.accountID, b.databaseID, b.name, b.type.rawValue, b.status.rawValue, b.engine.rawValue,
                ms(b.createdAt), b.startedAt.map(ms), b.completedAt.map(ms), b.expiresAt.map(ms), b.scheduledDay,
                b.object?.key, b.object?.sizeBytes, b.object?.checksum, b.error?.code, b.error?.message,
            ])
    }

    static func insertJob(id: String, kind: JobKind, subject: String, now: Date, _ db: GRDB.Database) throws {
        try db.execute(
            sql: "INSERT INTO jobs (id, kind, subject_id, status, created_at) VALUES (?, ?, ?, 'pending', ?)",
            arguments: [id, kind.rawValue, subject, ms(now)])
    }

    public func backups(databaseID: String, accountID: String, type: BackupType?, status: BackupStatus?) async throws -> [Backup] {
        try await pool.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT * FROM backups WHERE database_id = ? AND account_id = ?
                      AND (? IS NULL OR type = ?) AND (? IS NULL OR status = ?)
                    ORDER BY created_at DESC, seq DESC
                    """,
                arguments: [databaseID, accountID, type?.rawValue, type?.rawValue, status?.rawValue, status?.rawValue]
            ).map(CatalogRows.backup)
        }
    }

    public func backup(id: String, databaseID: String, accountID: String) async throws -> Backup? {
        try await pool.read { db in
            try Row.fetchOne(
                db, sql: "SELECT * FROM backups WHERE id = ? AND database_id = ? AND account_id = ?",
                arguments: [id, databaseID, accountID]
            ).map(CatalogRows.backup)
        }
    }

    public func backup(id: String) async throws -> Backup? {
        try await pool.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM backups WHERE id = ?", arguments: [id]).map(CatalogRows.backup)
        }
    }

    public func deleteManualBackup(id: String, databaseID: String, accountID: String, at: Date) async throws -> Backup {
        try await pool.write { db in
            guard let row = try Row.fetchOne(
                db, sql: "SELECT * FROM backups WHERE id = ? AND database_id = ? AND account_id = ?",
                arguments: [id, databaseID, accountID])
            else { throw DomainError.backupNotFound }
            let backup = CatalogRows.backup(row)
            try backup.checkDeletable()
            if try Bool.fetchOne(db, sql: "SELECT 1 FROM restores WHERE backup_id = ? AND status IN ('pending','in_progress')", arguments: [id]) != nil {
                throw DomainError(.conflict, code: "backup_in_use", message: "a restore from this backup is running; delete it once the restore has finished")
            }
            try db.execute(sql: "DELETE FROM backups WHERE id = ?", arguments: [id])
            try Self.releaseLayer(backup.object?.key, now: at, grace: garbageGrace, db)
            return backup
        }
    }

    public func dueDatabases(now: Date, limit: Int) async throws -> [ManagedDatabase] {
        try await pool.read { db in
            try Row.fetchAll(
                db, sql: "SELECT * FROM databases WHERE status = 'available' AND next_backup_at <= ? ORDER BY next_backup_at LIMIT ?",
                arguments: [ms(now), limit]
            ).map(CatalogRows.database)
        }
    }

    static let expiredCondition = """
        type = 'automatic' AND status IN ('completed','failed') AND expires_at <= ?
        AND NOT EXISTS (SELECT 1 FROM restores r WHERE r.backup_id = backups.id AND r.status IN ('pending','in_progress'))
        """

    public func expiredBackups(now: Date, limit: Int) async throws -> [Backup] {
        try await pool.read { db in
            try Row.fetchAll(
                db, sql: "SELECT * FROM backups WHERE \(Self.expiredCondition) ORDER BY expires_at LIMIT ?",
                arguments: [ms(now), limit]
            ).map(CatalogRows.backup)
        }
    }

    public func deleteExpiredBackup(id: String, now: Date) async throws -> Backup? {
        try await pool.write { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT * FROM backups WHERE id = ? AND \(Self.expiredCondition)", arguments: [id, ms(now)]) else {
                return nil
            }
            try db.execute(sql: "DELETE FROM backups WHERE id = ?", arguments: [id])
            let backup = CatalogRows.backup(row)
            try Self.releaseLayer(backup.object?.key, now: now, grace: garbageGrace, db)
            return backup
        }
    }

    public func latestCompletedBackup(databaseID: String) async throws -> Backup? {
        try await pool.read { db in
            try Row.fetchOne(
                db, sql: "SELECT * FROM backups WHERE database_id = ? AND status = 'completed' ORDER BY completed_at DESC, seq DESC LIMIT 1",
                arguments: [databaseID]
            ).map(CatalogRows.backup)
        }
    }

    public func enqueueVerification(backupID: String, jobID: String, now: Date) async throws -> Bool {
        try await pool.write { db in
            guard try Bool.fetchOne(db, sql: "SELECT 1 FROM jobs WHERE kind = 'verify' AND subject_id = ?", arguments: [backupID]) == nil else {
                return false
            }
            try Self.insertJob(id: jobID, kind: .verify, subject: backupID, now: now, db)
            return true
        }
    }

    public func recordVerification(backupID: String, integrity: BackupIntegrity, at: Date) async throws {
        try await pool.write { db in
            try db.execute(
                sql: "UPDATE backups SET integrity = ?, verified_at = ? WHERE id = ?",
                arguments: [integrity.rawValue, ms(at), backupID])
        }
    }

    // MARK: Restores

    public func enqueueRestore(_ restore: Restore, target: ManagedDatabase, jobID: String, now: Date) async throws {
        try await pool.write { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT * FROM backups WHERE id = ? AND account_id = ?", arguments: [restore.backupID, restore.accountID]) else {
                throw DomainError.backupNotFound
            }
            try CatalogRows.backup(row).checkRestorable()
            try Self.insertDatabase(target, db)
            try db.execute(
                sql: """
                    INSERT INTO restores (id, account_id, backup_id, source_database_id, target_database_id, status, created_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [restore.id, restore.accountID, restore.backupID, restore.sourceDatabaseID, restore.targetDatabaseID,
                            restore.status.rawValue, ms(restore.createdAt)])
            try Self.insertJob(id: jobID, kind: .restore, subject: restore.id, now: now, db)
        }
    }

    public func restore(id: String, accountID: String) async throws -> Restore? {
        try await pool.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM restores WHERE id = ? AND account_id = ?", arguments: [id, accountID]).map(CatalogRows.restore)
        }
    }

    public func restore(id: String) async throws -> Restore? {
        try await pool.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM restores WHERE id = ?", arguments: [id]).map(CatalogRows.restore)
        }
    }

    // MARK: Jobs

    public func claimJob(leaseToken: String, now: Date, leaseDuration: Duration, maxAttempts: Int, kinds: Set<JobKind>) async throws -> ClaimedJob? {
        let kindList = kinds.map(\.rawValue).sorted()
        let placeholders = Array(repeating: "?", count: kindList.count).joined(separator: ",")
        let nowMs = ms(now)
        let until = now.addingTimeInterval(leaseDuration.seconds)
        return try await pool.write { db in
            // Jobs whose worker died too often are failed rather than retried forever.
            let exhausted = try Row.fetchAll(
                db, sql: "SELECT * FROM jobs WHERE status = 'running' AND lease_expires_at <= ? AND attempts >= ?",
                arguments: [nowMs, maxAttempts])
            for row in exhausted {
                let attempts: Int = row["attempts"]
                try Self.apply(
                    .failed(ErrorInfo(code: "worker_lost", message: "the worker running this job stopped \(attempts) times before finishing; giving up")),
                    kind: JobKind(rawValue: row["kind"])!, subject: row["subject_id"], at: now, db)
                try db.execute(sql: "DELETE FROM jobs WHERE id = ?", arguments: [row["id"] as String])
            }
            guard let row = try Row.fetchOne(
                db,
                sql: """
                    SELECT * FROM jobs WHERE kind IN (\(placeholders)) AND (status = 'pending' OR (status = 'running' AND lease_expires_at <= ?))
                    ORDER BY seq LIMIT 1
                    """,
                arguments: StatementArguments(kindList) + [nowMs])
            else { return nil }
            let id: String = row["id"]
            let attempts: Int = row["attempts"] + 1
            try db.execute(
                sql: "UPDATE jobs SET status = 'running', attempts = ?, lease_token = ?, lease_expires_at = ? WHERE id = ?",
                arguments: [attempts, leaseToken, ms(until), id])
            let kind = JobKind(rawValue: row["kind"])!
            let subject: String = row["subject_id"]
            switch kind {
            case .backup:
                try db.execute(
                    sql: "UPDATE backups SET status = 'in_progress', started_at = COALESCE(started_at, ?) WHERE id = ?",
                    arguments: [nowMs, subject])
            case .restore:
                try db.execute(sql: "UPDATE restores SET status = 'in_progress' WHERE id = ?", arguments: [subject])
            case .verify, .drill:
                break
            }
            return ClaimedJob(id: id, kind: kind, subjectID: subject, attempt: attempts, leaseToken: leaseToken, leaseExpiresAt: until)
        }
    }

    public func renewLease(jobID: String, leaseToken: String, clock: any WallClock, duration: Duration) async throws -> Bool {
        try await pool.write { db in
            let until = clock.now().addingTimeInterval(duration.seconds)
            try db.execute(
                sql: "UPDATE jobs SET lease_expires_at = ? WHERE id = ? AND lease_token = ? AND status = 'running'",
                arguments: [ms(until), jobID, leaseToken])
            return db.changesCount == 1
        }
    }

    public func finishJob(_ job: ClaimedJob, outcome: JobOutcome, at: Date) async throws -> JobFinish {
        try await pool.write { db in
            guard try Bool.fetchOne(
                db, sql: "SELECT 1 FROM jobs WHERE id = ? AND lease_token = ? AND status = 'running'",
                arguments: [job.id, job.leaseToken]) != nil
            else { return .leaseLost }
            try db.execute(sql: "DELETE FROM jobs WHERE id = ?", arguments: [job.id])
            return try Self.apply(outcome, kind: job.kind, subject: job.subjectID, at: at, db) ? .applied : .subjectGone
        }
    }

    /// Writes a job's outcome onto its subject; false when the subject is gone.
    @discardableResult
    static func apply(_ outcome: JobOutcome, kind: JobKind, subject: String, at: Date, _ db: GRDB.Database) throws -> Bool {
        let atMs = ms(at)
        switch (kind, outcome) {
        case (.backup, .backupCompleted(let object)):
            guard try Bool.fetchOne(db, sql: "SELECT 1 FROM backups WHERE id = ?", arguments: [subject]) != nil else { return false }
            // The backup now holds its manifest; without one there is nothing to complete.
            try db.execute(sql: "UPDATE layers SET refs = refs + 1 WHERE id = ?", arguments: [object.key])
            guard db.changesCount == 1 else {
                return try apply(.failed(ErrorInfo(code: "backup_data_missing", message: "the backup's manifest was removed before it completed")), kind: kind, subject: subject, at: at, db)
            }
            try db.execute(
                sql: """
                    UPDATE backups SET status = 'completed', completed_at = ?, object_key = ?, size_bytes = ?, checksum = ?, stored_bytes = ?,
                        table_counts = ?, error_code = NULL, error_message = NULL WHERE id = ?
                    """,
                arguments: [atMs, object.key, object.sizeBytes, object.checksum, object.storedBytes, object.tableCounts?.json, subject])
            try backupEvent(.backupCompleted, subject, at: at, db)
            return true
        case (.backup, .failed(let error)):
            try db.execute(
                sql: "UPDATE backups SET status = 'failed', completed_at = ?, error_code = ?, error_message = ? WHERE id = ?",
                arguments: [atMs, error.code, error.message, subject])
            guard db.changesCount == 1 else { return false }
            try backupEvent(.backupFailed, subject, at: at, db)
            return true
        case (.restore, .restoreCompleted):
            try db.execute(sql: "UPDATE restores SET status = 'completed', completed_at = ? WHERE id = ?", arguments: [atMs, subject])
            guard db.changesCount == 1 else { return false }
            try db.execute(
                sql: "UPDATE databases SET status = 'available' WHERE id = (SELECT target_database_id FROM restores WHERE id = ?)",
                arguments: [subject])
            try restoreEvent(.restoreCompleted, subject, at: at, db)
            return true
        case (.restore, .failed(let error)):
            try db.execute(
                sql: "UPDATE restores SET status = 'failed', completed_at = ?, error_code = ?, error_message = ? WHERE id = ?",
                arguments: [atMs, error.code, error.message, subject])
            guard db.changesCount == 1 else { return false }
            try db.execute(
                sql: "UPDATE databases SET status = 'failed', error_code = ?, error_message = ? WHERE id = (SELECT target_database_id FROM restores WHERE id = ?)",
                arguments: [error.code, error.message, subject])
            try restoreEvent(.restoreFailed, subject, at: at, db)
            return true
        case (.verify, .verified(let integrity)):
            try db.execute(sql: "UPDATE backups SET integrity = ?, verified_at = ? WHERE id = ?", arguments: [integrity.rawValue, atMs, subject])
            return db.changesCount == 1
        case (.verify, .failed):
            // Verification could not run; what was known of the backup stays as it was.
            return try Bool.fetchOne(db, sql: "SELECT 1 FROM backups WHERE id = ?", arguments: [subject]) != nil
        case (.drill, .drilled(let result)):
            return try applyDrill(result, backupID: subject, db)
        case (.drill, .failed(let error)):
            // The drill could not finish (its worker kept dying): the backup is not proven restorable.
            return try applyDrill(DrillResult(at: at, result: .failed, durationMs: 0, error: error), backupID: subject, db)
        case (.backup, .restoreCompleted), (.backup, .verified), (.restore, .backupCompleted), (.restore, .verified),
             (.verify, .backupCompleted), (.verify, .restoreCompleted), (.drill, .backupCompleted), (.drill, .restoreCompleted),
             (.drill, .verified), (.backup, .drilled), (.restore, .drilled), (.verify, .drilled):
            preconditionFailure("outcome \(outcome) does not fit a \(kind) job")
        }
    }

    static func backupEvent(_ event: WebhookEvent, _ id: String, at: Date, _ db: GRDB.Database) throws {
        guard let row = try Row.fetchOne(db, sql: "SELECT * FROM backups WHERE id = ?", arguments: [id]) else { return }
        let backup = CatalogRows.backup(row)
        try enqueueEvent(event, accountID: backup.accountID, at: at, data: WebhookPayload.backup(backup), db)
    }

    static func restoreEvent(_ event: WebhookEvent, _ id: String, at: Date, _ db: GRDB.Database) throws {
        guard let row = try Row.fetchOne(db, sql: "SELECT * FROM restores WHERE id = ?", arguments: [id]) else { return }
        let restore = CatalogRows.restore(row)
        try enqueueEvent(event, accountID: restore.accountID, at: at, data: WebhookPayload.restore(restore), db)
    }

    public func releaseJob(_ job: ClaimedJob) async throws {
        try await pool.write { db in
            try db.execute(
                sql: "UPDATE jobs SET status = 'pending', attempts = attempts - 1, lease_token = NULL, lease_expires_at = NULL WHERE id = ? AND lease_token = ?",
                arguments: [job.id, job.leaseToken])
        }
    }

    public func recordProgress(_ job: ClaimedJob, done: Int64, total: Int64?, at: Date) async throws {
        let table: String
        switch job.kind {
        case .backup: table = "backups"
        case .restore: table = "restores"
        case .verify, .drill: return
        }
        try await pool.write { db in
            try db.execute(
                sql: """
                    UPDATE \(table) SET progress_done = ?, progress_total = ?, progress_started_at = COALESCE(progress_started_at, ?)
                    WHERE id = ? AND status = 'in_progress'
                      AND EXISTS (SELECT 1 FROM jobs WHERE id = ? AND lease_token = ? AND status = 'running')
                    """,
                arguments: [done, total, ms(at), job.subjectID, job.id, job.leaseToken])
        }
    }

    public func oldestPendingJob() async throws -> Date? {
        try await pool.read { db in
            try Int64.fetchOne(db, sql: "SELECT MIN(created_at) FROM jobs WHERE status = 'pending'").map(date)
        }
    }

    public func databasesWithoutBackup(since cutoff: Date) async throws -> Int {
        try await pool.read { db in
            try Int.fetchOne(
                db,
                sql: """
                    SELECT COUNT(*) FROM databases d
                    WHERE d.status = 'available' AND d.created_at < ?
                      AND NOT EXISTS (SELECT 1 FROM backups b WHERE b.database_id = d.id AND b.status = 'completed' AND b.completed_at >= ?)
                    """,
                arguments: [ms(cutoff), ms(cutoff)]) ?? 0
        }
    }

    public func probe() async throws {
        _ = try await pool.read { db in try Int.fetchOne(db, sql: "SELECT 1") }
    }

    public func jobCounts() async throws -> (pending: Int, running: Int) {
        try await pool.read { db in
            let pending = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM jobs WHERE status = 'pending'") ?? 0
            let running = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM jobs WHERE status = 'running'") ?? 0
            return (pending, running)
        }
    }
}

extension Row: CatalogRow {
    func text(_ column: String) -> String? { self[column] }
    func integer(_ column: String) -> Int64? { self[column] }
    func bytes(_ column: String) -> [UInt8]? { (self[column] as Data?).map { [UInt8]($0) } }
}

func ms(_ date: Date) -> Int64 { Int64((date.timeIntervalSince1970 * 1000).rounded()) }
func date(_ ms: Int64) -> Date { Date(timeIntervalSince1970: TimeInterval(ms) / 1000) }
