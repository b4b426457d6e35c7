import CLinuxShims
import Foundation

/// Where repository objects (packs, manifests) live: a directory now, S3-compatible storage
/// later. Objects are written once, whole, and never modified; the catalog knows which exist,
/// so `list` is only for sweeping what a crash left behind.
public protocol BlobStore: Sendable {
    /// Writes an object durably: when this returns, it survives a crash or power loss.
    func put(_ key: String, _ bytes: [UInt8]) async throws
    /// Writes an object that is complete or absent, but durable only after `syncBuffered`.
    /// Many objects made durable at once cost far less than one sync each.
    func putBuffered(_ key: String, _ bytes: [UInt8]) async throws
    /// Makes every object written with `putBuffered` so far durable.
    func syncBuffered() async throws
    /// Throws `RepositoryError(.missing)` when there is no such object.
    func get(_ key: String) async throws -> [UInt8]
    func delete(_ key: String) async throws
    func list(prefix: String) async throws -> [RepositoryEntry]
    /// Throws when the storage cannot be reached or written (for `/healthz/ready`).
    func probe() async throws
}

/// Objects as files under a root directory; keys like `packs/<id>` become subdirectories.
/// Each write goes to a temporary file that is synced and renamed into place, so an object is
/// either whole or absent.
public struct FileBlobStore: BlobStore {
    public let root: String

    /// `sweepIncoming` removes what interrupted writes left; only the process that owns the
    /// directory may do that (an offline `cloudheed verify` beside a running service must not).
    public init(root: String, sweepIncoming: Bool = true) throws {
        self.root = root
        let fm = FileManager.default
        try fm.createDirectory(atPath: root + "/.incoming", withIntermediateDirectories: true)
        guard sweepIncoming else { return }
        for leftover in (try? fm.contentsOfDirectory(atPath: root + "/.incoming")) ?? [] {
            try? fm.removeItem(atPath: root + "/.incoming/" + leftover)
        }
    }

    func path(_ key: String) throws -> String {
        let parts = key.split(separator: "/", omittingEmptySubsequences: false)
        guard !parts.isEmpty, parts.count <= 3, parts.allSatisfy({ part in
            !part.isEmpty && part.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D }
        }) else { throw RepositoryError(.invalidKey, "invalid object key '\(key)'") }
        return root + "/" + key
    }

    public func put(_ key: String, _ bytes: [UInt8]) async throws {
        try write(key, bytes, sync: true)
    }

    public func putBuffered(_ key: String, _ bytes: [UInt8]) async throws {
        try write(key, bytes, sync: false)
    }

    /// One `syncfs` flushes every file and directory written since: cheaper than an fsync each.
    public func syncBuffered() async throws {
        let fd = open(root, O_RDONLY)
        guard fd >= 0 else { throw RepositoryError.io("cannot open \(root)", errno: errno) }
        defer { close(fd) }
        guard cloudheed_syncfs(fd) == 0 else { throw RepositoryError.io("cannot sync \(root)", errno: errno) }
    }

    func write(_ key: String, _ bytes: [UInt8], sync: Bool) throws {
        let destination = try path(key)
        let directory = (destination as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let temporary = root + "/.incoming/" + key.replacingOccurrences(of: "/", with: "-") + "-" + String(UInt64.random(in: 0...UInt64.max), radix: 36)
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard fd >= 0 else { throw RepositoryError.io("cannot create \(temporary)", errno: errno) }
        var ok = bytes.withUnsafeBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let n = Glibc.write(fd, buffer.baseAddress! + offset, buffer.count - offset)
                if n <= 0 { return false }
                offset += n
            }
            return true
        }
        ok = ok && (!sync || fsync(fd) == 0)
        close(fd)
        guard ok, rename(temporary, destination) == 0 else {
            let failure = errno
            unlink(temporary)
            throw RepositoryError.io("cannot write object \(key)", errno: failure)
        }
        if sync { FileSync.directory(directory) }
    }

    public func probe() async throws {
        guard access(root, W_OK) == 0 else { throw RepositoryError.io("cannot write to \(root)", errno: errno) }
    }

    public func get(_ key: String) async throws -> [UInt8] {
        let p = try path(key)
        guard let data = FileManager.default.contents(atPath: p) else {
            throw RepositoryError(.missing, "object \(key) is missing from storage")
        }
        return [UInt8](data)
    }

    public func delete(_ key: String) async throws {
        let p = try path(key)
        if unlink(p) != 0 && errno != ENOENT { throw RepositoryError.io("cannot delete object \(key)", errno: errno) }
    }

    public func list(prefix: String) async throws -> [RepositoryEntry] {
        let fm = FileManager.default
        let directory = root + "/" + prefix
        guard let names = try? fm.contentsOfDirectory(atPath: directory) else { return [] }
        return names.compactMap { name in
            let key = prefix + "/" + name
            guard (try? path(key)) != nil else { return nil }
            let attributes = try? fm.attributesOfItem(atPath: directory + "/" + name)
            return RepositoryEntry(key: key, modifiedAt: (attributes?[.modificationDate] as? Date) ?? .distantPast)
        }
    }
}
