import CloudheedDomain
import CloudheedStorage

/// How databases of one engine are created, dropped, snapshotted and restored. The runtime
/// only talks to engines through this protocol; PostgreSQL plugs in beside SQLite.
public protocol DatabaseEngine: Sendable {
    var kind: EngineKind { get }
    /// Where a new database with this id will live.
    func location(forDatabaseID id: String) -> String
    /// Creates the empty database at `location`.
    func create(at location: String) async throws
    /// Removes the database and everything the engine keeps for it.
    func drop(at location: String) async throws
    /// Takes a consistent snapshot of the live database while applications keep writing,
    /// and stores it in the repository for `target`.
    func backup(at location: String, into repository: any BackupRepository, target: BackupTarget) async throws -> StoredObject
    /// Rebuilds a database at `location` from `object`, checks it, and only then puts it in
    /// place; on any failure nothing is left at `location`.
    func restore(_ object: StoredObject, from repository: any BackupRepository, accountID: String, to location: String) async throws
    /// What applications connect with.
    func connectionURI(location: String) -> String
}

/// An engine failure, reported on the backup or restore as `error.code` / `error.message`.
public struct EngineError: Error, Sendable, Equatable, CustomStringConvertible {
    public let code: String
    public let message: String
    public init(code: String, message: String) {
        self.code = code
        self.message = message
    }
    public var description: String { "\(code): \(message)" }
    public var info: ErrorInfo { ErrorInfo(code: code, message: message) }
}

/// The engines a service instance can use, by kind.
public struct EngineRegistry: Sendable {
    let engines: [EngineKind: any DatabaseEngine]

    public init(_ engines: [any DatabaseEngine]) {
        self.engines = Dictionary(engines.map { ($0.kind, $0) }, uniquingKeysWith: { first, _ in first })
    }

    public func engine(_ kind: EngineKind) throws(DomainError) -> any DatabaseEngine {
        guard let engine = engines[kind] else {
            throw DomainError(.unprocessable, code: "engine_unavailable", message: "the \(kind.rawValue) engine is not configured on this service")
        }
        return engine
    }
}
