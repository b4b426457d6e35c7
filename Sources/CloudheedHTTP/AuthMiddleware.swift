import Foundation
import CloudheedDomain
import CloudheedRuntime
import Hummingbird

func bearerToken(_ request: Request) -> String? {
    guard let header = request.headers[.authorization] else { return nil }
    let prefix = "Bearer "
    guard header.count > prefix.count, header.prefix(prefix.count).lowercased() == prefix.lowercased() else { return nil }
    return String(header.dropFirst(prefix.count)).trimmingCharacters(in: .whitespaces)
}

/// Admin routes (creating accounts and tokens) take only the admin token.
struct AdminAuthMiddleware: RouterMiddleware {
    typealias Context = AppRequestContext
    let admin: AdminToken

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let token = bearerToken(request), admin.matches(token) else { throw DomainError.adminRequired }
        return try await next(request, context)
    }
}

/// Account routes take an account token; the account is put on the context. With
/// `databaseParameter`, the database that route parameter names is looked up in the same catalog
/// read, and its version is put on the context too (`BackupListCache`).
struct AccountAuthMiddleware: RouterMiddleware {
    typealias Context = AppRequestContext
    let service: BackupService
    var databaseParameter: String? = nil

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let databaseID = databaseParameter.flatMap { context.parameters.get($0) }.map { String($0) }
        guard let token = bearerToken(request), let check = try await service.authenticate(token: token, databaseID: databaseID) else {
            throw DomainError.unauthorized
        }
        let account = check.account
        var context = context
        context.account = account
        context.databaseVersion = check.databaseVersion
        context.logger[metadataKey: "account.id"] = "\(account.id)"
        return try await next(request, context)
    }
}
