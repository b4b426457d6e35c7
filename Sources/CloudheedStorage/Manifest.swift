import Crypto
import Foundation

/// A manifest layer is stored as a small header object, `manifests/<layer id>`, and segments,
/// `manifests/<layer id>-<n>`, each sealed on its own. A segment covers `span` pages (or stream
/// entries), so a backup, a restore or a verification holds one segment of a manifest at a time:
/// memory does not grow with the database, and no sealed unit comes near its size limit.
///
/// The header's checksum is recorded in the catalog; the header records each segment's entry
/// count and checksum, so every byte of a manifest is authenticated from the catalog down.
///
/// Binary, little-endian. Header: magic `CHM2`, kind, page size, total count (pages, or stream
/// entries), logical size, span, segment count, then per segment its entry count and SHA-256
/// (a delta layer leaves segments without changes out: count 0, no object), then the engine's
/// metadata as JSON. Segment: magic `CHS2`, kind, entry count, entries:
/// - full pages: one chunk id per page of the segment, in page order;
/// - page delta: (page index, chunk id) for each page of the segment that differs from the
///   parent; the header's total count says whether the file grew or shrank;
/// - stream: (length, chunk id) per chunk, in order.
struct ManifestHeader: Equatable {
    enum Kind: UInt8 { case pages = 0, delta = 1, stream = 2 }
    struct Segment: Equatable {
        var count: Int
        var checksum: [UInt8]
        /// Delta layers store no object for a segment without changes.
        var isPresent: Bool { !checksum.allSatisfy { $0 == 0 } }
        static let absent = Segment(count: 0, checksum: [UInt8](repeating: 0, count: 32))
    }

    var kind: Kind
    var pageSize: Int
    var totalCount: Int
    var logicalSize: Int64
    var span: Int
    var segments: [Segment]
    var metadata: [String: String]

    var recordKind: LayerRecord.Kind {
        switch kind {
        case .pages: .pagesFull
        case .delta: .pagesDelta
        case .stream: .stream
        }
    }

    static func segmentKey(_ layerID: String, _ n: Int) -> String { "manifests/\(layerID)-\(n)" }
    static func segmentName(_ layerID: String, _ n: Int) -> String { "\(layerID)-\(n)" }

    func encoded() -> [UInt8] {
        var out = Array("CHM2".utf8)
        out.append(kind.rawValue)
        for value in [Int64(pageSize), Int64(totalCount), logicalSize, Int64(span), Int64(segments.count)] { out.appendLE(value) }
        for segment in segments {
            out.appendLE(Int64(segment.count))
            out.append(contentsOf: segment.checksum)
        }
        let json = (try? JSONSerialization.data(withJSONObject: metadata, options: [.sortedKeys])) ?? Data("{}".utf8)
        out.appendLE(Int64(json.count))
        out.append(contentsOf: json)
        return out
    }

    static func decode(_ bytes: [UInt8], name: String) throws -> ManifestHeader {
        var reader = ByteReader(bytes: bytes, error: RepositoryError(.corrupt, "manifest \(name) is malformed"))
        guard try Array(reader.take(4)) == Array("CHM2".utf8), let kind = Kind(rawValue: try reader.take(1).first!) else { throw reader.error }
        let pageSize = try reader.int(), totalCount = try reader.int(), logicalSize = Int64(try reader.int())
        let span = try reader.int(), count = try reader.int()
        guard span > 0, count <= bytes.count / 40 else { throw reader.error }
        let segments = try (0..<count).map { _ in Segment(count: try reader.int(), checksum: Array(try reader.take(32))) }
        let json = try reader.take(try reader.int())
        let metadata = (try? JSONSerialization.jsonObject(with: Data(json))) as? [String: String] ?? [:]
        return ManifestHeader(kind: kind, pageSize: pageSize, totalCount: totalCount, logicalSize: logicalSize, span: span, segments: segments, metadata: metadata)
    }
}

/// One segment's entries.
enum ManifestSegment: Equatable {
    case pages([ChunkID])
    case delta([(index: Int, id: ChunkID)])
    case stream([(length: Int, id: ChunkID)])

    static func == (l: ManifestSegment, r: ManifestSegment) -> Bool {
        switch (l, r) {
        case let (.pages(a), .pages(b)): a == b
        case let (.delta(a), .delta(b)): a.count == b.count && zip(a, b).allSatisfy { $0.index == $1.index && $0.id == $1.id }
        case let (.stream(a), .stream(b)): a.count == b.count && zip(a, b).allSatisfy { $0.length == $1.length && $0.id == $1.id }
        default: false
        }
    }

    var count: Int {
        switch self {
        case .pages(let ids): ids.count
        case .delta(let changes): changes.count
        case .stream(let items): items.count
        }
    }

    var kind: ManifestHeader.Kind {
        switch self {
        case .pages: .pages
        case .delta: .delta
        case .stream: .stream
        }
    }

    func encoded() -> [UInt8] {
        var out = Array("CHS2".utf8)
        out.append(kind.rawValue)
        out.appendLE(Int64(count))
        out.reserveCapacity(out.count + count * 40)
        switch self {
        case .pages(let ids):
            for id in ids { id.append(to: &out) }
        case .delta(let changes):
            for change in changes { out.appendLE(Int64(change.index)); change.id.append(to: &out) }
        case .stream(let items):
            for item in items { out.appendLE(Int64(item.length)); item.id.append(to: &out) }
        }
        return out
    }

    static func decode(_ bytes: [UInt8], name: String) throws -> ManifestSegment {
        var reader = ByteReader(bytes: bytes, error: RepositoryError(.corrupt, "manifest \(name) is malformed"))
        guard try Array(reader.take(4)) == Array("CHS2".utf8), let kind = ManifestHeader.Kind(rawValue: try reader.take(1).first!) else { throw reader.error }
        let count = try reader.int()
        guard count <= bytes.count / 32 else { throw reader.error }
        switch kind {
        case .pages: return .pages(try (0..<count).map { _ in try reader.chunkID() })
        case .delta: return .delta(try (0..<count).map { _ in (try reader.int(), try reader.chunkID()) })
        case .stream: return .stream(try (0..<count).map { _ in (try reader.int(), try reader.chunkID()) })
        }
    }
}

struct ByteReader {
    let bytes: [UInt8]
    let error: RepositoryError
    var position = 0

    init(bytes: [UInt8], error: RepositoryError) {
        self.bytes = bytes
        self.error = error
    }

    mutating func take(_ n: Int) throws -> ArraySlice<UInt8> {
        guard n >= 0, position + n <= bytes.count else { throw error }
        defer { position += n }
        return bytes[position..<(position + n)]
    }

    mutating func int() throws -> Int {
        let value = try take(8).withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        guard value <= UInt64(Int64.max) else { throw error }
        return Int(value)
    }

    mutating func chunkID() throws -> ChunkID {
        try take(32).withUnsafeBytes { ChunkID(raw: $0) }
    }
}

extension [UInt8] {
    mutating func appendLE(_ value: Int64) { Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) } }
}

/// A pack's plaintext: magic `CHP1`, chunk count, (id, offset, length) per chunk, then the
/// chunks' bytes. The table lets verification and GC work from a pack alone.
struct PackLayout {
    static func encode(_ chunks: [(id: ChunkID, bytes: ArraySlice<UInt8>)]) -> (plaintext: [UInt8], offsets: [Int]) {
        let header = 8 + chunks.count * 40
        var out = Array("CHP1".utf8)
        withUnsafeBytes(of: UInt32(chunks.count).littleEndian) { out.append(contentsOf: $0) }
        var offsets: [Int] = []
        var offset = header
        for chunk in chunks {
            chunk.id.append(to: &out)
            withUnsafeBytes(of: UInt32(offset).littleEndian) { out.append(contentsOf: $0) }
            withUnsafeBytes(of: UInt32(chunk.bytes.count).littleEndian) { out.append(contentsOf: $0) }
            offsets.append(offset)
            offset += chunk.bytes.count
        }
        out.reserveCapacity(offset)
        for chunk in chunks { out.append(contentsOf: chunk.bytes) }
        return (out, offsets)
    }

    /// The chunk at `offset`/`length`, checked against the pack's own table.
    static func chunk(in plaintext: [UInt8], offset: Int, length: Int, expected id: ChunkID, pack: String) throws -> ArraySlice<UInt8> {
        guard plaintext.count >= 8, Array(plaintext[0..<4]) == Array("CHP1".utf8), offset >= 8, length >= 0, offset + length <= plaintext.count else {
            throw RepositoryError(.corrupt, "pack \(pack) does not hold chunk \(id) where the index says")
        }
        return plaintext[offset..<(offset + length)]
    }
}
