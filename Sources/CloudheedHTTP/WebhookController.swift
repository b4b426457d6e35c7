import CloudheedDomain
import CloudheedRuntime
import Hummingbird

/// `/v1/webhooks`: an account's subscriptions to backup, restore and drill events, and what
/// happened to each delivery.
struct WebhookController {
    let service: BackupService

    func addRoutes(to group: RouterGroup<AppRequestContext>) {
        group.post("webhooks", use: create)
        group.get("webhooks", use: list)
        group.get("webhooks/:id", use: show)
        group.delete("webhooks/:id", use: delete)
        group.get("webhooks/:id/deliveries", use: deliveries)
    }

    @Sendable func create(_ request: Request, context: AppRequestContext) async throws -> Response {
        let account = try context.requireAccount()
        let fields = try await request.fields(allowed: ["url", "events", "description"])
        let url = try fields.requiredString("url")
        guard let events = try fields.stringArray("events") else {
            throw DomainError(.unprocessable, code: "missing_events", message: "'events' is required")
        }
        let (webhook, secret) = try await service.createWebhook(
            accountID: account.id, url: url, events: events, description: try fields.string("description"))
        context.logger.info("webhook created", metadata: ["webhook.id": "\(webhook.id)"])
        // The only response that carries the signing secret.
        guard case .object(var pairs) = Representation.webhook(webhook) else { preconditionFailure() }
        pairs.append(("secret", .string(secret)))
        return json(.object(pairs), status: .created)
    }

    @Sendable func list(_ request: Request, context: AppRequestContext) async throws -> Response {
        let account = try context.requireAccount()
        let webhooks = try await service.webhooks(accountID: account.id)
        return json(.object([("webhooks", .array(webhooks.map(Representation.webhook)))]))
    }

    @Sendable func show(_ request: Request, context: AppRequestContext) async throws -> Response {
        let account = try context.requireAccount()
        return json(Representation.webhook(try await service.webhook(accountID: account.id, id: try context.parameters.require("id"))))
    }

    @Sendable func delete(_ request: Request, context: AppRequestContext) async throws -> Response {
        let account = try context.requireAccount()
        let id = try context.parameters.require("id")
        try await service.deleteWebhook(accountID: account.id, id: id)
        context.logger.info("webhook deleted", metadata: ["webhook.id": "\(id)"])
        return Response(status: .noContent)
    }

    @Sendable func deliveries(_ request: Request, context: AppRequestContext) async throws -> Response {
        let account = try context.requireAccount()
        let deliveries = try await service.deliveries(accountID: account.id, webhookID: try context.parameters.require("id"))
        return json(.object([("deliveries", .array(deliveries.map(Representation.delivery)))]))
    }
}
