import CloudheedDomain
import Crypto
import Foundation

/// The simple repository format: one file per backup object under `<root>/objects/`, written
/// to `<root>/incoming/` first and renamed into place once complete and synced, so a crash
/// never leaves a half-written object under its final name. The SHA-256 and size kept in the
/// catalog are checked on every read.
public struct FileSystemRepository: BackupRepository {
    public let root: String
    let chunkSize: Int

    public init(root: String, chunkSize: Int = 1 << 20) throws {
        self.root = root
        self.chunkSize = chunkSize
        let fm = FileManager.default
        try fm.createDirectory(atPath: objectsDirectory, withIntermediateDirectories: true)
        try fm.createDirectory(atPath: incomingDirectory, withIntermediateDirectories: true)
        // Anything in incoming/ is a write a crash interrupted; no object refers to it.
        for leftover in (try? fm.contentsOfDirectory(atPath: incomingDirectory)) ?? [] {
            try? fm.removeItem(atPath: incomingDirectory + "/" + leftover)
        }
    }

    var objectsDirectory: String { root + "/objects" }
    var incomingDirectory: String { root + "/incoming" }

    func path(for key: String) throws -> String {
        guard Self.isValidKey(key) else { throw RepositoryError(.invalidKey, "invalid object key '\(key)'") }
        return objectsDirectory + "/" + key
    }

    static func isValidKey(_ key: String) -> Bool {
        !key.isEmpty && key.utf8.count <= 200
            && key.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D }
    }

    public func write<Chunks: AsyncSequence & Sendable>(key: String, chunks: Chunks) async throws -> StoredObject
    where Chunks.Element == [UInt8] {
        let finalPath = try path(for: key)
        let partial = incomingDirectory + "/" + key + ".partial"
        let fm = FileManager.default
        guard fm.createFile(atPath: partial, contents: nil), let handle = FileHandle(forWritingAtPath: partial) else {
            throw RepositoryError(.io, "cannot create \(partial)")
        }
        var hasher = SHA256()
        var size: Int64 = 0
        do {
            defer { try? handle.close() }
            for try await chunk in chunks {
                try Task.checkCancellation()
                hasher.update(data: chunk)
                try handle.write(contentsOf: chunk)
                size += Int64(chunk.count)
            }
            try handle.synchronize()
        } catch {
            try? fm.removeItem(atPath: partial)
            throw error
        }
        do {
            if fm.fileExists(atPath: finalPath) { try fm.removeItem(atPath: finalPath) }
            try fm.moveItem(atPath: partial, toPath: finalPath)
        } catch {
            try? fm.removeItem(atPath: partial)
            throw RepositoryError(.io, "cannot store object \(key): \(error.localizedDescription)")
        }
        FileSync.directory(objectsDirectory)
        return StoredObject(key: key, sizeBytes: size, checksum: hasher.finalize().hex)
    }

    public func read(_ object: StoredObject) -> RepositoryObjectReader {
        let chunkSize = self.chunkSize
        let resolved = Result { try path(for: object.key) }
        return RepositoryObjectReader {
            let state = ReadState()
            return {
                let path = try resolved.get()
                return try state.next(path: path, object: object, chunkSize: chunkSize)
            }
        }
    }

    public func delete(key: String) async throws {
        let p = try path(for: key)
        do {
            try FileManager.default.removeItem(atPath: p)
        } catch CocoaError.fileNoSuchFile {
            // Already gone: deleting is idempotent.
        }
    }

    public func list() async throws -> [RepositoryEntry] {
        let fm = FileManager.default
        return try fm.contentsOfDirectory(atPath: objectsDirectory).compactMap { name in
            guard Self.isValidKey(name) else { return nil }
            let attributes = try? fm.attributesOfItem(atPath: objectsDirectory + "/" + name)
            return RepositoryEntry(key: name, modifiedAt: (attributes?[.modificationDate] as? Date) ?? .distantPast)
        }
    }
}

/// Per-read state; one reader is iterated by one task at a time.
private final class ReadState: @unchecked Sendable {
    var handle: FileHandle?
    var hasher = SHA256()
    var size: Int64 = 0
    var done = false

    deinit { try? handle?.close() }

    func next(path: String, object: StoredObject, chunkSize: Int) throws -> [UInt8]? {
        if done { return nil }
        if handle == nil {
            guard let opened = FileHandle(forReadingAtPath: path) else {
                done = true
                throw RepositoryError(.missing, "stored data of object \(object.key) is missing")
            }
            handle = opened
        }
        let data: Data?
        do {
            data = try handle!.read(upToCount: chunkSize)
        } catch {
            done = true
            throw RepositoryError(.io, "cannot read object \(object.key): \(error.localizedDescription)")
        }
        guard let data, !data.isEmpty else {
            done = true
            try? handle?.close()
            handle = nil
            let checksum = hasher.finalize().hex
            guard size == object.sizeBytes else {
                throw RepositoryError(.corrupt, "object \(object.key) has \(size) bytes, expected \(object.sizeBytes)")
            }
            guard checksum == object.checksum else {
                throw RepositoryError(.corrupt, "object \(object.key) fails its checksum (stored data was altered)")
            }
            return nil
        }
        size += Int64(data.count)
        guard size <= object.sizeBytes else {
            done = true
            throw RepositoryError(.corrupt, "object \(object.key) is longer than the \(object.sizeBytes) bytes recorded")
        }
        hasher.update(data: data)
        return [UInt8](data)
    }
}

extension Sequence where Element == UInt8 {
    public var hex: String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        for byte in self {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0xF)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
