import CloudheedDomain
import Foundation
import Logging
import NIOCore
import PostgresNIO

/// Webhooks, deliveries and restore drills in the PostgreSQL catalog. Senders on several nodes
/// claim deliveries with `FOR UPDATE SKIP LOCKED` and a short lock, as workers claim jobs.
extension PostgresCatalog {
    // MARK: Webhooks

    public func insertWebhook(_ webhook: Webhook, sealedSecret: [UInt8]) async throws {
        try await transaction { c in
            // The account's row lock keeps two concurrent creations from both passing the limit.
            guard try await c.exists("SELECT 1 FROM accounts WHERE id = \(webhook.accountID) FOR UPDATE", logger) else { throw DomainError.accountNotFound }
            let count = try await c.one("SELECT COUNT(*) AS n FROM webhooks WHERE account_id = \(webhook.accountID)", logger)?.int("n") ?? 0
            guard count < Webhook.limitPerAccount else {
                throw DomainError(.conflict, code: "webhook_limit_reached", message: "an account may have at most \(Webhook.limitPerAccount) webhooks; delete one first")
            }
            try await c.run(
                """
                INSERT INTO webhooks (id, account_id, url, events, description, sealed_secret, created_at)
                VALUES (\(webhook.id), \(webhook.accountID), \(webhook.url), \(CatalogRows.webhookEvents(webhook.events)), \(webhook.description),
                    \(ByteBuffer(bytes: sealedSecret)), \(ms(webhook.createdAt)))
                """, logger)
        }
    }

    public func webhooks(accountID: String) async throws -> [Webhook] {
        try await reading { c in
            try await c.rows("SELECT * FROM webhooks WHERE account_id = \(accountID) ORDER BY seq", logger).map(CatalogRows.webhook)
        }
    }

    public func webhook(id: String, accountID: String) async throws -> Webhook? {
        try await reading { c in
            try await c.one("SELECT * FROM webhooks WHERE id = \(id) AND account_id = \(accountID)", logger).map(CatalogRows.webhook)
        }
    }

    public func deleteWebhook(id: String, accountID: String) async throws -> Bool {
        try await transaction { c in
            try await !c.rows("DELETE FROM webhooks WHERE id = \(id) AND account_id = \(accountID) RETURNING 1 AS deleted", logger).isEmpty
        }
    }

    public func deliveries(webhookID: String, accountID: String, limit: Int) async throws -> [WebhookDelivery] {
        try await reading { c in
            let rows = try await c.rows(
                """
                SELECT d.* FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id
                WHERE d.webhook_id = \(webhookID) AND w.account_id = \(accountID) ORDER BY d.seq DESC LIMIT \(Int64(limit))
                """, logger)
            var deliveries: [WebhookDelivery] = []
            for row in rows {
                let attempts = try await c.rows("SELECT * FROM webhook_attempts WHERE delivery_id = \(row.string("id")) ORDER BY n", logger)
                deliveries.append(CatalogRows.delivery(row, attempts: attempts.map(CatalogRows.deliveryAttempt)))
            }
            return deliveries
        }
    }

    public func claimDeliveries(now: Date, lease: Duration, limit: Int) async throws -> [DueDelivery] {
        let nowMs = ms(now)
        let until = ms(now.addingTimeInterval(lease.seconds))
        return try await transaction { c in
            let rows = try await c.rows(
                """
                SELECT d.id, d.webhook_id, d.event, d.payload, d.created_at, w.account_id, w.url, w.sealed_secret,
                       (SELECT COUNT(*) FROM webhook_attempts a WHERE a.delivery_id = d.id) AS attempts
                FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id
                WHERE d.status = 'pending' AND d.next_attempt_at <= \(nowMs) AND (d.locked_until IS NULL OR d.locked_until <= \(nowMs))
                ORDER BY d.next_attempt_at LIMIT \(Int64(limit))
                FOR UPDATE OF d SKIP LOCKED
                """, logger)
            guard !rows.isEmpty else { return [] }
            try await c.run("UPDATE webhook_deliveries SET locked_until = \(until) WHERE id = ANY(\(rows.map { $0.string("id") }))", logger)
            return rows.compactMap(CatalogRows.dueDelivery)
        }
    }

    public func recordDeliveryAttempt(_ delivery: DueDelivery, attempt: DeliveryAttempt, retryAt: Date?) async throws {
        try await transaction { c in
            // A second sender that took the delivery over after our lock lapsed made the same attempt number.
            try await c.run(
                """
                INSERT INTO webhook_attempts (delivery_id, n, at, status_code, error, duration_ms)
                VALUES (\(delivery.id), \(Int64(delivery.attempt)), \(ms(attempt.at)), \(attempt.statusCode.map(Int64.init)), \(attempt.error), \(Int64(attempt.durationMs)))
                ON CONFLICT DO NOTHING
                """, logger)
            if attempt.succeeded {
                try await c.run(
                    """
                    UPDATE webhook_deliveries SET status = 'delivered', delivered_at = \(ms(attempt.at)), next_attempt_at = NULL, locked_until = NULL
                    WHERE id = \(delivery.id)
                    """, logger)
            } else if let retryAt {
                try await c.run(
                    "UPDATE webhook_deliveries SET next_attempt_at = \(ms(retryAt)), locked_until = NULL WHERE id = \(delivery.id) AND status = 'pending'", logger)
            } else {
                try await c.run(
                    "UPDATE webhook_deliveries SET status = 'failed', next_attempt_at = NULL, locked_until = NULL WHERE id = \(delivery.id) AND status = 'pending'",
                    logger)
            }
        }
    }

    public func pruneDeliveries(before: Date) async throws -> Int {
        try await transaction { c in
            try await c.rows("DELETE FROM webhook_deliveries WHERE status <> 'pending' AND created_at < \(ms(before)) RETURNING 1 AS pruned", logger).count
        }
    }

    /// Queues `event` for every webhook of the account that subscribed to it, inside the caller's transaction.
    static func enqueueEvent(_ event: WebhookEvent, accountID: String, at: Date, data: [String: JSONValue], _ c: PostgresConnection, _ logger: Logger) async throws {
        let hooks = try await c.rows(
            "SELECT id FROM webhooks WHERE account_id = \(accountID) AND strpos(events, \("," + event.rawValue + ",")) > 0 ORDER BY seq", logger)
        let ids = SecureIDGenerator()
        for hook in hooks {
            let id = ids.make(.delivery)
            try await c.run(
                """
                INSERT INTO webhook_deliveries (id, webhook_id, event, payload, status, created_at, next_attempt_at)
                VALUES (\(id), \(hook.string("id")), \(event.rawValue), \(WebhookPayload.render(deliveryID: id, event: event, at: at, data: data)),
                    'pending', \(ms(at)), \(ms(at)))
                """, logger)
        }
    }

    // MARK: Restore drills

    public func dueDrills(now: Date, limit: Int) async throws -> [ManagedDatabase] {
        try await reading { c in
            try await c.rows(
                """
                SELECT * FROM databases WHERE status = 'available' AND restore_drills <> 'off' AND next_drill_at IS NOT NULL AND next_drill_at <= \(ms(now))
                ORDER BY next_drill_at LIMIT \(Int64(limit))
                """, logger
            ).map(CatalogRows.database)
        }
    }

    public func enqueueDrill(databaseID: String, jobID: String, now: Date, next: Date, retryWithoutBackup: Date) async throws -> String? {
        try await transaction { c in
            // Re-checked under the row lock: the database may have been deleted, drills turned off,
            // or another node queued this drill, since it was read.
            guard try await c.exists(
                """
                SELECT 1 FROM databases WHERE id = \(databaseID) AND status = 'available' AND restore_drills <> 'off'
                  AND next_drill_at IS NOT NULL AND next_drill_at <= \(ms(now)) FOR UPDATE
                """, logger)
            else { return nil }
            guard let backupID = try await c.one(
                "SELECT id FROM backups WHERE database_id = \(databaseID) AND status = 'completed' ORDER BY completed_at DESC, seq DESC LIMIT 1", logger
            )?.text("id")
            else {
                try await c.run("UPDATE databases SET next_drill_at = \(ms(retryWithoutBackup)) WHERE id = \(databaseID)", logger)
                return nil
            }
            try await c.run("UPDATE databases SET next_drill_at = \(ms(next)) WHERE id = \(databaseID)", logger)
            let inserted = try await !c.rows(
                """
                INSERT INTO jobs (id, kind, subject_id, status, created_at) VALUES (\(jobID), 'drill', \(backupID), 'pending', \(ms(now)))
                ON CONFLICT DO NOTHING RETURNING 1 AS inserted
                """, logger).isEmpty
            return inserted ? backupID : nil
        }
    }

    /// Records a drill's result on the backup and its database, and alerts when it failed.
    static func applyDrill(_ result: DrillResult, backupID: String, _ c: PostgresConnection, _ logger: Logger) async throws -> Bool {
        guard let backup = try await c.one("SELECT * FROM backups WHERE id = \(backupID)", logger).map(CatalogRows.backup) else { return false }
        let (at, outcome, duration, code, message) = (ms(result.at), result.result.rawValue, Int64(result.durationMs), result.error?.code, result.error?.message)
        try await c.run(
            """
            UPDATE backups SET drill_at = \(at), drill_result = \(outcome), drill_duration_ms = \(duration), drill_error_code = \(code),
                drill_error_message = \(message) WHERE id = \(backupID)
            """, logger)
        try await c.run(
            """
            UPDATE databases SET drill_at = \(at), drill_result = \(outcome), drill_duration_ms = \(duration), drill_error_code = \(code),
                drill_error_message = \(message), drill_backup_id = \(backupID) WHERE id = \(backup.databaseID)
            """, logger)
        if result.result == .failed {
            try await enqueueEvent(.drillFailed, accountID: backup.accountID, at: result.at, data: WebhookPayload.drill(backup: backup, drill: result), c, logger)
        }
        return true
    }
}
