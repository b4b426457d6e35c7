import CloudheedDomain
import CloudheedRuntime
import Hummingbird

/// `/v1/accounts` (admin token) and `/v1/account` (account token).
struct AccountController {
    let service: BackupService

    func addAdminRoutes(to group: RouterGroup<AppRequestContext>) {
        group.post(use: create)
        group.post(":id/tokens", use: issueToken)
        group.delete(":id", use: delete)
    }

    func addAccountRoutes(to group: RouterGroup<AppRequestContext>) {
        group.get("account", use: show)
    }

    @Sendable func create(_ request: Request, context: AppRequestContext) async throws -> Response {
        let fields = try await request.fields(allowed: ["name", "storage_quota_bytes"])
        let (account, token) = try await service.createAccount(
            name: try fields.requiredString("name"), storageQuotaBytes: try fields.int64("storage_quota_bytes"))
        context.logger.info("account created", metadata: ["account.id": "\(account.id)"])
        return json(.object([("account", Representation.account(account)), ("token", .string(token))]), status: .created)
    }

    @Sendable func issueToken(_ request: Request, context: AppRequestContext) async throws -> Response {
        let id = try context.parameters.require("id")
        _ = try await request.fields(allowed: [], optional: true)
        let token = try await service.issueToken(accountID: id)
        return json(.object([("account_id", .string(id)), ("token", .string(token))]), status: .created)
    }

    @Sendable func delete(_ request: Request, context: AppRequestContext) async throws -> Response {
        try await service.deleteAccount(id: try context.parameters.require("id"), logger: context.logger)
        return Response(status: .noContent)
    }

    @Sendable func show(_ request: Request, context: AppRequestContext) async throws -> Response {
        let account = try context.requireAccount()
        let used = try await service.storageUsed(accountID: account.id)
        return json(Representation.account(account, storageUsed: used))
    }
}
