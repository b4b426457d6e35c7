import CloudheedDomain
import CloudheedEngines
import CloudheedStorage
import Foundation
import Logging

/// The operations behind the API. Handlers translate HTTP into these calls; the rules live here
/// and in the domain types, the atomic checks in the catalog.
public struct BackupService: Sendable {
    public let catalog: any Catalog
    public let repository: any BackupRepository
    public let engines: EngineRegistry
    public let clock: any WallClock
    public let ids: any IDGenerator
    public let signal: WorkSignal
    public let settings: RuntimeSettings
    let tokens: TokenIssuer

    public init(
        catalog: any Catalog, repository: any BackupRepository, engines: EngineRegistry, clock: any WallClock,
        ids: any IDGenerator, signal: WorkSignal, settings: RuntimeSettings
    ) {
        self.catalog = catalog
        self.repository = repository
        self.engines = engines
        self.clock = clock
        self.ids = ids
        self.signal = signal
        self.settings = settings
        self.tokens = TokenIssuer(ids: ids)
    }

    // MARK: Accounts

    public func createAccount(name: String, storageQuotaBytes: Int64?) async throws -> (Account, token: String) {
        try Account.validateName(name)
        let quota = storageQuotaBytes ?? settings.defaultQuotaBytes
        try Account.validateQuota(quota)
        let now = clock.now()
        let account = Account(id: ids.make(.account), name: name, storageQuotaBytes: quota, createdAt: now)
        let token = tokens.issue(accountID: account.id, at: now)
        try await catalog.createAccount(account, token: token.stored)
        return (account, token.plaintext)
    }

    public func issueToken(accountID: String) async throws -> String {
        let token = tokens.issue(accountID: accountID, at: clock.now())
        try await catalog.addToken(token.stored)
        return token.plaintext
    }

    /// The account a presented token belongs to, or nil for anything that is not a valid token.
    public func authenticate(token presented: String) async throws -> Account? {
        try await authenticate(token: presented, databaseID: nil)?.account
    }

    /// Authenticates the token and, in the same catalog read, looks up `databaseID`'s versions
    /// (nil in the answer when the database is not the account's).
    public func authenticate(token presented: String, databaseID: String?) async throws -> AccessCheck? {
        guard let (id, secret) = TokenIssuer.parse(presented),
              let check = try await catalog.accessCheck(tokenID: String(id), databaseID: databaseID),
              constantTimeEqual(TokenIssuer.hash(String(secret)), check.token.secretHash)
        else { return nil }
        return check
    }

    /// Deletes the account and everything it owns; its stored data becomes unreadable at once
    /// (its data key is destroyed) and is garbage-collected.
    public func deleteAccount(id: String, logger: Logger) async throws {
        let databases = try await catalog.deleteAccount(id: id, at: clock.now())
        repository.forgetKeys(accountID: id)
        for database in databases {
            try? await engines.engine(database.engine).drop(at: database.location)
        }
        logger.info("account deleted", metadata: ["account.id": "\(id)", "databases": "\(databases.count)"])
    }

    public func storageUsed(accountID: String) async throws -> Int64 {
        try await catalog.storageUsedBytes(accountID: accountID)
    }

    // MARK: Databases

    /// The new database, and the URI applications connect with, password included where the
    /// engine has one: it is shown this once and stored nowhere.
    public func createDatabase(
        accountID: String, name: String, tier: Tier, engine kind: EngineKind, backupWindow: BackupWindow?, restoreDrills: RestoreDrills = .weekly
    ) async throws -> (database: ManagedDatabase, connectionURI: String) {
        try DatabaseName.validate(name)
        let engine = try engines.engine(kind)
        if try await catalog.databaseNameInUse(accountID: accountID, name: name) { throw DomainError.databaseNameTaken(name) }
        let id = ids.make(.database)
        let now = clock.now()
        let window = backupWindow ?? BackupWindow.defaultWindow(forDatabaseID: id)
        let location = engine.location(forDatabaseID: id)
        let database = ManagedDatabase(
            id: id, accountID: accountID, name: name, tier: tier, engine: kind, status: .available, backupWindow: window,
            location: location, createdAt: now, nextBackupAt: window.firstDueStart(createdAt: now), restoreDrills: restoreDrills,
            nextDrillAt: restoreDrills.firstDrill(firstBackupAt: window.firstDueStart(createdAt: now)))
        let password = try await engine.create(at: location)
        do {
            try await catalog.insertDatabase(database)
        } catch {
            // A concurrent create took the name: leave nothing behind.
            try? await engine.drop(at: location)
            throw error
        }
        return (database, engine.connectionURI(location: location, password: password))
    }

    public func databases(accountID: String, includeDeleted: Bool) async throws -> [ManagedDatabase] {
        try await catalog.databases(accountID: accountID, includeDeleted: includeDeleted)
    }

    public func database(accountID: String, id: String) async throws -> ManagedDatabase {
        guard let database = try await catalog.database(id: id, accountID: accountID) else { throw DomainError.databaseNotFound }
        return database
    }

    public func updateDatabase(accountID: String, id: String, tier: Tier?, backupWindow: BackupWindow?, restoreDrills: RestoreDrills? = nil) async throws -> ManagedDatabase {
        var changes = DatabaseChanges(tier: tier, backupWindow: backupWindow)
        if let restoreDrills {
            // Turned on or changed: the first drill under the new setting runs at the next tick.
            changes.restoreDrills = restoreDrills
            changes.nextDrillAt = restoreDrills.period == nil ? nil : clock.now()
        }
        if let backupWindow {
            // The new window takes effect from now: its open occurrence, or the next one. The
            // catalog's one-per-day rule keeps a day that already has its backup from getting two.
            changes.nextBackupAt = backupWindow.firstDueStart(createdAt: clock.now())
        }
        return try await catalog.updateDatabase(id: id, accountID: accountID, changes: changes)
    }

    public func deleteDatabase(accountID: String, id: String) async throws {
        let database = try await self.database(accountID: accountID, id: id)
        // Its automatic backups' data is released in the same transaction; GC removes it.
        _ = try await catalog.markDatabaseDeleted(id: id, accountID: accountID, at: clock.now())
        try? await engines.engine(database.engine).drop(at: database.location)
    }

    public func connectionURI(for database: ManagedDatabase) -> String? {
        try? engines.engine(database.engine).connectionURI(location: database.location)
    }

    // MARK: Backups

    public func createManualBackup(accountID: String, databaseID: String, name: String?) async throws -> Backup {
        if let name { try BackupName.validate(name) }
        let database = try await self.database(accountID: accountID, id: databaseID)
        let now = clock.now()
        let backup = Backup(
            id: ids.make(.backup), accountID: accountID, databaseID: databaseID, name: name ?? BackupName.manualDefault(at: now),
            type: .manual, status: .pending, engine: database.engine, createdAt: now, expiresAt: nil)
        try await catalog.enqueueManualBackup(backup, jobID: ids.make(.job), now: now)
        signal.notify()
        return backup
    }

    public func backups(accountID: String, databaseID: String, type: BackupType?, status: BackupStatus?) async throws -> [Backup] {
        _ = try await database(accountID: accountID, id: databaseID)
        return try await catalog.backups(databaseID: databaseID, accountID: accountID, type: type, status: status)
    }

    public func backup(accountID: String, databaseID: String, backupID: String) async throws -> Backup {
        guard let backup = try await catalog.backup(id: backupID, databaseID: databaseID, accountID: accountID) else {
            // Tell a missing database apart from a missing backup, both as 404.
            _ = try await database(accountID: accountID, id: databaseID)
            throw DomainError.backupNotFound
        }
        return backup
    }

    public func deleteBackup(accountID: String, databaseID: String, backupID: String) async throws {
        _ = try await backup(accountID: accountID, databaseID: databaseID, backupID: backupID)
        // Releasing its data is part of the same transaction; GC removes what nothing else uses.
        _ = try await catalog.deleteManualBackup(id: backupID, databaseID: databaseID, accountID: accountID, at: clock.now())
    }

    /// Enqueues a verification of a completed backup (idempotent while one is pending).
    public func verifyBackup(accountID: String, databaseID: String, backupID: String) async throws -> Backup {
        let backup = try await backup(accountID: accountID, databaseID: databaseID, backupID: backupID)
        guard backup.status == .completed else {
            throw DomainError(.conflict, code: "backup_not_verifiable", message: "only a completed backup can be verified; this one is \(backup.status.rawValue)")
        }
        if try await catalog.enqueueVerification(backupID: backupID, jobID: ids.make(.job), now: clock.now()) { signal.notify() }
        return backup
    }

    /// What deleting each completed backup would free now, by backup id (others are absent).
    public func uniqueBytes(of backups: [Backup]) async throws -> [String: Int64] {
        let completed = backups.filter { $0.status == .completed && $0.object != nil }
        let bytes = try await repository.uniqueBytes(completed.compactMap(\.object))
        return Dictionary(uniqueKeysWithValues: completed.map { ($0.id, bytes[$0.object!.key] ?? 0) })
    }

    // MARK: Restores

    /// Queues a restore into a new database; the URI shows the new owner's password where the
    /// engine has one (this once).
    public func restore(accountID: String, databaseID: String, backupID: String, targetName: String?) async throws -> (Restore, ManagedDatabase, connectionURI: String) {
        let source = try await database(accountID: accountID, id: databaseID)
        let backup = try await backup(accountID: accountID, databaseID: databaseID, backupID: backupID)
        try backup.checkRestorable()
        let now = clock.now()
        let name = targetName ?? DatabaseName.restoreDefault(sourceName: source.name, at: now)
        try DatabaseName.validate(name, field: "target_database_name")
        let engine = try engines.engine(backup.engine)
        let targetID = ids.make(.database)
        let window = BackupWindow.defaultWindow(forDatabaseID: targetID)
        let target = ManagedDatabase(
            id: targetID, accountID: accountID, name: name, tier: source.tier, engine: backup.engine, status: .restoring,
            backupWindow: window, location: engine.location(forDatabaseID: targetID), createdAt: now,
            nextBackupAt: window.firstDueStart(createdAt: now), restoreDrills: source.restoreDrills,
            nextDrillAt: source.restoreDrills.firstDrill(firstBackupAt: window.firstDueStart(createdAt: now)))
        let restore = Restore(
            id: ids.make(.restore), accountID: accountID, backupID: backupID, sourceDatabaseID: databaseID,
            targetDatabaseID: targetID, status: .pending, createdAt: now)
        let password = try await engine.prepareRestore(at: target.location)
        do {
            try await catalog.enqueueRestore(restore, target: target, jobID: ids.make(.job), now: now)
        } catch {
            try? await engine.drop(at: target.location)
            throw error
        }
        signal.notify()
        return (restore, target, engine.connectionURI(location: target.location, password: password))
    }

    public func restore(accountID: String, id: String) async throws -> Restore {
        guard let restore = try await catalog.restore(id: id, accountID: accountID) else { throw DomainError.restoreNotFound }
        return restore
    }
}
