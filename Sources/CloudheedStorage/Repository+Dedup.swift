import CloudheedDomain
import Crypto
import Foundation
import Metrics

/// Repository format v1: deduplicated, compressed, encrypted, verifiable.
///
/// - A chunk is a page (page-structured snapshots) or a content-defined piece of a stream. Its id
///   is HMAC-SHA-256 of its plaintext under the account's id key; the account stores it once.
/// - New chunks are gathered into packs of about `packSize` bytes; a pack is compressed (zstd)
///   and encrypted (AES-256-GCM, id and kind bound as associated data) as one unit.
/// - Each backup has a manifest layer: the full chunk list, or the pages that differ from its
///   parent's. Only changed pages cost index lookups, stores and reference counting.
/// - Manifests are written and read a segment (65,536 pages) at a time, and the layer's chunk
///   references recorded per segment, so memory does not grow with the database.
/// - Packs are sealed and uploaded by up to `concurrency` tasks while reading and hashing go on,
///   with at most that many packs in memory; nothing holds the whole database.
public struct DedupRepository: BackupRepository {
    let index: any RepositoryIndex
    let blobs: any BlobStore
    let keyRing: KeyRing
    let clock: any WallClock
    let ids: any IDGenerator
    let compression: CompressionSetting
    let packSize: Int
    let concurrency: Int
    let cdc: FastCDCParameters
    /// Unreferenced data younger than this is never collected.
    let grace: TimeInterval
    /// Layers a manifest chain may have before a backup writes a full manifest again.
    let maxDepth: Int
    /// Pages (or stream entries) per manifest segment: what a backup or restore holds of a
    /// manifest at a time.
    let segmentSpan: Int

    public init(
        index: any RepositoryIndex, blobs: any BlobStore, keyRing: KeyRing, clock: any WallClock, ids: any IDGenerator,
        compression: CompressionSetting = .default, packSize: Int = 4 << 20,
        concurrency: Int = ProcessInfo.processInfo.activeProcessorCount, cdc: FastCDCParameters = .default,
        grace: TimeInterval = 3600, maxDepth: Int = 8, segmentSpan: Int = 65536
    ) {
        self.index = index
        self.blobs = blobs
        self.keyRing = keyRing
        self.clock = clock
        self.ids = ids
        self.compression = compression
        self.packSize = packSize
        self.concurrency = max(1, concurrency)
        self.cdc = cdc
        self.grace = grace
        self.maxDepth = maxDepth
        self.segmentSpan = max(1, segmentSpan)
    }

    func keys(_ accountID: String) async throws -> AccountKeys {
        do {
            return try await keyRing.keys(for: accountID)
        } catch let error as KeyError {
            throw RepositoryError(.keys, error.message)
        }
    }

    // MARK: Storing

    /// Chunks not stored yet, accumulated into packs that are sealed and uploaded concurrently.
    struct PackBuffer {
        var chunks: [(id: ChunkID, bytes: ArraySlice<UInt8>)] = []
        var size = 0
    }

    struct SealedPack: Sendable {
        var record: PackRecord
        var locations: [ChunkLocation]
    }

    func sealAndUpload(_ buffer: PackBuffer, accountID: String, keys: AccountKeys) async throws -> SealedPack {
        let packID = ids.randomString(count: 24)
        let (plaintext, offsets) = PackLayout.encode(buffer.chunks)
        let sealed = try SealedUnit.seal(plaintext, kind: .pack, id: packID, key: keys.encryptionKey, compression: compression)
        let record = PackRecord(id: packID, accountID: accountID, storedSize: sealed.count, plainSize: plaintext.count, createdAt: clock.now())
        // Durable later, in a group (`publish`), before any index row points into it.
        try await blobs.putBuffered(record.objectKey, sealed)
        let ratio = Double(sealed.count) / Double(max(1, plaintext.count))
        let locations = zip(buffer.chunks, offsets).map { chunk, offset in
            ChunkLocation(id: chunk.id, packID: packID, offset: offset, length: chunk.bytes.count,
                          storedLength: max(1, Int((Double(chunk.bytes.count) * ratio).rounded())))
        }
        return SealedPack(record: record, locations: locations)
    }

    /// Packs sealed but not yet indexed are made durable with one sync, then indexed together:
    /// an index row never points at a pack a power loss could take away.
    static let publishBatch = 16

    func publish(_ state: inout StoreState, force: Bool) async throws {
        guard !state.unpublished.isEmpty, force || state.unpublished.count >= Self.publishBatch else { return }
        try await blobs.syncBuffered()
        try await index.insertPacks(state.unpublished.map { ($0.record, $0.locations) })
        for pack in state.unpublished { state.published += pack.locations.map(\.id) }
        state.unpublished.removeAll()
    }

    typealias PackTasks = ThrowingTaskGroup<SealedPack, any Error>

    /// Buffers a new chunk; a full buffer becomes a pack, sealed and uploaded by a task of its own.
    func add(_ id: ChunkID, _ bytes: ArraySlice<UInt8>, to state: inout StoreState, tasks: inout PackTasks, accountID: String, keys: AccountKeys) async throws {
        state.pending.insert(id)
        state.newPlainBytes += Int64(bytes.count)
        state.buffer.chunks.append((id, bytes))
        state.buffer.size += bytes.count
        if state.buffer.size >= packSize { try await flush(&state, tasks: &tasks, accountID: accountID, keys: keys) }
    }

    /// Hands the buffer to a sealing task, first waiting while `concurrency` packs are in flight,
    /// so at most that many packs are in memory.
    func flush(_ state: inout StoreState, tasks: inout PackTasks, accountID: String, keys: AccountKeys) async throws {
        guard !state.buffer.chunks.isEmpty else { return }
        let buffer = state.buffer
        state.buffer = PackBuffer()
        while state.inFlight >= concurrency, let done = try await tasks.next() { collect(done, into: &state) }
        try await publish(&state, force: false)
        state.inFlight += 1
        tasks.addTask { try await sealAndUpload(buffer, accountID: accountID, keys: keys) }
    }

    /// Seals what is buffered, waits for every pack, and publishes them all: afterwards every
    /// chunk added so far is in the index.
    func drain(_ state: inout StoreState, tasks: inout PackTasks, accountID: String, keys: AccountKeys) async throws {
        try await flush(&state, tasks: &tasks, accountID: accountID, keys: keys)
        while let done = try await tasks.next() { collect(done, into: &state) }
        try await publish(&state, force: true)
    }

    func collect(_ pack: SealedPack, into state: inout StoreState) {
        state.writtenBytes += Int64(pack.record.storedSize)
        state.inFlight -= 1
        state.unpublished.append(pack)
    }

    /// Bookkeeping while packs are in flight. Nothing here grows with the database: chunks this
    /// run added are remembered only until the index knows them.
    struct StoreState {
        /// Chunks this run added whose packs the index may not know yet.
        var pending: Set<ChunkID> = []
        /// Chunks published since the last index lookup; they leave `pending` at the next one.
        var published: [ChunkID] = []
        var buffer = PackBuffer()
        var inFlight = 0
        var unpublished: [SealedPack] = []
        /// Plaintext bytes of the chunks this run stored anew, and their sealed packs' bytes.
        var newPlainBytes: Int64 = 0
        var writtenBytes: Int64 = 0

        /// Before an index lookup: what was published is now the index's to answer for.
        mutating func settle() {
            for id in published { pending.remove(id) }
            published.removeAll(keepingCapacity: true)
        }
    }

    /// The manifest of a layer being written, a segment at a time.
    struct LayerWriter {
        var record: LayerRecord
        var segments: [ManifestHeader.Segment] = []
    }

    /// Seals and stores the layer's next segment (nil: a delta segment without changes).
    func write(_ segment: ManifestSegment?, to writer: inout LayerWriter, keys: AccountKeys) async throws {
        guard let segment else { writer.segments.append(.absent); return }
        let n = writer.segments.count
        // Mostly random chunk ids: compressing them costs time for nothing.
        let sealed = try SealedUnit.seal(
            segment.encoded(), kind: .manifest, id: ManifestHeader.segmentName(writer.record.id, n), key: keys.encryptionKey, compression: .none)
        try await blobs.putBuffered(ManifestHeader.segmentKey(writer.record.id, n), sealed)
        writer.segments.append(.init(count: segment.count, checksum: Array(SHA256.hash(data: sealed))))
    }

    /// A full segment's references: every distinct chunk of it, each counted once in the
    /// layer's stored bytes.
    func referenceAll(_ ids: [ChunkID], in writer: inout LayerWriter) async throws {
        let lengths = try await index.addLayerReferences(layerID: writer.record.id, accountID: writer.record.accountID, ids: Array(Set(ids)))
        writer.record.storedBytes += lengths.values.reduce(Int64(0)) { $0 + Int64($1) }
    }

    /// Makes the segments durable, stores the header that authenticates them, and completes the
    /// layer in the index.
    func finish(_ writer: LayerWriter, kind: ManifestHeader.Kind, state: StoreState, keys: AccountKeys) async throws -> StoredObject {
        var record = writer.record
        let header = ManifestHeader(
            kind: kind, pageSize: record.pageSize, totalCount: record.entryCount, logicalSize: record.logicalSize, span: segmentSpan,
            segments: writer.segments, metadata: [:])
        let sealed = try SealedUnit.seal(header.encoded(), kind: .manifest, id: record.id, key: keys.encryptionKey, compression: .none)
        try await blobs.syncBuffered()
        try await blobs.put(record.objectKey, sealed)
        record.objectChecksum = Array(SHA256.hash(data: sealed)).hex
        record.segments = writer.segments.count
        try await index.finishLayer(record)
        // Created here, not held: a metrics system bootstrapped after this type was first used
        // still gets them.
        Counter(label: "cloudheed_backup_bytes_read_total").increment(by: record.logicalSize)
        Counter(label: "cloudheed_backup_bytes_written_total").increment(by: state.writtenBytes)
        Counter(label: "cloudheed_backup_bytes_deduplicated_total").increment(by: max(0, record.logicalSize - state.newPlainBytes))
        return StoredObject(key: record.id, sizeBytes: record.logicalSize, checksum: record.objectChecksum, storedBytes: record.storedBytes)
    }

    public func storePages(ofFile path: String, pageSize: Int, target: BackupTarget) async throws -> StoredObject {
        // A chunk reused from the index may be collected by a concurrent GC before this backup
        // refers to it; recording the reference notices, and the backup is stored again.
        var attempt = 0
        while true {
            attempt += 1
            do {
                return try await storePagesOnce(path: path, pageSize: pageSize, target: target, useParent: attempt == 1)
            } catch let error as RepositoryError where error.kind == .chunksCollected && attempt < 3 {
                continue
            }
        }
    }

    /// Reads the snapshot a segment of `segmentSpan` pages at a time. Per segment: compare with
    /// the parent's pages there, store the new chunks, record the layer's references (drained
    /// first, so every chunk is in the index), update the stored bytes, write the segment.
    func storePagesOnce(path: String, pageSize: Int, target: BackupTarget, useParent: Bool) async throws -> StoredObject {
        guard pageSize >= 512, pageSize <= 65536 else { throw RepositoryError(.corrupt, "unsupported page size \(pageSize)") }
        let keys = try await keys(target.accountID)
        let fileSize = Int((try FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.int64Value ?? 0)
        guard fileSize % pageSize == 0 else { throw RepositoryError(.corrupt, "snapshot size \(fileSize) is not a multiple of the page size \(pageSize)") }
        let pageCount = fileSize / pageSize
        let meter = ProgressMeter.current
        meter?.reset(total: Int64(fileSize))

        var chain: [ChainLayer] = []
        if useParent, let parent = target.parent, let layer = try await index.layer(id: parent.key),
           layer.accountID == target.accountID, layer.kind != .stream, layer.pageSize == pageSize {
            chain = try await loadChain(layer, keys: keys)
            if chain.last?.header.span != segmentSpan { chain = [] }
        }
        let parent = chain.last
        let delta = parent.map { $0.record.depth + 1 < maxDepth } ?? false
        var writer = LayerWriter(record: LayerRecord(
            id: "mf" + ids.randomString(count: 22), accountID: target.accountID, parentID: delta ? parent!.record.id : nil,
            depth: delta ? parent!.record.depth + 1 : 0, kind: delta ? .pagesDelta : .pagesFull, pageSize: pageSize, entryCount: pageCount,
            logicalSize: Int64(fileSize), storedBytes: delta ? parent!.record.storedBytes : 0, objectChecksum: "", createdAt: clock.now()))
        try await index.openLayer(writer.record)

        guard let handle = FileHandle(forReadingAtPath: path) else { throw RepositoryError(.io, "cannot read the snapshot") }
        defer { try? handle.close() }
        let batchPages = max(1, (4 << 20) / pageSize)
        let segmentCount = (pageCount + segmentSpan - 1) / segmentSpan
        let parentSegments = parent?.header.segments.count ?? 0
        var state = StoreState()

        try await withThrowingTaskGroup(of: SealedPack.self) { tasks in
            for n in 0..<max(segmentCount, parentSegments) {
                let old = n < parentSegments ? try await composedSegment(chain, n, keys: keys) : []
                let first = n * segmentSpan
                let count = max(0, min(pageCount - first, segmentSpan))
                var new: [ChunkID] = []
                new.reserveCapacity(count)
                while new.count < count {
                    try Task.checkCancellation()
                    let wanted = min(batchPages, count - new.count)
                    guard let data = try handle.read(upToCount: wanted * pageSize), data.count == wanted * pageSize else {
                        throw RepositoryError(.io, "the snapshot changed size while it was read")
                    }
                    let bytes = [UInt8](data)
                    meter?.add(bytes.count)
                    let batchIDs = await hashPages(bytes, count: wanted, pageSize: pageSize, keys: keys)
                    var candidates: [(offset: Int, id: ChunkID)] = []
                    state.settle()
                    for (j, id) in batchIDs.enumerated() {
                        let i = new.count
                        new.append(id)
                        if i < old.count, old[i] == id { continue }
                        if state.pending.contains(id) { continue }
                        candidates.append((j * pageSize, id))
                    }
                    guard !candidates.isEmpty else { continue }
                    let existing = try await index.existingChunks(accountID: target.accountID, ids: Array(Set(candidates.map(\.id))))
                    for candidate in candidates where !existing.contains(candidate.id) && !state.pending.contains(candidate.id) {
                        try await add(candidate.id, bytes[candidate.offset..<(candidate.offset + pageSize)], to: &state, tasks: &tasks,
                                      accountID: target.accountID, keys: keys)
                    }
                }
                try await drain(&state, tasks: &tasks, accountID: target.accountID, keys: keys)
                if delta {
                    let changes = (0..<new.count).filter { $0 >= old.count || old[$0] != new[$0] }.map { (index: first + $0, id: new[$0]) }
                    writer.record.storedBytes += try await deltaStoredBytes(old: old, new: new, changed: changes.map(\.id), layerID: writer.record.id, accountID: target.accountID)
                    if n < segmentCount { try await write(changes.isEmpty ? nil : .delta(changes), to: &writer, keys: keys) }
                } else if n < segmentCount {
                    try await referenceAll(new, in: &writer)
                    try await write(.pages(new), to: &writer, keys: keys)
                }
            }
        }
        return try await finish(writer, kind: delta ? .delta : .pages, state: state, keys: keys)
    }

    /// HMAC of every page of a batch, spread over the cores.
    func hashPages(_ bytes: [UInt8], count: Int, pageSize: Int, keys: AccountKeys) async -> [ChunkID] {
        let slices = min(concurrency, count)
        let per = (count + slices - 1) / slices
        return await withTaskGroup(of: (Int, [ChunkID]).self) { group in
            for s in 0..<slices {
                let start = s * per, end = min(count, start + per)
                guard start < end else { continue }
                group.addTask {
                    bytes.withUnsafeBytes { raw in
                        (s, (start..<end).map { keys.chunkID(of: UnsafeRawBufferPointer(rebasing: raw[($0 * pageSize)..<(($0 + 1) * pageSize)])) })
                    }
                }
            }
            var parts = [[ChunkID]](repeating: [], count: slices)
            for await (s, part) in group { parts[s] = part }
            return parts.flatMap { $0 }
        }
    }

    /// How one segment of a delta layer changes the stored bytes, counting each chunk once per
    /// segment: the chunks the segment gains minus those it no longer has. `changed` are the ids
    /// at the pages that differ from the parent; they become the layer's references. Only those
    /// pages are looked up, so the index work is proportional to the change.
    func deltaStoredBytes(old: [ChunkID], new: [ChunkID], changed: [ChunkID], layerID: String, accountID: String) async throws -> Int64 {
        var touchedOld = Set<ChunkID>()
        for i in 0..<old.count where i >= new.count || old[i] != new[i] { touchedOld.insert(old[i]) }
        let touchedNew = Set(changed)
        guard !touchedOld.isEmpty || !touchedNew.isEmpty else { return 0 }
        // An old chunk is gone only if no page of the new segment still uses it; a new one is
        // gained only if no page of the parent's segment used it.
        var stillUsed = Set<ChunkID>(), alreadyThere = Set<ChunkID>()
        for id in new where touchedOld.contains(id) { stillUsed.insert(id) }
        for id in old where touchedNew.contains(id) { alreadyThere.insert(id) }
        let lengths = try await index.addLayerReferences(layerID: layerID, accountID: accountID, ids: Array(touchedNew))
        let gained = touchedNew.subtracting(alreadyThere).reduce(Int64(0)) { $0 + Int64(lengths[$1] ?? 0) }
        let removed = Array(touchedOld.subtracting(stillUsed))
        let lost = removed.isEmpty ? 0 : try await index.chunkLocations(accountID: accountID, ids: removed).values.reduce(Int64(0)) { $0 + Int64($1.storedLength) }
        return gained - lost
    }

    public func storeStream<Bytes: AsyncSequence & Sendable>(_ bytes: Bytes, target: BackupTarget) async throws -> StoredObject
    where Bytes.Element == [UInt8] {
        let keys = try await keys(target.accountID)
        var splitter = FastCDCSplitter(cdc)
        var writer = LayerWriter(record: LayerRecord(
            id: "mf" + ids.randomString(count: 22), accountID: target.accountID, parentID: nil, depth: 0, kind: .stream, pageSize: 0,
            entryCount: 0, logicalSize: 0, storedBytes: 0, objectChecksum: "", createdAt: clock.now()))
        try await index.openLayer(writer.record)
        var entries: [(length: Int, id: ChunkID)] = []
        var state = StoreState()
        let meter = ProgressMeter.current
        meter?.reset(total: nil)

        try await withThrowingTaskGroup(of: SealedPack.self) { tasks in
            /// A full segment: its chunks indexed, referenced, counted once each, and written.
            func endSegment() async throws {
                guard !entries.isEmpty else { return }
                try await drain(&state, tasks: &tasks, accountID: target.accountID, keys: keys)
                try await referenceAll(entries.map(\.id), in: &writer)
                writer.record.entryCount += entries.count
                try await write(.stream(entries), to: &writer, keys: keys)
                entries.removeAll(keepingCapacity: true)
            }
            /// A batch of chunks: hashed in parallel, looked up in one query, new ones packed.
            func take(_ chunks: [[UInt8]]) async throws {
                guard !chunks.isEmpty else { return }
                let chunkIDs = await withTaskGroup(of: (Int, ChunkID).self) { group in
                    for (i, chunk) in chunks.enumerated() { group.addTask { (i, keys.chunkID(of: chunk)) } }
                    var out = [ChunkID](repeating: .zero, count: chunks.count)
                    for await (i, id) in group { out[i] = id }
                    return out
                }
                state.settle()
                let existing = try await index.existingChunks(accountID: target.accountID, ids: Array(Set(chunkIDs).subtracting(state.pending)))
                for (chunk, id) in zip(chunks, chunkIDs) {
                    entries.append((chunk.count, id))
                    writer.record.logicalSize += Int64(chunk.count)
                    if !state.pending.contains(id), !existing.contains(id) {
                        try await add(id, chunk[...], to: &state, tasks: &tasks, accountID: target.accountID, keys: keys)
                    }
                    if entries.count == segmentSpan { try await endSegment() }
                }
            }
            // About 8 MiB gathers before chunks are cut, so each batch has several to hash at once.
            for try await piece in bytes {
                try Task.checkCancellation()
                meter?.add(piece.count)
                try await take(splitter.append(piece, batch: 8 << 20))
            }
            try await take(splitter.finish())
            try await endSegment()
        }
        return try await finish(writer, kind: .stream, state: state, keys: keys)
    }

    // MARK: Reading manifests

    struct ChainLayer {
        var record: LayerRecord
        var header: ManifestHeader
    }

    func layerRecord(_ object: StoredObject, accountID: String) async throws -> LayerRecord {
        guard let record = try await index.layer(id: object.key), record.accountID == accountID, !record.objectChecksum.isEmpty else {
            throw RepositoryError(.missing, "the manifest of this backup is missing from the index")
        }
        return record
    }

    func loadHeader(_ record: LayerRecord, keys: AccountKeys) async throws -> ManifestHeader {
        let sealed = try await blobs.get(record.objectKey)
        guard Array(SHA256.hash(data: sealed)).hex == record.objectChecksum else {
            throw RepositoryError(.corrupt, "manifest \(record.id) does not match its recorded checksum (stored bytes were altered)")
        }
        let header = try ManifestHeader.decode(SealedUnit.open(sealed, kind: .manifest, id: record.id, key: keys.encryptionKey), name: record.id)
        let pageSegments = (header.totalCount + header.span - 1) / header.span
        guard header.recordKind == record.kind, header.totalCount == record.entryCount, header.kind == .stream || header.segments.count == pageSegments
        else { throw RepositoryError(.corrupt, "manifest \(record.id) is malformed") }
        return header
    }

    /// A layer and the layers below it, base first: a full page layer, then deltas.
    func loadChain(_ top: LayerRecord, keys: AccountKeys) async throws -> [ChainLayer] {
        var records = [top]
        while let parentID = records.last!.parentID {
            guard let parent = try await index.layer(id: parentID) else {
                throw RepositoryError(.missing, "manifest \(parentID), below \(top.id), is missing from the index")
            }
            records.append(parent)
        }
        var chain: [ChainLayer] = []
        for record in records.reversed() {
            let header = try await loadHeader(record, keys: keys)
            guard header.kind == (chain.isEmpty ? (record.kind == .stream ? .stream : .pages) : .delta),
                  chain.isEmpty || (header.span == chain[0].header.span && header.pageSize == chain[0].header.pageSize) else {
                throw RepositoryError(.corrupt, "manifest \(record.id) does not fit the manifests below it")
            }
            chain.append(ChainLayer(record: record, header: header))
        }
        return chain
    }

    /// Segment `n` of a layer as stored, checked against the header; nil for an absent delta segment.
    func loadSegment(_ layer: ChainLayer, _ n: Int, keys: AccountKeys) async throws -> ManifestSegment? {
        guard n < layer.header.segments.count, layer.header.segments[n].isPresent else { return nil }
        let name = ManifestHeader.segmentName(layer.record.id, n)
        let sealed = try await blobs.get(ManifestHeader.segmentKey(layer.record.id, n))
        guard Array(SHA256.hash(data: sealed)) == layer.header.segments[n].checksum else {
            throw RepositoryError(.corrupt, "manifest \(name) does not match its recorded checksum (stored bytes were altered)")
        }
        let segment = try ManifestSegment.decode(SealedUnit.open(sealed, kind: .manifest, id: name, key: keys.encryptionKey), name: name)
        guard segment.kind == layer.header.kind, segment.count == layer.header.segments[n].count else {
            throw RepositoryError(.corrupt, "manifest \(name) is malformed")
        }
        return segment
    }

    /// The chunk ids of pages `n * span ..< (n + 1) * span` of the chain's top layer: the base
    /// layer's segment with every delta above it applied.
    func composedSegment(_ chain: [ChainLayer], _ n: Int, keys: AccountKeys) async throws -> [ChunkID] {
        var ids: [ChunkID] = []
        for layer in chain {
            let first = n * layer.header.span
            let count = max(0, min(layer.header.totalCount - first, layer.header.span))
            switch try await loadSegment(layer, n, keys: keys) {
            case .pages(let pages)?:
                ids = pages
            case .delta(let changes)?:
                if ids.count > count { ids.removeLast(ids.count - count) }
                while ids.count < count { ids.append(ChunkID.zero) }
                for change in changes {
                    guard change.index >= first, change.index < first + count else { throw RepositoryError(.corrupt, "manifest \(layer.record.id) is malformed") }
                    ids[change.index - first] = change.id
                }
            case nil:
                if layer.header.kind == .pages { ids = [] }
                if ids.count > count { ids.removeLast(ids.count - count) }
            case .stream?:
                throw RepositoryError(.corrupt, "manifest \(layer.record.id) is not a page manifest")
            }
            guard ids.count == count else { throw RepositoryError(.corrupt, "manifest \(layer.record.id) is malformed") }
        }
        return ids
    }

    /// Every chunk a backup needs, with where it lives; a chunk the index lost is an error.
    func locate(_ distinct: [ChunkID], accountID: String) async throws -> [ChunkID: ChunkLocation] {
        let locations = try await index.chunkLocations(accountID: accountID, ids: distinct)
        if let lost = distinct.first(where: { locations[$0] == nil }) {
            throw RepositoryError(.missing, "chunk \(lost) of this backup is missing from the index")
        }
        return locations
    }

    func openPack(_ packID: String, keys: AccountKeys) async throws -> [UInt8] {
        try SealedUnit.open(try await blobs.get("packs/\(packID)"), kind: .pack, id: packID, key: keys.encryptionKey)
    }

    /// The chunk's bytes from an opened pack, checked against its id.
    func extract(_ location: ChunkLocation, from plaintext: [UInt8], keys: AccountKeys) throws -> ArraySlice<UInt8> {
        let slice = try PackLayout.chunk(in: plaintext, offset: location.offset, length: location.length, expected: location.id, pack: location.packID)
        let actual = slice.withUnsafeBytes { keys.chunkID(of: $0) }
        guard actual == location.id else {
            throw RepositoryError(.corrupt, "chunk \(location.id) in pack \(location.packID) does not match its id")
        }
        return slice
    }

    /// Restores and verification work on windows of this many segments (about a million
    /// pages), so a pack is fetched once per window however its pages are spread.
    static func windowSegments(span: Int) -> Int { max(1, (1 << 20) / span) }

    /// The page ids of the window of segments starting at segment `n` (the manifest's own span,
    /// whatever this repository writes).
    func window(_ chain: [ChainLayer], from n: Int, keys: AccountKeys) async throws -> [ChunkID] {
        let top = chain.last!.header
        let end = min(top.segments.count, n + Self.windowSegments(span: top.span))
        var ids: [ChunkID] = []
        for s in n..<end { ids += try await composedSegment(chain, s, keys: keys) }
        return ids
    }

    // MARK: Restoring

    public func restorePages(_ object: StoredObject, accountID: String, toFile path: String) async throws {
        let keys = try await keys(accountID)
        let record = try await layerRecord(object, accountID: accountID)
        let chain = try await loadChain(record, keys: keys)
        let top = chain.last!.header
        let pageSize = top.pageSize
        guard top.kind != .stream, Int64(top.totalCount * pageSize) == object.sizeBytes else {
            throw RepositoryError(.corrupt, "the manifest describes \(top.totalCount * pageSize) bytes, the backup \(object.sizeBytes)")
        }
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard fd >= 0 else { throw RepositoryError(.io, "cannot create the restored file: errno \(errno)") }
        defer { close(fd) }
        guard ftruncate(fd, off_t(object.sizeBytes)) == 0 else { throw RepositoryError(.io, "cannot size the restored file: errno \(errno)") }
        ProgressMeter.current?.reset(total: object.sizeBytes)
        for n in stride(from: 0, to: top.segments.count, by: Self.windowSegments(span: top.span)) {
            let map = try await window(chain, from: n, keys: keys)
            try await restoreWindow(map, firstPage: n * top.span, pageSize: pageSize, fd: fd, accountID: accountID, keys: keys)
        }
        guard fsync(fd) == 0 else { throw RepositoryError(.io, "cannot sync the restored file: errno \(errno)") }
    }

    /// Writes the pages of `map`, the first of which is page `firstPage` of the file.
    func restoreWindow(_ map: [ChunkID], firstPage: Int, pageSize: Int, fd: Int32, accountID: String, keys: AccountKeys) async throws {
        // Where each page comes from, 16 bytes a page, built a batch of pages at a time so no
        // structure over all distinct chunks is ever held; then sorted by pack so each pack is
        // fetched and opened once.
        struct PageSource { var pack: Int32; var offset: Int32; var length: Int32; var page: Int32 }
        let meter = ProgressMeter.current
        var packIDs: [String] = []
        var packNumbers: [String: Int32] = [:]
        var sources: [PageSource] = []
        sources.reserveCapacity(map.count)
        for start in stride(from: 0, to: map.count, by: 65536) {
            let end = min(map.count, start + 65536)
            let locations = try await locate(Array(Set(map[start..<end])), accountID: accountID)
            for page in start..<end {
                let location = locations[map[page]]!
                let number: Int32
                if let known = packNumbers[location.packID] {
                    number = known
                } else {
                    number = Int32(packIDs.count)
                    packNumbers[location.packID] = number
                    packIDs.append(location.packID)
                }
                sources.append(PageSource(pack: number, offset: Int32(location.offset), length: Int32(location.length), page: Int32(page)))
            }
        }
        sources.sort { ($0.pack, $0.offset) < ($1.pack, $1.offset) }

        try await withThrowingTaskGroup(of: Void.self) { group in
            var running = 0
            var start = 0
            while start < sources.count {
                var end = start
                while end < sources.count, sources[end].pack == sources[start].pack { end += 1 }
                let pages = Array(sources[start..<end])
                let packID = packIDs[Int(sources[start].pack)]
                start = end
                if running >= concurrency { try await group.next(); running -= 1 }
                running += 1
                group.addTask {
                    defer { meter?.add(pages.count * pageSize) }
                    let plaintext = try await openPack(packID, keys: keys)
                    var checkedOffset: Int32 = -1
                    for source in pages {
                        let id = map[Int(source.page)]
                        let location = ChunkLocation(id: id, packID: packID, offset: Int(source.offset), length: Int(source.length), storedLength: 0)
                        // Sorted by offset: a chunk used by several pages is checked once.
                        let slice = source.offset == checkedOffset
                            ? try PackLayout.chunk(in: plaintext, offset: location.offset, length: location.length, expected: id, pack: packID)
                            : try extract(location, from: plaintext, keys: keys)
                        checkedOffset = source.offset
                        guard slice.count == pageSize else { throw RepositoryError(.corrupt, "chunk \(id) is not one page long") }
                        let offset = off_t(firstPage + Int(source.page)) * off_t(pageSize)
                        let written = slice.withUnsafeBytes { pwrite(fd, $0.baseAddress, pageSize, offset) }
                        guard written == pageSize else { throw RepositoryError(.io, "cannot write the restored file: errno \(errno)") }
                    }
                }
            }
            try await group.waitForAll()
        }
    }

    public func readStream(_ object: StoredObject, accountID: String) -> AsyncThrowingStream<[UInt8], any Error> {
        let reader = StreamReader(repository: self, object: object, accountID: accountID, meter: ProgressMeter.current)
        return AsyncThrowingStream { try await reader.next() }
    }

    /// Pulls a stream backup chunk by chunk, holding one manifest segment and one open pack.
    final actor StreamReader {
        let repository: DedupRepository
        let object: StoredObject
        let accountID: String
        var layer: ChainLayer?
        var keys: AccountKeys?
        var segment = -1
        var entries: [(length: Int, id: ChunkID)] = []
        var locations: [ChunkID: ChunkLocation] = [:]
        var position = 0
        var openPackID: String?
        var openPack: [UInt8] = []
        let meter: ProgressMeter?

        init(repository: DedupRepository, object: StoredObject, accountID: String, meter: ProgressMeter?) {
            self.repository = repository
            self.object = object
            self.accountID = accountID
            self.meter = meter
            meter?.reset(total: object.sizeBytes)
        }

        func next() async throws -> [UInt8]? {
            if layer == nil {
                let keys = try await repository.keys(accountID)
                let record = try await repository.layerRecord(object, accountID: accountID)
                guard record.kind == .stream else { throw RepositoryError(.corrupt, "manifest \(record.id) is not a stream manifest") }
                layer = ChainLayer(record: record, header: try await repository.loadHeader(record, keys: keys))
                self.keys = keys
            }
            guard let layer, let keys else { return nil }
            while position == entries.count {
                segment += 1
                guard segment < layer.header.segments.count else { return nil }
                guard case .stream(let items)? = try await repository.loadSegment(layer, segment, keys: keys) else {
                    throw RepositoryError(.corrupt, "manifest \(layer.record.id) is not a stream manifest")
                }
                locations = try await repository.locate(Array(Set(items.map(\.id))), accountID: accountID)
                entries = items
                position = 0
            }
            let entry = entries[position]
            position += 1
            let location = locations[entry.id]!
            if openPackID != location.packID {
                openPack = try await repository.openPack(location.packID, keys: keys)
                openPackID = location.packID
            }
            let slice = try repository.extract(location, from: openPack, keys: keys)
            guard slice.count == entry.length else { throw RepositoryError(.corrupt, "chunk \(entry.id) has the wrong length") }
            meter?.add(slice.count)
            return Array(slice)
        }
    }

    // MARK: Verification

    /// Reads every manifest object of the backup and every chunk it needs, a window at a time.
    public func verify(_ object: StoredObject, accountID: String) async throws -> VerificationReport {
        var report = VerificationReport(chunksChecked: 0, packsChecked: 0, problems: [])
        let keys = try await keys(accountID)
        do {
            let record = try await layerRecord(object, accountID: accountID)
            guard record.objectChecksum == object.checksum else {
                report.problems.append("manifest \(record.id) is not the one recorded for the backup")
                return report
            }
            let chain = try await loadChain(record, keys: keys)
            let top = chain.last!
            if top.header.kind == .stream {
                for n in 0..<top.header.segments.count {
                    guard case .stream(let items)? = try await loadSegment(top, n, keys: keys) else {
                        throw RepositoryError(.corrupt, "manifest \(record.id) is not a stream manifest")
                    }
                    try await verifyChunks(Array(Set(items.map(\.id))), accountID: accountID, keys: keys, into: &report)
                }
            } else {
                for n in stride(from: 0, to: top.header.segments.count, by: Self.windowSegments(span: top.header.span)) {
                    try await verifyChunks(Array(Set(try await window(chain, from: n, keys: keys))), accountID: accountID, keys: keys, into: &report)
                }
            }
        } catch let error as RepositoryError {
            report.problems.append(error.message)
        }
        return report
    }

    func verifyChunks(_ distinct: [ChunkID], accountID: String, keys: AccountKeys, into report: inout VerificationReport) async throws {
        let locations = try await index.chunkLocations(accountID: accountID, ids: distinct)
        var byPack: [String: [ChunkLocation]] = [:]
        for id in distinct {
            if let location = locations[id] {
                byPack[location.packID, default: []].append(location)
            } else {
                report.problems.append("chunk \(id) is missing from the index")
            }
        }
        for (packID, chunks) in byPack.sorted(by: { $0.key < $1.key }) {
            report.packsChecked += 1
            let plaintext: [UInt8]
            do {
                plaintext = try await openPack(packID, keys: keys)
            } catch let error as RepositoryError {
                report.problems.append("\(error.message) (\(chunks.count) chunks of this backup)")
                continue
            }
            for location in chunks {
                report.chunksChecked += 1
                do { _ = try extract(location, from: plaintext, keys: keys) } catch let error as RepositoryError { report.problems.append(error.message) }
            }
        }
    }

    public func uniqueBytes(_ objects: [StoredObject]) async throws -> [String: Int64] {
        try await index.uniqueBytes(layerIDs: objects.map(\.key))
    }

    /// Copies the live chunks of mostly-dead packs into new packs, so the space of pages no backup
    /// uses any more is reclaimed; the old pack is deleted after the grace period. Every copied
    /// chunk is authenticated and checked against its id on the way.
    func rewriteSparsePacks(createdBefore cutoff: Date, now: Date) async throws -> Int {
        var rewritten = 0
        for (pack, live) in try await index.sparsePacks(createdBefore: cutoff, maxLiveFraction: 0.5, limit: 64) {
            let keys = try await keys(pack.accountID)
            let plaintext = try await openPack(pack.id, keys: keys)
            var buffer = PackBuffer()
            for location in live {
                buffer.chunks.append((location.id, try extract(location, from: plaintext, keys: keys)))
                buffer.size += location.length
            }
            let copy = try await sealAndUpload(buffer, accountID: pack.accountID, keys: keys)
            try await blobs.syncBuffered()
            try await index.relocateChunks(from: pack.id, to: copy.record, chunks: copy.locations, now: now, grace: grace)
            rewritten += 1
        }
        return rewritten
    }

    public func sealSecret(_ secret: [UInt8], accountID: String, context: String) async throws -> [UInt8] {
        let keys = try await keys(accountID)
        return Array(try AES.GCM.seal(secret, using: keys.secretKey, authenticating: Array(context.utf8)).combined!)
    }

    public func openSecret(_ sealed: [UInt8], accountID: String, context: String) async throws -> [UInt8] {
        let keys = try await keys(accountID)
        do {
            return Array(try AES.GCM.open(AES.GCM.SealedBox(combined: sealed), using: keys.secretKey, authenticating: Array(context.utf8)))
        } catch {
            throw RepositoryError(.keys, "a sealed secret does not open under its account's key")
        }
    }

    public func probeStorage() async throws {
        try await blobs.probe()
    }

    public func forgetKeys(accountID: String) {
        keyRing.forget(accountID: accountID)
    }

    // MARK: Garbage collection

    public func collectGarbage(now: Date) async throws -> GarbageReport {
        var report = GarbageReport()
        let cutoff = now.addingTimeInterval(-grace)
        report.layersDropped = try await index.releaseAbandonedLayers(createdBefore: cutoff, now: now, grace: grace)
        report.chunksDeleted = try await index.deleteUnreferencedChunks(createdBefore: cutoff)
        report.packsRetired = try await index.retireEmptyPacks(now: now, grace: grace)
        report.packsRewritten = try await rewriteSparsePacks(createdBefore: cutoff, now: now)
        while true {
            let due = try await index.dueGarbageObjects(now: now, limit: 500)
            for key in due { try await blobs.delete(key) }
            try await index.forgetGarbageObjects(due)
            report.objectsDeleted += due.count
            if due.count < 500 { break }
        }
        // Objects a crash left between upload and index insert: unknown to the index, and older
        // than the grace and than every running backup (one may be waiting to record its upload,
        // e.g. while the catalog restarts; on several nodes this sweep cannot tell).
        let sweepCutoff = min(cutoff, try await index.oldestRunningBackupStart() ?? cutoff)
        for prefix in ["packs", "manifests"] {
            let old = try await blobs.list(prefix: prefix).filter { $0.modifiedAt < sweepCutoff }.map(\.key)
            let known = try await index.knownObjectKeys(old)
            for key in old where !known.contains(key) {
                try await blobs.delete(key)
                report.orphansDeleted += 1
            }
        }
        return report
    }
}

extension DedupRepository {
    /// The single-machine layout: objects in `root` on local disk, the index in the SQLite catalog.
    /// `sweepIncoming` only for the process that owns the directory (see `FileBlobStore`).
    public static func local(
        root: String, catalog: SQLiteCatalog, masterKey: MasterKey, clock: any WallClock = SystemWallClock(),
        ids: any IDGenerator = SecureIDGenerator(), compression: CompressionSetting = .default, grace: TimeInterval = 3600,
        sweepIncoming: Bool = true
    ) throws -> DedupRepository {
        DedupRepository(
            index: catalog, blobs: try FileBlobStore(root: root, sweepIncoming: sweepIncoming), keyRing: KeyRing(master: masterKey, store: catalog),
            clock: clock, ids: ids, compression: compression, grace: grace)
    }
}
