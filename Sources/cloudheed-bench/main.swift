// Benchmarks of the repository against the tools people use today, measured side by side in
// one run on this machine. Ratios are printed, never asserted: targets live here and in
// bench/RESULTS.md, not in timed unit tests. Usage: bench/run-sqlite.sh (see bench/README.md).
import CloudheedDomain
import CloudheedEngines
import CloudheedStorage
import Foundation
import Logging

let arguments = Array(CommandLine.arguments.dropFirst())
func option(_ name: String) -> String? {
    guard let i = arguments.firstIndex(of: "--" + name), i + 1 < arguments.count else { return nil }
    return arguments[i + 1]
}
func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data((message + "\n").utf8))
    exit(2)
}

/// Peak resident set size of this process so far, from the kernel.
func peakRSS() -> Int {
    let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
    let line = status.split(separator: "\n").first { $0.hasPrefix("VmHWM:") } ?? ""
    return (Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0) * 1024
}

/// The repository of a bench data directory, with a fixed account.
func openRepository(_ directory: String) async throws -> (DedupRepository, SQLiteCatalog) {
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    let keyPath = directory + "/master-key"
    if !FileManager.default.fileExists(atPath: keyPath) {
        try (MasterKey.generate().hex + "\n").write(toFile: keyPath, atomically: true, encoding: .utf8)
    }
    let key = try MasterKey(hex: try String(contentsOfFile: keyPath, encoding: .utf8))
    let catalog = try SQLiteCatalog(path: directory + "/catalog.sqlite3")
    if try await catalog.account(id: "acct-bench") == nil {
        try await catalog.createAccount(
            Account(id: "acct-bench", name: "bench", storageQuotaBytes: 1 << 50, createdAt: Date()),
            token: StoredToken(id: "tok-bench", accountID: "acct-bench", secretHash: [0], createdAt: Date()))
    }
    let repository = try DedupRepository.local(root: directory + "/repository", catalog: catalog, masterKey: key)
    return (repository, catalog)
}

func object(_ catalog: SQLiteCatalog, _ key: String) async throws -> StoredObject {
    guard let layer = try await catalog.layer(id: key) else { fail("no manifest \(key)") }
    return StoredObject(key: key, sizeBytes: layer.logicalSize, checksum: layer.objectChecksum, storedBytes: layer.storedBytes)
}

switch arguments.first {
case "backup":
    // One backup of --db into --data (on --parent), in its own process so its peak RSS is its own.
    guard let data = option("data"), let db = option("db") else { fail("backup --data DIR --db PATH [--parent KEY]") }
    let (repository, catalog) = try await openRepository(data)
    let parent = try await option("parent").asyncMap { try await object(catalog, $0) }
    // The engine only backs up regular files inside its databases directory: the database's own.
    let engine = try SQLiteEngine(databasesDirectory: (db as NSString).deletingLastPathComponent, scratchDirectory: data + "/tmp")
    // The same steps as SQLiteEngine.backup, timed apart: the snapshot, then chunking, hashing,
    // dedup, compression, encryption and storing.
    let snapshot = data + "/snapshot"
    try FileManager.default.createDirectory(atPath: data + "/tmp", withIntermediateDirectories: true)
    let start = ContinuousClock.now
    try await engine.snapshot(at: db, to: snapshot)
    let snapshotted = ContinuousClock.now
    let stored = try await repository.storePages(
        ofFile: snapshot, pageSize: try SQLiteEngine.pageSize(ofFile: snapshot), target: BackupTarget(accountID: "acct-bench", backupID: "backup-bench", parent: parent))
    let end = ContinuousClock.now
    try? FileManager.default.removeItem(atPath: snapshot)
    print("{\"seconds\": \((end - start).seconds), \"snapshot_seconds\": \((snapshotted - start).seconds), \"store_seconds\": \((end - snapshotted).seconds), \"key\": \"\(stored.key)\", \"size_bytes\": \(stored.sizeBytes), \"stored_bytes\": \(stored.storedBytes), \"peak_rss\": \(peakRSS())}")
case "restore":
    guard let data = option("data"), let key = option("key"), let out = option("out") else { fail("restore --data DIR --key KEY --out PATH") }
    let (repository, catalog) = try await openRepository(data)
    let stored = try await object(catalog, key)
    try? FileManager.default.removeItem(atPath: out)
    let start = ContinuousClock.now
    try await repository.restorePages(stored, accountID: "acct-bench", toFile: out)
    let seconds = (ContinuousClock.now - start).seconds
    print("{\"seconds\": \(seconds), \"peak_rss\": \(peakRSS())}")
case "changed-pages":
    // Writes the pages of --new that differ from --old (same page size) to --out: the physical
    // lower bound of what a second backup must store.
    guard let old = option("old"), let new = option("new"), let out = option("out"), let size = option("page-size").flatMap(Int.init) else {
        fail("changed-pages --old A --new B --out C --page-size N")
    }
    let a = FileHandle(forReadingAtPath: old)!, b = FileHandle(forReadingAtPath: new)!
    guard FileManager.default.createFile(atPath: out, contents: nil) else { fail("cannot create \(out)") }
    let o = FileHandle(forWritingAtPath: out)!
    var total = 0, changed = 0
    while let pb = try b.read(upToCount: size), !pb.isEmpty {
        let pa = try a.read(upToCount: size) ?? Data()
        total += 1
        if pa != pb { changed += 1; try o.write(contentsOf: pb) }
    }
    try o.close()
    print("{\"pages\": \(total), \"changed\": \(changed)}")
case "pg-backup":
    // One backup of PostgreSQL database --database through PostgresEngine (pg_dump streamed
    // into the repository), on --parent if given.
    guard let data = option("data"), let url = option("postgres-url"), let database = option("database") else {
        fail("pg-backup --data DIR --postgres-url URL --database NAME [--parent KEY]")
    }
    let (repository, catalog) = try await openRepository(data)
    let parent = try await option("parent").asyncMap { try await object(catalog, $0) }
    let engine = PostgresEngine(server: try PostgresServer(url: url), tools: await PostgresTools.locate(binDirectory: option("bin-dir")), logger: Logger(label: "bench"))
    let start = ContinuousClock.now
    let stored = try await engine.backup(at: database, into: repository, target: BackupTarget(accountID: "acct-bench", backupID: "backup-bench", parent: parent))
    print("{\"seconds\": \((ContinuousClock.now - start).seconds), \"key\": \"\(stored.key)\", \"size_bytes\": \(stored.sizeBytes), \"stored_bytes\": \(stored.storedBytes), \"peak_rss\": \(peakRSS())}")
case "pg-restore":
    // Restores --key into a new database --database (and its role), as a restore job does.
    guard let data = option("data"), let url = option("postgres-url"), let key = option("key"), let database = option("database") else {
        fail("pg-restore --data DIR --postgres-url URL --key KEY --database NAME")
    }
    let (repository, catalog) = try await openRepository(data)
    let stored = try await object(catalog, key)
    let engine = PostgresEngine(server: try PostgresServer(url: url), tools: await PostgresTools.locate(binDirectory: option("bin-dir")), logger: Logger(label: "bench"))
    let start = ContinuousClock.now
    _ = try await engine.prepareRestore(at: database)
    try await engine.restore(stored, from: repository, accountID: "acct-bench", to: database)
    print("{\"seconds\": \((ContinuousClock.now - start).seconds), \"peak_rss\": \(peakRSS())}")
case "scheduler-tick":
    try await schedulerTickBench()
case "claims":
    try await claimsBench()
case "storage-throughput":
    try await storageThroughputBench()
default:
    fail("usage: cloudheed-bench backup|restore|changed-pages|pg-backup|pg-restore|scheduler-tick|claims|storage-throughput ... (driven by bench/run_*.py)")
}

extension Optional {
    func asyncMap<T>(_ transform: (Wrapped) async throws -> T) async rethrows -> T? {
        guard let value = self else { return nil }
        return try await transform(value)
    }
}

