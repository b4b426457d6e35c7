import CloudheedDomain
import CloudheedEngines
import CloudheedStorage
import Foundation
import GRDB
import Subprocess
import Testing

/// Commits forever: each transaction appends row n, updates an older row, and records n in
/// `counter`. A consistent snapshot therefore holds rows 1...n exactly, with counter = n and
/// the matching number of updates.
let writerScript = """
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
n = c.execute("SELECT n FROM counter").fetchone()[0]
while True:
    n += 1
    c.execute("BEGIN IMMEDIATE")
    c.execute("INSERT INTO log (id, payload, touched) VALUES (?, randomblob(3000), 0)", (n,))
    c.execute("UPDATE log SET touched = touched + 1 WHERE id = ?", (n // 2 + 1,))
    c.execute("UPDATE counter SET n = ?", (n,))
    c.execute("COMMIT")
"""

struct EngineFixture {
    let directory = NSTemporaryDirectory() + "cloudheed-engine-\(UUID().uuidString)"
    let engine: SQLiteEngine
    let repository: DedupRepository

    init() async throws {
        engine = try SQLiteEngine(databasesDirectory: directory + "/databases", scratchDirectory: directory + "/tmp")
        let catalog = try SQLiteCatalog(path: directory + "/catalog.sqlite3")
        try await catalog.createAccount(
            Account(id: "acct-engine", name: "engine", storageQuotaBytes: 1 << 40, createdAt: Date()),
            token: StoredToken(id: "tok-engine", accountID: "acct-engine", secretHash: [0], createdAt: Date()))
        repository = try DedupRepository.local(root: directory + "/repository", catalog: catalog, masterKey: MasterKey.generate().0)
    }

    func target(_ backupID: String, parent: StoredObject? = nil) -> BackupTarget {
        BackupTarget(accountID: "acct-engine", backupID: backupID, parent: parent)
    }

    func cleanup() { try? FileManager.default.removeItem(atPath: directory) }

    func counter(_ path: String) throws -> Int {
        let queue = try DatabaseQueue(path: path)
        defer { try? queue.close() }
        return try queue.read { db in try Int.fetchOne(db, sql: "SELECT n FROM counter") ?? -1 }
    }
}

@Suite("SQLite engine")
struct SQLiteEngineTests {
    @Test("A backup taken while another process keeps committing restores to a state that process committed")
    func consistentUnderWrites() async throws {
        let f = try await EngineFixture()
        defer { f.cleanup() }
        let source = f.engine.location(forDatabaseID: "db-source")
        try await f.engine.create(at: source)
        // About 40 MB of history, so the copy takes a while and overlaps many commits.
        let queue = try DatabaseQueue(path: source)
        try await queue.write { db in
            try db.execute(sql: "CREATE TABLE counter (n INTEGER NOT NULL); INSERT INTO counter VALUES (0)")
            try db.execute(sql: "CREATE TABLE log (id INTEGER PRIMARY KEY, payload BLOB NOT NULL, touched INTEGER NOT NULL)")
            try db.execute(sql: "CREATE TABLE history (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
            try db.execute(sql: "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 10000) INSERT INTO history SELECT i, randomblob(4000) FROM s")
        }
        try queue.close()

        let result = try await Subprocess.run(
            .name("python3"), arguments: ["-c", writerScript, source], input: .none, output: .discarded, error: .discarded
        ) { execution -> (before: Int, after: Int, object: StoredObject) in
            defer { try? execution.send(signal: .kill) }
            // Wait for the writer to be well under way.
            var before = 0
            for _ in 0..<500 where before < 50 {
                try await Task.sleep(for: .milliseconds(20))
                before = try f.counter(source)
            }
            #expect(before >= 50, "the writer process never got going")
            var attempts: [(Int, Int, StoredObject)] = []
            // Retry until a backup overlapped commits (on a busy machine the writer may stall).
            for attempt in 0..<5 {
                let start = try f.counter(source)
                let object = try await f.engine.backup(at: source, into: f.repository, target: f.target("backup-c-\(attempt)"))
                let end = try f.counter(source)
                attempts.append((start, end, object))
                if end > start { break }
            }
            let last = attempts.last!
            return (last.0, last.1, last.2)
        }
        let (before, after, object) = result.closureResult
        #expect(after > before, "no commit happened during the backup; the test proved nothing")

        let target = f.engine.location(forDatabaseID: "db-restored")
        try await f.engine.restore(object, from: f.repository, accountID: "acct-engine", to: target)
        let restored = try DatabaseQueue(path: target)
        defer { try? restored.close() }
        try await restored.read { db in
            #expect(try String.fetchAll(db, sql: "PRAGMA integrity_check") == ["ok"])
            let n = try Int.fetchOne(db, sql: "SELECT n FROM counter")!
            #expect((before...after).contains(n), "snapshot at \(n), writer committed \(before)...\(after) meanwhile")
            // Exactly the rows of commit n: 1...n, each older row touched once per later commit.
            #expect(try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM log") == n)
            #expect(try Int.fetchOne(db, sql: "SELECT COALESCE(MAX(id), 0) FROM log") == n)
            #expect(try Int.fetchOne(db, sql: "SELECT COALESCE(SUM(touched), 0) FROM log") == n)
            #expect(try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM history") == 10_000)
        }
        #expect(try await restored.read { db in try String.fetchOne(db, sql: "PRAGMA journal_mode") } == "wal")
    }

    @Test("New databases are in WAL mode and dropping removes every file")
    func createAndDrop() async throws {
        let f = try await EngineFixture()
        defer { f.cleanup() }
        let path = f.engine.location(forDatabaseID: "db-new")
        try await f.engine.create(at: path)
        let queue = try DatabaseQueue(path: path)
        #expect(try await queue.read { db in try String.fetchOne(db, sql: "PRAGMA journal_mode") } == "wal")
        try queue.close()
        await #expect(throws: EngineError.self) { try await f.engine.create(at: path) }
        try await f.engine.drop(at: path)
        #expect(try FileManager.default.contentsOfDirectory(atPath: f.directory + "/databases").isEmpty)
        #expect(f.engine.connectionURI(location: path) == "file://" + path)
    }

    @Test("A backup whose pages are not an SQLite database fails the restore's integrity check and leaves nothing")
    func integrityCheckFailure() async throws {
        let f = try await EngineFixture()
        defer { f.cleanup() }
        // Sound storage, unsound content: exactly the case only integrity_check can catch.
        var bytes = Array("SQLite format 3\u{0}".utf8) + Array(repeating: 0xAB, count: 3 * 4096 - 16)
        bytes[16] = 0x10; bytes[17] = 0x00  // page size 4096
        let path = f.directory + "/bad"
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let object = try await f.repository.storePages(ofFile: path, pageSize: 4096, target: f.target("backup-bad"))
        let target = f.engine.location(forDatabaseID: "db-target")
        await #expect(throws: EngineError.self) { try await f.engine.restore(object, from: f.repository, accountID: "acct-engine", to: target) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: f.directory + "/databases").isEmpty)
    }

    @Test("A restore attempt that fails late (its lease lost) leaves a completed attempt's database alone")
    func staleAttemptHarmless() async throws {
        let f = try await EngineFixture()
        defer { f.cleanup() }
        let source = f.engine.location(forDatabaseID: "db-src")
        try await f.engine.create(at: source)
        let queue = try DatabaseQueue(path: source)
        try await queue.write { db in try db.execute(sql: "CREATE TABLE t (x); INSERT INTO t VALUES (1), (2)") }
        try queue.close()
        let good = try await f.engine.backup(at: source, into: f.repository, target: f.target("backup-good"))
        let target = f.engine.location(forDatabaseID: "db-target")
        // Attempt B completes.
        try await f.engine.restore(good, from: f.repository, accountID: "acct-engine", to: target)
        // Attempt A, running late, fails (here: a manifest that does not exist).
        var bogus = good
        bogus.key = "mfdoesnotexist"
        await #expect(throws: RepositoryError.self) { try await f.engine.restore(bogus, from: f.repository, accountID: "acct-engine", to: target) }
        let restored = try DatabaseQueue(path: target)
        #expect(try await restored.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM t") } == 2)
        try restored.close()
        #expect(try FileManager.default.contentsOfDirectory(atPath: f.directory + "/databases").filter { $0.contains(".restoring") }.isEmpty)
    }

    @Test("A database file replaced by a symbolic link is refused, not followed")
    func symlinkRefused() async throws {
        let f = try await EngineFixture()
        defer { f.cleanup() }
        let path = f.engine.location(forDatabaseID: "db-link")
        try await f.engine.create(at: path)
        try await f.engine.drop(at: path)
        let elsewhere = f.directory + "/secret.sqlite3"
        try await f.engine.create(at: elsewhere)
        try FileManager.default.createSymbolicLink(atPath: path, withDestinationPath: elsewhere)
        do {
            _ = try await f.engine.backup(at: path, into: f.repository, target: f.target("backup-link"))
            Issue.record("a symbolic link was backed up")
        } catch let error as EngineError {
            #expect(error.code == "database_file_invalid")
        }
    }

    @Test("Dropping a database removes partial files restore attempts left behind")
    func dropRemovesPartials() async throws {
        let f = try await EngineFixture()
        defer { f.cleanup() }
        let path = f.engine.location(forDatabaseID: "db-partial")
        for name in [path + ".restoring-abc", path + ".restoring-def"] { #expect(FileManager.default.createFile(atPath: name, contents: Data([1]))) }
        let neighbour = f.engine.location(forDatabaseID: "db-partial2") + ".restoring-x"
        #expect(FileManager.default.createFile(atPath: neighbour, contents: Data([1])))
        try await f.engine.drop(at: path)
        #expect(try FileManager.default.contentsOfDirectory(atPath: f.directory + "/databases") == [URL(fileURLWithPath: neighbour).lastPathComponent])
    }

    @Test("Backing up a missing database fails with database_file_missing and creates nothing")
    func missingSource() async throws {
        let f = try await EngineFixture()
        defer { f.cleanup() }
        let path = f.engine.location(forDatabaseID: "db-gone")
        await #expect(throws: EngineError(code: "database_file_missing", message: "the database file is missing")) {
            _ = try await f.engine.backup(at: path, into: f.repository, target: f.target("backup-x-1"))
        }
        #expect(!FileManager.default.fileExists(atPath: path))
        #expect(!FileManager.default.fileExists(atPath: f.directory + "/repository/packs"))
    }
}
