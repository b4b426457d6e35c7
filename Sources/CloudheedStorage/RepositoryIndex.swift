import CloudheedDomain
import Foundation

/// Where a stored chunk lives: a byte range of a pack's plaintext.
public struct ChunkLocation: Sendable, Equatable {
    public var id: ChunkID
    public var packID: String
    public var offset: Int
    public var length: Int
    /// The chunk's share of its pack's stored (compressed, encrypted) size.
    public var storedLength: Int

    public init(id: ChunkID, packID: String, offset: Int, length: Int, storedLength: Int) {
        self.id = id
        self.packID = packID
        self.offset = offset
        self.length = length
        self.storedLength = storedLength
    }
}

public struct PackRecord: Sendable, Equatable {
    public var id: String
    public var accountID: String
    public var storedSize: Int
    public var plainSize: Int
    public var createdAt: Date
    public var objectKey: String { "packs/\(id)" }

    public init(id: String, accountID: String, storedSize: Int, plainSize: Int, createdAt: Date) {
        self.id = id
        self.accountID = accountID
        self.storedSize = storedSize
        self.plainSize = plainSize
        self.createdAt = createdAt
    }
}

/// A manifest layer: a backup's chunk list, stored whole or as the changes against its parent.
public struct LayerRecord: Sendable, Equatable {
    public enum Kind: String, Sendable { case pagesFull = "pages-full", pagesDelta = "pages-delta", stream }
    public var id: String
    public var accountID: String
    public var parentID: String?
    /// Layers below this one; bounded so reading a manifest stays cheap.
    public var depth: Int
    public var kind: Kind
    public var pageSize: Int
    public var entryCount: Int
    public var logicalSize: Int64
    public var storedBytes: Int64
    /// SHA-256 of the sealed header object; empty while the layer is being written.
    public var objectChecksum: String
    /// Segment objects (`manifests/<id>-<n>`, see `ManifestHeader`) the layer may have.
    public var segments: Int
    public var createdAt: Date
    public var objectKey: String { "manifests/\(id)" }

    public init(
        id: String, accountID: String, parentID: String?, depth: Int, kind: Kind, pageSize: Int, entryCount: Int,
        logicalSize: Int64, storedBytes: Int64, objectChecksum: String, segments: Int = 0, createdAt: Date
    ) {
        self.id = id
        self.accountID = accountID
        self.parentID = parentID
        self.depth = depth
        self.kind = kind
        self.pageSize = pageSize
        self.entryCount = entryCount
        self.logicalSize = logicalSize
        self.storedBytes = storedBytes
        self.objectChecksum = objectChecksum
        self.segments = segments
        self.createdAt = createdAt
    }
}

/// The repository's bookkeeping, kept in the catalog database so that deleting a backup and
/// releasing its data are one transaction. Work per backup is proportional to what changed:
/// a layer records only the chunks its backup added over its parent.
public protocol RepositoryIndex: AccountKeyStore {
    /// Which of `ids` the account already stores.
    func existingChunks(accountID: String, ids: [ChunkID]) async throws -> Set<ChunkID>
    /// Records packs already durable in storage and the chunks in them, in one transaction.
    func insertPacks(_ packs: [(pack: PackRecord, chunks: [ChunkLocation])]) async throws
    func chunkLocations(accountID: String, ids: [ChunkID]) async throws -> [ChunkID: ChunkLocation]
    /// Records a layer a backup starts writing (checksum empty); the parent gains a reference, or
    /// this throws `RepositoryError(.chunksCollected)` when GC removed the parent meanwhile. A
    /// layer no backup ever takes is dropped by GC like any other unreferenced one.
    func openLayer(_ layer: LayerRecord) async throws
    /// Adds references from a layer to chunks of its account, checking in the same transaction
    /// that each exists: GC may have removed one between the backup's lookup and now, and then
    /// this throws `RepositoryError(.chunksCollected)`. Returns each chunk's stored length.
    /// Called a manifest segment at a time, so no list of all of a backup's chunks is ever held.
    func addLayerReferences(layerID: String, accountID: String, ids: [ChunkID]) async throws -> [ChunkID: Int]
    /// Completes an open layer: sizes, counts, segments and the header's checksum.
    func finishLayer(_ layer: LayerRecord) async throws
    func layer(id: String) async throws -> LayerRecord?
    /// Bytes that deleting each backup whose top layer is given would free (absent: 0), in one
    /// read: a list of 40 backups costs one query, not 40.
    func uniqueBytes(layerIDs: [String]) async throws -> [String: Int64]

    // MARK: Garbage collection (each step safe to interrupt and to run on several nodes)
    /// Drops layers no backup and no child refers to, older than `before` (abandoned attempts).
    /// Neither this nor `deleteUnreferencedChunks` touches anything stored since the oldest
    /// running backup started.
    func releaseAbandonedLayers(createdBefore: Date, now: Date, grace: TimeInterval) async throws -> Int
    /// Deletes chunk rows no layer refers to, created before `before`; returns how many.
    func deleteUnreferencedChunks(createdBefore: Date) async throws -> Int
    /// Forgets packs without chunks, queueing their objects for deletion after the grace period.
    func retireEmptyPacks(now: Date, grace: TimeInterval) async throws -> Int
    /// Packs created before `createdBefore` whose live chunks hold less than `maxLiveFraction` of
    /// their bytes (accounts not deleted), with those live chunks: candidates for rewriting.
    func sparsePacks(createdBefore: Date, maxLiveFraction: Double, limit: Int) async throws -> [(pack: PackRecord, live: [ChunkLocation])]
    /// Points the chunks still in `oldPackID` at their copies in `newPack` (already durable), and
    /// retires the old pack if nothing is left in it, all in one transaction.
    func relocateChunks(from oldPackID: String, to newPack: PackRecord, chunks: [ChunkLocation], now: Date, grace: TimeInterval) async throws
    /// When the backup running longest started (nil: none runs). What it uploaded is known to the
    /// index only once recorded, so the orphan sweep leaves everything since alone.
    func oldestRunningBackupStart() async throws -> Date?
    /// Objects whose deletion is due.
    func dueGarbageObjects(now: Date, limit: Int) async throws -> [String]
    func forgetGarbageObjects(_ keys: [String]) async throws
    /// Which of `keys` the index knows (packs, manifests, or queued garbage).
    func knownObjectKeys(_ keys: [String]) async throws -> Set<String>
}

extension RepositoryIndex {
    /// A whole layer at once: opened, its references added, finished.
    public func insertLayer(_ layer: LayerRecord, chunkIDs: [ChunkID]) async throws {
        try await openLayer(layer)
        _ = try await addLayerReferences(layerID: layer.id, accountID: layer.accountID, ids: chunkIDs)
        try await finishLayer(layer)
    }
}
