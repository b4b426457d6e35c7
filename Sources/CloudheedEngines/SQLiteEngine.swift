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

    public func connectionURI(location: String) -> String {
        URL(fileURLWithPath: location).absoluteString
    }

    public func create(at location: String) async throws {
        guard !FileManager.default.fileExists(atPath: location) else {
            throw EngineError(code: "database_exists", message: "a database file already exists at the new database's location")
        }
        // WAL lets applications keep writing while a backup reads its snapshot.
        try await Self.enableWAL(location)
    }

    public func drop(at location: String) async throws {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            try? FileManager.default.removeItem(atPath: location + suffix)
        }
    }

    public func backup(at location: String, into repository: any BackupRepository, target: BackupTarget) async throws -> StoredObject {
        guard FileManager.default.fileExists(atPath: location) else {
            throw EngineError(code: "database_file_missing", message: "the database file is missing")
        }
        let snapshot = scratchDirectory + "/" + target.backupID + "-" + String(UInt64.random(in: 0...UInt64.max), radix: 36) + ".snapshot"
        defer { Self.removeFiles(snapshot) }
        do {
            let source = try DatabaseQueue(path: location, configuration: Self.configuration())
            let destination = try DatabaseQueue(path: snapshot)
            // pagesPerStep -1: the whole copy runs inside one read transaction, so it is one
            // committed state; in WAL mode writers are not blocked meanwhile.
            try source.backup(to: destination)
            try destination.close()
            try source.close()
        } catch let error as DatabaseError {
            throw EngineError(code: "snapshot_failed", message: "SQLite could not snapshot the database: \(error.message ?? "\(error.resultCode)")")
        }
        return try await repository.storePages(ofFile: snapshot, pageSize: try Self.pageSize(ofFile: snapshot), target: target)
    }

    /// The page size recorded in an SQLite file's header (big-endian at offset 16; 1 means 65536).
    static func pageSize(ofFile path: String) throws -> Int {
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
        let fm = FileManager.default
        // The target belongs to this restore's new database alone; what is there was left by an
        // earlier attempt of the same restore that died before recording its outcome.
        Self.removeFiles(location)
        let partial = location + ".restoring"
        Self.removeFiles(partial)
        do {
            try await repository.restorePages(object, accountID: accountID, toFile: partial)
            try await Self.check(partial)
            // A snapshot is written in rollback-journal mode; give applications WAL back, as on a new database.
            try await Self.enableWAL(partial)
            try fm.moveItem(atPath: partial, toPath: location)
        } catch {
            Self.removeFiles(partial)
            throw error
        }
    }

    /// `PRAGMA integrity_check` must answer exactly "ok".
    static func check(_ path: String) async throws {
        let result: [String]
        do {
            let queue = try DatabaseQueue(path: path, configuration: configuration())
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

    static func removeFiles(_ path: String) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            try? FileManager.default.removeItem(atPath: path + suffix)
        }
    }
}
