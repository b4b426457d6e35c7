import CloudheedDomain
import CloudheedEngines
import CloudheedRuntime
import CloudheedStorage
import Foundation
import GRDB
import Logging

func utc(_ text: String) -> Date {
    let formatter = ISO8601DateFormatter()
    formatter.timeZone = TimeZone(identifier: "UTC")
    return formatter.date(from: text)!
}

/// The runtime over a real SQLite catalog, file repository and SQLite engine in a temporary
/// directory, with a clock the test moves.
struct RuntimeFixture: Sendable {
    let directory = NSTemporaryDirectory() + "cloudheed-runtime-\(UUID().uuidString)"
    let clock: ManualWallClock
    let service: BackupService
    let scheduler: Scheduler
    let runner: JobRunner
    let collector: GarbageCollector
    let logger: Logger

    init(start: Date, settings: RuntimeSettings = RuntimeSettings(workers: 1, leaseDuration: .seconds(60)), grace: TimeInterval = 3600) throws {
        clock = ManualWallClock(start)
        var logger = Logger(label: "runtime-test")
        logger.logLevel = .warning
        self.logger = logger
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let catalog = try SQLiteCatalog(path: directory + "/catalog.sqlite3", garbageGrace: grace)
        let ids = SecureIDGenerator()
        service = BackupService(
            catalog: catalog,
            repository: try DedupRepository.local(
                root: directory + "/repository", catalog: catalog, masterKey: MasterKey.generate().0, clock: clock, ids: ids, grace: grace),
            engines: EngineRegistry([try SQLiteEngine(databasesDirectory: directory + "/databases", scratchDirectory: directory + "/tmp")]),
            clock: clock, ids: ids, signal: WorkSignal(), settings: settings)
        scheduler = Scheduler(service: service, logger: logger)
        runner = JobRunner(service: service, logger: logger)
        collector = GarbageCollector(service: service, logger: logger)
    }

    func cleanup() { try? FileManager.default.removeItem(atPath: directory) }

    func account() async throws -> Account {
        try await service.createAccount(name: "acme", storageQuotaBytes: nil).0
    }

    func database(_ account: Account, window: String, tier: Tier = .micro, rows: Int = 10) async throws -> ManagedDatabase {
        let (database, _) = try await service.createDatabase(
            accountID: account.id, name: "db-\(UUID().uuidString.prefix(8).lowercased())", tier: tier, engine: .sqlite,
            backupWindow: try BackupWindow.parse(window))
        let queue = try DatabaseQueue(path: database.location)
        try await queue.write { db in
            try db.execute(sql: "CREATE TABLE items (id INTEGER PRIMARY KEY, body TEXT)")
            for i in 0..<rows { try db.execute(sql: "INSERT INTO items (body) VALUES (?)", arguments: ["row \(i)"]) }
        }
        try queue.close()
        return database
    }

    func automaticBackups(_ database: ManagedDatabase) async throws -> [Backup] {
        try await service.backups(accountID: database.accountID, databaseID: database.id, type: .automatic, status: nil)
    }

    func runJobs() async throws {
        while try await runner.runNextJob() {}
    }

    /// Objects under `<repository>/<kind>` (packs or manifests).
    func objects(_ kind: String) -> Set<String> {
        Set((try? FileManager.default.contentsOfDirectory(atPath: directory + "/repository/" + kind)) ?? [])
    }

    /// Moves the clock to `time` and runs one scheduler tick.
    @discardableResult
    func tick(at time: String) async throws -> Scheduler.TickReport {
        clock.set(utc(time))
        return try await scheduler.tick()
    }
}
