import Foundation

/// A manifest layer's plaintext (stored sealed, as `manifests/<layer id>`).
///
/// Binary, little-endian: magic `CHM1`, kind, page size, total count (pages, or stream
/// entries), logical size, entries, then the engine's metadata as JSON.
/// - full pages: one chunk id per page, in page order;
/// - page delta: (page index, chunk id) for each page that differs from the parent, with the
///   total page count (the file may have grown or shrunk);
/// - stream: (length, chunk id) per chunk, in order.
struct ManifestLayer: Equatable {
    enum Entries: Equatable {
        case pages([ChunkID])
        case delta([(index: Int, id: ChunkID)])
        case stream([(length: Int, id: ChunkID)])

        static func == (l: Entries, r: Entries) -> Bool {
            switch (l, r) {
            case let (.pages(a), .pages(b)): a == b
            case let (.delta(a), .delta(b)): a.count == b.count && zip(a, b).allSatisfy { $0.index == $1.index && $0.id == $1.id }
            case let (.stream(a), .stream(b)): a.count == b.count && zip(a, b).allSatisfy { $0.length == $1.length && $0.id == $1.id }
            default: false
            }
        }
    }

    var pageSize: Int
    var totalCount: Int
    var logicalSize: Int64
    var entries: Entries
    var metadata: [String: String]

    var kind: LayerRecord.Kind {
        switch entries {
        case .pages: .pagesFull
        case .delta: .pagesDelta
        case .stream: .stream
        }
    }

    func encoded() -> [UInt8] {
        var out = Array("CHM1".utf8)
        func u64(_ v: Int64) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        let kindByte: UInt8
        switch entries {
        case .pages: kindByte = 0
        case .delta: kindByte = 1
        case .stream: kindByte = 2
        }
        out.append(kindByte)
        u64(Int64(pageSize))
        u64(Int64(totalCount))
        u64(logicalSize)
        switch entries {
        case .pages(let ids):
            u64(Int64(ids.count))
            out.reserveCapacity(out.count + ids.count * 32)
            for id in ids { id.append(to: &out) }
        case .delta(let changes):
            u64(Int64(changes.count))
            for change in changes { u64(Int64(change.index)); change.id.append(to: &out) }
        case .stream(let items):
            u64(Int64(items.count))
            for item in items { u64(Int64(item.length)); item.id.append(to: &out) }
        }
        let json = (try? JSONSerialization.data(withJSONObject: metadata, options: [.sortedKeys])) ?? Data("{}".utf8)
        u64(Int64(json.count))
        out.append(contentsOf: json)
        return out
    }

    static func decode(_ bytes: [UInt8], name: String) throws -> ManifestLayer {
        var position = 0
        let corrupt = RepositoryError(.corrupt, "manifest \(name) is malformed")
        func take(_ n: Int) throws -> ArraySlice<UInt8> {
            guard n >= 0, position + n <= bytes.count else { throw corrupt }
            defer { position += n }
            return bytes[position..<(position + n)]
        }
        func u64() throws -> Int {
            let slice = try take(8)
            var value: UInt64 = 0
            for (i, b) in slice.enumerated() { value |= UInt64(b) << (UInt64(i) * 8) }
            guard value <= UInt64(Int64.max) else { throw corrupt }
            return Int(value)
        }
        guard try Array(take(4)) == Array("CHM1".utf8) else { throw corrupt }
        let kind = try take(1).first!
        let pageSize = try u64()
        let totalCount = try u64()
        let logicalSize = Int64(try u64())
        let count = try u64()
        guard count <= bytes.count else { throw corrupt }
        let entries: Entries
        switch kind {
        case 0: entries = .pages(try (0..<count).map { _ in try take(32).withUnsafeBytes { ChunkID(raw: $0) } })
        case 1: entries = .delta(try (0..<count).map { _ in (try u64(), try take(32).withUnsafeBytes { ChunkID(raw: $0) }) })
        case 2: entries = .stream(try (0..<count).map { _ in (try u64(), try take(32).withUnsafeBytes { ChunkID(raw: $0) }) })
        default: throw corrupt
        }
        let jsonLength = try u64()
        let json = try take(jsonLength)
        let metadata = (try? JSONSerialization.jsonObject(with: Data(json))) as? [String: String] ?? [:]
        return ManifestLayer(pageSize: pageSize, totalCount: totalCount, logicalSize: logicalSize, entries: entries, metadata: metadata)
    }
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
