import CloudheedDomain
import Foundation

/// Where backup bytes live. Objects are written once under a fresh key and appear only when
/// complete; every read verifies the size and checksum recorded at write time.
public protocol BackupRepository: Sendable {
    /// Streams `chunks` into a new object under `key`.
    func write<Chunks: AsyncSequence & Sendable>(key: String, chunks: Chunks) async throws -> StoredObject
        where Chunks.Element == [UInt8]
    /// Streams the object's bytes. The sequence throws `RepositoryError` if the object is missing,
    /// or, after its last byte, if its size or checksum differ from `object`'s.
    func read(_ object: StoredObject) -> RepositoryObjectReader
    func delete(key: String) async throws
    /// Every object, for sweeping away what a crash left unreferenced.
    func list() async throws -> [RepositoryEntry]
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
    public enum Kind: Sendable, Equatable { case missing, corrupt, invalidKey, io }
    public let kind: Kind
    public let message: String
    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }
    public var description: String { message }

    public var info: ErrorInfo {
        switch kind {
        case .missing: ErrorInfo(code: "backup_data_missing", message: message)
        case .corrupt: ErrorInfo(code: "backup_data_corrupt", message: message)
        case .invalidKey, .io: ErrorInfo(code: "storage_error", message: message)
        }
    }
}

/// Reads an object as a sequence of chunks of bounded size.
public struct RepositoryObjectReader: AsyncSequence, Sendable {
    public typealias Element = [UInt8]
    let makeNext: @Sendable () -> (@Sendable () async throws -> [UInt8]?)

    public init(_ makeNext: @escaping @Sendable () -> (@Sendable () async throws -> [UInt8]?)) {
        self.makeNext = makeNext
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        let next: @Sendable () async throws -> [UInt8]?
        public mutating func next() async throws -> [UInt8]? { try await next() }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(next: makeNext()) }
}
