import CloudheedDomain
import Foundation
import Logging
import NIOCore
import PostgresNIO
import ServiceLifecycle

/// The shared catalog of several nodes: a PostgreSQL database reached through one postgres-nio
/// connection pool per process (`--catalog postgresql://USER:PASSWORD@HOST:PORT/DBNAME`).
///
/// Its contract is the SQLite catalog's (the same test suite runs against both); what differs
/// is how atomicity is had when several nodes write at once:
/// - rows an operation decides on are locked first (`SELECT ... FOR UPDATE`), so a check and
///   the change it allows see the same state;
/// - jobs are claimed with `FOR UPDATE SKIP LOCKED`, so nodes never wait on each other's claims;
/// - one automatic backup per database and day is a unique index, not a leader's decision;
/// - garbage collection takes an advisory lock exclusively while steps that add references
///   to stored data hold it shared, so GC never removes what a reference is being added to.
public final class PostgresCatalog: Catalog, Sendable {
    /// Where the catalog lives; the password is never part of a message.
    public struct Endpoint: Sendable, Equatable {
        public var host: String
        public var port: Int
        public var username: String
        public var password: String?
        public var database: String

        public init(host: String, port: Int, username: String, password: String?, database: String) {
            self.host = host
            self.port = port
            self.username = username
            self.password = password
            self.database = database
        }

        /// Parses `postgresql://USER:PASSWORD@HOST:PORT/DBNAME` (or `postgres://`); without a
        /// database name in the path, `defaultDatabase`, else it is refused. The message never
        /// repeats the password.
        public init(url: String, defaultDatabase: String? = nil) throws(DomainError) {
            let invalid = DomainError.invalidField("catalog", "the URL must look like postgresql://USER:PASSWORD@HOST:PORT/DBNAME")
            guard let components = URLComponents(string: url), ["postgresql", "postgres"].contains(components.scheme ?? ""),
                  let host = components.host, !host.isEmpty, let user = components.user, !user.isEmpty else { throw invalid }
            let path = components.path.hasPrefix("/") ? String(components.path.dropFirst()) : components.path
            guard let database = path.isEmpty ? defaultDatabase : path else { throw invalid }
            self.init(
                host: host.hasPrefix("[") ? String(host.dropFirst().dropLast()) : host, port: components.port ?? 5432,
                username: user.removingPercentEncoding ?? user, password: components.password.map { $0.removingPercentEncoding ?? $0 },
                database: database)
        }

        var place: String { "\(host):\(port)/\(database)" }

        func clientConfiguration(maximumConnections: Int) -> PostgresClient.Configuration {
            var configuration = PostgresClient.Configuration(host: host, port: port, username: username, password: password, database: database, tls: .disable)
            configuration.options.connectTimeout = .seconds(5)
            configuration.options.maximumConnections = maximumConnections
            return configuration
        }

        func connectionConfiguration() -> PostgresConnection.Configuration {
            PostgresConnection.Configuration(host: host, port: port, username: username, password: password, database: database, tls: .disable)
        }
    }

    let client: PostgresClient
    let endpoint: Endpoint
    let logger: Logger
    /// How long an object no backup refers to any more is kept before deletion.
    let garbageGrace: TimeInterval

    init(client: PostgresClient, endpoint: Endpoint, logger: Logger, garbageGrace: TimeInterval) {
        self.client = client
        self.endpoint = endpoint
        self.logger = logger
        self.garbageGrace = garbageGrace
    }

    /// Runs the migrations, then returns the catalog. Its connection pool works only while
    /// `service` runs (`cloudheed serve` runs it first in its ServiceGroup, so it stops last).
    public static func open(
        _ endpoint: Endpoint, maximumConnections: Int = 20, garbageGrace: TimeInterval = 3600, logger: Logger
    ) async throws -> PostgresCatalog {
        try await migrate(endpoint, logger: logger)
        let client = PostgresClient(configuration: endpoint.clientConfiguration(maximumConnections: maximumConnections), backgroundLogger: logger)
        return PostgresCatalog(client: client, endpoint: endpoint, logger: logger, garbageGrace: garbageGrace)
    }

    /// The connection pool, to run for as long as the catalog is used.
    public var service: some Service { client }

    /// Opens the catalog and runs its pool for as long as `body` runs, as a structured child task.
    public static func run<T: Sendable>(
        _ endpoint: Endpoint, maximumConnections: Int = 20, garbageGrace: TimeInterval = 3600, logger: Logger,
        _ body: (PostgresCatalog) async throws -> T
    ) async throws -> T {
        let catalog = try await open(endpoint, maximumConnections: maximumConnections, garbageGrace: garbageGrace, logger: logger)
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await catalog.client.run() }
            defer { group.cancelAll() }
            return try await body(catalog)
        }
    }

    /// Runs the migrations the catalog has not had yet, on a connection of its own; returns their names.
    @discardableResult
    public static func migrate(_ endpoint: Endpoint, logger: Logger) async throws -> [String] {
        try await onOwnConnection(endpoint, connectTimeout: .seconds(5), logger: logger) { connection in
            try await runMigrations(on: connection, logger: logger)
        }
    }

    /// Runs `body` on a connection of its own, outside the pool, closed afterwards; failures to
    /// reach the server become `catalog_unavailable`.
    static func onOwnConnection<T: Sendable>(
        _ endpoint: Endpoint, connectTimeout: TimeAmount, logger: Logger, _ body: (PostgresConnection) async throws -> T
    ) async throws -> T {
        var configuration = endpoint.connectionConfiguration()
        configuration.options.connectTimeout = connectTimeout
        let connection: PostgresConnection
        do {
            connection = try await PostgresConnection.connect(configuration: configuration, id: 0, logger: logger)
        } catch {
            throw unavailable(error, endpoint: endpoint)
        }
        do {
            let value = try await body(connection)
            try? await connection.close()
            return value
        } catch {
            try? await connection.close()
            throw unavailable(error, endpoint: endpoint)
        }
    }

    /// A catalog that cannot be reached is the service's trouble, not the caller's: 503, retry later.
    static func unavailable(_ error: any Error, endpoint: Endpoint) -> any Error {
        guard let error = error as? PSQLError else { return error }
        switch error.code {
        case .server:
            let state = error.serverInfo?[.sqlState] ?? ""
            // Class 08 (connection), 57P (shutdown, crash recovery), 53 (resources).
            if state.hasPrefix("08") || state.hasPrefix("57P") || state.hasPrefix("53") {
                return DomainError(.unavailable, code: "catalog_unavailable", message: "the catalog at \(endpoint.place) is not available: \(error.serverInfo?[.message] ?? state)")
            }
            return error
        case .connectionError, .serverClosedConnection, .clientClosedConnection, .uncleanShutdown, .poolClosed, .queryCancelled:
            return DomainError(.unavailable, code: "catalog_unavailable", message: "the catalog at \(endpoint.place) is not reachable")
        default:
            return error
        }
    }

    static func sqlState(_ error: any Error) -> String? {
        (error as? PSQLError)?.serverInfo?[.sqlState]
    }

    // MARK: Running queries

    /// Runs `body` in one transaction (READ COMMITTED; operations lock what they decide on). A
    /// deadlock or serialization failure reruns it whole, so callers see only their own errors.
    func transaction<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        var attempt = 0
        while true {
            attempt += 1
            do {
                return try await client.withConnection { connection in
                    try await connection.run("BEGIN", logger)
                    do {
                        let value = try await body(connection)
                        try await connection.run("COMMIT", logger)
                        return value
                    } catch {
                        try? await connection.run("ROLLBACK", logger)
                        throw error
                    }
                }
            } catch {
                if attempt < 5, let state = Self.sqlState(error), state == "40P01" || state == "40001" { continue }
                throw Self.unavailable(error, endpoint: endpoint)
            }
        }
    }

    /// Runs reads on one pooled connection, outside a transaction.
    func reading<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        do {
            return try await client.withConnection { connection in try await body(connection) }
        } catch {
            throw Self.unavailable(error, endpoint: endpoint)
        }
    }

    // MARK: Accounts and tokens

    public func createAccount(_ account: Account, token: StoredToken) async throws {
        try await transaction { c in
            try await c.run(
                "INSERT INTO accounts (id, name, storage_quota_bytes, created_at) VALUES (\(account.id), \(account.name), \(account.storageQuotaBytes), \(ms(account.createdAt)))",
                logger)
            try await Self.insertToken(token, c, logger)
        }
    }

    public func addToken(_ token: StoredToken) async throws {
        try await transaction { c in
            guard try await c.exists("SELECT 1 FROM accounts WHERE id = \(token.accountID) AND deleted_at IS NULL FOR SHARE", logger) else {
                throw DomainError.accountNotFound
            }
            try await Self.insertToken(token, c, logger)
        }
    }

    static func insertToken(_ token: StoredToken, _ c: PostgresConnection, _ logger: Logger) async throws {
        try await c.run(
            "INSERT INTO tokens (id, account_id, secret_hash, created_at) VALUES (\(token.id), \(token.accountID), \(ByteBuffer(bytes: token.secretHash)), \(ms(token.createdAt)))",
            logger)
    }

    public func account(id: String) async throws -> Account? {
        try await reading { c in
            try await c.one("SELECT * FROM accounts WHERE id = \(id) AND deleted_at IS NULL", logger).map { row in
                Account(id: row.string("id"), name: row.string("name"), storageQuotaBytes: row.int64("storage_quota_bytes"), createdAt: row.date("created_at"))
            }
        }
    }

    /// One round trip, nothing remembered: other nodes change the catalog too. A prepared
    /// statement (per connection), so the server plans the join once, not on every request.
    public func accessCheck(tokenID: String, databaseID: String?) async throws -> AccessCheck? {
        do {
            var answer: AccessCheck?
            for try await row in try await client.execute(AccessCheckStatement(tokenID: tokenID, databaseID: databaseID), logger: logger) {
                answer = CatalogRows.accessCheck(PostgresCatalogRow(row: row.makeRandomAccess()))
            }
            return answer
        } catch {
            throw Self.unavailable(error, endpoint: endpoint)
        }
    }

    public func deleteAccount(id: String, at: Date) async throws -> [ManagedDatabase] {
        try await transaction { c in
            guard try await c.exists("SELECT 1 FROM accounts WHERE id = \(id) AND deleted_at IS NULL FOR UPDATE", logger) else {
                throw DomainError.accountNotFound
            }
            let databases = try await c.rows("SELECT * FROM databases WHERE account_id = \(id) AND status <> 'deleted' FOR UPDATE", logger).map(CatalogRows.database)
            // Jobs first (their subjects go), then every backup, releasing its manifest.
            try await c.run(
                """
                DELETE FROM jobs WHERE subject_id IN (SELECT id FROM backups WHERE account_id = \(id))
                   OR subject_id IN (SELECT id FROM restores WHERE account_id = \(id))
                """, logger)
            let manifests = try await c.rows(
                "DELETE FROM backups WHERE account_id = \(id) RETURNING status, object_key", logger
            ).filter { $0.text("status") == "completed" }.compactMap { $0.text("object_key") }
            for manifest in manifests { try await Self.releaseLayer(manifest, now: at, grace: garbageGrace, c, logger) }
            try await c.run(
                """
                UPDATE restores SET status = 'failed', completed_at = \(ms(at)), error_code = 'account_deleted', error_message = 'the account was deleted'
                WHERE account_id = \(id) AND status IN ('pending','in_progress')
                """, logger)
            try await c.run("UPDATE databases SET status = 'deleted', deleted_at = COALESCE(deleted_at, \(ms(at))) WHERE account_id = \(id)", logger)
            try await c.run("DELETE FROM tokens WHERE account_id = \(id)", logger)
            try await c.run("DELETE FROM webhooks WHERE account_id = \(id)", logger)
            // Destroying the data key makes whatever storage still holds unreadable for good.
            try await c.run("DELETE FROM account_keys WHERE account_id = \(id)", logger)
            try await c.run("UPDATE accounts SET deleted_at = \(ms(at)) WHERE id = \(id)", logger)
            return databases
        }
    }

    public func storageUsedBytes(accountID: String) async throws -> Int64 {
        try await reading { c in try await Self.usage(accountID, c, logger) }
    }

    static func usage(_ accountID: String, _ c: PostgresConnection, _ logger: Logger) async throws -> Int64 {
        try await c.one(
            """
            SELECT COALESCE(SUM(COALESCE(stored_bytes, size_bytes)), 0)::BIGINT AS used FROM backups
            WHERE account_id = \(accountID) AND type = 'manual' AND status = 'completed'
            """, logger)?.integer("used") ?? 0
    }

    // MARK: Databases

    public func insertDatabase(_ database: ManagedDatabase) async throws {
        try await transaction { c in try await Self.insertDatabase(database, c, logger) }
    }

    static func insertDatabase(_ d: ManagedDatabase, _ c: PostgresConnection, _ logger: Logger) async throws {
        // The unique index decides between two nodes inserting the same name at once.
        let inserted = try await c.rows(
            """
            INSERT INTO databases (id, account_id, name, tier, engine, status, window_start_minute, window_minutes,
                location, created_at, deleted_at, next_backup_at, error_code, error_message, restore_drills, next_drill_at)
            VALUES (\(d.id), \(d.accountID), \(d.name), \(d.tier.rawValue), \(d.engine.rawValue), \(d.status.rawValue),
                \(Int64(d.backupWindow.startMinute)), \(Int64(d.backupWindow.durationMinutes)), \(d.location), \(ms(d.createdAt)),
                \(d.deletedAt.map(ms)), \(ms(d.nextBackupAt)), \(d.error?.code), \(d.error?.message), \(d.restoreDrills.rawValue), \(d.nextDrillAt.map(ms)))
            ON CONFLICT (account_id, name) WHERE status <> 'deleted' DO NOTHING
            RETURNING 1 AS inserted
            """, logger)
        guard !inserted.isEmpty else { throw DomainError.databaseNameTaken(d.name) }
    }

    public func databaseNameInUse(accountID: String, name: String) async throws -> Bool {
        try await reading { c in
            try await c.exists("SELECT 1 FROM databases WHERE account_id = \(accountID) AND name = \(name) AND status <> 'deleted'", logger)
        }
    }

    public func database(id: String, accountID: String) async throws -> ManagedDatabase? {
        try await reading { c in
            try await c.one("SELECT * FROM databases WHERE id = \(id) AND account_id = \(accountID)", logger).map(CatalogRows.database)
        }
    }

    public func database(id: String) async throws -> ManagedDatabase? {
        try await reading { c in try await c.one("SELECT * FROM databases WHERE id = \(id)", logger).map(CatalogRows.database) }
    }

    public func databases(accountID: String, includeDeleted: Bool) async throws -> [ManagedDatabase] {
        try await reading { c in
            try await c.rows(
                "SELECT * FROM databases WHERE account_id = \(accountID) AND (\(includeDeleted) OR status <> 'deleted') ORDER BY created_at, seq", logger
            ).map(CatalogRows.database)
        }
    }

    public func updateDatabase(id: String, accountID: String, changes: DatabaseChanges) async throws -> ManagedDatabase {
        try await transaction { c in
            guard let row = try await c.one("SELECT * FROM databases WHERE id = \(id) AND account_id = \(accountID) FOR UPDATE", logger) else {
                throw DomainError.databaseNotFound
            }
            var database = CatalogRows.database(row)
            guard database.status != .deleted else { throw DomainError.databaseDeleted }
            if let tier = changes.tier {
                database.tier = tier
                // The new retention applies to the backups already taken: expiry is creation + retention.
                try await c.run(
                    "UPDATE backups SET expires_at = created_at + \(Int64(tier.retentionDays) * 86_400_000) WHERE database_id = \(id) AND type = 'automatic'",
                    logger)
            }
            if let window = changes.backupWindow { database.backupWindow = window }
            if let next = changes.nextBackupAt { database.nextBackupAt = next }
            if let drills = changes.restoreDrills {
                database.restoreDrills = drills
                database.nextDrillAt = changes.nextDrillAt
            }
            try await c.run(
                """
                UPDATE databases SET tier = \(database.tier.rawValue), window_start_minute = \(Int64(database.backupWindow.startMinute)),
                    window_minutes = \(Int64(database.backupWindow.durationMinutes)), next_backup_at = \(ms(database.nextBackupAt)),
                    restore_drills = \(database.restoreDrills.rawValue), next_drill_at = \(database.nextDrillAt.map(ms))
                WHERE id = \(id)
                """, logger)
            return database
        }
    }

    public func markDatabaseDeleted(id: String, accountID: String, at: Date) async throws -> [Backup] {
        try await transaction { c in
            guard let row = try await c.one("SELECT * FROM databases WHERE id = \(id) AND account_id = \(accountID) FOR UPDATE", logger) else {
                throw DomainError.databaseNotFound
            }
            let database = CatalogRows.database(row)
            try database.checkDeletable()
            // Locked before the check: a restore enqueued meanwhile holds its backup's row, so
            // either we wait and then see the restore, or the restore waits and finds no backup.
            let automatic = try await c.rows("SELECT * FROM backups WHERE database_id = \(id) AND type = 'automatic' FOR UPDATE", logger).map(CatalogRows.backup)
            if try await c.exists(
                """
                SELECT 1 FROM restores r JOIN backups b ON b.id = r.backup_id
                WHERE b.database_id = \(id) AND b.type = 'automatic' AND r.status IN ('pending','in_progress')
                """, logger) {
                throw DomainError.databaseReadByRestore
            }
            try await c.run(
                "DELETE FROM jobs WHERE kind IN ('backup','verify','drill') AND subject_id IN (SELECT id FROM backups WHERE database_id = \(id) AND type = 'automatic')",
                logger)
            try await c.run("DELETE FROM backups WHERE database_id = \(id) AND type = 'automatic'", logger)
            for backup in automatic { try await Self.releaseLayer(backup.object?.key, now: at, grace: garbageGrace, c, logger) }
            try await c.run("UPDATE databases SET status = 'deleted', deleted_at = \(ms(at)) WHERE id = \(id)", logger)
            return automatic
        }
    }

    // MARK: Backups

    public func enqueueManualBackup(_ backup: Backup, jobID: String, now: Date) async throws {
        try await transaction { c in
            // The account's row lock serializes its manual backups, so two at once cannot both pass the quota.
            guard let quota = try await c.one("SELECT storage_quota_bytes FROM accounts WHERE id = \(backup.accountID) FOR UPDATE", logger)?.integer("storage_quota_bytes") else {
                throw DomainError.accountNotFound
            }
            guard try await Self.usage(backup.accountID, c, logger) < quota else { throw DomainError.storageQuotaExceeded }
            try await Self.requireAvailable(backup.databaseID, c, logger)
            try await Self.insertBackup(backup, c, logger)
            try await Self.insertJob(id: jobID, kind: .backup, subject: backup.id, now: now, c, logger)
        }
    }

    public func enqueueAutomaticBackup(_ backup: Backup, jobID: String, nextBackupAt: Date, now: Date, basedOn: ManagedDatabase) async throws -> Bool {
        try await transaction { c in
            guard let row = try await c.one("SELECT * FROM databases WHERE id = \(backup.databaseID) FOR UPDATE", logger) else { return false }
            let current = CatalogRows.database(row)
            guard current.tier == basedOn.tier, current.backupWindow == basedOn.backupWindow, current.nextBackupAt == basedOn.nextBackupAt else { return false }
            var inserted = false
            if current.status == .available {
                // The unique index, not the node that got here first, keeps it to one per day.
                inserted = try await !c.rows(
                    """
                    INSERT INTO backups (id, account_id, database_id, name, type, status, engine, created_at, expires_at, scheduled_day)
                    VALUES (\(backup.id), \(backup.accountID), \(backup.databaseID), \(backup.name), \(backup.type.rawValue), \(backup.status.rawValue),
                        \(backup.engine.rawValue), \(ms(backup.createdAt)), \(backup.expiresAt.map(ms)), \(backup.scheduledDay))
                    ON CONFLICT (database_id, scheduled_day) WHERE scheduled_day IS NOT NULL DO NOTHING
                    RETURNING 1 AS inserted
                    """, logger).isEmpty
                if inserted { try await Self.insertJob(id: jobID, kind: .backup, subject: backup.id, now: now, c, logger) }
            }
            try await c.run("UPDATE databases SET next_backup_at = \(ms(nextBackupAt)) WHERE id = \(backup.databaseID)", logger)
            return inserted
        }
    }

    static func requireAvailable(_ databaseID: String, _ c: PostgresConnection, _ logger: Logger) async throws {
        guard let raw = try await c.one("SELECT status FROM databases WHERE id = \(databaseID) FOR SHARE", logger)?.text("status"),
              let status = DatabaseStatus(rawValue: raw)
        else { throw DomainError.databaseNotFound }
        if status == .deleted { throw DomainError.databaseDeleted }
        guard status == .available else { throw DomainError.databaseNotAvailable(status) }
    }

    static func insertBackup(_ b: Backup, _ c: PostgresConnection, _ logger: Logger) async throws {
        try await c.run(
            """
            INSERT INTO backups (id, account_id, database_id, name, type, status, engine, created_at, started_at, completed_at,
                expires_at, scheduled_day, object_key, size_bytes, checksum, error_code, error_message)
            VALUES (\(b.id), \(b.accountID), \(b.databaseID), \(b.name), \(b.type.rawValue), \(b.status.rawValue), \(b.engine.rawValue),
                \(ms(b.createdAt)), \(b.startedAt.map(ms)), \(b.completedAt.map(ms)), \(b.expiresAt.map(ms)), \(b.scheduledDay),
                \(b.object?.key), \(b.object?.sizeBytes), \(b.object?.checksum), \(b.error?.code), \(b.error?.message))
            """, logger)
    }

    static func insertJob(id: String, kind: JobKind, subject: String, now: Date, _ c: PostgresConnection, _ logger: Logger) async throws {
        try await c.run("INSERT INTO jobs (id, kind, subject_id, status, created_at) VALUES (\(id), \(kind.rawValue), \(subject), 'pending', \(ms(now)))", logger)
    }

    public func backups(databaseID: String, accountID: String, type: BackupType?, status: BackupStatus?) async throws -> [Backup] {
        try await reading { c in
            try await c.rows(
                """
                SELECT * FROM backups WHERE database_id = \(databaseID) AND account_id = \(accountID)
                  AND (\(type?.rawValue)::TEXT IS NULL OR type = \(type?.rawValue)) AND (\(status?.rawValue)::TEXT IS NULL OR status = \(status?.rawValue))
                ORDER BY created_at DESC, seq DESC
                """, logger
            ).map(CatalogRows.backup)
        }
    }

    public func backup(id: String, databaseID: String, accountID: String) async throws -> Backup? {
        try await reading { c in
            try await c.one("SELECT * FROM backups WHERE id = \(id) AND database_id = \(databaseID) AND account_id = \(accountID)", logger).map(CatalogRows.backup)
        }
    }

    public func backup(id: String) async throws -> Backup? {
        try await reading { c in try await c.one("SELECT * FROM backups WHERE id = \(id)", logger).map(CatalogRows.backup) }
    }

    public func deleteManualBackup(id: String, databaseID: String, accountID: String, at: Date) async throws -> Backup {
        try await transaction { c in
            guard let row = try await c.one(
                "SELECT * FROM backups WHERE id = \(id) AND database_id = \(databaseID) AND account_id = \(accountID) FOR UPDATE", logger)
            else { throw DomainError.backupNotFound }
            let backup = CatalogRows.backup(row)
            try backup.checkDeletable()
            if try await c.exists("SELECT 1 FROM restores WHERE backup_id = \(id) AND status IN ('pending','in_progress')", logger) {
                throw DomainError(.conflict, code: "backup_in_use", message: "a restore from this backup is running; delete it once the restore has finished")
            }
            try await c.run("DELETE FROM jobs WHERE subject_id = \(id) AND kind IN ('verify','drill')", logger)
            try await c.run("DELETE FROM backups WHERE id = \(id)", logger)
            try await Self.releaseLayer(backup.object?.key, now: at, grace: garbageGrace, c, logger)
            return backup
        }
    }

    public func dueDatabases(now: Date, limit: Int) async throws -> [ManagedDatabase] {
        try await reading { c in
            try await c.rows(
                "SELECT * FROM databases WHERE status = 'available' AND next_backup_at <= \(ms(now)) ORDER BY next_backup_at LIMIT \(Int64(limit))", logger
            ).map(CatalogRows.database)
        }
    }

    public func expiredBackups(now: Date, limit: Int) async throws -> [Backup] {
        try await reading { c in
            try await c.rows(
                """
                SELECT * FROM backups WHERE type = 'automatic' AND status IN ('completed','failed') AND expires_at <= \(ms(now))
                  AND NOT EXISTS (SELECT 1 FROM restores r WHERE r.backup_id = backups.id AND r.status IN ('pending','in_progress'))
                ORDER BY expires_at LIMIT \(Int64(limit))
                """, logger
            ).map(CatalogRows.backup)
        }
    }

    public func deleteExpiredBackup(id: String, now: Date) async throws -> Backup? {
        try await transaction { c in
            // Any number of nodes may expire at once: the row lock lets one delete it, the others find it gone.
            guard let row = try await c.one(
                "SELECT * FROM backups WHERE id = \(id) AND type = 'automatic' AND status IN ('completed','failed') AND expires_at <= \(ms(now)) FOR UPDATE",
                logger)
            else { return nil }
            if try await c.exists("SELECT 1 FROM restores WHERE backup_id = \(id) AND status IN ('pending','in_progress')", logger) { return nil }
            try await c.run("DELETE FROM jobs WHERE subject_id = \(id) AND kind IN ('verify','drill')", logger)
            try await c.run("DELETE FROM backups WHERE id = \(id)", logger)
            let backup = CatalogRows.backup(row)
            try await Self.releaseLayer(backup.object?.key, now: now, grace: garbageGrace, c, logger)
            return backup
        }
    }

    public func latestCompletedBackup(databaseID: String) async throws -> Backup? {
        try await reading { c in
            try await c.one(
                "SELECT * FROM backups WHERE database_id = \(databaseID) AND status = 'completed' ORDER BY completed_at DESC, seq DESC LIMIT 1", logger
            ).map(CatalogRows.backup)
        }
    }

    public func enqueueVerification(backupID: String, jobID: String, now: Date) async throws -> Bool {
        try await transaction { c in
            try await !c.rows(
                """
                INSERT INTO jobs (id, kind, subject_id, status, created_at) VALUES (\(jobID), 'verify', \(backupID), 'pending', \(ms(now)))
                ON CONFLICT (kind, subject_id) DO NOTHING RETURNING 1 AS inserted
                """, logger).isEmpty
        }
    }

    public func recordVerification(backupID: String, integrity: BackupIntegrity, at: Date) async throws {
        try await transaction { c in
            try await c.run("UPDATE backups SET integrity = \(integrity.rawValue), verified_at = \(ms(at)) WHERE id = \(backupID)", logger)
        }
    }

    // MARK: Restores

    public func enqueueRestore(_ restore: Restore, target: ManagedDatabase, jobID: String, now: Date) async throws {
        try await transaction { c in
            // Locked so the backup cannot be deleted or expire between this check and the restore's insertion.
            guard let row = try await c.one("SELECT * FROM backups WHERE id = \(restore.backupID) AND account_id = \(restore.accountID) FOR UPDATE", logger) else {
                throw DomainError.backupNotFound
            }
            try CatalogRows.backup(row).checkRestorable()
            try await Self.insertDatabase(target, c, logger)
            try await c.run(
                """
                INSERT INTO restores (id, account_id, backup_id, source_database_id, target_database_id, status, created_at)
                VALUES (\(restore.id), \(restore.accountID), \(restore.backupID), \(restore.sourceDatabaseID), \(restore.targetDatabaseID),
                    \(restore.status.rawValue), \(ms(restore.createdAt)))
                """, logger)
            try await Self.insertJob(id: jobID, kind: .restore, subject: restore.id, now: now, c, logger)
        }
    }

    public func restore(id: String, accountID: String) async throws -> Restore? {
        try await reading { c in
            try await c.one("SELECT * FROM restores WHERE id = \(id) AND account_id = \(accountID)", logger).map(CatalogRows.restore)
        }
    }

    public func restore(id: String) async throws -> Restore? {
        try await reading { c in try await c.one("SELECT * FROM restores WHERE id = \(id)", logger).map(CatalogRows.restore) }
    }

    // MARK: Jobs

    public func claimJob(leaseToken: String, now: Date, leaseDuration: Duration, maxAttempts: Int, kinds: Set<JobKind>) async throws -> ClaimedJob? {
        let kindList = kinds.map(\.rawValue).sorted()
        let nowMs = ms(now)
        let until = now.addingTimeInterval(leaseDuration.seconds)
        return try await transaction { c in
            // Jobs whose worker died too often are failed rather than retried forever. SKIP LOCKED:
            // another node already deciding about one is left to it.
            let exhausted = try await c.rows(
                """
                SELECT * FROM jobs WHERE status = 'running' AND lease_expires_at <= \(nowMs) AND attempts >= \(Int64(maxAttempts))
                FOR UPDATE SKIP LOCKED
                """, logger)
            for row in exhausted {
                try await Self.apply(
                    .failed(ErrorInfo(code: "worker_lost", message: "the worker running this job stopped \(row.int("attempts")) times before finishing; giving up")),
                    kind: JobKind(rawValue: row.string("kind"))!, subject: row.string("subject_id"), at: now, c, logger)
                try await c.run("DELETE FROM jobs WHERE id = \(row.string("id"))", logger)
            }
            guard let row = try await c.one(
                """
                SELECT * FROM jobs WHERE kind = ANY(\(kindList)) AND (status = 'pending' OR (status = 'running' AND lease_expires_at <= \(nowMs)))
                ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED
                """, logger)
            else { return nil }
            let id = row.string("id")
            let attempts = row.int("attempts") + 1
            try await c.run(
                "UPDATE jobs SET status = 'running', attempts = \(Int64(attempts)), lease_token = \(leaseToken), lease_expires_at = \(ms(until)) WHERE id = \(id)",
                logger)
            let kind = JobKind(rawValue: row.string("kind"))!
            let subject = row.string("subject_id")
            switch kind {
            case .backup:
                try await c.run("UPDATE backups SET status = 'in_progress', started_at = COALESCE(started_at, \(nowMs)) WHERE id = \(subject)", logger)
            case .restore:
                try await c.run("UPDATE restores SET status = 'in_progress' WHERE id = \(subject)", logger)
            case .verify, .drill:
                break
            }
            return ClaimedJob(id: id, kind: kind, subjectID: subject, attempt: attempts, leaseToken: leaseToken, leaseExpiresAt: until)
        }
    }

    public func renewLease(jobID: String, leaseToken: String, clock: any WallClock, duration: Duration) async throws -> Bool {
        try await transaction { c in
            let until = clock.now().addingTimeInterval(duration.seconds)
            return try await !c.rows(
                "UPDATE jobs SET lease_expires_at = \(ms(until)) WHERE id = \(jobID) AND lease_token = \(leaseToken) AND status = 'running' RETURNING 1 AS renewed",
                logger).isEmpty
        }
    }

    public func finishJob(_ job: ClaimedJob, outcome: JobOutcome, at: Date) async throws -> JobFinish {
        try await transaction { c in
            guard try await c.exists("SELECT 1 FROM jobs WHERE id = \(job.id) AND lease_token = \(job.leaseToken) AND status = 'running' FOR UPDATE", logger)
            else { return .leaseLost }
            try await c.run("DELETE FROM jobs WHERE id = \(job.id)", logger)
            return try await Self.apply(outcome, kind: job.kind, subject: job.subjectID, at: at, c, logger) ? .applied : .subjectGone
        }
    }

    /// Writes a job's outcome onto its subject; false when the subject is gone.
    @discardableResult
    static func apply(_ outcome: JobOutcome, kind: JobKind, subject: String, at: Date, _ c: PostgresConnection, _ logger: Logger) async throws -> Bool {
        let atMs = ms(at)
        switch (kind, outcome) {
        case (.backup, .backupCompleted(let object)):
            guard try await c.exists("SELECT 1 FROM backups WHERE id = \(subject) FOR UPDATE", logger) else { return false }
            // The backup now holds its manifest; without one there is nothing to complete. Shared
            // GC lock: GC cannot drop the layer between this reference and its commit.
            try await lockAgainstGC(c, logger)
            guard try await !c.rows("UPDATE layers SET refs = refs + 1 WHERE id = \(object.key) RETURNING 1 AS held", logger).isEmpty else {
                return try await apply(
                    .failed(ErrorInfo(code: "backup_data_missing", message: "the backup's manifest was removed before it completed")),
                    kind: kind, subject: subject, at: at, c, logger)
            }
            try await c.run(
                """
                UPDATE backups SET status = 'completed', completed_at = \(atMs), object_key = \(object.key), size_bytes = \(object.sizeBytes),
                    checksum = \(object.checksum), stored_bytes = \(object.storedBytes), table_counts = \(object.tableCounts?.json),
                    error_code = NULL, error_message = NULL
                WHERE id = \(subject)
                """, logger)
            try await backupEvent(.backupCompleted, subject, at: at, c, logger)
            return true
        case (.backup, .failed(let error)):
            guard try await !c.rows(
                """
                UPDATE backups SET status = 'failed', completed_at = \(atMs), error_code = \(error.code), error_message = \(error.message)
                WHERE id = \(subject) RETURNING 1 AS updated
                """, logger).isEmpty
            else { return false }
            try await backupEvent(.backupFailed, subject, at: at, c, logger)
            return true
        case (.restore, .restoreCompleted):
            guard let target = try await c.one(
                "UPDATE restores SET status = 'completed', completed_at = \(atMs) WHERE id = \(subject) RETURNING target_database_id", logger)?.text("target_database_id")
            else { return false }
            try await c.run("UPDATE databases SET status = 'available' WHERE id = \(target)", logger)
            try await restoreEvent(.restoreCompleted, subject, at: at, c, logger)
            return true
        case (.restore, .failed(let error)):
            guard let target = try await c.one(
                """
                UPDATE restores SET status = 'failed', completed_at = \(atMs), error_code = \(error.code), error_message = \(error.message)
                WHERE id = \(subject) RETURNING target_database_id
                """, logger)?.text("target_database_id")
            else { return false }
            try await c.run("UPDATE databases SET status = 'failed', error_code = \(error.code), error_message = \(error.message) WHERE id = \(target)", logger)
            try await restoreEvent(.restoreFailed, subject, at: at, c, logger)
            return true
        case (.verify, .verified(let integrity)):
            return try await !c.rows(
                "UPDATE backups SET integrity = \(integrity.rawValue), verified_at = \(atMs) WHERE id = \(subject) RETURNING 1 AS updated", logger).isEmpty
        case (.verify, .failed):
            // Verification could not run; what was known of the backup stays as it was.
            return try await c.exists("SELECT 1 FROM backups WHERE id = \(subject)", logger)
        case (.drill, .drilled(let result)):
            return try await applyDrill(result, backupID: subject, c, logger)
        case (.drill, .failed(let error)):
            // The drill could not finish (its worker kept dying): the backup is not proven restorable.
            return try await applyDrill(DrillResult(at: at, result: .failed, durationMs: 0, error: error), backupID: subject, c, logger)
        case (.backup, .restoreCompleted), (.backup, .verified), (.restore, .backupCompleted), (.restore, .verified),
             (.verify, .backupCompleted), (.verify, .restoreCompleted), (.drill, .backupCompleted), (.drill, .restoreCompleted),
             (.drill, .verified), (.backup, .drilled), (.restore, .drilled), (.verify, .drilled):
            preconditionFailure("outcome \(outcome) does not fit a \(kind) job")
        }
    }

    static func backupEvent(_ event: WebhookEvent, _ id: String, at: Date, _ c: PostgresConnection, _ logger: Logger) async throws {
        guard let backup = try await c.one("SELECT * FROM backups WHERE id = \(id)", logger).map(CatalogRows.backup) else { return }
        try await enqueueEvent(event, accountID: backup.accountID, at: at, data: WebhookPayload.backup(backup), c, logger)
    }

    static func restoreEvent(_ event: WebhookEvent, _ id: String, at: Date, _ c: PostgresConnection, _ logger: Logger) async throws {
        guard let restore = try await c.one("SELECT * FROM restores WHERE id = \(id)", logger).map(CatalogRows.restore) else { return }
        try await enqueueEvent(event, accountID: restore.accountID, at: at, data: WebhookPayload.restore(restore), c, logger)
    }

    public func releaseJob(_ job: ClaimedJob) async throws {
        try await transaction { c in
            try await c.run(
                """
                UPDATE jobs SET status = 'pending', attempts = attempts - 1, lease_token = NULL, lease_expires_at = NULL
                WHERE id = \(job.id) AND lease_token = \(job.leaseToken)
                """, logger)
        }
    }

    public func recordProgress(_ job: ClaimedJob, done: Int64, total: Int64?, at: Date) async throws {
        let lease: PostgresQuery = "SELECT 1 FROM jobs WHERE id = \(job.id) AND lease_token = \(job.leaseToken) AND status = 'running'"
        try await transaction { c in
            guard try await c.exists(lease, logger) else { return }
            switch job.kind {
            case .backup:
                try await c.run(
                    """
                    UPDATE backups SET progress_done = \(done), progress_total = \(total), progress_started_at = COALESCE(progress_started_at, \(ms(at)))
                    WHERE id = \(job.subjectID) AND status = 'in_progress'
                    """, logger)
            case .restore:
                try await c.run(
                    """
                    UPDATE restores SET progress_done = \(done), progress_total = \(total), progress_started_at = COALESCE(progress_started_at, \(ms(at)))
                    WHERE id = \(job.subjectID) AND status = 'in_progress'
                    """, logger)
            case .verify, .drill:
                return
            }
        }
    }

    public func oldestPendingJob() async throws -> Date? {
        try await reading { c in
            try await c.one("SELECT MIN(created_at) AS oldest FROM jobs WHERE status = 'pending'", logger)?.optionalDate("oldest")
        }
    }

    public func databasesWithoutBackup(since cutoff: Date) async throws -> Int {
        try await reading { c in
            try await c.one(
                """
                SELECT COUNT(*) AS n FROM databases d
                WHERE d.status = 'available' AND d.created_at < \(ms(cutoff))
                  AND NOT EXISTS (SELECT 1 FROM backups b WHERE b.database_id = d.id AND b.status = 'completed' AND b.completed_at >= \(ms(cutoff)))
                """, logger)?.int("n") ?? 0
        }
    }

    /// On a connection of its own with a short connect timeout, not through the pool: while the
    /// server is down the pool's requests wait for it to come back, and readiness must not.
    public func probe() async throws {
        try await Self.onOwnConnection(endpoint, connectTimeout: .seconds(2), logger: logger) { connection in
            try await connection.run("SELECT 1", logger)
        }
    }

    public func jobCounts() async throws -> (pending: Int, running: Int) {
        try await reading { c in
            let row = try await c.one(
                "SELECT COUNT(*) FILTER (WHERE status = 'pending') AS pending, COUNT(*) FILTER (WHERE status = 'running') AS running FROM jobs", logger)
            return (row?.int("pending") ?? 0, row?.int("running") ?? 0)
        }
    }
}

/// A PostgreSQL result row read by column name.
/// The access check's query, prepared.
struct AccessCheckStatement: PostgresPreparedStatement {
    static let sql = CatalogRows.accessCheckSQL
    static let bindingDataTypes: [PostgresDataType] = [.text, .text]
    typealias Row = PostgresRow

    var tokenID: String
    var databaseID: String?

    func makeBindings() throws -> PostgresBindings {
        var bindings = PostgresBindings(capacity: 2)
        bindings.append(tokenID)
        bindings.append(databaseID)
        return bindings
    }

    func decodeRow(_ row: PostgresRow) throws -> PostgresRow { row }
}

struct PostgresCatalogRow: CatalogRow {
    let row: PostgresRandomAccessRow

    func text(_ column: String) -> String? { row.contains(column) ? try? row[column].decode(String?.self) : nil }
    func integer(_ column: String) -> Int64? { row.contains(column) ? try? row[column].decode(Int64?.self) : nil }
    func bytes(_ column: String) -> [UInt8]? {
        guard row.contains(column), let buffer = try? row[column].decode(ByteBuffer?.self) else { return nil }
        return Array(buffer.readableBytesView)
    }
}

extension PostgresConnection {
    /// Runs a statement, discarding any rows.
    func run(_ query: PostgresQuery, _ logger: Logger) async throws {
        _ = try await self.query(query, logger: logger).collect()
    }

    func rows(_ query: PostgresQuery, _ logger: Logger) async throws -> [PostgresCatalogRow] {
        try await self.query(query, logger: logger).collect().map { PostgresCatalogRow(row: $0.makeRandomAccess()) }
    }

    func one(_ query: PostgresQuery, _ logger: Logger) async throws -> PostgresCatalogRow? {
        try await rows(query, logger).first
    }

    func exists(_ query: PostgresQuery, _ logger: Logger) async throws -> Bool {
        try await one(query, logger) != nil
    }
}
