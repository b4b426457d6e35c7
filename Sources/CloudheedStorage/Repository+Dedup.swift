import CloudheedDomain
import Crypto
import Foundation

/// Repository format v1: deduplicated, compressed, encrypted, verifiable.
///
/// - A chunk is a page (page-structured snapshots) or a content-defined piece of a stream. Its id
///   is HMAC-SHA-256 of its plaintext under the account's id key; the account stores it once.
/// - New chunks are gathered into packs of about `packSize` bytes; a pack is compressed (zstd)
///   and encrypted (AES-256-GCM, id and kind bound as associated data) as one unit.
/// - Each backup has a manifest layer: the full chunk list, or the pages that differ from its
///   parent's. Only changed pages cost index lookups, stores and reference counting.
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

    public init(
        index: any RepositoryIndex, blobs: any BlobStore, keyRing: KeyRing, clock: any WallClock, ids: any IDGenerator,
        compression: CompressionSetting = .default, packSize: Int = 4 << 20,
        concurrency: Int = ProcessInfo.processInfo.activeProcessorCount, cdc: FastCDCParameters = .default,
        grace: TimeInterval = 3600, maxDepth: Int = 8
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
        state.unpublished.removeAll()
    }

    typealias PackTasks = ThrowingTaskGroup<SealedPack, any Error>

    /// Buffers a new chunk; a full buffer becomes a pack, sealed and uploaded by a task of its own.
    func add(_ id: ChunkID, _ bytes: ArraySlice<UInt8>, to state: inout StoreState, tasks: inout PackTasks, accountID: String, keys: AccountKeys) async throws {
        state.storedThisRun.insert(id)
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

    /// Seals what is buffered, waits for every pack, and publishes them all.
    func drain(_ state: inout StoreState, tasks: inout PackTasks, accountID: String, keys: AccountKeys) async throws {
        try await flush(&state, tasks: &tasks, accountID: accountID, keys: keys)
        while let done = try await tasks.next() { collect(done, into: &state) }
        try await publish(&state, force: true)
    }

    func collect(_ pack: SealedPack, into state: inout StoreState) {
        for location in pack.locations { state.newStoredBytes += Int64(location.storedLength) }
        state.inFlight -= 1
        state.unpublished.append(pack)
    }

    /// Bookkeeping shared by both store paths while packs are in flight.
    struct StoreState {
        var storedThisRun: Set<ChunkID> = []
        /// Stored bytes of every chunk this run stored (each counted once).
        var newStoredBytes: Int64 = 0
        /// Chunks at changed pages that the account already stored before this run.
        var reusedThisRun: Set<ChunkID> = []
        var buffer = PackBuffer()
        var inFlight = 0
        var unpublished: [SealedPack] = []
    }

    public func storePages(ofFile path: String, pageSize: Int, target: BackupTarget) async throws -> StoredObject {
        // A chunk reused from the index may be collected by a concurrent GC before this backup
        // records its manifest; the manifest insert notices, and the backup is stored again.
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

    func storePagesOnce(path: String, pageSize: Int, target: BackupTarget, useParent: Bool) async throws -> StoredObject {
        guard pageSize >= 512, pageSize <= 65536 else { throw RepositoryError(.corrupt, "unsupported page size \(pageSize)") }
        let keys = try await keys(target.accountID)
        let fileSize = Int((try FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.int64Value ?? 0)
        guard fileSize % pageSize == 0 else { throw RepositoryError(.corrupt, "snapshot size \(fileSize) is not a multiple of the page size \(pageSize)") }
        let pageCount = fileSize / pageSize

        var parentLayer: LayerRecord?
        var parentMap: [ChunkID] = []
        if useParent, let parent = target.parent, let layer = try await index.layer(id: parent.key),
           layer.accountID == target.accountID, layer.kind != .stream, layer.pageSize == pageSize {
            parentLayer = layer
            parentMap = try await loadPageMap(layer, keys: keys)
        }

        guard let handle = FileHandle(forReadingAtPath: path) else { throw RepositoryError(.io, "cannot read the snapshot") }
        defer { try? handle.close() }
        let batchPages = max(1, (4 << 20) / pageSize)
        var map: [ChunkID] = []
        map.reserveCapacity(pageCount)
        var state = StoreState()

        try await withThrowingTaskGroup(of: SealedPack.self) { tasks in
            var position = 0
            while position < pageCount {
                try Task.checkCancellation()
                guard let data = try handle.read(upToCount: batchPages * pageSize), !data.isEmpty else { break }
                let bytes = [UInt8](data)
                let count = bytes.count / pageSize
                let batchIDs = await hashPages(bytes, count: count, pageSize: pageSize, keys: keys)
                var candidates: [(offset: Int, id: ChunkID)] = []
                for j in 0..<count {
                    let id = batchIDs[j]
                    map.append(id)
                    let page = position + j
                    if page < parentMap.count, parentMap[page] == id { continue }
                    if state.storedThisRun.contains(id) { continue }
                    candidates.append((j * pageSize, id))
                }
                if !candidates.isEmpty {
                    let existing = try await index.existingChunks(accountID: target.accountID, ids: Array(Set(candidates.map(\.id))))
                    state.reusedThisRun.formUnion(existing)
                    for candidate in candidates where !existing.contains(candidate.id) && !state.storedThisRun.contains(candidate.id) {
                        try await add(candidate.id, bytes[candidate.offset..<(candidate.offset + pageSize)], to: &state, tasks: &tasks,
                                      accountID: target.accountID, keys: keys)
                    }
                }
                position += count
            }
            guard position == pageCount else { throw RepositoryError(.io, "the snapshot changed size while it was read") }
            try await drain(&state, tasks: &tasks, accountID: target.accountID, keys: keys)
        }

        // The manifest: a delta over the parent when that is small and the chain short.
        let changed = (0..<pageCount).filter { $0 >= parentMap.count || parentMap[$0] != map[$0] }
        if let parentLayer, parentLayer.depth + 1 < maxDepth, changed.count * 2 <= pageCount {
            let delta = ManifestLayer(pageSize: pageSize, totalCount: pageCount, logicalSize: Int64(fileSize),
                                      entries: .delta(changed.map { ($0, map[$0]) }), metadata: [:])
            let (storedBytes, referenced) = try await deltaStoredBytes(
                parent: parentLayer, parentMap: parentMap, map: map, changed: changed, state: state, accountID: target.accountID)
            return try await writeLayer(delta, chunkIDs: referenced, reused: referenced.filter { !state.storedThisRun.contains($0) }, parent: parentLayer,
                                        depth: parentLayer.depth + 1, storedBytes: storedBytes, accountID: target.accountID, keys: keys)
        }
        // Without a parent every page was a candidate, so the distinct chunks are the ones this run
        // stored plus the ones it found stored already: no set over the whole map is needed.
        let reused = parentMap.isEmpty ? Array(state.reusedThisRun) : Array(Set(map).subtracting(state.storedThisRun))
        let chunkIDs = Array(state.storedThisRun) + reused
        let storedBytes = try await state.newStoredBytes + storedLength(of: reused, accountID: target.accountID)
        // This run's bookkeeping is no longer needed; free it before the manifest is sealed.
        state = StoreState()
        parentMap = []
        let full = ManifestLayer(pageSize: pageSize, totalCount: pageCount, logicalSize: Int64(fileSize), entries: .pages(map), metadata: [:])
        return try await writeLayer(full, chunkIDs: chunkIDs, reused: reused, parent: nil, depth: 0, storedBytes: storedBytes,
                                    accountID: target.accountID, keys: keys)
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

    /// Stored bytes of distinct chunks that existed before this run, from the index.
    func storedLength(of distinct: [ChunkID], accountID: String) async throws -> Int64 {
        guard !distinct.isEmpty else { return 0 }
        let locations = try await index.chunkLocations(accountID: accountID, ids: distinct)
        return distinct.reduce(Int64(0)) { $0 + Int64(locations[$1]?.storedLength ?? 0) }
    }

    /// The parent's stored bytes, plus the chunks the new map gains, minus those it no longer
    /// has. Only the chunks at changed pages are candidates, so besides two passes over the page
    /// maps, memory and index lookups are proportional to the change. Also returns the distinct
    /// chunks the delta refers to.
    func deltaStoredBytes(parent: LayerRecord, parentMap: [ChunkID], map: [ChunkID], changed: [Int], state: StoreState, accountID: String) async throws -> (Int64, [ChunkID]) {
        var touchedOld = Set<ChunkID>(), touchedNew = Set<ChunkID>()
        for page in changed {
            if page < parentMap.count { touchedOld.insert(parentMap[page]) }
            touchedNew.insert(map[page])
        }
        for page in map.count..<max(map.count, parentMap.count) { touchedOld.insert(parentMap[page]) }
        // An old chunk is gone only if no page of the new map still uses it; a new one is gained
        // only if no page of the parent used it.
        var stillUsed = Set<ChunkID>(), alreadyThere = Set<ChunkID>()
        for id in map where touchedOld.contains(id) { stillUsed.insert(id) }
        for id in parentMap where touchedNew.contains(id) { alreadyThere.insert(id) }
        let removed = touchedOld.subtracting(stillUsed)
        let added = touchedNew.subtracting(alreadyThere)
        // Every chunk this run stored is new, so it is among the added ones.
        let gained = try await state.newStoredBytes + storedLength(of: added.filter { !state.storedThisRun.contains($0) }, accountID: accountID)
        let lost = try await storedLength(of: Array(removed), accountID: accountID)
        return (max(0, parent.storedBytes + gained - lost), Array(touchedNew))
    }

    /// Seals and stores a manifest and records it with the distinct `chunkIDs` it refers to, of
    /// which `reused` existed before this run (checked again as the manifest is recorded).
    func writeLayer(_ layer: ManifestLayer, chunkIDs: [ChunkID], reused: [ChunkID], parent: LayerRecord?, depth: Int, storedBytes: Int64, accountID: String, keys: AccountKeys) async throws -> StoredObject {
        let layerID = "mf" + ids.randomString(count: 22)
        // Manifests are mostly random chunk ids: compressing them costs memory and time for nothing.
        let sealed = try SealedUnit.seal(layer.encoded(), kind: .manifest, id: layerID, key: keys.encryptionKey, compression: .none)
        let checksum = Array(SHA256.hash(data: sealed)).hex
        let record = LayerRecord(
            id: layerID, accountID: accountID, parentID: parent?.id, depth: depth, kind: layer.kind, pageSize: layer.pageSize,
            entryCount: layer.totalCount, logicalSize: layer.logicalSize, storedBytes: storedBytes, objectChecksum: checksum, createdAt: clock.now())
        try await blobs.put(record.objectKey, sealed)
        try await index.insertLayer(record, chunkIDs: chunkIDs, reused: reused)
        return StoredObject(key: layerID, sizeBytes: layer.logicalSize, checksum: checksum, storedBytes: storedBytes)
    }

    public func storeStream<Bytes: AsyncSequence & Sendable>(_ bytes: Bytes, target: BackupTarget) async throws -> StoredObject
    where Bytes.Element == [UInt8] {
        let keys = try await keys(target.accountID)
        var splitter = FastCDCSplitter(cdc)
        var entries: [(length: Int, id: ChunkID)] = []
        var logical: Int64 = 0
        var state = StoreState()

        try await withThrowingTaskGroup(of: SealedPack.self) { tasks in
            func take(_ chunks: [[UInt8]]) async throws {
                for chunk in chunks {
                    let id = keys.chunkID(of: chunk)
                    entries.append((chunk.count, id))
                    logical += Int64(chunk.count)
                    if state.storedThisRun.contains(id) { continue }
                    if try await index.existingChunks(accountID: target.accountID, ids: [id]).contains(id) { continue }
                    try await add(id, chunk[...], to: &state, tasks: &tasks, accountID: target.accountID, keys: keys)
                }
            }
            for try await piece in bytes {
                try Task.checkCancellation()
                try await take(splitter.append(piece))
            }
            try await take(splitter.finish())
            try await drain(&state, tasks: &tasks, accountID: target.accountID, keys: keys)
        }
        let layer = ManifestLayer(pageSize: 0, totalCount: entries.count, logicalSize: logical, entries: .stream(entries), metadata: [:])
        let distinct = Array(Set(entries.map(\.id)))
        let reused = distinct.filter { !state.storedThisRun.contains($0) }
        let stored = try await state.newStoredBytes + storedLength(of: reused, accountID: target.accountID)
        return try await writeLayer(layer, chunkIDs: distinct, reused: reused, parent: nil, depth: 0, storedBytes: stored, accountID: target.accountID, keys: keys)
    }

    // MARK: Reading manifests

    func loadLayer(_ record: LayerRecord, keys: AccountKeys) async throws -> ManifestLayer {
        let sealed = try await blobs.get(record.objectKey)
        guard Array(SHA256.hash(data: sealed)).hex == record.objectChecksum else {
            throw RepositoryError(.corrupt, "manifest \(record.id) does not match its recorded checksum (stored bytes were altered)")
        }
        return try ManifestLayer.decode(SealedUnit.open(sealed, kind: .manifest, id: record.id, key: keys.encryptionKey), name: record.id)
    }

    func layerRecord(_ object: StoredObject, accountID: String) async throws -> LayerRecord {
        guard let record = try await index.layer(id: object.key), record.accountID == accountID else {
            throw RepositoryError(.missing, "the manifest of this backup is missing from the index")
        }
        return record
    }

    /// The full page map of a layer: its base manifest with every delta above it applied.
    func loadPageMap(_ top: LayerRecord, keys: AccountKeys) async throws -> [ChunkID] {
        var chain = [top]
        while let parentID = chain.last!.parentID {
            guard let parent = try await index.layer(id: parentID) else {
                throw RepositoryError(.missing, "manifest \(parentID), below \(top.id), is missing from the index")
            }
            chain.append(parent)
        }
        var map: [ChunkID] = []
        for record in chain.reversed() {
            let layer = try await loadLayer(record, keys: keys)
            switch layer.entries {
            case .pages(let ids):
                map = ids
            case .delta(let changes):
                let filler = map.first ?? ChunkID(bytes: [UInt8](repeating: 0, count: 32))
                if map.count > layer.totalCount { map.removeLast(map.count - layer.totalCount) }
                while map.count < layer.totalCount { map.append(filler) }
                for change in changes {
                    guard change.index < layer.totalCount else { throw RepositoryError(.corrupt, "manifest \(record.id) is malformed") }
                    map[change.index] = change.id
                }
            case .stream:
                throw RepositoryError(.corrupt, "manifest \(record.id) is not a page manifest")
            }
            guard map.count == layer.totalCount else { throw RepositoryError(.corrupt, "manifest \(record.id) is malformed") }
        }
        return map
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

    // MARK: Restoring

    public func restorePages(_ object: StoredObject, accountID: String, toFile path: String) async throws {
        let keys = try await keys(accountID)
        let record = try await layerRecord(object, accountID: accountID)
        let map = try await loadPageMap(record, keys: keys)
        let pageSize = record.pageSize
        guard Int64(map.count * pageSize) == object.sizeBytes else {
            throw RepositoryError(.corrupt, "the manifest describes \(map.count * pageSize) bytes, the backup \(object.sizeBytes)")
        }
        // Where each page comes from, 16 bytes a page, built a batch of pages at a time so no
        // structure over all distinct chunks is ever held; then sorted by pack so each pack is
        // fetched and opened once.
        struct PageSource { var pack: Int32; var offset: Int32; var length: Int32; var page: Int32 }
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

        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard fd >= 0 else { throw RepositoryError(.io, "cannot create the restored file: errno \(errno)") }
        defer { close(fd) }
        guard ftruncate(fd, off_t(object.sizeBytes)) == 0 else { throw RepositoryError(.io, "cannot size the restored file: errno \(errno)") }

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
                        let written = slice.withUnsafeBytes { pwrite(fd, $0.baseAddress, pageSize, off_t(Int(source.page) * pageSize)) }
                        guard written == pageSize else { throw RepositoryError(.io, "cannot write the restored file: errno \(errno)") }
                    }
                }
            }
            try await group.waitForAll()
        }
        guard fsync(fd) == 0 else { throw RepositoryError(.io, "cannot sync the restored file: errno \(errno)") }
    }

    public func readStream(_ object: StoredObject, accountID: String) -> AsyncThrowingStream<[UInt8], any Error> {
        let reader = StreamReader(repository: self, object: object, accountID: accountID)
        return AsyncThrowingStream { try await reader.next() }
    }

    /// Pulls a stream backup chunk by chunk, keeping only the current pack open.
    final actor StreamReader {
        let repository: DedupRepository
        let object: StoredObject
        let accountID: String
        var entries: [(length: Int, id: ChunkID)]?
        var locations: [ChunkID: ChunkLocation] = [:]
        var keys: AccountKeys?
        var position = 0
        var openPackID: String?
        var openPack: [UInt8] = []

        init(repository: DedupRepository, object: StoredObject, accountID: String) {
            self.repository = repository
            self.object = object
            self.accountID = accountID
        }

        func next() async throws -> [UInt8]? {
            if entries == nil {
                let keys = try await repository.keys(accountID)
                let record = try await repository.layerRecord(object, accountID: accountID)
                guard case .stream(let items) = try await repository.loadLayer(record, keys: keys).entries else {
                    throw RepositoryError(.corrupt, "manifest \(record.id) is not a stream manifest")
                }
                locations = try await repository.locate(Array(Set(items.map(\.id))), accountID: accountID)
                entries = items
                self.keys = keys
            }
            guard let entries, position < entries.count, let keys else { return nil }
            let entry = entries[position]
            position += 1
            let location = locations[entry.id]!
            if openPackID != location.packID {
                openPack = try await repository.openPack(location.packID, keys: keys)
                openPackID = location.packID
            }
            let slice = try repository.extract(location, from: openPack, keys: keys)
            guard slice.count == entry.length else { throw RepositoryError(.corrupt, "chunk \(entry.id) has the wrong length") }
            return Array(slice)
        }
    }

    // MARK: Verification

    public func verify(_ object: StoredObject, accountID: String) async throws -> VerificationReport {
        var report = VerificationReport(chunksChecked: 0, packsChecked: 0, problems: [])
        let keys = try await keys(accountID)
        let distinct: [ChunkID]
        do {
            let record = try await layerRecord(object, accountID: accountID)
            guard record.objectChecksum == object.checksum else {
                report.problems.append("manifest \(record.id) is not the one recorded for the backup")
                return report
            }
            if record.kind == .stream {
                guard case .stream(let items) = try await loadLayer(record, keys: keys).entries else {
                    throw RepositoryError(.corrupt, "manifest \(record.id) is not a stream manifest")
                }
                distinct = Array(Set(items.map(\.id)))
            } else {
                distinct = Array(Set(try await loadPageMap(record, keys: keys)))
            }
        } catch let error as RepositoryError {
            report.problems.append(error.message)
            return report
        }
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
        return report
    }

    public func uniqueBytes(_ object: StoredObject) async throws -> Int64 {
        try await index.uniqueBytes(layerID: object.key)
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
        // Objects a crash left between upload and index insert: unknown to the index, and old.
        for prefix in ["packs", "manifests"] {
            let old = try await blobs.list(prefix: prefix).filter { $0.modifiedAt < cutoff }.map(\.key)
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
