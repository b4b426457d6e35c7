// Issue 6, benchmarks 2-4: the scheduler's tick over many databases, job claiming on the
// PostgreSQL catalog with several nodes, and backup/restore throughput to S3 vs local disk.
// Driven by bench/run_cluster.py, which starts PostgreSQL and moto_server on loopback.
import CloudheedDomain
import CloudheedEngines
import CloudheedRuntime
import CloudheedStorage
import Foundation
import Logging
import Synchronization

/// CPU seconds (user + system) this process has used so far, all threads.
func cpuSeconds() -> Double {
    var usage = rusage()
    getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
    return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
}

let benchLogger: Logger = {
    var logger = Logger(label: "bench")
    logger.logLevel = .error
    return logger
}()

/// The catalog named by `--catalog postgresql://…` (its pool running while `body` runs), else a
/// new SQLite catalog in `--data`.
func withBenchCatalog<T: Sendable>(data: String, _ body: (any Catalog & RepositoryIndex) async throws -> T) async throws -> T {
    if let url = option("catalog") {
        return try await PostgresCatalog.run(try PostgresCatalog.Endpoint(url: url), logger: benchLogger) { try await body($0) }
    }
    try? FileManager.default.removeItem(atPath: data)
    try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
    return try await body(try SQLiteCatalog(path: data + "/catalog.sqlite3"))
}

func benchAccount(_ catalog: any Catalog) async throws -> Account {
    let account = Account(id: "acct-bench-\(UUID().uuidString.prefix(8).lowercased())", name: "bench", storageQuotaBytes: 1 << 50, createdAt: Date())
    try await catalog.createAccount(account, token: StoredToken(id: "tok-\(account.id)", accountID: account.id, secretHash: [0], createdAt: Date()))
    return account
}

final class SharedCounter: Sendable {
    let value = Atomic<Int>(0)
}

final class SharedList: Sendable {
    let items = Mutex<[String]>([])
}

/// Runs `count` calls of `body` on `concurrency` tasks.
func concurrently(_ count: Int, concurrency: Int = 16, _ body: @escaping @Sendable (Int) async throws -> Void) async throws {
    let next = SharedCounter()
    try await withThrowingTaskGroup(of: Void.self) { group in
        for _ in 0..<concurrency {
            group.addTask {
                while true {
                    let n = next.value.add(1, ordering: .relaxed).oldValue
                    guard n < count else { return }
                    try await body(n)
                }
            }
        }
        try await group.waitForAll()
    }
}

/// Benchmark 2: `--databases` databases of which `--due` are due; one tick that schedules them,
/// then one tick with none due. CPU is this process's (the PostgreSQL server's is not counted).
func schedulerTickBench() async throws {
    guard let data = option("data") else { fail("scheduler-tick --data DIR [--catalog URL] [--databases N] [--due D]") }
    let total = option("databases").flatMap(Int.init) ?? 100_000
    let due = option("due").flatMap(Int.init) ?? 1000
    try await withBenchCatalog(data: data) { catalog in
        let account = try await benchAccount(catalog)
        let now = Date()
        let window = try BackupWindow.parse("03:00-04:00")
        let prefix = String(account.id.suffix(8))
        let filled = ContinuousClock.now
        try await concurrently(total) { n in
            try await catalog.insertDatabase(ManagedDatabase(
                id: "db-\(prefix)-\(n)", accountID: account.id, name: "d\(n)", tier: .small, engine: .sqlite, status: .available,
                backupWindow: window, location: "/nonexistent/\(n)", createdAt: now,
                nextBackupAt: n < due ? now.addingTimeInterval(-60) : now.addingTimeInterval(43_200), restoreDrills: .off))
        }
        let fillSeconds = (ContinuousClock.now - filled).seconds
        let root = data + "/service"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let repository = DedupRepository(
            index: catalog, blobs: try FileBlobStore(root: root + "/repository"), keyRing: KeyRing(master: MasterKey.generate().0, store: catalog),
            clock: SystemWallClock(), ids: SecureIDGenerator())
        let service = BackupService(
            catalog: catalog, repository: repository,
            engines: EngineRegistry([try SQLiteEngine(databasesDirectory: root + "/databases", scratchDirectory: root + "/tmp")]),
            clock: SystemWallClock(), ids: SecureIDGenerator(), signal: WorkSignal(), settings: RuntimeSettings())
        let scheduler = Scheduler(service: service, logger: benchLogger)
        func timed() async throws -> (report: Scheduler.TickReport, cpu: Double, wall: Double) {
            let (cpu0, wall0) = (cpuSeconds(), ContinuousClock.now)
            let report = try await scheduler.tick()
            return (report, cpuSeconds() - cpu0, (ContinuousClock.now - wall0).seconds)
        }
        let busy = try await timed()
        let idle = try await timed()
        print("{\"databases\": \(total), \"due\": \(due), \"fill_seconds\": \(fillSeconds), \"scheduled\": \(busy.report.backupsCreated), "
            + "\"tick_cpu_seconds\": \(busy.cpu), \"tick_wall_seconds\": \(busy.wall), \"idle_tick_cpu_seconds\": \(idle.cpu), \"idle_tick_wall_seconds\": \(idle.wall), "
            + "\"idle_scheduled\": \(idle.report.backupsCreated)}")
    }
}

/// Benchmark 3: `--jobs` pending backup jobs on the PostgreSQL catalog, claimed and finished by
/// `--nodes` catalogs (one pool each, as nodes have) with `--workers` loops each.
func claimsBench() async throws {
    guard let url = option("catalog") else { fail("claims --catalog postgresql://… [--jobs N] [--nodes 3] [--workers 8]") }
    let jobs = option("jobs").flatMap(Int.init) ?? 20_000
    let nodes = option("nodes").flatMap(Int.init) ?? 3
    let workers = option("workers").flatMap(Int.init) ?? 8
    let endpoint = try PostgresCatalog.Endpoint(url: url)
    var catalogs: [PostgresCatalog] = []
    for _ in 0..<nodes { catalogs.append(try await PostgresCatalog.open(endpoint, maximumConnections: workers + 2, logger: benchLogger)) }
    let all = catalogs
    try await withThrowingTaskGroup(of: Void.self) { pools in
        for catalog in all { pools.addTask { try await catalog.service.run() } }
        defer { pools.cancelAll() }
        let catalog = all[0]
        let account = try await benchAccount(catalog)
        let database = ManagedDatabase(
            id: "db-\(account.id)", accountID: account.id, name: "claims", tier: .small, engine: .sqlite, status: .available,
            backupWindow: try BackupWindow.parse("03:00-04:00"), location: "/nonexistent", createdAt: Date(), nextBackupAt: Date().addingTimeInterval(86_400),
            restoreDrills: .off)
        try await catalog.insertDatabase(database)
        let enqueued = ContinuousClock.now
        try await concurrently(jobs) { n in
            try await catalog.enqueueManualBackup(
                Backup(id: "backup-\(account.id)-\(n)", accountID: account.id, databaseID: database.id, name: "m\(n)", type: .manual, status: .pending,
                       engine: .sqlite, createdAt: Date(), expiresAt: nil),
                jobID: "job-\(account.id)-\(n)", now: Date())
        }
        let enqueueSeconds = (ContinuousClock.now - enqueued).seconds
        let claimed = SharedList()
        let started = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (node, catalog) in all.enumerated() {
                for worker in 0..<workers {
                    group.addTask {
                        var mine: [String] = []
                        while let job = try await catalog.claimJob(
                            leaseToken: "n\(node)w\(worker)-\(mine.count)", now: Date(), leaseDuration: .seconds(60), maxAttempts: 3, kinds: [.backup]) {
                            mine.append(job.id)
                            _ = try await catalog.finishJob(job, outcome: .failed(ErrorInfo(code: "bench", message: "bench")), at: Date())
                        }
                        claimed.items.withLock { $0 += mine }
                    }
                }
            }
            try await group.waitForAll()
        }
        let seconds = (ContinuousClock.now - started).seconds
        let ids = claimed.items.withLock { $0 }
        print("{\"jobs\": \(jobs), \"nodes\": \(nodes), \"workers_per_node\": \(workers), \"enqueue_seconds\": \(enqueueSeconds), "
            + "\"claimed\": \(ids.count), \"distinct\": \(Set(ids).count), \"seconds\": \(seconds), \"claims_per_second\": \(Double(ids.count) / seconds)}")
    }
}

/// Benchmark 4: the same SQLite file backed up and restored through the repository, once to a
/// local directory and once to `--s3-endpoint` (bucket `--bucket`, created here).
func storageThroughputBench() async throws {
    guard let data = option("data"), let db = option("db"), let endpoint = option("s3-endpoint") else {
        fail("storage-throughput --data DIR --db PATH --s3-endpoint URL [--bucket NAME]")
    }
    try? FileManager.default.removeItem(atPath: data)
    try FileManager.default.createDirectory(atPath: data + "/tmp", withIntermediateDirectories: true)
    let key = MasterKey.generate().0
    let s3 = S3BlobStore(configuration: S3Configuration(
        bucket: option("bucket") ?? "cloudheed-bench", prefix: "", endpoint: endpoint, region: "us-east-1", pathStyle: true,
        accessKey: ProcessInfo.processInfo.environment["AWS_ACCESS_KEY_ID"] ?? "bench", secretKey: ProcessInfo.processInfo.environment["AWS_SECRET_ACCESS_KEY"] ?? "bench"))
    try await s3.createBucket()
    let engine = try SQLiteEngine(databasesDirectory: (db as NSString).deletingLastPathComponent, scratchDirectory: data + "/tmp")
    let snapshot = data + "/snapshot"
    try await engine.snapshot(at: db, to: snapshot)
    let size = (try FileManager.default.attributesOfItem(atPath: snapshot)[.size] as? Int) ?? 0
    var results: [String] = []
    for (name, blobs) in [("local", try FileBlobStore(root: data + "/local-repository") as any BlobStore), ("s3", s3 as any BlobStore)] {
        let catalog = try SQLiteCatalog(path: data + "/\(name).sqlite3")
        let account = try await benchAccount(catalog)
        let repository = DedupRepository(index: catalog, blobs: blobs, keyRing: KeyRing(master: key, store: catalog), clock: SystemWallClock(), ids: SecureIDGenerator())
        let start = ContinuousClock.now
        let stored = try await repository.storePages(
            ofFile: snapshot, pageSize: try SQLiteEngine.pageSize(ofFile: snapshot), target: BackupTarget(accountID: account.id, backupID: "backup-\(name)", parent: nil))
        let backupSeconds = (ContinuousClock.now - start).seconds
        let out = data + "/restored-\(name)"
        let restoreStart = ContinuousClock.now
        try await repository.restorePages(stored, accountID: account.id, toFile: out)
        let restoreSeconds = (ContinuousClock.now - restoreStart).seconds
        guard FileManager.default.contentsEqual(atPath: out, andPath: snapshot) else { fail("\(name): the restored file differs from the snapshot") }
        try? FileManager.default.removeItem(atPath: out)
        results.append("\"\(name)\": {\"backup_seconds\": \(backupSeconds), \"restore_seconds\": \(restoreSeconds), \"stored_bytes\": \(stored.storedBytes)}")
    }
    print("{\"size_bytes\": \(size), " + results.joined(separator: ", ") + "}")
}
