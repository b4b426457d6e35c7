import CloudheedDomain
@testable import CloudheedStorage
import Crypto
import Foundation
import Synchronization
import Testing

/// Bytes that look random to a compressor, from the kernel.
func randomBytes(_ count: Int) -> [UInt8] {
    guard count > 0 else { return [] }
    let handle = FileHandle(forReadingAtPath: "/dev/urandom")!
    defer { try? handle.close() }
    var out: [UInt8] = []
    while out.count < count { out += [UInt8](handle.readData(ofLength: min(count - out.count, 1 << 24))) }
    return out
}

/// Splits bytes into uneven pieces, as a producer might hand them over.
struct Pieces: AsyncSequence, Sendable {
    typealias Element = [UInt8]
    let bytes: [UInt8]
    let sizes: [Int]
    struct AsyncIterator: AsyncIteratorProtocol {
        let source: Pieces
        var offset = 0, index = 0
        mutating func next() async throws -> [UInt8]? {
            guard offset < source.bytes.count else { return nil }
            let end = Swift.min(offset + source.sizes[index % source.sizes.count], source.bytes.count)
            defer { offset = end; index += 1 }
            return Array(source.bytes[offset..<end])
        }
    }
    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(source: self) }
}

/// A repository over a real SQLite catalog and directory, with small packs and chunks so that
/// limits are crossed with little data.
struct RepositoryFixture {
    let directory = NSTemporaryDirectory() + "cloudheed-repository-\(UUID().uuidString)"
    let catalog: SQLiteCatalog
    let master: MasterKey
    let repository: DedupRepository
    let clock = ManualWallClock(Date(timeIntervalSince1970: 1_773_716_400))
    static let cdc = FastCDCParameters(minimum: 1024, average: 4096, maximum: 16384)

    /// `segmentSpan` small makes manifests of a few pages span several segments.
    init(compression: CompressionSetting = .default, grace: TimeInterval = 3600, packSize: Int = 64 << 10, master: MasterKey? = nil, segmentSpan: Int = 65536) async throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        catalog = try SQLiteCatalog(path: directory + "/catalog.sqlite3", garbageGrace: grace)
        self.master = master ?? MasterKey.generate().0
        repository = Self.repository(catalog: catalog, directory: directory, master: self.master, clock: clock, compression: compression, grace: grace, packSize: packSize, segmentSpan: segmentSpan)
        for account in ["acct-a", "acct-b"] {
            try await catalog.createAccount(
                Account(id: account, name: account, storageQuotaBytes: 1 << 40, createdAt: clock.now()),
                token: StoredToken(id: "tok-\(account)", accountID: account, secretHash: [0], createdAt: clock.now()))
        }
    }

    static func repository(catalog: SQLiteCatalog, directory: String, master: MasterKey, clock: any WallClock, compression: CompressionSetting = .default, grace: TimeInterval = 3600, packSize: Int = 64 << 10, segmentSpan: Int = 65536) -> DedupRepository {
        DedupRepository(
            index: catalog, blobs: try! FileBlobStore(root: directory + "/repository"), keyRing: KeyRing(master: master, store: catalog),
            clock: clock, ids: SecureIDGenerator(), compression: compression, packSize: packSize, concurrency: 2, cdc: cdc, grace: grace,
            segmentSpan: segmentSpan)
    }

    func cleanup() { try? FileManager.default.removeItem(atPath: directory) }

    func objects(_ kind: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory + "/repository/" + kind)) ?? []).sorted()
    }

    func target(_ account: String = "acct-a", parent: StoredObject? = nil) -> BackupTarget {
        BackupTarget(accountID: account, backupID: "backup-\(UUID().uuidString.prefix(8).lowercased())", parent: parent)
    }

    func storeStream(_ bytes: [UInt8], account: String = "acct-a", repository: DedupRepository? = nil) async throws -> StoredObject {
        try await (repository ?? self.repository).storeStream(Pieces(bytes: bytes, sizes: [7, 5000, 65536, 1]), target: target(account))
    }

    func readStream(_ object: StoredObject, account: String = "acct-a", repository: DedupRepository? = nil) async throws -> [UInt8] {
        var out: [UInt8] = []
        for try await chunk in (repository ?? self.repository).readStream(object, accountID: account) { out += chunk }
        return out
    }

    /// Writes `pages` as a file and stores it page by page.
    func storePages(_ pages: [[UInt8]], account: String = "acct-a", parent: StoredObject? = nil, repository: DedupRepository? = nil) async throws -> StoredObject {
        let path = directory + "/snapshot-\(UUID().uuidString)"
        try Data(pages.flatMap { $0 }).write(to: URL(fileURLWithPath: path))
        defer { try? FileManager.default.removeItem(atPath: path) }
        return try await (repository ?? self.repository).storePages(ofFile: path, pageSize: pages.first?.count ?? 4096, target: target(account, parent: parent))
    }

    func restorePages(_ object: StoredObject, account: String = "acct-a", repository: DedupRepository? = nil) async throws -> [UInt8] {
        let path = directory + "/restored-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try await (repository ?? self.repository).restorePages(object, accountID: account, toFile: path)
        return [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
    }

    /// Records `object` as a completed backup, as a finished backup job would: it then holds its data.
    func record(_ object: StoredObject, account: String = "acct-a") async throws {
        let databaseID = "db-\(UUID().uuidString.prefix(8).lowercased())"
        try await catalog.insertDatabase(ManagedDatabase(
            id: databaseID, accountID: account, name: databaseID, tier: .micro, engine: .sqlite, status: .available,
            backupWindow: try BackupWindow.parse("03:00-04:00"), location: "/nowhere", createdAt: clock.now(), nextBackupAt: clock.now().addingTimeInterval(86_400)))
        let backup = Backup(id: "backup-\(UUID().uuidString.prefix(8).lowercased())", accountID: account, databaseID: databaseID,
                            name: "b", type: .manual, status: .pending, engine: .sqlite, createdAt: clock.now(), expiresAt: nil)
        try await catalog.enqueueManualBackup(backup, jobID: "job-\(backup.id)", now: clock.now())
        let job = try #require(try await catalog.claimJob(leaseToken: "l", now: clock.now(), leaseDuration: .seconds(60), maxAttempts: 3))
        #expect(try await catalog.finishJob(job, outcome: .backupCompleted(object), at: clock.now()) == .applied)
    }
}

func page(_ fill: UInt8, size: Int = 4096, marker: String = "") -> [UInt8] {
    var bytes = [UInt8](repeating: fill, count: size)
    let text = Array("page \(fill) \(marker)".utf8)
    bytes.replaceSubrange(0..<text.count, with: text)
    return bytes
}

@Suite("Deduplicating repository")
struct RepositoryTests {
    @Test("Streams of awkward sizes round-trip byte for byte, in one manifest segment or many",
          arguments: [0, 1, 1023, 1024, 4096, 16383, 16384, 16385, 3 * 16384 + 5, 300_000], [65536, 4])
    func streamRoundTrip(_ size: Int, segmentSpan: Int) async throws {
        let f = try await RepositoryFixture(segmentSpan: segmentSpan)
        defer { f.cleanup() }
        let bytes = randomBytes(size)
        let object = try await f.storeStream(bytes)
        #expect(object.sizeBytes == Int64(size))
        #expect(try await f.readStream(object) == bytes)
        #expect(try await f.repository.verify(object, accountID: "acct-a").isSound)
    }

    @Test("A 100 MiB stream round-trips with default chunk sizes")
    func largeStream() async throws {
        let f = try await RepositoryFixture(packSize: 4 << 20)
        defer { f.cleanup() }
        let repository = DedupRepository(
            index: f.catalog, blobs: try FileBlobStore(root: f.directory + "/repository"), keyRing: KeyRing(master: f.master, store: f.catalog),
            clock: f.clock, ids: SecureIDGenerator())
        let bytes = randomBytes(100 << 20)
        let object = try await f.storeStream(bytes, repository: repository)
        #expect(object.sizeBytes == 100 << 20)
        let back = try await f.readStream(object, repository: repository)
        #expect(back.count == bytes.count)
        #expect(back == bytes)
    }

    @Test("Pages round-trip, repeated pages are stored once, and the same data twice stores nothing new")
    func pagesAndDedup() async throws {
        let f = try await RepositoryFixture()
        defer { f.cleanup() }
        let pages = (0..<64).map { page(UInt8($0 % 20)) } + (0..<30).map { _ in randomBytes(4096) }
        let first = try await f.storePages(pages)
        #expect(try await f.restorePages(first) == pages.flatMap { $0 })
        let packs = f.objects("packs")
        #expect(!packs.isEmpty)

        // Again, without a parent: every page is found in the index.
        let again = try await f.storePages(pages)
        #expect(f.objects("packs") == packs)
        // Again, on a parent: not even looked up.
        let layered = try await f.storePages(pages, parent: first)
        #expect(f.objects("packs") == packs)
        #expect(try await f.restorePages(again) == pages.flatMap { $0 })
        #expect(try await f.restorePages(layered) == pages.flatMap { $0 })
        // Streams dedupe too.
        let stream = randomBytes(200_000)
        _ = try await f.storeStream(stream)
        let streamPacks = f.objects("packs")
        _ = try await f.storeStream(stream)
        #expect(f.objects("packs") == streamPacks)
    }

    @Test("Layered manifests: each version restores exactly as it was, the chain stays short, and growth or shrinkage is kept",
          arguments: [65536, 7])
    func layering(segmentSpan: Int) async throws {
        let f = try await RepositoryFixture(segmentSpan: segmentSpan)
        defer { f.cleanup() }
        var pages = (0..<40).map { _ in randomBytes(4096) }
        var versions: [(StoredObject, [UInt8])] = []
        var parent: StoredObject?
        for version in 0..<12 {
            switch version % 3 {
            case 0: pages[version] = randomBytes(4096)
            case 1: pages.append(randomBytes(4096))
            default: pages.removeLast()
            }
            let packsBefore = f.objects("packs").count
            let object = try await f.storePages(pages, parent: parent)
            try await f.record(object)
            let layer = try #require(try await f.catalog.layer(id: object.key))
            if version > 0 {
                #expect(layer.depth <= 7)
                // Only the changed page (at most) was stored.
                #expect(f.objects("packs").count - packsBefore <= 1)
            }
            versions.append((object, pages.flatMap { $0 }))
            parent = object
        }
        let depths = try await versions.asyncMap { try await f.catalog.layer(id: $0.0.key)!.depth }
        #expect(depths.contains(0) && depths.contains(7) && depths.filter { $0 == 0 }.count >= 2, "\(depths)")
        for (object, bytes) in versions {
            #expect(try await f.restorePages(object) == bytes)
        }
    }

    @Test("Stored bytes reflect compression; unique bytes are what deleting a backup would free")
    func sizes() async throws {
        let f = try await RepositoryFixture()
        defer { f.cleanup() }
        let compressible = (0..<50).map { page(UInt8($0)) }
        let object = try await f.storePages(compressible)
        try await f.record(object)
        #expect(object.storedBytes > 0 && object.storedBytes < object.sizeBytes / 4)
        #expect(try await f.repository.uniqueBytes([object])[object.key] ?? 0 > 0)
        // A child layered on it pins it: deleting it now would free nothing.
        var changed = compressible
        changed[3] = page(200)
        let child = try await f.storePages(changed, parent: object)
        try await f.record(child)
        #expect(try await f.repository.uniqueBytes([object])[object.key] == nil)
        #expect(child.storedBytes > 0)
        // Asked together (as a backup list does), each gets what it gets alone.
        let alone = try await f.repository.uniqueBytes([child])[child.key]
        #expect(alone ?? 0 > 0)
        let together = try await f.repository.uniqueBytes([object, child])
        #expect(together[child.key] == alone && together[object.key] == nil)
    }

    @Test("A delta manifest reports exactly the stored bytes a full manifest of the same data reports", arguments: [65536, 4])
    func deltaSizesExact(segmentSpan: Int) async throws {
        let f = try await RepositoryFixture(segmentSpan: segmentSpan)
        defer { f.cleanup() }
        var pages = (0..<30).map { _ in randomBytes(4096) } + [page(1), page(1), page(2)]
        var parent = try await f.storePages(pages)
        for step in 0..<4 {
            switch step {
            case 0: pages[3] = randomBytes(4096); pages[4] = pages[5]           // a page replaced, a page duplicated
            case 1: pages.removeLast(4)                                        // shrink: ids vanish
            case 2: pages += [page(1), randomBytes(4096)]                      // grow: an old id comes back, a new one
            default: pages[0] = pages[1]; pages[1] = randomBytes(4096)         // an id moves and one is lost
            }
            let delta = try await f.storePages(pages, parent: parent)
            let kind = try #require(try await f.catalog.layer(id: delta.key)).kind
            #expect(kind == .pagesDelta, "step \(step)")
            let full = try await f.storePages(pages)
            #expect(try await f.catalog.layer(id: full.key)?.kind == .pagesFull)
            #expect(delta.storedBytes == full.storedBytes, "step \(step)")
            #expect(try await f.restorePages(delta) == pages.flatMap { $0 })
            parent = delta
        }
    }

    @Test("A manifest is read with the segment span it was written with, whatever span the reading repository writes")
    func spanIsTheManifests() async throws {
        let f = try await RepositoryFixture(segmentSpan: 3)
        defer { f.cleanup() }
        let pages = (0..<10).map { _ in randomBytes(4096) }
        let object = try await f.storePages(pages)
        let other = RepositoryFixture.repository(catalog: f.catalog, directory: f.directory, master: f.master, clock: f.clock)
        #expect(try await f.restorePages(object, repository: other) == pages.flatMap { $0 })
        #expect(try await other.verify(object, accountID: "acct-a").isSound)
        // A backup on it by the other repository is written in full, and both read it.
        var changed = pages
        changed[2] = randomBytes(4096)
        let child = try await f.storePages(changed, parent: object, repository: other)
        #expect(try await f.catalog.layer(id: child.key)?.kind == .pagesFull)
        #expect(try await f.restorePages(child) == changed.flatMap { $0 })
    }

    @Test("Stores, restores and stream reads count their bytes on the job's progress meter")
    func progressMeter() async throws {
        let f = try await RepositoryFixture(segmentSpan: 4)
        defer { f.cleanup() }
        let pages = (0..<10).map { _ in randomBytes(4096) }
        let storing = ProgressMeter()
        let object = try await ProgressMeter.$current.withValue(storing) { try await f.storePages(pages) }
        #expect(storing.snapshot.done == 40960 && storing.snapshot.total == 40960)
        let restoring = ProgressMeter()
        _ = try await ProgressMeter.$current.withValue(restoring) { try await f.restorePages(object) }
        #expect(restoring.snapshot.done == 40960 && restoring.snapshot.total == 40960)
        let bytes = randomBytes(100_000)
        let streaming = ProgressMeter()
        let stream = try await ProgressMeter.$current.withValue(streaming) { try await f.storeStream(bytes) }
        #expect(streaming.snapshot.done == 100_000 && streaming.snapshot.total == nil)
        let reading = ProgressMeter()
        #expect(try await ProgressMeter.$current.withValue(reading) { try await f.readStream(stream) } == bytes)
        #expect(reading.snapshot.done == 100_000 && reading.snapshot.total == 100_000)
    }

    @Test("Accounts never share chunks: the same data in two accounts is stored twice, under unrelated ids")
    func accountsIsolated() async throws {
        let f = try await RepositoryFixture()
        defer { f.cleanup() }
        let pages = (0..<20).map { _ in randomBytes(4096) }
        let a = try await f.storePages(pages, account: "acct-a")
        let packsA = f.objects("packs").count
        let b = try await f.storePages(pages, account: "acct-b")
        #expect(f.objects("packs").count == 2 * packsA)
        #expect(try await f.restorePages(b, account: "acct-b") == pages.flatMap { $0 })
        // B's manifest is not A's to read.
        await #expect(throws: RepositoryError.self) { _ = try await f.restorePages(b, account: "acct-a") }
        _ = a
    }

    @Test("Tampering with a pack or a manifest, truncating or deleting one, fails restore and verify with a clear error")
    func tampering() async throws {
        for damage in ["flip-pack", "truncate-pack", "delete-pack", "flip-manifest", "delete-manifest", "flip-segment-manifest", "delete-segment-manifest"] {
            let f = try await RepositoryFixture(segmentSpan: 8)
            defer { f.cleanup() }
            let pages = (0..<30).map { _ in randomBytes(4096) }
            let object = try await f.storePages(pages)
            let pack = f.directory + "/repository/packs/" + f.objects("packs")[0]
            // Sorted, the header `mf...` comes before its segments `mf...-0` to `mf...-3`.
            let manifests = f.objects("manifests")
            #expect(manifests.count == 5)
            let manifest = f.directory + "/repository/manifests/" + (damage.contains("segment") ? manifests[2] : manifests[0])
            let path = damage.hasSuffix("pack") ? pack : manifest
            var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
            switch damage {
            case "flip-pack", "flip-manifest", "flip-segment-manifest": bytes[bytes.count / 2] ^= 0x04
            case "truncate-pack": bytes.removeLast(100)
            default: bytes = []
            }
            if bytes.isEmpty { try FileManager.default.removeItem(atPath: path) } else { try Data(bytes).write(to: URL(fileURLWithPath: path)) }

            do {
                _ = try await f.restorePages(object)
                Issue.record("\(damage): restore succeeded")
            } catch let error as RepositoryError {
                #expect([.corrupt, .missing].contains(error.kind), "\(damage)")
                #expect(error.message.contains(damage.hasSuffix("pack") ? "pack" : "manifest") || error.message.contains("missing"), "\(damage): \(error.message)")
            }
            let report = try await f.repository.verify(object, accountID: "acct-a")
            #expect(!report.isSound, "\(damage)")
            #expect(report.problems.joined().contains(damage.hasSuffix("pack") ? "pack" : "manifest"), "\(damage): \(report.problems)")
        }
    }

    @Test("A wrong master key fails cleanly, naming the problem")
    func wrongMasterKey() async throws {
        let f = try await RepositoryFixture()
        defer { f.cleanup() }
        let pages = (0..<5).map { _ in randomBytes(4096) }
        let object = try await f.storePages(pages)
        let wrong = RepositoryFixture.repository(catalog: f.catalog, directory: f.directory, master: MasterKey.generate().0, clock: f.clock)
        do {
            _ = try await f.restorePages(object, repository: wrong)
            Issue.record("restore with the wrong master key succeeded")
        } catch let error as RepositoryError {
            #expect(error.kind == .keys)
            #expect(error.message.contains("master key"))
        }
    }

    @Test("No repository file contains a marker the source data contains, even uncompressed")
    func nothingInTheClear() async throws {
        let f = try await RepositoryFixture(compression: CompressionSetting.none)
        defer { f.cleanup() }
        let marker = "CLOUDHEED-MARKER-7f3a9c"
        let pages = (0..<20).map { page(UInt8($0), marker: String(repeating: marker, count: 50)) }
        #expect(pages[0].count == 4096)
        _ = try await f.storePages(pages)
        _ = try await f.storeStream(Array(String(repeating: marker, count: 2000).utf8))
        let root = f.directory + "/repository"
        var files = 0
        for case let file as String in FileManager.default.enumerator(atPath: root)! {
            guard let data = FileManager.default.contents(atPath: root + "/" + file), !data.isEmpty else { continue }
            files += 1
            #expect(data.range(of: Data(marker.utf8)) == nil, "\(file) holds the marker")
        }
        #expect(files >= 3)
    }

    @Test("Key rotation re-wraps data keys: every backup stays restorable under the new key, none under the old")
    func keyRotation() async throws {
        let f = try await RepositoryFixture()
        defer { f.cleanup() }
        let pagesA = (0..<10).map { _ in randomBytes(4096) }
        let streamB = randomBytes(50_000)
        let a = try await f.storePages(pagesA, account: "acct-a")
        let b = try await f.storeStream(streamB, account: "acct-b")
        let packs = f.objects("packs")
        let (newMaster, _) = MasterKey.generate()
        #expect(try await KeyRing.rotate(store: f.catalog, from: f.master, to: newMaster) == 2)
        #expect(f.objects("packs") == packs, "no chunk was rewritten")
        let rotated = RepositoryFixture.repository(catalog: f.catalog, directory: f.directory, master: newMaster, clock: f.clock)
        #expect(try await f.restorePages(a, account: "acct-a", repository: rotated) == pagesA.flatMap { $0 })
        #expect(try await f.readStream(b, account: "acct-b", repository: rotated) == streamB)
        let stale = RepositoryFixture.repository(catalog: f.catalog, directory: f.directory, master: f.master, clock: f.clock)
        await #expect(throws: RepositoryError.self) { _ = try await f.restorePages(a, account: "acct-a", repository: stale) }
        // Rotating with the wrong old key changes nothing.
        await #expect(throws: KeyError.self) { _ = try await KeyRing.rotate(store: f.catalog, from: f.master, to: newMaster) }
        #expect(try await f.restorePages(a, account: "acct-a", repository: rotated) == pagesA.flatMap { $0 })
    }

    @Test("Destroying an account's data key makes its backups unreadable")
    func destroyedKey() async throws {
        let f = try await RepositoryFixture()
        defer { f.cleanup() }
        let object = try await f.storePages((0..<3).map { _ in randomBytes(4096) })
        try await f.catalog.destroyDataKey(accountID: "acct-a")
        // A fresh key ring (the service after a restart) gets a new, different key.
        let fresh = RepositoryFixture.repository(catalog: f.catalog, directory: f.directory, master: f.master, clock: f.clock)
        await #expect(throws: RepositoryError.self) { _ = try await f.restorePages(object, repository: fresh) }
    }
}

@Suite("Garbage collection")
struct GarbageCollectionTests {
    @Test("Deleting the last backup that uses data frees it after the grace period; shared data stays")
    func collectsOnlyUnreferenced() async throws {
        let f = try await RepositoryFixture(grace: 600)
        defer { f.cleanup() }
        let shared = (0..<20).map { _ in randomBytes(4096) }
        let keep = try await f.storePages(shared)
        try await f.record(keep)
        let extra = try await f.storePages(shared + (0..<20).map { _ in randomBytes(4096) })
        try await f.record(extra)
        // The second backup's own pages: delete it.
        let backups = try await f.catalog.backups(databaseID: try #require(try await f.catalog.backup(id: try await backupID(of: extra, f))?.databaseID), accountID: "acct-a", type: nil, status: nil)
        _ = try await f.catalog.deleteManualBackup(id: backups[0].id, databaseID: backups[0].databaseID, accountID: "acct-a", at: f.clock.now())

        #expect(try await f.repository.collectGarbage(now: f.clock.now()).chunksDeleted == 0, "nothing goes within the grace period")
        f.clock.advance(by: 601)
        let report = try await f.repository.collectGarbage(now: f.clock.now())
        #expect(report.chunksDeleted == 20)
        f.clock.advance(by: 601)
        _ = try await f.repository.collectGarbage(now: f.clock.now())
        #expect(try await f.restorePages(keep) == shared.flatMap { $0 })
        #expect(try await f.repository.verify(keep, accountID: "acct-a").isSound)
        await #expect(throws: RepositoryError.self) { _ = try await f.restorePages(extra) }
    }

    @Test("A backup interrupted before its manifest header is written leaves nothing behind: its open layer, segments and packs are collected")
    func interruptedBackupCollected() async throws {
        let f = try await RepositoryFixture(grace: 10, segmentSpan: 4)
        defer { f.cleanup() }
        let failing = DedupRepository(
            index: f.catalog, blobs: HeaderRefusingStore(inner: try FileBlobStore(root: f.directory + "/repository")),
            keyRing: KeyRing(master: f.master, store: f.catalog), clock: f.clock, ids: SecureIDGenerator(), packSize: 16 << 10,
            concurrency: 2, grace: 10, segmentSpan: 4)
        let pages = (0..<12).map { _ in randomBytes(4096) }
        await #expect(throws: RepositoryError.self) { _ = try await f.storePages(pages, repository: failing) }
        #expect(f.objects("manifests").count == 3, "three segments, no header")
        #expect(f.objects("packs").count >= 3)
        // Past the grace period, and past the files' real modification times.
        f.clock.advance(by: Date().timeIntervalSince(f.clock.now()) + 60)
        let report = try await f.repository.collectGarbage(now: f.clock.now())
        #expect(report.layersDropped == 1)
        #expect(report.orphansDeleted == 3)
        #expect(report.chunksDeleted == 12)
        f.clock.advance(by: 60)
        _ = try await f.repository.collectGarbage(now: f.clock.now())
        #expect(f.objects("manifests").isEmpty)
        #expect(f.objects("packs").isEmpty)
        let again = try await f.storePages(pages)
        #expect(try await f.restorePages(again) == pages.flatMap { $0 })
    }

    @Test("The orphan sweep leaves alone what a backup still running uploaded, however old the grace says it is; once the backup ended, it goes")
    func runningBackupsUploadsAreNotOrphans() async throws {
        let f = try await RepositoryFixture(grace: 10)
        defer { f.cleanup() }
        // A backup claimed just before it uploads a pack that the index does not know yet (as
        // when the catalog is unreachable between upload and record, or another node sweeps).
        let started = Date().addingTimeInterval(-1)
        let database = ManagedDatabase(
            id: "db-running", accountID: "acct-a", name: "running", tier: .small, engine: .sqlite, status: .available,
            backupWindow: try BackupWindow.parse("03:00-04:00"), location: f.directory + "/running.sqlite3", createdAt: started, nextBackupAt: started)
        try await f.catalog.insertDatabase(database)
        try await f.catalog.enqueueManualBackup(
            Backup(id: "backup-running", accountID: "acct-a", databaseID: database.id, name: "m", type: .manual, status: .pending, engine: .sqlite,
                   createdAt: started, expiresAt: nil),
            jobID: "job-running", now: started)
        let job = try #require(try await f.catalog.claimJob(leaseToken: "l", now: started, leaseDuration: .seconds(60), maxAttempts: 3))
        try await FileBlobStore(root: f.directory + "/repository").put("packs/uploaded-by-running-backup", randomBytes(64))

        // Far past the grace period and the file's real modification time.
        f.clock.advance(by: Date().timeIntervalSince(f.clock.now()) + 60)
        #expect(try await f.repository.collectGarbage(now: f.clock.now()).orphansDeleted == 0)
        #expect(f.objects("packs") == ["uploaded-by-running-backup"])

        _ = try await f.catalog.finishJob(job, outcome: .failed(ErrorInfo(code: "io_error", message: "gave up")), at: f.clock.now())
        #expect(try await f.repository.collectGarbage(now: f.clock.now()).orphansDeleted == 1)
        #expect(f.objects("packs").isEmpty)
    }

    func backupID(of object: StoredObject, _ f: RepositoryFixture) async throws -> String {
        for account in ["acct-a"] {
            for database in try await f.catalog.databases(accountID: account, includeDeleted: true) {
                for backup in try await f.catalog.backups(databaseID: database.id, accountID: account, type: nil, status: nil) where backup.object?.key == object.key {
                    return backup.id
                }
            }
        }
        throw RepositoryError(.missing, "no backup holds \(object.key)")
    }

    @Test("GC rewrites a mostly-dead pack: the live chunks move to a new pack, the old one goes after the grace period, every backup stays whole")
    func rewritesSparsePacks() async throws {
        let f = try await RepositoryFixture(grace: 600)
        defer { f.cleanup() }
        // 16 pages a pack (64 KiB packs): a backup of 32 pages fills two.
        let pages = (0..<32).map { _ in randomBytes(4096) }
        let first = try await f.storePages(pages)
        try await f.record(first)
        // Another database keeps only 4 of the first pack's pages (and stores 12 of its own).
        let keptPages = Array(pages[0..<4]) + (0..<12).map { _ in randomBytes(4096) }
        let kept = try await f.storePages(keptPages)
        try await f.record(kept)
        #expect(f.objects("packs").count == 3)

        let id = try await GarbageCollectionTests().backupID(of: first, f)
        let backup = try #require(try await f.catalog.backup(id: id))
        _ = try await f.catalog.deleteManualBackup(id: id, databaseID: backup.databaseID, accountID: "acct-a", at: f.clock.now())
        f.clock.advance(by: 601)
        let report = try await f.repository.collectGarbage(now: f.clock.now())
        #expect(report.chunksDeleted == 28)
        #expect(report.packsRetired == 1, "the pack with no live chunk")
        #expect(report.packsRewritten == 1, "the pack with 4 of 16 live")
        #expect(try await f.restorePages(kept) == keptPages.flatMap { $0 })
        #expect(try await f.repository.verify(kept, accountID: "acct-a").isSound)
        // Within the grace period the old packs are still there for readers; after it, gone.
        #expect(f.objects("packs").count == 4)
        f.clock.advance(by: 601)
        _ = try await f.repository.collectGarbage(now: f.clock.now())
        #expect(f.objects("packs").count == 2)
        #expect(try await f.restorePages(kept) == keptPages.flatMap { $0 })
    }

    @Test("A layer reusing a chunk that GC removed is refused, never recorded dangling")
    func manifestInsertChecksChunks() async throws {
        let f = try await RepositoryFixture(grace: 0)
        defer { f.cleanup() }
        let pages = (0..<8).map { _ in randomBytes(4096) }
        let abandoned = try await f.storePages(pages)  // never recorded: an abandoned attempt
        let layer = try #require(try await f.catalog.layer(id: abandoned.key))
        f.clock.advance(by: 1)
        _ = try await f.repository.collectGarbage(now: f.clock.now())
        #expect(try await f.catalog.layer(id: abandoned.key) == nil)
        #expect(f.objects("packs").isEmpty)
        #expect(f.objects("manifests").isEmpty)
        // Recording a manifest over chunks that are gone is refused.
        var stale = layer
        stale.id = "mfstale"
        do {
            let lost = ChunkID(bytes: randomBytes(32))
            try await f.catalog.insertLayer(stale, chunkIDs: [lost])
            Issue.record("a manifest over a collected chunk was recorded")
        } catch let error as RepositoryError {
            #expect(error.kind == .chunksCollected)
        }
        // A backup of the same data now stores it anew and is whole.
        let fresh = try await f.storePages(pages)
        #expect(try await f.restorePages(fresh) == pages.flatMap { $0 })
    }

    @Test("GC running flat out while backups of overlapping data are stored and deleted loses nothing recorded")
    func racingBackups() async throws {
        // The clock moves past the grace period after every round, so the data of each deleted
        // backup is collectable while the following rounds look it up and reuse it.
        let f = try await RepositoryFixture(grace: 10)
        defer { f.cleanup() }
        let base = (0..<24).map { _ in randomBytes(4096) }
        var kept: [(StoredObject, [UInt8])] = []
        try await withThrowingTaskGroup(of: Void.self) { group in
            let stop = ManualFlag()
            group.addTask {
                while !stop.isSet {
                    _ = try await f.repository.collectGarbage(now: f.clock.now())
                    await Task.yield()
                }
            }
            for round in 0..<15 {
                var pages = base
                pages[round % base.count] = randomBytes(4096)
                let object = try await f.storePages(pages)
                if round % 3 == 0 {
                    try await f.record(object)
                    kept.append((object, pages.flatMap { $0 }))
                } else {
                    // Recorded, then deleted again at once: its data becomes garbage while others reuse it.
                    try await f.record(object)
                    let id = try await GarbageCollectionTests().backupID(of: object, f)
                    let backup = try #require(try await f.catalog.backup(id: id))
                    _ = try await f.catalog.deleteManualBackup(id: id, databaseID: backup.databaseID, accountID: "acct-a", at: f.clock.now())
                }
                f.clock.advance(by: 11)
            }
            stop.set()
            try await group.waitForAll()
        }
        f.clock.advance(by: 30)
        _ = try await f.repository.collectGarbage(now: f.clock.now())
        f.clock.advance(by: 30)
        _ = try await f.repository.collectGarbage(now: f.clock.now())
        #expect(kept.count == 5)
        for (object, bytes) in kept {
            #expect(try await f.repository.verify(object, accountID: "acct-a").isSound)
            #expect(try await f.restorePages(object) == bytes)
        }
    }
}

final class ManualFlag: Sendable {
    private let value = Mutex(false)
    var isSet: Bool { value.withLock { $0 } }
    func set() { value.withLock { $0 = true } }
}

extension Array {
    func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var out: [T] = []
        for element in self { out.append(try await transform(element)) }
        return out
    }
}

@Suite("FastCDC")
struct FastCDCTests {
    @Test("Chunks respect the limits, are deterministic, and an insertion changes only the chunks around it")
    func boundaries() {
        let parameters = FastCDCParameters(minimum: 2048, average: 8192, maximum: 32768)
        func split(_ bytes: [UInt8], piece: Int, batch: Int = 0) -> [[UInt8]] {
            var splitter = FastCDCSplitter(parameters)
            var chunks: [[UInt8]] = []
            var offset = 0
            while offset < bytes.count {
                chunks += splitter.append(Array(bytes[offset..<Swift.min(offset + piece, bytes.count)]), batch: batch)
                offset += piece
            }
            return chunks + splitter.finish()
        }
        let data = randomBytes(1 << 20)
        let chunks = split(data, piece: 10_000)
        #expect(chunks.flatMap { $0 } == data)
        #expect(chunks.dropLast().allSatisfy { $0.count >= 2048 && $0.count <= 32768 })
        let average = data.count / chunks.count
        #expect((4096...16384).contains(average), "average \(average)")
        // Feeding in different pieces gives the same chunks.
        #expect(split(data, piece: 777) == chunks)
        // Gathering a batch before cutting changes when chunks come out, never where they end.
        #expect(split(data, piece: 5000, batch: 100_000) == chunks)
        // 100 bytes inserted in the middle: the chunks before and most after are unchanged.
        var edited = data
        edited.insert(contentsOf: randomBytes(100), at: data.count / 2)
        let editedChunks = split(edited, piece: 10_000)
        let unchanged = Set(chunks.map { $0.hashValue }).intersection(editedChunks.map { $0.hashValue }).count
        #expect(unchanged >= chunks.count - 3, "\(unchanged) of \(chunks.count) unchanged")
    }
}

@Suite("Chunk ids")
struct ChunkIDTests {
    @Test("The precomputed HMAC equals swift-crypto's HMAC-SHA-256 for inputs of every size class")
    func hmacMatches() {
        let keys = AccountKeys(dataKey: SymmetricKey(size: .bits256))
        for size in [0, 1, 31, 32, 55, 56, 63, 64, 65, 4096, 100_000] {
            let bytes = randomBytes(size)
            let reference = ChunkID(bytes: Array(HMAC<SHA256>.authenticationCode(for: bytes, using: keys.idKey)))
            #expect(keys.chunkID(of: bytes) == reference, "size \(size)")
        }
        let id = keys.chunkID(of: randomBytes(10))
        #expect(ChunkID(bytes: id.bytes) == id)
        #expect(id.description.count == 64)
    }
}

@Suite("Settings parsing")
struct SettingsParsingTests {
    @Test("Compression settings: a zstd level 1-19, zstd:N, or none; anything else refused")
    func compression() {
        #expect(CompressionSetting.parse("3") == .zstd(level: 3))
        #expect(CompressionSetting.parse("zstd:19") == .zstd(level: 19))
        #expect(CompressionSetting.parse("none") == CompressionSetting.none)
        for bad in ["0", "20", "-1", "zstd", "fast", ""] { #expect(CompressionSetting.parse(bad) == nil, "\(bad)") }
    }

    @Test("Master keys: exactly 32 bytes or 64 hexadecimal characters")
    func masterKeys() throws {
        let (_, hex) = MasterKey.generate()
        #expect(hex.count == 64)
        _ = try MasterKey(hex: hex)
        _ = try MasterKey(hex: hex.uppercased() + "\n")
        for bad in ["", String(hex.dropLast()), hex + "00", String(repeating: "g", count: 64)] {
            #expect(throws: KeyError.self) { try MasterKey(hex: bad) }
        }
        #expect(throws: KeyError.self) { try MasterKey(bytes: [UInt8](repeating: 1, count: 31)) }
    }
}

/// Storage that refuses manifest headers, as if the process died just before writing one.
struct HeaderRefusingStore: BlobStore {
    let inner: FileBlobStore
    func refuse(_ key: String) throws {
        if key.hasPrefix("manifests/"), !key.contains("-") { throw RepositoryError(.io, "refused \(key)") }
    }
    func put(_ key: String, _ bytes: [UInt8]) async throws { try refuse(key); try await inner.put(key, bytes) }
    func putBuffered(_ key: String, _ bytes: [UInt8]) async throws { try refuse(key); try await inner.putBuffered(key, bytes) }
    func syncBuffered() async throws { try await inner.syncBuffered() }
    func get(_ key: String) async throws -> [UInt8] { try await inner.get(key) }
    func delete(_ key: String) async throws { try await inner.delete(key) }
    func list(prefix: String) async throws -> [RepositoryEntry] { try await inner.list(prefix: prefix) }
    func probe() async throws { try await inner.probe() }
}
