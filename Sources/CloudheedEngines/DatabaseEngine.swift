import CloudheedDomain
import CloudheedStorage

/// How databases of one engine are created, dropped, snapshotted and restored. The runtime
/// only talks to engines through this protocol; PostgreSQL plugs in beside SQLite.
public protocol DatabaseEngine: Sendable {
    var kind: EngineKind { get }
    /// Where a new database with this id will live.
    func location(forDatabaseID id: String) -> String
    /// Creates the empty database at `location`; returns its owner's password where the engine
    /// has one (shown once, in the create response, never stored).
    @discardableResult
    func create(at location: String) async throws -> String?
    /// Called when a restore is requested, before it is queued: creates what must exist for the
    /// restore response to show credentials (PostgreSQL: the owner role), returning its password.
    func prepareRestore(at location: String) async throws -> String?
    /// Removes the database and everything the engine keeps for it.
    func drop(at location: String) async throws
    /// Takes a consistent snapshot of the live database while applications keep writing,
    /// and stores it in the repository for `target`.
    func backup(at location: String, into repository: any BackupRepository, target: BackupTarget) async throws -> StoredObject
    /// Rebuilds a database at `location` from `object`, checks it, and only then puts it in
    /// place; on any failure nothing is left at `location`.
    func restore(_ object: StoredObject, from repository: any BackupRepository, accountID: String, to location: String) async throws
    /// A restore drill: restores `object` into a scratch location of the engine's own, checks it
    /// (an error when it is not sound), counts the rows of each table, and removes it again.
    func drill(_ object: StoredObject, from repository: any BackupRepository, accountID: String) async throws -> TableCounts
    /// What applications connect with; the password only where given.
    func connectionURI(location: String, password: String?) -> String
}

extension DatabaseEngine {
    public func prepareRestore(at location: String) async throws -> String? { nil }
    public func connectionURI(location: String) -> String { connectionURI(location: location, password: nil) }
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
            let hint = kind == .postgres ? "; start the service with --postgres-url (or CLOUDHEED_POSTGRES_URL) naming a role that may create databases and roles" : ""
            throw DomainError(.unprocessable, code: "engine_unavailable", message: "the \(kind.rawValue) engine is not configured on this service\(hint)")
        }
        return engine
    }
}
