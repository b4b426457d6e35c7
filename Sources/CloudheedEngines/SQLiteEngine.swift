import CloudheedDomain
import CloudheedStorage
import Foundation
import GRDB

/// SQLite databases are files under `<data-dir>/databases/` that applications open directly.
///
/// A backup uses SQLite's online backup API over one read transaction, which in WAL mode sees a
/// single committed state while writers go on; it copies pages as they are (no raw file copy,
/// so a transaction half-written to the file is never captured). The snapshot goes to a scratch
/// file and is streamed from there into the repository.
public struct SQLiteEngine: DatabaseEngine {
    public let kind = EngineKind.sqlite
    let databasesDirectory: String
    let scratchDirectory: String

    public init(databasesDirectory: String, scratchDirectory: String) throws {
        self.databasesDirectory = databasesDirectory
        self.scratchDirectory = scratchDirectory
        try FileManager.default.createDirectory(atPath: databasesDirectory, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: scratchDirectory, withIntermediateDirectories: true)
    }

    public func location(forDatabaseID id: String) -> String {
        databasesDirectory + "/" + id + ".sqlite3"
    }

    public func connectionURI(location: String, password: String?) -> String {
        URL(fileURLWithPath: location).absoluteString
    }

    @discardableResult
    public func create(at location: String) async throws -> String? {
        guard !FileManager.default.fileExists(atPath: location) else {
            throw EngineError(code: "database_exists", message: "a database file already exists at the new database's location")
        }
        // WAL lets applications keep writing while a backup reads its snapshot.
        try await Self.enableWAL(location)
        return nil
    }

    public func drop(at location: String) async throws {
        Self.removeFiles(location)
        // Partial files of restore attempts that died before cleaning up after themselves.
        let directory = (location as NSString).deletingLastPathComponent
        let prefix = (location as NSString).lastPathComponent + ".restoring-"
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] where name.hasPrefix(prefix) {
            try? FileManager.default.removeItem(atPath: directory + "/" + name)
        }
    }

    public func backup(at location: String, into repository: any BackupRepository, target: BackupTarget) async throws -> StoredObject {
        let snapshot = scratchDirectory + "/" + target.backupID + "-" + String(UInt64.random(in: 0...UInt64.max), radix: 36) + ".snapshot"
        defer { Self.removeFiles(snapshot) }
        try await self.snapshot(at: location, to: snapshot)
        // Rows per table, counted in the snapshot beside the store (the file is in the page
        // cache by then), for drills to compare their restored copies against.
        async let counts = Self.countRows(snapshot)
        var object = try await repository.storePages(ofFile: snapshot, pageSize: try Self.pageSize(ofFile: snapshot), target: target)
        object.tableCounts = try await counts
        return object
    }

    public func drill(_ object: StoredObject, from repository: any BackupRepository, accountID: String) async throws -> TableCounts {
        let scratch = scratchDirectory + "/drill-" + String(UInt64.random(in: 0...UInt64.max), radix: 36) + ".sqlite3"
        defer { Self.removeFiles(scratch) }
        try await repository.restorePages(object, accountID: accountID, toFile: scratch)
        try await Self.check(scratch, expectedSize: object.sizeBytes)
        return try await Self.countRows(scratch)
    }

    /// `COUNT(*)` of every ordinary table (virtual tables need their module, which may be missing).
    static func countRows(_ path: String) async throws -> TableCounts {
        do {
            var readOnly = configuration()
            readOnly.readonly = true
            let queue = try DatabaseQueue(path: path, configuration: readOnly)
            defer { try? queue.close() }
            return try await queue.read { db in
                let tables = try String.fetchAll(
                    db,
                    sql: "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND sql NOT LIKE 'CREATE VIRTUAL%'")
                var rows: [String: Int64] = [:]
                for table in tables {
                    rows[table] = try Int64.fetchOne(db, sql: "SELECT COUNT(*) FROM \"\(table.replacingOccurrences(of: "\"", with: "\"\""))\"") ?? 0
                }
                return TableCounts(rows)
            }
        } catch let error as DatabaseError {
            throw EngineError(code: "integrity_check_failed", message: "counting rows failed: \(error.message ?? "\(error.resultCode)")")
        }
    }

    /// A consistent copy of the live database at `snapshot` (a scratch file, so not synced).
    public func snapshot(at location: String, to snapshot: String) async throws {
        try checkOwnFile(location)
        do {
            // pagesPerStep -1: the whole copy runs inside one read transaction, so it is one
            // committed state; in WAL mode writers are not blocked meanwhile. It is one long
            // blocking call, so it runs on a thread of its own, not on the shared async pool
            // where heartbeats and HTTP handlers run.
            try await onDedicatedThread {
                let source = try DatabaseQueue(path: location, configuration: Self.configuration())
                var scratch = Configuration()
                scratch.prepareDatabase { db in try db.execute(sql: "PRAGMA synchronous = OFF; PRAGMA journal_mode = OFF") }
                let destination = try DatabaseQueue(path: snapshot, configuration: scratch)
                try source.backup(to: destination)
                try destination.close()
                try source.close()
            }
        } catch let error as DatabaseError {
            throw EngineError(code: "snapshot_failed", message: "SQLite could not snapshot the database: \(error.message ?? "\(error.resultCode)")")
        }
    }

    /// The database must be a regular file inside the databases directory: applications write
    /// these files directly, and a symbolic link swapped in would make the service back up (and
    /// hand back through a restore) a file that is not the tenant's.
    func checkOwnFile(_ location: String) throws {
        var info = stat()
        guard lstat(location, &info) == 0 else {
            throw EngineError(code: "database_file_missing", message: "the database file is missing")
        }
        let real = URL(fileURLWithPath: location).resolvingSymlinksInPath().path
        let root = URL(fileURLWithPath: databasesDirectory).resolvingSymlinksInPath().path
        guard info.st_mode & S_IFMT == S_IFREG, real.hasPrefix(root + "/") else {
            throw EngineError(code: "database_file_invalid", message: "the database file has been replaced by something other than a regular file")
        }
    }

    /// The page size recorded in an SQLite file's header (big-endian at offset 16; 1 means 65536).
    public static func pageSize(ofFile path: String) throws -> Int {
        guard let handle = FileHandle(forReadingAtPath: path), let header = try handle.read(upToCount: 100), header.count == 100 else {
            throw EngineError(code: "snapshot_failed", message: "the snapshot has no SQLite header")
        }
        try? handle.close()
        let raw = Int(header[16]) << 8 | Int(header[17])
        let size = raw == 1 ? 65536 : raw
        guard size >= 512, size.nonzeroBitCount == 1 else { throw EngineError(code: "snapshot_failed", message: "the snapshot's page size \(raw) is invalid") }
        return size
    }

    public func restore(_ object: StoredObject, from repository: any BackupRepository, accountID: String, to location: String) async throws {
        // Each attempt has its own partial file, so an attempt that lost its lease and fails late
        // can only ever remove its own work. The final rename replaces whatever an earlier attempt
        // that died after its rename left at the target (the same backup, so the same bytes).
        let partial = location + ".restoring-" + String(UInt64.random(in: 0...UInt64.max), radix: 36)
        do {
            try await repository.restorePages(object, accountID: accountID, toFile: partial)
            try await Self.check(partial, expectedSize: object.sizeBytes)
            // A snapshot is written in rollback-journal mode; give applications WAL back, as on a new database.
            try await Self.enableWAL(partial)
            guard rename(partial, location) == 0 else {
                throw EngineError(code: "restore_write_failed", message: "cannot put the restored file in place: errno \(errno)")
            }
        } catch {
            Self.removeFiles(partial)
            throw error
        }
    }

    /// The file must have the backup's size and `PRAGMA integrity_check` must answer exactly "ok".
    /// Opened read-only, so a file that vanished is an error, never a new empty database.
    static func check(_ path: String, expectedSize: Int64) async throws {
        let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.int64Value
        guard size == expectedSize else {
            throw EngineError(code: "restore_write_failed", message: "the restored file has \(size.map(String.init) ?? "no") bytes, expected \(expectedSize)")
        }
        let result: [String]
        do {
            var readOnly = configuration()
            readOnly.readonly = true
            let queue = try DatabaseQueue(path: path, configuration: readOnly)
            result = try await queue.read { db in try String.fetchAll(db, sql: "PRAGMA integrity_check") }
            try queue.close()
        } catch let error as DatabaseError {
            throw EngineError(code: "integrity_check_failed", message: "the restored file is not a valid SQLite database: \(error.message ?? "\(error.resultCode)")")
        }
        guard result == ["ok"] else {
            throw EngineError(code: "integrity_check_failed", message: "integrity_check reported: \(result.prefix(5).joined(separator: "; "))")
        }
    }

    /// Switches the file to WAL mode; the pragma only works outside a transaction.
    static func enableWAL(_ path: String) async throws {
        let queue = try DatabaseQueue(path: path, configuration: configuration())
        let mode = try await queue.writeWithoutTransaction { db in try String.fetchOne(db, sql: "PRAGMA journal_mode = WAL") }
        try queue.close()
        guard mode?.lowercased() == "wal" else {
            throw EngineError(code: "journal_mode_failed", message: "SQLite refused WAL mode (got \(mode ?? "nothing"))")
        }
    }

    static func configuration() -> Configuration {
        var configuration = Configuration()
        configuration.busyMode = .timeout(30)
        return configuration
    }

    /// Runs a long blocking call on its own thread and awaits it.
    func onDedicatedThread(_ body: @escaping @Sendable () throws -> Void) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            Thread { continuation.resume(with: Result { try body() }) }.start()
        }
    }

    static func removeFiles(_ path: String) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            try? FileManager.default.removeItem(atPath: path + suffix)
        }
    }
}
