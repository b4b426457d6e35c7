import CloudheedDomain
import Foundation

/// What a backup is stored for.
public struct BackupTarget: Sendable {
    public var accountID: String
    public var backupID: String
    /// The latest completed backup of the same database: the new manifest is layered on it and
    /// only pages that differ from it are looked up, hashed against the index, and stored.
    public var parent: StoredObject?

    public init(accountID: String, backupID: String, parent: StoredObject?) {
        self.accountID = accountID
        self.backupID = backupID
        self.parent = parent
    }
}

/// What verifying a backup found.
public struct VerificationReport: Sendable, Equatable {
    public var chunksChecked: Int
    public var packsChecked: Int
    /// Human-readable problems naming the object, pack or chunk; empty when the backup is sound.
    public var problems: [String]
    public var isSound: Bool { problems.isEmpty }
    public init(chunksChecked: Int, packsChecked: Int, problems: [String]) {
        self.chunksChecked = chunksChecked
        self.packsChecked = packsChecked
        self.problems = problems
    }
}

public struct GarbageReport: Sendable, Equatable {
    public var layersDropped = 0
    public var chunksDeleted = 0
    public var packsRetired = 0
    public var packsRewritten = 0
    public var objectsDeleted = 0
    public var orphansDeleted = 0
    public init() {}
}

/// Where backup data lives: deduplicated, compressed and encrypted chunks, with a manifest per
/// backup. Every read authenticates what it reads and checks each chunk against its id.
public protocol BackupRepository: Sendable {
    /// Stores a page-structured snapshot file (SQLite), deduplicated page by page.
    func storePages(ofFile path: String, pageSize: Int, target: BackupTarget) async throws -> StoredObject
    /// Stores a byte stream without page structure (dumps), with content-defined chunks.
    func storeStream<Bytes: AsyncSequence & Sendable>(_ bytes: Bytes, target: BackupTarget) async throws -> StoredObject
        where Bytes.Element == [UInt8]
    /// Writes a page backup into a new file at `path`.
    func restorePages(_ object: StoredObject, accountID: String, toFile path: String) async throws
    /// Streams a backup's bytes in order.
    func readStream(_ object: StoredObject, accountID: String) -> AsyncThrowingStream<[UInt8], any Error>
    /// Re-reads everything the backup needs: manifests, packs, every chunk.
    func verify(_ object: StoredObject, accountID: String) async throws -> VerificationReport
    /// What deleting each backup would free now, by manifest key.
    func uniqueBytes(_ objects: [StoredObject]) async throws -> [String: Int64]
    /// Removes what no backup refers to any more; safe to interrupt and to run concurrently.
    func collectGarbage(now: Date) async throws -> GarbageReport
    /// Drops any copy of the account's keys held in memory (its data key was destroyed).
    func forgetKeys(accountID: String)
    /// Seals a small secret the service must read back (a webhook's signing secret) under a key
    /// derived from the account's data key, bound to `context`; deleting the account destroys it.
    func sealSecret(_ secret: [UInt8], accountID: String, context: String) async throws -> [UInt8]
    func openSecret(_ sealed: [UInt8], accountID: String, context: String) async throws -> [UInt8]
    /// Throws when the object storage cannot be reached.
    func probeStorage() async throws
}

public struct RepositoryEntry: Sendable, Equatable {
    public var key: String
    public var modifiedAt: Date
    public init(key: String, modifiedAt: Date) {
        self.key = key
        self.modifiedAt = modifiedAt
    }
}

public struct RepositoryError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable { case missing, corrupt, invalidKey, io, storageFull, chunksCollected, keys }
    public let kind: Kind
    public let message: String
    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }
    public var description: String { message }

    /// An I/O failure; a full disk (or quota) is told apart, so operators see what to fix.
    public static func io(_ what: String, errno code: Int32) -> RepositoryError {
        if code == ENOSPC || code == EDQUOT {
            return RepositoryError(.storageFull, "\(what): the backup storage is full")
        }
        return RepositoryError(.io, "\(what): \(String(cString: strerror(code)))")
    }

    public var info: ErrorInfo {
        switch kind {
        case .missing: ErrorInfo(code: "backup_data_missing", message: message)
        case .corrupt: ErrorInfo(code: "backup_data_corrupt", message: message)
        case .storageFull: ErrorInfo(code: "storage_full", message: message)
        case .invalidKey, .io, .chunksCollected: ErrorInfo(code: "storage_error", message: message)
        case .keys: ErrorInfo(code: "encryption_key_error", message: message)
        }
    }
}
