import CloudheedDomain
import Foundation
import GRDB

/// The repository index in the SQLite catalog (migration v2).
///
/// Layers are reference-counted: a layer's `refs` counts the backups whose manifest it is plus
/// the layers built on it. Releasing the last reference drops the layer, its chunk references,
/// and releases its parent in turn; its object is queued in `garbage_objects` and deleted only
/// after a grace period, so a restore that already read the manifest can finish.
extension SQLiteCatalog: RepositoryIndex {
    static func registerRepositoryMigration(_ migrator: inout DatabaseMigrator) {
        migrator.registerMigration("v2-repository") { db in
            try db.execute(sql: """
                CREATE TABLE account_keys (
                    account_id TEXT PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
                    wrapped_key BLOB NOT NULL,
                    created_at INTEGER NOT NULL
                );
                CREATE TABLE packs (
                    id TEXT PRIMARY KEY,
                    account_id TEXT NOT NULL,
                    stored_size INTEGER NOT NULL,
                    plain_size INTEGER NOT NULL,
                    created_at INTEGER NOT NULL
                );
                CREATE INDEX packs_by_account ON packs(account_id);
                CREATE TABLE chunks (
                    account_id TEXT NOT NULL,
                    id BLOB NOT NULL,
                    pack_id TEXT NOT NULL REFERENCES packs(id),
                    offset INTEGER NOT NULL,
                    length INTEGER NOT NULL,
                    stored_length INTEGER NOT NULL,
                    created_at INTEGER NOT NULL,
                    PRIMARY KEY (account_id, id)
                ) WITHOUT ROWID;
                CREATE INDEX chunks_by_pack ON chunks(pack_id);
                CREATE TABLE layers (
                    id TEXT PRIMARY KEY,
                    account_id TEXT NOT NULL,
                    parent_id TEXT REFERENCES layers(id),
                    depth INTEGER NOT NULL,
                    kind TEXT NOT NULL CHECK (kind IN ('pages-full','pages-delta','stream')),
                    page_size INTEGER NOT NULL,
                    entry_count INTEGER NOT NULL,
                    logical_size INTEGER NOT NULL,
                    stored_bytes INTEGER NOT NULL,
                    object_checksum TEXT NOT NULL,
                    refs INTEGER NOT NULL DEFAULT 0,
                    created_at INTEGER NOT NULL
                );
                CREATE INDEX layers_unreferenced ON layers(created_at) WHERE refs <= 0;
                CREATE TABLE layer_chunks (
                    layer_id TEXT NOT NULL REFERENCES layers(id) ON DELETE CASCADE,
                    account_id TEXT NOT NULL,
                    chunk_id BLOB NOT NULL,
                    PRIMARY KEY (layer_id, chunk_id)
                ) WITHOUT ROWID;
                CREATE INDEX layer_chunks_by_chunk ON layer_chunks(account_id, chunk_id);
                CREATE TABLE garbage_objects (
                    key TEXT PRIMARY KEY,
                    deletable_at INTEGER NOT NULL
                );
                ALTER TABLE backups ADD COLUMN stored_bytes INTEGER;
                ALTER TABLE backups ADD COLUMN integrity TEXT NOT NULL DEFAULT 'unverified'
                    CHECK (integrity IN ('unverified','verified','corrupt'));
                ALTER TABLE backups ADD COLUMN verified_at INTEGER;
                CREATE TABLE jobs_v2 (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    id TEXT NOT NULL UNIQUE,
                    kind TEXT NOT NULL CHECK (kind IN ('backup','restore','verify')),
                    subject_id TEXT NOT NULL,
                    status TEXT NOT NULL CHECK (status IN ('pending','running')),
                    attempts INTEGER NOT NULL DEFAULT 0,
                    lease_token TEXT,
                    lease_expires_at INTEGER,
                    created_at INTEGER NOT NULL,
                    UNIQUE (kind, subject_id)
                );
                INSERT INTO jobs_v2 SELECT * FROM jobs;
                DROP TABLE jobs;
                ALTER TABLE jobs_v2 RENAME TO jobs;
                CREATE INDEX jobs_pending ON jobs(seq) WHERE status = 'pending';
                CREATE INDEX jobs_leases ON jobs(lease_expires_at) WHERE status = 'running';
                """)
        }
    }

    // MARK: Account keys

    public func wrappedDataKey(accountID: String, orInsert candidate: [UInt8]) async throws -> [UInt8] {
        try await pool.write { db in
            try db.execute(
                sql: "INSERT INTO account_keys (account_id, wrapped_key, created_at) VALUES (?, ?, ?) ON CONFLICT (account_id) DO NOTHING",
                arguments: [accountID, Data(candidate), ms(Date())])
            return [UInt8](try Data.fetchOne(db, sql: "SELECT wrapped_key FROM account_keys WHERE account_id = ?", arguments: [accountID])!)
        }
    }

    public func rewrapAllDataKeys(_ transform: @escaping @Sendable (_ accountID: String, _ wrapped: [UInt8]) throws -> [UInt8]) async throws -> Int {
        try await pool.write { db in
            let rows = try Row.fetchAll(db, sql: "SELECT account_id, wrapped_key FROM account_keys ORDER BY account_id")
            for row in rows {
                let accountID: String = row["account_id"]
                let rewrapped = try transform(accountID, [UInt8](row["wrapped_key"] as Data))
                try db.execute(sql: "UPDATE account_keys SET wrapped_key = ? WHERE account_id = ?", arguments: [Data(rewrapped), accountID])
            }
            return rows.count
        }
    }

    /// Every completed backup, oldest first (offline verification).
    public func completedBackups() async throws -> [Backup] {
        try await pool.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM backups WHERE status = 'completed' ORDER BY created_at, seq").map(CatalogRows.backup)
        }
    }

    public func destroyDataKey(accountID: String) async throws {
        try await pool.write { db in
            try db.execute(sql: "DELETE FROM account_keys WHERE account_id = ?", arguments: [accountID])
        }
    }

    // MARK: Chunks and packs

    static let batch = 2000

    public func existingChunks(accountID: String, ids: [ChunkID]) async throws -> Set<ChunkID> {
        try await pool.read { db in
            Set(try Self.chunkRows(accountID: accountID, ids: ids, columns: "id", db).map { CatalogRows.chunkID($0) })
        }
    }

    public func insertPacks(_ packs: [(pack: PackRecord, chunks: [ChunkLocation])]) async throws {
        try await pool.write { db in
            let insertPack = try db.makeStatement(sql: "INSERT INTO packs (id, account_id, stored_size, plain_size, created_at) VALUES (?, ?, ?, ?, ?)")
            let insertChunk = try db.makeStatement(sql: """
                INSERT INTO chunks (account_id, id, pack_id, offset, length, stored_length, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (account_id, id) DO NOTHING
                """)
            for (pack, chunks) in packs {
                try insertPack.execute(arguments: [pack.id, pack.accountID, pack.storedSize, pack.plainSize, ms(pack.createdAt)])
                for chunk in chunks {
                    try insertChunk.execute(arguments: [pack.accountID, Data(chunk.id.bytes), pack.id, chunk.offset, chunk.length, chunk.storedLength, ms(pack.createdAt)])
                }
            }
        }
    }

    public func chunkLocations(accountID: String, ids: [ChunkID]) async throws -> [ChunkID: ChunkLocation] {
        try await pool.read { db in
            let rows = try Self.chunkRows(accountID: accountID, ids: ids, columns: "id, pack_id, offset, length, stored_length", db)
            return Dictionary(rows.map(CatalogRows.chunkLocation).map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        }
    }

    /// The account's chunk rows among `ids`, looked up in batches of `IN (...)` lists.
    static func chunkRows(accountID: String, ids: [ChunkID], columns: String, _ db: GRDB.Database) throws -> [Row] {
        var rows: [Row] = []
        for start in stride(from: 0, to: ids.count, by: batch) {
            let slice = ids[start..<min(start + batch, ids.count)]
            let marks = Array(repeating: "?", count: slice.count).joined(separator: ",")
            let arguments = StatementArguments([accountID.databaseValue] + slice.map { Data($0.bytes).databaseValue })
            rows += try Row.fetchAll(db, sql: "SELECT \(columns) FROM chunks WHERE account_id = ? AND id IN (\(marks))", arguments: arguments)
        }
        return rows
    }

    /// Queues an object for deletion once the grace period has passed.
    static func queueGarbage(_ key: String, deletableAt: Date, _ db: GRDB.Database) throws {
        try db.execute(
            sql: "INSERT INTO garbage_objects (key, deletable_at) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
            arguments: [key, ms(deletableAt)])
    }

    // MARK: Layers

    public func openLayer(_ layer: LayerRecord) async throws {
        try await pool.write { db in
            if let parent = layer.parentID {
                try db.execute(sql: "UPDATE layers SET refs = refs + 1 WHERE id = ? AND object_checksum <> ''", arguments: [parent])
                guard db.changesCount == 1 else { throw RepositoryError(.chunksCollected, "the parent manifest was garbage-collected while the backup ran") }
            }
            try db.execute(
                sql: """
                    INSERT INTO layers (id, account_id, parent_id, depth, kind, page_size, entry_count, logical_size, stored_bytes, object_checksum, segments, refs, created_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, '', 0, 0, ?)
                    """,
                arguments: [layer.id, layer.accountID, layer.parentID, layer.depth, layer.kind.rawValue, layer.pageSize, layer.entryCount,
                            layer.logicalSize, layer.storedBytes, ms(layer.createdAt)])
        }
    }

    public func addLayerReferences(layerID: String, accountID: String, ids: [ChunkID]) async throws -> [ChunkID: Int] {
        guard !ids.isEmpty else { return [:] }
        return try await pool.write { db in
            let rows = try Self.chunkRows(accountID: accountID, ids: ids, columns: "id, stored_length", db)
            let lengths = try CatalogRows.storedLengths(rows, referencing: ids)
            let insert = try db.makeStatement(sql: "INSERT INTO layer_chunks (layer_id, account_id, chunk_id) VALUES (?, ?, ?) ON CONFLICT DO NOTHING")
            for id in lengths.keys { try insert.execute(arguments: [layerID, accountID, Data(id.bytes)]) }
            return lengths
        }
    }

    public func finishLayer(_ layer: LayerRecord) async throws {
        try await pool.write { db in
            try db.execute(
                sql: """
                    UPDATE layers SET entry_count = ?, logical_size = ?, stored_bytes = ?, object_checksum = ?, segments = ?
                    WHERE id = ? AND object_checksum = ''
                    """,
                arguments: [layer.entryCount, layer.logicalSize, layer.storedBytes, layer.objectChecksum, layer.segments, layer.id])
            guard db.changesCount == 1 else { throw RepositoryError(.chunksCollected, "the manifest being written was garbage-collected before it was finished") }
        }
    }

    public func layer(id: String) async throws -> LayerRecord? {
        try await pool.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM layers WHERE id = ?", arguments: [id]).map(CatalogRows.layer)
        }
    }

    public func uniqueBytes(layerIDs: [String]) async throws -> [String: Int64] {
        guard !layerIDs.isEmpty else { return [:] }
        return try await pool.read { db in
            // Only a layer no other backup builds on (refs <= 1) goes away with its backup.
            let rows = try Row.fetchAll(
                db,
                sql: """
                    SELECT lc.layer_id AS layer, SUM(c.stored_length) AS bytes FROM layer_chunks lc
                    JOIN layers l ON l.id = lc.layer_id AND l.refs <= 1
                    JOIN chunks c ON c.account_id = lc.account_id AND c.id = lc.chunk_id
                    WHERE lc.layer_id IN (\(Array(repeating: "?", count: layerIDs.count).joined(separator: ",")))
                      AND NOT EXISTS (SELECT 1 FROM layer_chunks o WHERE o.account_id = lc.account_id AND o.chunk_id = lc.chunk_id AND o.layer_id <> lc.layer_id)
                    GROUP BY lc.layer_id
                    """,
                arguments: StatementArguments(layerIDs))
            return Dictionary(uniqueKeysWithValues: rows.map { ($0["layer"] as String, $0["bytes"] as Int64) })
        }
    }

    /// Drops one reference to a layer and cascades down the chain as layers reach zero.
    static func releaseLayer(_ id: String?, now: Date, grace: TimeInterval, _ db: GRDB.Database) throws {
        var current = id
        while let layerID = current {
            try db.execute(sql: "UPDATE layers SET refs = refs - 1 WHERE id = ?", arguments: [layerID])
            guard let row = try Row.fetchOne(db, sql: "SELECT refs, parent_id FROM layers WHERE id = ?", arguments: [layerID]),
                  (row["refs"] as Int) <= 0 else { return }
            current = row["parent_id"]
            try dropLayer(layerID, now: now, grace: grace, db)
        }
    }

    static func dropLayer(_ id: String, now: Date, grace: TimeInterval, _ db: GRDB.Database) throws {
        let segments = try Int.fetchOne(db, sql: "SELECT segments FROM layers WHERE id = ?", arguments: [id]) ?? 0
        try queueGarbage("manifests/\(id)", deletableAt: now.addingTimeInterval(grace), db)
        // An unfinished layer's segments are not counted; the orphan sweep finds them.
        for n in 0..<segments { try queueGarbage(ManifestHeader.segmentKey(id, n), deletableAt: now.addingTimeInterval(grace), db) }
        try db.execute(sql: "DELETE FROM layer_chunks WHERE layer_id = ?", arguments: [id])
        try db.execute(sql: "DELETE FROM layers WHERE id = ?", arguments: [id])
    }

    // MARK: Garbage collection

    /// The cutoff, moved back to the start of the oldest backup still running: what a running
    /// backup has stored is referenced only once it records its manifest, however long it takes.
    static func protectedCutoff(_ cutoff: Date, _ db: GRDB.Database) throws -> Int64 {
        min(ms(cutoff), try oldestRunningStart(db) ?? Int64.max)
    }

    static func oldestRunningStart(_ db: GRDB.Database) throws -> Int64? {
        try Int64.fetchOne(db, sql: "SELECT MIN(started_at) FROM backups WHERE status = 'in_progress'")
    }

    public func oldestRunningBackupStart() async throws -> Date? {
        try await pool.read { db in try Self.oldestRunningStart(db).map(date) }
    }

    public func releaseAbandonedLayers(createdBefore: Date, now: Date, grace: TimeInterval) async throws -> Int {
        try await pool.write { db in
            let ids = try String.fetchAll(
                db, sql: "SELECT id FROM layers WHERE refs <= 0 AND created_at < ?", arguments: [try Self.protectedCutoff(createdBefore, db)])
            for id in ids {
                let parent = try String.fetchOne(db, sql: "SELECT parent_id FROM layers WHERE id = ?", arguments: [id])
                try Self.dropLayer(id, now: now, grace: grace, db)
                try Self.releaseLayer(parent, now: now, grace: grace, db)
            }
            return ids.count
        }
    }

    public func deleteUnreferencedChunks(createdBefore: Date) async throws -> Int {
        try await pool.write { db in
            try db.execute(
                sql: """
                    DELETE FROM chunks WHERE created_at < ?
                      AND NOT EXISTS (SELECT 1 FROM layer_chunks lc WHERE lc.account_id = chunks.account_id AND lc.chunk_id = chunks.id)
                    """,
                arguments: [try Self.protectedCutoff(createdBefore, db)])
            return db.changesCount
        }
    }

    public func retireEmptyPacks(now: Date, grace: TimeInterval) async throws -> Int {
        try await pool.write { db in
            let ids = try String.fetchAll(db, sql: "SELECT id FROM packs p WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.pack_id = p.id)")
            for id in ids {
                try Self.queueGarbage("packs/\(id)", deletableAt: now.addingTimeInterval(grace), db)
                try db.execute(sql: "DELETE FROM packs WHERE id = ?", arguments: [id])
            }
            return ids.count
        }
    }

    public func sparsePacks(createdBefore: Date, maxLiveFraction: Double, limit: Int) async throws -> [(pack: PackRecord, live: [ChunkLocation])] {
        try await pool.read { db in
            let packs = try Row.fetchAll(
                db,
                sql: """
                    SELECT p.* FROM packs p JOIN accounts a ON a.id = p.account_id AND a.deleted_at IS NULL
                    WHERE p.created_at < ?
                      AND (SELECT COALESCE(SUM(c.length), 0) FROM chunks c WHERE c.pack_id = p.id) < ? * p.plain_size
                      AND EXISTS (SELECT 1 FROM chunks c WHERE c.pack_id = p.id)
                    ORDER BY p.created_at LIMIT ?
                    """,
                arguments: [ms(createdBefore), maxLiveFraction, limit])
            return try packs.map { row in
                let pack = CatalogRows.pack(row)
                let live = try Row.fetchAll(
                    db, sql: "SELECT id, pack_id, offset, length, stored_length FROM chunks WHERE pack_id = ? ORDER BY offset", arguments: [pack.id]
                ).map(CatalogRows.chunkLocation)
                return (pack, live)
            }
        }
    }

    public func relocateChunks(from oldPackID: String, to newPack: PackRecord, chunks: [ChunkLocation], now: Date, grace: TimeInterval) async throws {
        try await pool.write { db in
            try db.execute(
                sql: "INSERT INTO packs (id, account_id, stored_size, plain_size, created_at) VALUES (?, ?, ?, ?, ?)",
                arguments: [newPack.id, newPack.accountID, newPack.storedSize, newPack.plainSize, ms(newPack.createdAt)])
            // Only chunks still in the old pack move; one GC removed meanwhile stays removed.
            let move = try db.makeStatement(sql: "UPDATE chunks SET pack_id = ?, offset = ?, stored_length = ? WHERE account_id = ? AND id = ? AND pack_id = ?")
            for chunk in chunks {
                try move.execute(arguments: [newPack.id, chunk.offset, chunk.storedLength, newPack.accountID, Data(chunk.id.bytes), oldPackID])
            }
            guard try Bool.fetchOne(db, sql: "SELECT 1 FROM chunks WHERE pack_id = ?", arguments: [oldPackID]) == nil else { return }
            try Self.queueGarbage("packs/\(oldPackID)", deletableAt: now.addingTimeInterval(grace), db)
            try db.execute(sql: "DELETE FROM packs WHERE id = ?", arguments: [oldPackID])
        }
    }

    public func dueGarbageObjects(now: Date, limit: Int) async throws -> [String] {
        try await pool.read { db in
            try String.fetchAll(db, sql: "SELECT key FROM garbage_objects WHERE deletable_at <= ? ORDER BY deletable_at LIMIT ?", arguments: [ms(now), limit])
        }
    }

    public func forgetGarbageObjects(_ keys: [String]) async throws {
        try await pool.write { db in
            for key in keys { try db.execute(sql: "DELETE FROM garbage_objects WHERE key = ?", arguments: [key]) }
        }
    }

    public func knownObjectKeys(_ keys: [String]) async throws -> Set<String> {
        try await pool.read { db in
            var known = Set<String>()
            for key in keys {
                let parts = key.split(separator: "/", maxSplits: 1).map(String.init)
                guard parts.count == 2 else { continue }
                let exists: Bool
                switch parts[0] {
                case "packs": exists = try Bool.fetchOne(db, sql: "SELECT 1 FROM packs WHERE id = ?", arguments: [parts[1]]) != nil
                case "manifests":
                    // A segment, `<layer id>-<n>`, belongs to its layer.
                    let layerID = parts[1].split(separator: "-").first.map(String.init) ?? parts[1]
                    exists = try Bool.fetchOne(db, sql: "SELECT 1 FROM layers WHERE id = ?", arguments: [layerID]) != nil
                default: exists = false
                }
                if try exists || Bool.fetchOne(db, sql: "SELECT 1 FROM garbage_objects WHERE key = ?", arguments: [key]) != nil {
                    known.insert(key)
                }
            }
            return known
        }
    }
}
