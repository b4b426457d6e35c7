import CloudheedDomain
import CloudheedStorage
import Foundation
import Logging
import CloudheedTestSupport
import Testing

/// A catalog implementation under test, run for as long as a test needs it and then removed.
/// The same contract runs against every implementation.
struct CatalogFactory: Sendable, CustomTestStringConvertible {
    let name: String
    let with: @Sendable (_ body: (any Catalog & RepositoryIndex) async throws -> Void) async throws -> Void
    var testDescription: String { name }

    static let sqlite = CatalogFactory(name: "SQLite") { body in
        let directory = NSTemporaryDirectory() + "cloudheed-catalog-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try await body(try SQLiteCatalog(path: directory + "/catalog.sqlite3"))
    }

    /// A database of its own on the suite's PostgreSQL server (`.postgresServer`), owned by the
    /// service's unprivileged role, dropped afterwards.
    static let postgres = CatalogFactory(name: "PostgreSQL") { body in
        guard let server = TestPostgres.current else { throw TestPostgresError(message: "the suite needs the .postgresServer trait") }
        let name = "catalog_\(UUID().uuidString.prefix(8).lowercased())"
        try await server.superuser("CREATE DATABASE \(name) OWNER cloudheed_admin")
        let endpoint = PostgresCatalog.Endpoint(host: "127.0.0.1", port: server.port, username: "cloudheed_admin", password: TestPostgres.adminPassword, database: name)
        do {
            try await PostgresCatalog.run(endpoint, maximumConnections: 4, logger: Logger(label: "test.catalog")) { catalog in try await body(catalog) }
        } catch {
            _ = try? await server.superuser("DROP DATABASE \(name) WITH (FORCE)")
            throw error
        }
        try await server.superuser("DROP DATABASE \(name) WITH (FORCE)")
    }

    static let all: [CatalogFactory] = [.sqlite, .postgres]
}

let t0 = Date(timeIntervalSince1970: 1_773_716_400)  // 2026-03-17T03:00:00Z
let day: TimeInterval = 86_400

/// Builds valid rows for the contract tests.
struct Fixture {
    let catalog: any Catalog & RepositoryIndex
    var counter = 0

    mutating func next(_ prefix: String) -> String {
        counter += 1
        return "\(prefix)-\(counter)"
    }

    mutating func account(quota: Int64 = 1_000_000) async throws -> Account {
        let account = Account(id: next("acct"), name: "acme", storageQuotaBytes: quota, createdAt: t0)
        try await catalog.createAccount(account, token: StoredToken(id: next("tok"), accountID: account.id, secretHash: [1, 2, 3], createdAt: t0))
        return account
    }

    mutating func database(_ account: Account, name: String? = nil, tier: Tier = .micro, status: DatabaseStatus = .available) async throws -> ManagedDatabase {
        let id = next("db")
        let database = ManagedDatabase(
            id: id, accountID: account.id, name: name ?? id, tier: tier, engine: .sqlite, status: status,
            backupWindow: try BackupWindow.parse("03:00-04:00"), location: "/tmp/\(id)", createdAt: t0, nextBackupAt: t0)
        try await catalog.insertDatabase(database)
        return database
    }

    mutating func manualBackup(_ database: ManagedDatabase, at: Date = t0) async throws -> Backup {
        let backup = Backup(
            id: next("backup"), accountID: database.accountID, databaseID: database.id, name: "m", type: .manual,
            status: .pending, engine: .sqlite, createdAt: at, expiresAt: nil)
        try await catalog.enqueueManualBackup(backup, jobID: next("job"), now: at)
        return backup
    }

    mutating func automaticBackup(_ database: ManagedDatabase, day dayName: String, at: Date = t0) async throws -> (Backup, Bool) {
        let backup = Backup(
            id: next("backup"), accountID: database.accountID, databaseID: database.id, name: "automatic-\(dayName)",
            type: .automatic, status: .pending, engine: .sqlite, createdAt: at,
            expiresAt: at.addingTimeInterval(database.tier.retention.seconds), scheduledDay: dayName)
        let current = try #require(try await catalog.database(id: database.id))
        let inserted = try await catalog.enqueueAutomaticBackup(backup, jobID: next("job"), nextBackupAt: at.addingTimeInterval(day), now: at, basedOn: current)
        return (backup, inserted)
    }

    /// A manifest layer as the repository would record it, with no chunks.
    mutating func layer(accountID: String, size: Int64 = 100, at: Date = t0) async throws -> StoredObject {
        let id = next("mf")
        try await catalog.insertLayer(
            LayerRecord(id: id, accountID: accountID, parentID: nil, depth: 0, kind: .pagesFull, pageSize: 4096, entryCount: 0,
                        logicalSize: size, storedBytes: size, objectChecksum: "00", createdAt: at),
            chunkIDs: [])
        return StoredObject(key: id, sizeBytes: size, checksum: "00", storedBytes: size)
    }

    /// Claims the next job and completes it with an object of `size` bytes.
    mutating func completeNextJob(size: Int64 = 100, at: Date = t0) async throws -> ClaimedJob {
        let job = try #require(try await catalog.claimJob(leaseToken: next("lease"), now: at, leaseDuration: .seconds(60), maxAttempts: 3))
        var outcome = JobOutcome.restoreCompleted
        if job.kind == .backup, let backup = try await catalog.backup(id: job.subjectID) {
            outcome = .backupCompleted(try await layer(accountID: backup.accountID, size: size, at: at))
        }
        #expect(try await catalog.finishJob(job, outcome: outcome, at: at) == .applied)
        return job
    }
}

/// Runs `body` with a fixture on a fresh catalog of `factory`'s kind.
func withCatalog(_ factory: CatalogFactory, _ body: (inout Fixture) async throws -> Void) async throws {
    try await factory.with { catalog in
        var fixture = Fixture(catalog: catalog)
        try await body(&fixture)
    }
}

@Suite("Catalog contract", .postgresServer)
struct CatalogContractTests {

    @Test("Accounts and tokens round-trip; tokens of unknown accounts are refused", arguments: CatalogFactory.all)
    func accounts(_ factory: CatalogFactory) async throws {
        try await withCatalog(factory) { f in
            let account = try await f.account(quota: 42)
            #expect(try await f.catalog.account(id: account.id) == account)
            #expect(try await f.catalog.account(id: "acct-missing") == nil)
            let token = StoredToken(id: "tok-extra", accountID: account.id, secretHash: Array(repeating: 9, count: 32), createdAt: t0)
            try await f.catalog.addToken(token)
            #expect(try await f.catalog.accessCheck(tokenID: "tok-extra", databaseID: nil)?.token == token)
            await #expect(throws: DomainError.accountNotFound) {
                try await f.catalog.addToken(StoredToken(id: "tok-orphan", accountID: "acct-missing", secretHash: [1], createdAt: t0))
            }
            #expect(try await f.catalog.accessCheck(tokenID: "tok-orphan", databaseID: nil) == nil)
        }
    }

    @Test("The access check reads token, account and the database's version at once; every change to what the database's backup list shows raises it, and nothing else does", arguments: CatalogFactory.all)
    func accessCheck(_ factory: CatalogFactory) async throws {
        try await withCatalog(factory) { f in
            let account = try await f.account()
            let tokenID = "tok-\(f.counter)"  // the fixture's last id is the account's token
            let other = try await f.account()
            let otherTokenID = "tok-\(f.counter)"
            let shop = try await f.database(account)
            let blog = try await f.database(account)
            let foreign = try await f.database(other)
            func version(_ database: ManagedDatabase) async throws -> Int64 {
                try #require(try await f.catalog.accessCheck(tokenID: tokenID, databaseID: database.id)?.databaseVersion)
            }

            let plain = try #require(try await f.catalog.accessCheck(tokenID: tokenID, databaseID: nil))
            #expect(plain.account == account && plain.token.accountID == account.id && plain.token.secretHash == [1, 2, 3])
            #expect(plain.databaseVersion == nil)
            #expect(try await f.catalog.accessCheck(tokenID: "tok-missing", databaseID: shop.id) == nil)
            // Another account's database reads as no database, exactly like a missing one.
            #expect(try await f.catalog.accessCheck(tokenID: tokenID, databaseID: foreign.id)?.databaseVersion == nil)
            #expect(try await f.catalog.accessCheck(tokenID: tokenID, databaseID: "db-missing")?.databaseVersion == nil)
            #expect(try await f.catalog.accessCheck(tokenID: otherTokenID, databaseID: foreign.id)?.account == other)

            // Insert, every update a job makes (claim, completion), verification, deletion: each is seen.
            let start = try await version(shop)
            let blogStart = try await version(blog)
            _ = try await f.manualBackup(shop)
            let queued = try await version(shop)
            #expect(queued > start)
            _ = try await f.completeNextJob(size: 100)
            let completed = try await version(shop)
            #expect(completed > queued)
            let first = try #require(try await f.catalog.backups(databaseID: shop.id, accountID: account.id, type: nil, status: nil).first)
            try await f.catalog.recordVerification(backupID: first.id, integrity: .verified, at: t0)
            #expect(try await version(shop) > completed)
            _ = try await f.catalog.deleteManualBackup(id: first.id, databaseID: shop.id, accountID: account.id, at: t0)
            #expect(try await version(blog) == blogStart)

            // What a backup alone holds (`unique_bytes`) moves with references elsewhere in the account.
            let chunk = ChunkID(bytes: [UInt8](repeating: 5, count: 32))
            try await f.catalog.insertPacks([(PackRecord(id: "pack-v", accountID: account.id, storedSize: 10, plainSize: 10, createdAt: t0),
                                              [ChunkLocation(id: chunk, packID: "pack-v", offset: 8, length: 2, storedLength: 2)])])
            func backupHolding(_ database: ManagedDatabase, parent: String? = nil, chunks: [ChunkID]? = nil) async throws -> Backup {
                let backup = try await f.manualBackup(database)
                let job = try #require(try await f.catalog.claimJob(leaseToken: f.next("lease"), now: t0, leaseDuration: .seconds(60), maxAttempts: 3))
                let layer = LayerRecord(id: f.next("mf"), accountID: account.id, parentID: parent, depth: parent == nil ? 0 : 1, kind: .pagesFull,
                                        pageSize: 4096, entryCount: 0, logicalSize: 2, storedBytes: 2, objectChecksum: "00", createdAt: t0)
                try await f.catalog.insertLayer(layer, chunkIDs: chunks ?? [chunk])
                let object = StoredObject(key: layer.id, sizeBytes: 2, checksum: "00", storedBytes: 2)
                #expect(try await f.catalog.finishJob(job, outcome: .backupCompleted(object), at: t0) == .applied)
                return try #require(try await f.catalog.backup(id: backup.id))
            }
            let alone = try await backupHolding(shop)
            let sole = try await version(shop)
            // blog's backup shares the chunk: shop's backup no longer holds it alone.
            let twin = try await backupHolding(blog)
            let shared = try await version(shop)
            #expect(shared > sole)
            // A third holder changes nothing for shop (the chunk was shared already) ...
            let third = try await backupHolding(blog)
            #expect(try await version(shop) == shared)
            _ = try await f.catalog.deleteManualBackup(id: third.id, databaseID: blog.id, accountID: account.id, at: t0)
            #expect(try await version(shop) == shared)
            // ... until the last other holder goes, and shop's backup holds it alone again.
            _ = try await f.catalog.deleteManualBackup(id: twin.id, databaseID: blog.id, accountID: account.id, at: t0)
            let aloneAgain = try await version(shop)
            #expect(aloneAgain > shared)
            // An incremental backup built on shop's backup (sharing no chunk with it) raises its
            // layer's reference count.
            let blogBefore = try await version(blog)
            _ = try await backupHolding(blog, parent: alone.object?.key, chunks: [])
            #expect(try await version(shop) > aloneAgain)
            #expect(try await version(blog) > blogBefore)
            // Another account's databases are untouched by all of it.
            #expect(try await f.catalog.accessCheck(tokenID: otherTokenID, databaseID: foreign.id)?.databaseVersion == 0)

            // A deleted database still answers (its list stays readable); a deleted account's tokens do not.
            let beforeDeletion = try await version(shop)
            _ = try await f.catalog.markDatabaseDeleted(id: blog.id, accountID: account.id, at: t0)
            #expect(try await f.catalog.accessCheck(tokenID: tokenID, databaseID: blog.id)?.databaseVersion != nil)
            #expect(try await version(shop) >= beforeDeletion)
            _ = try await f.catalog.deleteAccount(id: account.id, at: t0)
            #expect(try await f.catalog.accessCheck(tokenID: tokenID, databaseID: shop.id) == nil)
        }
    }

    @Test("Live names are unique per account; a deleted database frees its name", arguments: CatalogFactory.all)
    func names(_ factory: CatalogFactory) async throws {
        try await withCatalog(factory) { f in
            let a = try await f.account()
            let b = try await f.account()
            let shop = try await f.database(a, name: "shop")
            await #expect(throws: DomainError.databaseNameTaken("shop")) { _ = try await f.database(a, name: "shop") }
            _ = try await f.database(b, name: "shop")
            _ = try await f.catalog.markDatabaseDeleted(id: shop.id, accountID: a.id, at: t0)
            let again = try await f.database(a, name: "shop")
            #expect(try await f.catalog.databases(accountID: a.id, includeDeleted: false).map(\.id) == [again.id])
            #expect(try await f.catalog.databases(accountID: a.id, includeDeleted: true).count == 2)
            #expect(try await f.catalog.database(id: shop.id, accountID: a.id)?.status == .deleted)
        }
    }

    @Test("Rows of other accounts are invisible", arguments: CatalogFactory.all)
    func isolation(_ factory: CatalogFactory) async throws {
        try await withCatalog(factory) { f in
            let owner = try await f.account()
            let other = try await f.account()
            let database = try await f.database(owner)
            let backup = try await f.manualBackup(database)
            #expect(try await f.catalog.database(id: database.id, accountID: other.id) == nil)
            #expect(try await f.catalog.backups(databaseID: database.id, accountID: other.id, type: nil, status: nil).isEmpty)
            #expect(try await f.catalog.backup(id: backup.id, databaseID: database.id, accountID: other.id) == nil)
            await #expect(throws: DomainError.databaseNotFound) {
                _ = try await f.catalog.updateDatabase(id: database.id, accountID: other.id, changes: DatabaseChanges(tier: .free))
            }
            await #expect(throws: DomainError.databaseNotFound) { _ = try await f.catalog.markDatabaseDeleted(id: database.id, accountID: other.id, at: t0) }
            await #expect(throws: DomainError.backupNotFound) {
                _ = try await f.catalog.deleteManualBackup(id: backup.id, databaseID: database.id, accountID: other.id, at: t0)
            }
        }
    }

    @Test("One automatic backup per database and day; the due time moves on", arguments: CatalogFactory.all)
    func oneAutomaticPerDay(_ factory: CatalogFactory) async throws {
        try await withCatalog(factory) { f in
            let account = try await f.account()
            let database = try await f.database(account)
            #expect(try await f.catalog.dueDatabases(now: t0, limit: 10).map(\.id) == [database.id])
            #expect(try await f.automaticBackup(database, day: "2026-03-17").1)
            #expect(try await f.catalog.dueDatabases(now: t0, limit: 10).isEmpty)
            #expect(try await f.automaticBackup(database, day: "2026-03-17").1 == false)
            #expect(try await f.automaticBackup(database, day: "2026-03-18").1)
            #expect(try await f.catalog.backups(databaseID: database.id, accountID: account.id, type: .automatic, status: nil).count == 2)
            let restoring = try await f.database(account, status: .restoring)
            #expect(try await f.automaticBackup(restoring, day: "2026-03-17").1 == false)
        }
    }

    @Test("Completed manual backups count toward the quota; at the quota a new manual backup is refused", arguments: CatalogFactory.all)
    func quota(_ factory: CatalogFactory) async throws {
        try await withCatalog(factory) { f in
            let account = try await f.account(quota: 150)
            let database = try await f.database(account)
            _ = try await f.manualBackup(database)
            _ = try await f.completeNextJob(size: 100)
            _ = try await f.automaticBackup(database, day: "2026-03-17")
            _ = try await f.completeNextJob(size: 1000)
            #expect(try await f.catalog.storageUsedBytes(accountID: account.id) == 100)
            _ = try await f.manualBackup(database)
            _ = try await f.completeNextJob(size: 100)
            #expect(try await f.catalog.storageUsedBytes(accountID: account.id) == 200)
            await #expect(throws: DomainError.storageQuotaExceeded) { _ = try await f.manualBackup(database) }
            #expect(try await f.catalog.backups(databaseID: database.id, accountID: account.id, type: .manual, status: nil).count == 2)
        }
    }

    @Test("A job under a live lease is not claimed twice; after expiry it is taken over and the old worker is fenced off", arguments: CatalogFactory.all)
    func leases(_ factory: CatalogFactory) async throws {
        try await withCatalog(factory) { f in
            let account = try await f.account()
            let database = try await f.database(account)
            let backup = try await f.manualBackup(database)
            let first = try #require(try await f.catalog.claimJob(leaseToken: "lease-a", now: t0, leaseDuration: .seconds(60), maxAttempts: 3))
            #expect(first.subjectID == backup.id && first.attempt == 1)
            #expect(try await f.catalog.backup(id: backup.id)?.status == .inProgress)
            #expect(try await f.catalog.claimJob(leaseToken: "lease-b", now: t0.addingTimeInterval(59), leaseDuration: .seconds(60), maxAttempts: 3) == nil)
            #expect(try await f.catalog.renewLease(jobID: first.id, leaseToken: "lease-a", clock: ManualWallClock(t0.addingTimeInterval(30)), duration: .seconds(60)))
            #expect(try await f.catalog.claimJob(leaseToken: "lease-b", now: t0.addingTimeInterval(89), leaseDuration: .seconds(60), maxAttempts: 3) == nil)

            // The first worker dies; its lease runs out.
            let second = try #require(try await f.catalog.claimJob(leaseToken: "lease-b", now: t0.addingTimeInterval(91), leaseDuration: .seconds(60), maxAttempts: 3))
            #expect(second.id == first.id && second.attempt == 2)
            #expect(try await f.catalog.jobCounts() == (pending: 0, running: 1))
            #expect(try await f.catalog.renewLease(jobID: first.id, leaseToken: "lease-a", clock: ManualWallClock(t0.addingTimeInterval(100)), duration: .seconds(60)) == false)
            let stale = try await f.layer(accountID: account.id, size: 1)
            #expect(try await f.catalog.finishJob(first, outcome: .backupCompleted(stale), at: t0) == .leaseLost)
            let object = try await f.layer(accountID: account.id, size: 7)
            #expect(try await f.catalog.finishJob(second, outcome: .backupCompleted(object), at: t0.addingTimeInterval(100)) == .applied)
            let done = try #require(try await f.catalog.backup(id: backup.id))
            #expect(done.status == .completed && done.object == object && done.sizeBytes == 7)
            #expect(try await f.catalog.jobCounts() == (pending: 0, running: 0))
        }
    }

    @Test("A job whose worker keeps dying is failed after the last attempt, never left in progress", arguments: CatalogFactory.all)
    func attemptsExhausted(_ factory: CatalogFactory) async throws {
        try await withCatalog(factory) { f in
            let account = try await f.account()
            let database = try await f.database(account)
            let backup = try await f.manualBackup(database)
            var now = t0
            for attempt in 1...2 {
                let job = try #require(try await f.catalog.claimJob(leaseToken: "l\(attempt)", now: now, leaseDuration: .seconds(10), maxAttempts: 2))
                #expect(job.attempt == attempt)
                now = now.addingTimeInterval(11)
            }
            #expect(try await f.catalog.claimJob(leaseToken: "l3", now: now, leaseDuration: .seconds(10), maxAttempts: 2) == nil)
            let failed = try #require(try await f.catalog.backup(id: backup.id))
            #expect(failed.status == .failed)
            #expect(failed.error?.code == "worker_lost")
            #expect(try await f.catalog.jobCounts() == (pending: 0, running: 0))
        }
    }

    @Test("A released job is pending again without spending an attempt", arguments: CatalogFactory.all)
    func release(_ factory: CatalogFactory) async throws {
        try await withCatalog(factory) { f in
            let account = try await f.account()
            _ = try await f.manualBackup(try await f.database(account))
            let job = try #require(try await f.catalog.claimJob(leaseToken: "a", now: t0, leaseDuration: .seconds(60), maxAttempts: 3))
            try await f.catalog.releaseJob(job)
            #expect(try await f.catalog.jobCounts() == (pending: 1, running: 0))
            #expect(try await f.catalog.claimJob(leaseToken: "b", now: t0, leaseDuration: .seconds(60), maxAttempts: 3)?.attempt == 1)
        }
    }

    @Test("A tier change re-dates the expiry of existing automatic backups", arguments: CatalogFactory.all)
    func tierChange(_ factory: CatalogFactory) async throws {
        try await withCatalog(factory) { f in
            let account = try await f.account()
            let database = try await f.database(account, tier: .micro)
            let (backup, _) = try await f.automaticBackup(database, day: "2026-03-17")
            let manual = try await f.manualBackup(database)
            let updated = try await f.catalog.updateDatabase(id: database.id, accountID: account.id, changes: DatabaseChanges(tier: .large))
            #expect(updated.tier == .large)
            #expect(try await f.catalog.backup(id: backup.id)?.expiresAt == t0.addingTimeInterval(30 * day))
            #expect(try await f.catalog.backup(id: manual.id)?.expiresAt == nil)
            _ = try await f.catalog.updateDatabase(id: database.id, accountID: account.id, changes: DatabaseChanges(tier: .free))
            #expect(try await f.catalog.backup(id: backup.id)?.expiresAt == t0.addingTimeInterval(day))
        }
    }

    @Test("Expired automatic backups are listed and deleted, except while a restore reads them", arguments: CatalogFactory.all)
    func expiry(_ factory: CatalogFactory) async throws {
        try await withCatalog(factory) { f in
            let account = try await f.account()
            let database = try await f.database(account, tier: .free)
            let (kept, _) = try await f.automaticBackup(database, day: "2026-03-17")
            _ = try await f.completeNextJob()
            let (expiring, _) = try await f.automaticBackup(database, day: "2026-03-16", at: t0.addingTimeInterval(-day))
            _ = try await f.completeNextJob()
            #expect(try await f.catalog.expiredBackups(now: t0.addingTimeInterval(1), limit: 10).map(\.id) == [expiring.id])

            // A restore in flight pins it.
            let target = ManagedDatabase(
                id: "db-target", accountID: account.id, name: "target", tier: .free, engine: .sqlite, status: .restoring,
                backupWindow: database.backupWindow, location: "/tmp/t", createdAt: t0, nextBackupAt: t0)
            let restore = Restore(id: "restore-1", accountID: account.id, backupID: expiring.id, sourceDatabaseID: database.id,
                                  targetDatabaseID: target.id, status: .pending, createdAt: t0)
            try await f.catalog.enqueueRestore(restore, target: target, jobID: "job-restore", now: t0)
            #expect(try await f.catalog.expiredBackups(now: t0.addingTimeInterval(1), limit: 10).isEmpty)
            #expect(try await f.catalog.deleteExpiredBackup(id: expiring.id, now: t0.addingTimeInterval(1)) == nil)
            _ = try await f.completeNextJob()
            #expect(try await f.catalog.restore(id: restore.id)?.status == .completed)
            #expect(try await f.catalog.database(id: target.id)?.status == .available)

            #expect(try await f.catalog.deleteExpiredBackup(id: expiring.id, now: t0.addingTimeInterval(1))?.id == expiring.id)
            #expect(try await f.catalog.backup(id: expiring.id) == nil)
            #expect(try await f.catalog.backup(id: kept.id) != nil)
            #expect(try await f.catalog.expiredBackups(now: t0.addingTimeInterval(day + 1), limit: 10).map(\.id) == [kept.id])
        }
    }

    @Test("Deleting a database removes its automatic backups and their jobs, and keeps manual ones", arguments: CatalogFactory.all)
    func deleteDatabase(_ factory: CatalogFactory) async throws {
        try await withCatalog(factory) { f in
            let account = try await f.account()
            let database = try await f.database(account)
            let manual = try await f.manualBackup(database)
            _ = try await f.completeNextJob()
            let (automatic, _) = try await f.automaticBackup(database, day: "2026-03-17")
            let removed = try await f.catalog.markDatabaseDeleted(id: database.id, accountID: account.id, at: t0)
            #expect(removed.map(\.id) == [automatic.id])
            #expect(try await f.catalog.jobCounts() == (pending: 0, running: 0))
            #expect(try await f.catalog.backups(databaseID: database.id, accountID: account.id, type: nil, status: nil).map(\.id) == [manual.id])
            await #expect(throws: DomainError.databaseDeleted) { _ = try await f.manualBackup(database) }
            await #expect(throws: DomainError.databaseDeleted) { _ = try await f.catalog.markDatabaseDeleted(id: database.id, accountID: account.id, at: t0) }
        }
    }

    @Test("Manual backups are deletable once finished and while no restore reads them", arguments: CatalogFactory.all)
    func deleteManual(_ factory: CatalogFactory) async throws {
        try await withCatalog(factory) { f in
            let account = try await f.account()
            let database = try await f.database(account)
            let backup = try await f.manualBackup(database)
            await #expect(throws: DomainError.backupRunning) { _ = try await f.catalog.deleteManualBackup(id: backup.id, databaseID: database.id, accountID: account.id, at: t0) }
            _ = try await f.completeNextJob()
            let (automatic, _) = try await f.automaticBackup(database, day: "2026-03-17")
            _ = try await f.completeNextJob()
            await #expect(throws: DomainError.automaticBackupNotDeletable) {
                _ = try await f.catalog.deleteManualBackup(id: automatic.id, databaseID: database.id, accountID: account.id, at: t0)
            }
            let target = ManagedDatabase(
                id: "db-t", accountID: account.id, name: "t", tier: .free, engine: .sqlite, status: .restoring,
                backupWindow: database.backupWindow, location: "/tmp/t", createdAt: t0, nextBackupAt: t0)
            try await f.catalog.enqueueRestore(
                Restore(id: "restore-1", accountID: account.id, backupID: backup.id, sourceDatabaseID: database.id, targetDatabaseID: target.id, status: .pending, createdAt: t0),
                target: target, jobID: "job-r", now: t0)
            await #expect(throws: DomainError.self) { _ = try await f.catalog.deleteManualBackup(id: backup.id, databaseID: database.id, accountID: account.id, at: t0) }
            let job = try #require(try await f.catalog.claimJob(leaseToken: "r", now: t0, leaseDuration: .seconds(60), maxAttempts: 3))
            #expect(try await f.catalog.finishJob(job, outcome: .failed(ErrorInfo(code: "x", message: "y")), at: t0) == .applied)
            #expect(try await f.catalog.database(id: target.id)?.status == .failed)
            #expect(try await f.catalog.restore(id: "restore-1")?.error == ErrorInfo(code: "x", message: "y"))
            #expect(try await f.catalog.deleteManualBackup(id: backup.id, databaseID: database.id, accountID: account.id, at: t0).id == backup.id)
        }
    }

    @Test("A restore needs a completed backup and a free name; a refused restore creates nothing", arguments: CatalogFactory.all)
    func restoreChecks(_ factory: CatalogFactory) async throws {
        try await withCatalog(factory) { f in
            let account = try await f.account()
            let database = try await f.database(account, name: "shop")
            let backup = try await f.manualBackup(database)
            func attempt(name: String) async throws {
                let target = ManagedDatabase(
                    id: f.next("db"), accountID: account.id, name: name, tier: .free, engine: .sqlite, status: .restoring,
                    backupWindow: database.backupWindow, location: "/tmp/x", createdAt: t0, nextBackupAt: t0)
                try await f.catalog.enqueueRestore(
                    Restore(id: f.next("restore"), accountID: account.id, backupID: backup.id, sourceDatabaseID: database.id,
                            targetDatabaseID: target.id, status: .pending, createdAt: t0),
                    target: target, jobID: f.next("job"), now: t0)
            }
            await #expect(throws: DomainError.backupNotRestorable(.pending)) { try await attempt(name: "copy") }
            _ = try await f.completeNextJob()
            await #expect(throws: DomainError.databaseNameTaken("shop")) { try await attempt(name: "shop") }
            #expect(try await f.catalog.databases(accountID: account.id, includeDeleted: true).count == 1)
            try await attempt(name: "copy")
            #expect(try await f.catalog.databases(accountID: account.id, includeDeleted: true).count == 2)
        }
    }
}

@Suite("Catalog contract: races", .postgresServer)
struct CatalogRaceContractTests {
    @Test("An automatic backup planned from a database read before a PATCH is not recorded", arguments: CatalogFactory.all)
    func staleScheduling(_ factory: CatalogFactory) async throws {
        try await factory.with { catalog in
            var f = Fixture(catalog: catalog)
            let account = try await f.account()
            let database = try await f.database(account, tier: .large)
            let stale = try #require(try await catalog.database(id: database.id))
            _ = try await catalog.updateDatabase(id: database.id, accountID: account.id, changes: DatabaseChanges(tier: .free))
            let backup = Backup(id: "backup-stale", accountID: account.id, databaseID: database.id, name: "a", type: .automatic, status: .pending,
                                engine: .sqlite, createdAt: t0, expiresAt: t0.addingTimeInterval(30 * day), scheduledDay: "2026-03-17")
            #expect(try await catalog.enqueueAutomaticBackup(backup, jobID: "job-stale", nextBackupAt: t0.addingTimeInterval(day), now: t0, basedOn: stale) == false)
            #expect(try await catalog.backup(id: "backup-stale") == nil)
            #expect(try await catalog.database(id: database.id)?.nextBackupAt == stale.nextBackupAt)
        }
    }

    @Test("GC keeps unreferenced chunks stored since the oldest running backup started, whatever the cutoff", arguments: CatalogFactory.all)
    func runningBackupProtectsItsChunks(_ factory: CatalogFactory) async throws {
        try await factory.with { catalog in
            var f = Fixture(catalog: catalog)
            let account = try await f.account()
            _ = try await f.manualBackup(try await f.database(account))
            _ = try #require(try await catalog.claimJob(leaseToken: "l", now: t0, leaseDuration: .seconds(60), maxAttempts: 3))
            // Hours into the backup, a pack of its chunks is recorded but not referenced yet.
            let stored = t0.addingTimeInterval(7200)
            let id = ChunkID(bytes: [UInt8](repeating: 7, count: 32))
            try await catalog.insertPacks([(PackRecord(id: "pack1", accountID: account.id, storedSize: 10, plainSize: 10, createdAt: stored),
                                            [ChunkLocation(id: id, packID: "pack1", offset: 8, length: 2, storedLength: 2)])])
            #expect(try await catalog.deleteUnreferencedChunks(createdBefore: stored.addingTimeInterval(86_400)) == 0)
            #expect(try await catalog.existingChunks(accountID: account.id, ids: [id]) == [id])
        }
    }
}

@Suite("Catalog contract: deletion while restoring", .postgresServer)
struct CatalogDeletionContractTests {
    @Test("A database cannot be deleted while a restore reads one of its automatic backups", arguments: CatalogFactory.all)
    func deleteWhileRestoring(_ factory: CatalogFactory) async throws {
        try await factory.with { catalog in
            var f = Fixture(catalog: catalog)
            let account = try await f.account()
            let database = try await f.database(account)
            let (automatic, _) = try await f.automaticBackup(database, day: "2026-03-17")
            _ = try await f.completeNextJob()
            let target = ManagedDatabase(
                id: "db-t", accountID: account.id, name: "t", tier: .free, engine: .sqlite, status: .restoring,
                backupWindow: database.backupWindow, location: "/tmp/t", createdAt: t0, nextBackupAt: t0)
            try await catalog.enqueueRestore(
                Restore(id: "restore-1", accountID: account.id, backupID: automatic.id, sourceDatabaseID: database.id, targetDatabaseID: target.id, status: .pending, createdAt: t0),
                target: target, jobID: "job-r", now: t0)
            await #expect(throws: DomainError.self) { _ = try await catalog.markDatabaseDeleted(id: database.id, accountID: account.id, at: t0) }
            #expect(try await catalog.backup(id: automatic.id) != nil)
            _ = try await f.completeNextJob()
            #expect(try await catalog.markDatabaseDeleted(id: database.id, accountID: account.id, at: t0).map(\.id) == [automatic.id])
        }
    }
}

@Suite("Catalog contract: webhooks and drills", .postgresServer)
struct CatalogWebhookDrillContractTests {

    func webhook(_ id: String, _ account: Account, events: [WebhookEvent] = [.backupFailed, .drillFailed]) -> Webhook {
        Webhook(id: id, accountID: account.id, url: "https://hooks.example/\(id)", events: events, description: "d-\(id)", createdAt: t0)
    }

    @Test("Webhooks round-trip per account, up to the limit; other accounts see none", arguments: CatalogFactory.all)
    func webhooks(_ factory: CatalogFactory) async throws {
        try await withCatalog(factory) { f in
            let a = try await f.account()
            let b = try await f.account()
            let hook = webhook("wh-1", a)
            try await f.catalog.insertWebhook(hook, sealedSecret: [9, 8, 7])
            #expect(try await f.catalog.webhooks(accountID: a.id) == [hook])
            #expect(try await f.catalog.webhook(id: "wh-1", accountID: a.id) == hook)
            #expect(try await f.catalog.webhook(id: "wh-1", accountID: b.id) == nil)
            #expect(try await f.catalog.deleteWebhook(id: "wh-1", accountID: b.id) == false)
            for n in 2...Webhook.limitPerAccount { try await f.catalog.insertWebhook(webhook("wh-\(n)", a), sealedSecret: [1]) }
            await #expect(throws: DomainError.self) { try await f.catalog.insertWebhook(webhook("wh-over", a), sealedSecret: [1]) }
            #expect(try await f.catalog.deleteWebhook(id: "wh-1", accountID: a.id))
            #expect(try await f.catalog.webhooks(accountID: a.id).count == Webhook.limitPerAccount - 1)
        }
    }

    @Test("A failed backup queues one delivery per subscribed webhook; attempts, retry times and delivery are recorded", arguments: CatalogFactory.all)
    func deliveries(_ factory: CatalogFactory) async throws {
        try await withCatalog(factory) { f in
            let account = try await f.account()
            try await f.catalog.insertWebhook(webhook("wh-fail", account), sealedSecret: [4, 2])
            try await f.catalog.insertWebhook(webhook("wh-done", account, events: [.backupCompleted]), sealedSecret: [1])
            let backup = try await f.manualBackup(try await f.database(account))
            let job = try #require(try await f.catalog.claimJob(leaseToken: "l", now: t0, leaseDuration: .seconds(60), maxAttempts: 3))
            #expect(try await f.catalog.finishJob(job, outcome: .failed(ErrorInfo(code: "boom", message: "it broke")), at: t0) == .applied)

            let due = try await f.catalog.claimDeliveries(now: t0, lease: .seconds(30), limit: 10)
            #expect(due.map(\.webhookID) == ["wh-fail"])
            let delivery = try #require(due.first)
            #expect(delivery.event == .backupFailed && delivery.attempt == 1 && delivery.sealedSecret == [4, 2] && delivery.accountID == account.id)
            #expect(delivery.payload.contains(backup.id) && delivery.payload.contains("boom"))
            // Held by its sender: nobody else takes it meanwhile.
            #expect(try await f.catalog.claimDeliveries(now: t0, lease: .seconds(30), limit: 10).isEmpty)

            let retryAt = t0.addingTimeInterval(10)
            try await f.catalog.recordDeliveryAttempt(delivery, attempt: DeliveryAttempt(at: t0, statusCode: 500, error: nil, durationMs: 12), retryAt: retryAt)
            #expect(try await f.catalog.claimDeliveries(now: t0.addingTimeInterval(5), lease: .seconds(30), limit: 10).isEmpty)
            let again = try #require(try await f.catalog.claimDeliveries(now: retryAt, lease: .seconds(30), limit: 10).first)
            #expect(again.id == delivery.id && again.attempt == 2 && again.payload == delivery.payload)
            try await f.catalog.recordDeliveryAttempt(again, attempt: DeliveryAttempt(at: retryAt, statusCode: 204, error: nil, durationMs: 3), retryAt: nil)

            let listed = try await f.catalog.deliveries(webhookID: "wh-fail", accountID: account.id, limit: 10)
            #expect(listed.count == 1)
            #expect(listed.first?.status == .delivered && listed.first?.deliveredAt == retryAt)
            #expect(listed.first?.attempts.map(\.statusCode) == [500, 204])
            #expect(try await f.catalog.deliveries(webhookID: "wh-done", accountID: account.id, limit: 10).isEmpty)
            #expect(try await f.catalog.pruneDeliveries(before: t0) == 0)
            #expect(try await f.catalog.pruneDeliveries(before: retryAt.addingTimeInterval(1)) == 1)
        }
    }

    @Test("Drills: none without a completed backup, one queued per due database, a failed drill recorded on backup and database and alerted", arguments: CatalogFactory.all)
    func drills(_ factory: CatalogFactory) async throws {
        try await withCatalog(factory) { f in
            let account = try await f.account()
            try await f.catalog.insertWebhook(webhook("wh-drill", account, events: [.drillFailed]), sealedSecret: [1])
            let database = try await f.database(account)
            _ = try await f.catalog.updateDatabase(
                id: database.id, accountID: account.id, changes: DatabaseChanges(restoreDrills: .daily, nextDrillAt: t0))
            #expect(try await f.catalog.dueDrills(now: t0, limit: 10).map(\.id) == [database.id])
            // No completed backup yet: nothing queued, looked at again later.
            #expect(try await f.catalog.enqueueDrill(databaseID: database.id, jobID: "job-d0", now: t0, next: t0.addingTimeInterval(day), retryWithoutBackup: t0.addingTimeInterval(3600)) == nil)
            #expect(try await f.catalog.database(id: database.id)?.nextDrillAt == t0.addingTimeInterval(3600))

            let backup = try await f.manualBackup(database)
            _ = try await f.completeNextJob()
            let later = t0.addingTimeInterval(3600)
            #expect(try await f.catalog.enqueueDrill(databaseID: database.id, jobID: "job-d1", now: later, next: later.addingTimeInterval(day), retryWithoutBackup: later) == backup.id)
            // Not due any more: a second scheduler (another node) queues nothing.
            #expect(try await f.catalog.enqueueDrill(databaseID: database.id, jobID: "job-d2", now: later, next: later.addingTimeInterval(day), retryWithoutBackup: later) == nil)
            // Only the drill lane claims it.
            #expect(try await f.catalog.claimJob(leaseToken: "main", now: later, leaseDuration: .seconds(60), maxAttempts: 3, kinds: [.backup, .restore, .verify]) == nil)
            let job = try #require(try await f.catalog.claimJob(leaseToken: "drill", now: later, leaseDuration: .seconds(60), maxAttempts: 3, kinds: [.drill]))
            #expect(job.kind == .drill && job.subjectID == backup.id)
            let result = DrillResult(at: later, result: .failed, durationMs: 42, error: ErrorInfo(code: "row_count_mismatch", message: "t: 3 rows, 4 recorded"))
            #expect(try await f.catalog.finishJob(job, outcome: .drilled(result), at: later) == .applied)
            #expect(try await f.catalog.backup(id: backup.id)?.lastDrill == result)
            #expect(try await f.catalog.database(id: database.id)?.lastDrill == result)
            let alert = try #require(try await f.catalog.claimDeliveries(now: later, lease: .seconds(30), limit: 10).first)
            #expect(alert.event == .drillFailed && alert.payload.contains("row_count_mismatch"))
        }
    }
}
