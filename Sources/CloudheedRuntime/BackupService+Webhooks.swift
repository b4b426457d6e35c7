import CloudheedDomain
import CloudheedStorage
import Foundation

/// Webhook subscriptions. The signing secret is shown once, in the create response; the
/// catalog keeps it sealed under the account's data key, since the sender must read it to sign.
extension BackupService {
    public func createWebhook(accountID: String, url: String, events: [String], description: String?) async throws -> (Webhook, secret: String) {
        let url = try WebhookURL.validate(url, allowedHosts: settings.webhookAllowedHosts)
        let events = try Webhook.validateEvents(events)
        if let description { try Webhook.validateDescription(description) }
        let webhook = Webhook(id: ids.make(.webhook), accountID: accountID, url: url, events: events, description: description, createdAt: clock.now())
        let secret = "whsec_" + ids.randomString(count: 40)
        let sealed = try await repository.sealSecret(Array(secret.utf8), accountID: accountID, context: Self.secretContext(webhook.id))
        try await catalog.insertWebhook(webhook, sealedSecret: sealed)
        return (webhook, secret)
    }

    public func webhooks(accountID: String) async throws -> [Webhook] {
        try await catalog.webhooks(accountID: accountID)
    }

    public func webhook(accountID: String, id: String) async throws -> Webhook {
        guard let webhook = try await catalog.webhook(id: id, accountID: accountID) else { throw DomainError.webhookNotFound }
        return webhook
    }

    public func deleteWebhook(accountID: String, id: String) async throws {
        guard try await catalog.deleteWebhook(id: id, accountID: accountID) else { throw DomainError.webhookNotFound }
    }

    public func deliveries(accountID: String, webhookID: String) async throws -> [WebhookDelivery] {
        _ = try await webhook(accountID: accountID, id: webhookID)
        return try await catalog.deliveries(webhookID: webhookID, accountID: accountID, limit: 100)
    }

    /// Binds a sealed secret to its webhook: one webhook's sealed secret cannot pass for another's.
    static func secretContext(_ webhookID: String) -> String { "cloudheed webhook secret v1 " + webhookID }
}
