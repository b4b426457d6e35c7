import CloudheedDomain
import CloudheedStorage
import Foundation
import Testing

/// Deterministic bytes, different at every offset, so a misplaced chunk cannot go unnoticed.
func pattern(_ count: Int, seed: UInt64 = 1) -> [UInt8] {
    var state = seed
    return (0..<count).map { _ in
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return UInt8(truncatingIfNeeded: state >> 33)
    }
}

/// Splits bytes into chunks of uneven sizes, the way a producer might hand them over.
struct Chunked: AsyncSequence, Sendable {
    typealias Element = [UInt8]
    let bytes: [UInt8]
    let sizes: [Int]
    var failAfter: Int?

    struct AsyncIterator: AsyncIteratorProtocol {
        let source: Chunked
        var offset = 0
        var index = 0
        mutating func next() async throws -> [UInt8]? {
            if let failAfter = source.failAfter, index == failAfter { throw CocoaError(.fileReadUnknown) }
            guard offset < source.bytes.count else { return nil }
            let size = source.sizes[index % source.sizes.count]
            let end = Swift.min(offset + size, source.bytes.count)
            defer { offset = end; index += 1 }
            return Array(source.bytes[offset..<end])
        }
    }
    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(source: self) }
}

@Suite("File-system repository")
struct FileSystemRepositoryTests {
    let root = NSTemporaryDirectory() + "cloudheed-repo-\(UUID().uuidString)"

    func readAll(_ repository: FileSystemRepository, _ object: StoredObject) async throws -> [UInt8] {
        var out: [UInt8] = []
        for try await chunk in repository.read(object) {
            #expect(chunk.count <= 64 * 1024)
            out += chunk
        }
        return out
    }

    @Test("Streams of every awkward size round-trip byte for byte", arguments: [0, 1, 64 * 1024 - 1, 64 * 1024, 64 * 1024 + 1, 5 * 1024 * 1024 + 3])
    func roundTrip(_ size: Int) async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let repository = try FileSystemRepository(root: root, chunkSize: 64 * 1024)
        let bytes = pattern(size, seed: UInt64(size))
        let object = try await repository.write(key: "backup-a-1", chunks: Chunked(bytes: bytes, sizes: [1, 70_000, 4096, 13]))
        #expect(object.sizeBytes == Int64(size))
        #expect(object.checksum.count == 64)
        #expect(try await readAll(repository, object) == bytes)
        #expect(try await repository.list().map(\.key) == ["backup-a-1"])
    }

    @Test("A flipped byte, a truncated file, an appended byte or a deleted file fail the read with a clear error")
    func tampering() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let repository = try FileSystemRepository(root: root, chunkSize: 64 * 1024)
        let bytes = pattern(300_000)
        let path = root + "/objects/backup-t-1"
        let tamperings: [(String, ([UInt8]) -> [UInt8]?, RepositoryError.Kind)] = [
            ("flip", { var b = $0; b[150_000] ^= 0x01; return b }, .corrupt),
            ("truncate", { Array($0.prefix(299_999)) }, .corrupt),
            ("append", { $0 + [0] }, .corrupt),
            ("delete", { _ in nil }, .missing),
        ]
        for (name, tamper, kind) in tamperings {
            let object = try await repository.write(key: "backup-t-1", chunks: Chunked(bytes: bytes, sizes: [100_000]))
            if let altered = tamper(bytes) {
                try Data(altered).write(to: URL(fileURLWithPath: path))
            } else {
                try FileManager.default.removeItem(atPath: path)
            }
            do {
                _ = try await readAll(repository, object)
                Issue.record("\(name): read succeeded on tampered data")
            } catch let error as RepositoryError {
                #expect(error.kind == kind, "\(name)")
                #expect(error.message.contains("backup-t-1"), "\(name)")
            }
        }
    }

    @Test("An interrupted write leaves no object behind, and keys that could escape the directory are refused")
    func interruptedWrite() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let repository = try FileSystemRepository(root: root)
        await #expect(throws: CocoaError.self) {
            _ = try await repository.write(key: "backup-i-1", chunks: Chunked(bytes: pattern(10_000), sizes: [1000], failAfter: 3))
        }
        #expect(try await repository.list().isEmpty)
        #expect(try FileManager.default.contentsOfDirectory(atPath: root + "/incoming").isEmpty)
        for key in ["../x", "a/b", "", "UPPER", "dot.dot"] {
            await #expect(throws: RepositoryError.self) { _ = try await repository.write(key: key, chunks: Chunked(bytes: [1], sizes: [1])) }
        }
        // Deleting is idempotent.
        try await repository.delete(key: "backup-never-1")
    }
}
