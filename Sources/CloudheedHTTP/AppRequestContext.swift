import CloudheedDomain
import CloudheedStorage
import Hummingbird

/// Request context carrying the authenticated account, set by `AccountAuthMiddleware`.
public struct AppRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public var account: Account?
    /// On routes under `databases/{id}/backups`: that database's catalog version, read with the
    /// token; nil when the database is not the account's.
    public var databaseVersion: Int64?

    public init(source: Source) {
        self.coreContext = .init(source: source)
        self.account = nil
        self.databaseVersion = nil
    }

    /// Request bodies are small JSON documents.
    public var maxUploadSize: Int { HTTPLimits.maxBodyBytes }

    /// The authenticated account; the auth middleware guarantees it on account routes.
    func requireAccount() throws(DomainError) -> Account {
        guard let account else { throw DomainError.unauthorized }
        return account
    }
}

enum HTTPLimits {
    static let maxBodyBytes = 64 * 1024
}
