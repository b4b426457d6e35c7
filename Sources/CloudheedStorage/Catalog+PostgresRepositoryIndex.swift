import CloudheedDomain
import Foundation
import Logging
import NIOCore
import PostgresNIO

/// The repository index in the PostgreSQL catalog: the SQLite index's reference counting, with
/// what several nodes running backups and GC at once need on top.
///
/// Steps that add a reference to stored data (a layer on its parent, a layer to chunks, a
/// backup to its manifest) hold the GC advisory lock shared; the GC steps that remove what has
/// no reference hold it exclusively. So a GC statement starts only after every reference being
/// added has committed, and sees it; and a reference added after GC sees what GC removed, and
/// fails with `chunksCollected` instead of pointing at nothing.
extension PostgresCatalog: RepositoryIndex {
    /// `pg_advisory_xact_lock` key of garbage collection ("chd-gc").
    static let gcLock: Int64 = 0x6368_642D_6763

    static func lockAgainstGC(_ c: PostgresConnection, _ logger: Logger) async throws {
        try await c.run("SELECT pg_advisory_xact_lock_shared(\(gcLock))", logger)
    }

    static func lockForGC(_ c: PostgresConnection, _ logger: Logger) async throws {
        try await c.run("SELECT pg_advisory_xact_lock(\(gcLock))", logger)
    }

    // MARK: Account keys

    public func wrappedDataKey(accountID: String, orInsert candidate: [UInt8]) async throws -> [UInt8] {
        try await transaction { c in
            try await c.run(
                """
                INSERT INTO account_keys (account_id, wrapped_key, created_at) VALUES (\(accountID), \(ByteBuffer(bytes: candidate)), \(ms(Date())))
                ON CONFLICT (account_id) DO NOTHING
                """, logger)
            guard let key = try await c.one("SELECT wrapped_key FROM account_keys WHERE account_id = \(accountID)", logger)?.bytes("wrapped_key") else {
                throw RepositoryError(.keys, "the account's data key could not be stored")
            }
            return key
        }
    }

    public func rewrapAllDataKeys(_ transform: @escaping @Sendable (_ accountID: String, _ wrapped: [UInt8]) throws -> [UInt8]) async throws -> Int {
        try await transaction { c in
            let rows = try await c.rows("SELECT account_id, wrapped_key FROM account_keys ORDER BY account_id FOR UPDATE", logger)
            for row in rows {
                let accountID = row.string("account_id")
                let rewrapped = try transform(accountID, row.bytes("wrapped_key") ?? [])
                try await c.run("UPDATE account_keys SET wrapped_key = \(ByteBuffer(bytes: rewrapped)) WHERE account_id = \(accountID)", logger)
            }
            return rows.count
        }
    }

    public func destroyDataKey(accountID: String) async throws {
        try await transaction { c in try await c.run("DELETE FROM account_keys WHERE account_id = \(accountID)", logger) }
    }

    // MARK: Chunks and packs

    static func buffers(_ ids: some Sequence<ChunkID>) -> [ByteBuffer] {
        ids.map { ByteBuffer(bytes: $0.bytes) }
    }

    public func existingChunks(accountID: String, ids: [ChunkID]) async throws -> Set<ChunkID> {
        guard !ids.isEmpty else { return [] }
        return try await reading { c in
            Set(try await c.rows("SELECT id FROM chunks WHERE account_id = \(accountID) AND id = ANY(\(Self.buffers(ids)))", logger).map { CatalogRows.chunkID($0) })
        }
    }

    public func insertPacks(_ packs: [(pack: PackRecord, chunks: [ChunkLocation])]) async throws {
        try await transaction { c in
            for (pack, chunks) in packs {
                try await c.run(
                    """
                    INSERT INTO packs (id, account_id, stored_size, plain_size, created_at)
                    VALUES (\(pack.id), \(pack.accountID), \(Int64(pack.storedSize)), \(Int64(pack.plainSize)), \(ms(pack.createdAt)))
                    """, logger)
                guard !chunks.isEmpty else { continue }
                // Another node may have stored the same chunk meanwhile: its copy stays the one referenced.
                try await c.run(
                    """
                    INSERT INTO chunks (account_id, id, pack_id, "offset", length, stored_length, created_at)
                    SELECT \(pack.accountID), u.id, \(pack.id), u.o, u.l, u.s, \(ms(pack.createdAt))
                    FROM UNNEST(\(Self.buffers(chunks.map(\.id)))::BYTEA[], \(chunks.map { Int64($0.offset) })::BIGINT[],
                                \(chunks.map { Int64($0.length) })::BIGINT[], \(chunks.map { Int64($0.storedLength) })::BIGINT[]) AS u(id, o, l, s)
                    ON CONFLICT (account_id, id) DO NOTHING
                    """, logger)
            }
        }
    }

    public func chunkLocations(accountID: String, ids: [ChunkID]) async throws -> [ChunkID: ChunkLocation] {
        guard !ids.isEmpty else { return [:] }
        return try await reading { c in
            let rows = try await c.rows(
                "SELECT id, pack_id, \"offset\", length, stored_length FROM chunks WHERE account_id = \(accountID) AND id = ANY(\(Self.buffers(ids)))", logger)
            return Dictionary(rows.map(CatalogRows.chunkLocation).map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        }
    }

    /// Queues an object for deletion once the grace period has passed.
    static func queueGarbage(_ key: String, deletableAt: Date, _ c: PostgresConnection, _ logger: Logger) async throws {
        try await c.run("INSERT INTO garbage_objects (key, deletable_at) VALUES (\(key), \(ms(deletableAt))) ON CONFLICT (key) DO NOTHING", logger)
    }

    // MARK: Layers

    public func openLayer(_ layer: LayerRecord) async throws {
        try await transaction { c in
            if let parent = layer.parentID {
                try await Self.lockAgainstGC(c, logger)
                guard try await !c.rows("UPDATE layers SET refs = refs + 1 WHERE id = \(parent) AND object_checksum <> '' RETURNING 1 AS held", logger).isEmpty else {
                    throw RepositoryError(.chunksCollected, "the parent manifest was garbage-collected while the backup ran")
                }
            }
            try await c.run(
                """
                INSERT INTO layers (id, account_id, parent_id, depth, kind, page_size, entry_count, logical_size, stored_bytes, object_checksum, segments, refs, created_at)
                VALUES (\(layer.id), \(layer.accountID), \(layer.parentID), \(Int64(layer.depth)), \(layer.kind.rawValue), \(Int64(layer.pageSize)),
                    \(Int64(layer.entryCount)), \(layer.logicalSize), \(layer.storedBytes), '', 0, 0, \(ms(layer.createdAt)))
                """, logger)
        }
    }

    public func addLayerReferences(layerID: String, accountID: String, ids: [ChunkID]) async throws -> [ChunkID: Int] {
        guard !ids.isEmpty else { return [:] }
        return try await transaction { c in
            try await Self.lockAgainstGC(c, logger)
            let rows = try await c.rows("SELECT id, stored_length FROM chunks WHERE account_id = \(accountID) AND id = ANY(\(Self.buffers(ids)))", logger)
            let lengths = try CatalogRows.storedLengths(rows, referencing: ids)
            try await c.run(
                """
                INSERT INTO layer_chunks (layer_id, account_id, chunk_id) SELECT \(layerID), \(accountID), UNNEST(\(Self.buffers(lengths.keys))::BYTEA[])
                ON CONFLICT DO NOTHING
                """, logger)
            return lengths
        }
    }

    public func finishLayer(_ layer: LayerRecord) async throws {
        try await transaction { c in
            guard try await !c.rows(
                """
                UPDATE layers SET entry_count = \(Int64(layer.entryCount)), logical_size = \(layer.logicalSize), stored_bytes = \(layer.storedBytes),
                    object_checksum = \(layer.objectChecksum), segments = \(Int64(layer.segments))
                WHERE id = \(layer.id) AND object_checksum = '' RETURNING 1 AS finished
                """, logger).isEmpty
            else { throw RepositoryError(.chunksCollected, "the manifest being written was garbage-collected before it was finished") }
        }
    }

    public func layer(id: String) async throws -> LayerRecord? {
        try await reading { c in try await c.one("SELECT * FROM layers WHERE id = \(id)", logger).map(CatalogRows.layer) }
    }

    public func uniqueBytes(layerIDs: [String]) async throws -> [String: Int64] {
        guard !layerIDs.isEmpty else { return [:] }
        return try await reading { c in
            // Only a layer no other backup builds on (refs <= 1) goes away with its backup.
            let rows = try await c.rows(
                """
                SELECT lc.layer_id AS layer, SUM(ch.stored_length)::BIGINT AS bytes FROM layer_chunks lc
                JOIN layers l ON l.id = lc.layer_id AND l.refs <= 1
                JOIN chunks ch ON ch.account_id = lc.account_id AND ch.id = lc.chunk_id
                WHERE lc.layer_id = ANY(\(layerIDs))
                  AND NOT EXISTS (SELECT 1 FROM layer_chunks o WHERE o.account_id = lc.account_id AND o.chunk_id = lc.chunk_id AND o.layer_id <> lc.layer_id)
                GROUP BY lc.layer_id
                """, logger)
            return Dictionary(rows.map { ($0.string("layer"), $0.int64("bytes")) }, uniquingKeysWith: { first, _ in first })
        }
    }

    /// Drops one reference to a layer and cascades down the chain as layers reach zero.
    static func releaseLayer(_ id: String?, now: Date, grace: TimeInterval, _ c: PostgresConnection, _ logger: Logger) async throws {
        var current = id
        while let layerID = current {
            guard let row = try await c.one("UPDATE layers SET refs = refs - 1 WHERE id = \(layerID) RETURNING refs, parent_id", logger),
                  row.int64("refs") <= 0 else { return }
            current = row.text("parent_id")
            try await dropLayer(layerID, now: now, grace: grace, c, logger)
        }
    }

    static func dropLayer(_ id: String, now: Date, grace: TimeInterval, _ c: PostgresConnection, _ logger: Logger) async throws {
        let segments = try await c.one("SELECT segments FROM layers WHERE id = \(id)", logger)?.int("segments") ?? 0
        let deletableAt = now.addingTimeInterval(grace)
        try await queueGarbage("manifests/\(id)", deletableAt: deletableAt, c, logger)
        // An unfinished layer's segments are not counted; the orphan sweep finds them.
        for n in 0..<segments { try await queueGarbage(ManifestHeader.segmentKey(id, n), deletableAt: deletableAt, c, logger) }
        try await c.run("DELETE FROM layer_chunks WHERE layer_id = \(id)", logger)
        try await c.run("DELETE FROM layers WHERE id = \(id)", logger)
    }

    // MARK: Garbage collection

    /// The cutoff, moved back to the start of the oldest backup still running: what a running
    /// backup has stored is referenced only once it records its manifest, however long it takes.
    static func protectedCutoff(_ cutoff: Date, _ c: PostgresConnection, _ logger: Logger) async throws -> Int64 {
        min(ms(cutoff), try await oldestRunningStart(c, logger) ?? Int64.max)
    }

    static func oldestRunningStart(_ c: PostgresConnection, _ logger: Logger) async throws -> Int64? {
        try await c.one("SELECT MIN(started_at) AS oldest FROM backups WHERE status = 'in_progress'", logger)?.integer("oldest")
    }

    public func oldestRunningBackupStart() async throws -> Date? {
        try await reading { c in try await Self.oldestRunningStart(c, logger).map(date) }
    }

    public func releaseAbandonedLayers(createdBefore: Date, now: Date, grace: TimeInterval) async throws -> Int {
        try await transaction { c in
            try await Self.lockForGC(c, logger)
            let cutoff = try await Self.protectedCutoff(createdBefore, c, logger)
            let rows = try await c.rows("SELECT id, parent_id FROM layers WHERE refs <= 0 AND created_at < \(cutoff) FOR UPDATE", logger)
            for row in rows {
                try await Self.dropLayer(row.string("id"), now: now, grace: grace, c, logger)
                try await Self.releaseLayer(row.text("parent_id"), now: now, grace: grace, c, logger)
            }
            return rows.count
        }
    }

    public func deleteUnreferencedChunks(createdBefore: Date) async throws -> Int {
        try await transaction { c in
            try await Self.lockForGC(c, logger)
            let cutoff = try await Self.protectedCutoff(createdBefore, c, logger)
            return try await c.rows(
                """
                DELETE FROM chunks WHERE created_at < \(cutoff)
                  AND NOT EXISTS (SELECT 1 FROM layer_chunks lc WHERE lc.account_id = chunks.account_id AND lc.chunk_id = chunks.id)
                RETURNING 1 AS deleted
                """, logger).count
        }
    }

    public func retireEmptyPacks(now: Date, grace: TimeInterval) async throws -> Int {
        try await transaction { c in
            try await Self.lockForGC(c, logger)
            let ids = try await c.rows(
                "DELETE FROM packs p WHERE NOT EXISTS (SELECT 1 FROM chunks ch WHERE ch.pack_id = p.id) RETURNING id", logger
            ).map { $0.string("id") }
            for id in ids { try await Self.queueGarbage("packs/\(id)", deletableAt: now.addingTimeInterval(grace), c, logger) }
            return ids.count
        }
    }

    public func sparsePacks(createdBefore: Date, maxLiveFraction: Double, limit: Int) async throws -> [(pack: PackRecord, live: [ChunkLocation])] {
        try await reading { c in
            let packs = try await c.rows(
                """
                SELECT p.* FROM packs p JOIN accounts a ON a.id = p.account_id AND a.deleted_at IS NULL
                WHERE p.created_at < \(ms(createdBefore))
                  AND (SELECT COALESCE(SUM(ch.length), 0) FROM chunks ch WHERE ch.pack_id = p.id) < \(maxLiveFraction) * p.plain_size
                  AND EXISTS (SELECT 1 FROM chunks ch WHERE ch.pack_id = p.id)
                ORDER BY p.created_at LIMIT \(Int64(limit))
                """, logger
            ).map(CatalogRows.pack)
            var result: [(pack: PackRecord, live: [ChunkLocation])] = []
            for pack in packs {
                let live = try await c.rows(
                    "SELECT id, pack_id, \"offset\", length, stored_length FROM chunks WHERE pack_id = \(pack.id) ORDER BY \"offset\"", logger
                ).map(CatalogRows.chunkLocation)
                result.append((pack, live))
            }
            return result
        }
    }

    public func relocateChunks(from oldPackID: String, to newPack: PackRecord, chunks: [ChunkLocation], now: Date, grace: TimeInterval) async throws {
        try await transaction { c in
            try await Self.lockForGC(c, logger)
            try await c.run(
                """
                INSERT INTO packs (id, account_id, stored_size, plain_size, created_at)
                VALUES (\(newPack.id), \(newPack.accountID), \(Int64(newPack.storedSize)), \(Int64(newPack.plainSize)), \(ms(newPack.createdAt)))
                """, logger)
            // Only chunks still in the old pack move; one GC removed meanwhile stays removed.
            if !chunks.isEmpty {
                try await c.run(
                    """
                    UPDATE chunks SET pack_id = \(newPack.id), "offset" = u.o, stored_length = u.s
                    FROM UNNEST(\(Self.buffers(chunks.map(\.id)))::BYTEA[], \(chunks.map { Int64($0.offset) })::BIGINT[],
                                \(chunks.map { Int64($0.storedLength) })::BIGINT[]) AS u(id, o, s)
                    WHERE chunks.account_id = \(newPack.accountID) AND chunks.id = u.id AND chunks.pack_id = \(oldPackID)
                    """, logger)
            }
            guard try await !c.exists("SELECT 1 FROM chunks WHERE pack_id = \(oldPackID) LIMIT 1", logger) else { return }
            try await Self.queueGarbage("packs/\(oldPackID)", deletableAt: now.addingTimeInterval(grace), c, logger)
            try await c.run("DELETE FROM packs WHERE id = \(oldPackID)", logger)
        }
    }

    public func dueGarbageObjects(now: Date, limit: Int) async throws -> [String] {
        try await reading { c in
            try await c.rows("SELECT key FROM garbage_objects WHERE deletable_at <= \(ms(now)) ORDER BY deletable_at LIMIT \(Int64(limit))", logger).map { $0.string("key") }
        }
    }

    public func forgetGarbageObjects(_ keys: [String]) async throws {
        guard !keys.isEmpty else { return }
        try await transaction { c in try await c.run("DELETE FROM garbage_objects WHERE key = ANY(\(keys))", logger) }
    }

    public func knownObjectKeys(_ keys: [String]) async throws -> Set<String> {
        var packs: [String: String] = [:]
        var layers: [String: String] = [:]
        for key in keys {
            let parts = key.split(separator: "/", maxSplits: 1).map(String.init)
            guard parts.count == 2 else { continue }
            switch parts[0] {
            case "packs": packs[key] = parts[1]
            // A segment, `<layer id>-<n>`, belongs to its layer.
            case "manifests": layers[key] = parts[1].split(separator: "-").first.map(String.init) ?? parts[1]
            default: break
            }
        }
        let (packIDs, layerIDs) = (Array(Set(packs.values)), Array(Set(layers.values)))
        return try await reading { c in
            let knownPacks = Set(try await c.rows("SELECT id FROM packs WHERE id = ANY(\(packIDs))", logger).map { $0.string("id") })
            let knownLayers = Set(try await c.rows("SELECT id FROM layers WHERE id = ANY(\(layerIDs))", logger).map { $0.string("id") })
            let queued = Set(try await c.rows("SELECT key FROM garbage_objects WHERE key = ANY(\(keys))", logger).map { $0.string("key") })
            return Set(keys.filter { key in
                queued.contains(key) || packs[key].map(knownPacks.contains) == true || layers[key].map(knownLayers.contains) == true
            })
        }
    }
}
