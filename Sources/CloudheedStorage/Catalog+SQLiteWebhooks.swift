import CloudheedDomain
import Foundation
import GRDB

/// Webhooks, their deliveries and each delivery's attempts. A delivery's payload is rendered
/// when the event happens, inside the job's finishing transaction, and never changes after.
extension SQLiteCatalog {
    static func registerWebhookMigration(_ migrator: inout DatabaseMigrator) {
        migrator.registerMigration("v6-webhooks") { db in
            try db.execute(sql: """
                CREATE TABLE webhooks (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    id TEXT NOT NULL UNIQUE,
                    account_id TEXT NOT NULL REFERENCES accounts(id),
                    url TEXT NOT NULL,
                    -- ",backup.failed,restore.failed,": one instr() finds the subscribers of an event.
                    events TEXT NOT NULL,
                    description TEXT,
                    sealed_secret BLOB NOT NULL,
                    created_at INTEGER NOT NULL
                );
                CREATE INDEX webhooks_by_account ON webhooks(account_id, seq);
                CREATE TABLE webhook_deliveries (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    id TEXT NOT NULL UNIQUE,
                    webhook_id TEXT NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
                    event TEXT NOT NULL,
                    payload TEXT NOT NULL,
                    status TEXT NOT NULL CHECK (status IN ('pending','delivered','failed')),
                    created_at INTEGER NOT NULL,
                    next_attempt_at INTEGER,
                    locked_until INTEGER,
                    delivered_at INTEGER,
                    CHECK ((status = 'pending') = (next_attempt_at IS NOT NULL))
                );
                CREATE INDEX webhook_deliveries_due ON webhook_deliveries(next_attempt_at) WHERE status = 'pending';
                CREATE INDEX webhook_deliveries_by_webhook ON webhook_deliveries(webhook_id, seq);
                CREATE TABLE webhook_attempts (
                    delivery_id TEXT NOT NULL REFERENCES webhook_deliveries(id) ON DELETE CASCADE,
                    n INTEGER NOT NULL,
                    at INTEGER NOT NULL,
                    status_code INTEGER,
                    error TEXT,
                    duration_ms INTEGER NOT NULL,
                    PRIMARY KEY (delivery_id, n)
                ) WITHOUT ROWID;
                """)
        }
    }

    public func insertWebhook(_ webhook: Webhook, sealedSecret: [UInt8]) async throws {
        try await pool.write { db in
            let count = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM webhooks WHERE account_id = ?", arguments: [webhook.accountID]) ?? 0
            guard count < Webhook.limitPerAccount else {
                throw DomainError(.conflict, code: "webhook_limit_reached", message: "an account may have at most \(Webhook.limitPerAccount) webhooks; delete one first")
            }
            try db.execute(
                sql: "INSERT INTO webhooks (id, account_id, url, events, description, sealed_secret, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                arguments: [
                    webhook.id, webhook.accountID, webhook.url, CatalogRows.webhookEvents(webhook.events),
                    webhook.description, Data(sealedSecret), ms(webhook.createdAt),
                ])
        }
    }

    public func webhooks(accountID: String) async throws -> [Webhook] {
        try await pool.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM webhooks WHERE account_id = ? ORDER BY seq", arguments: [accountID]).map(CatalogRows.webhook)
        }
    }

    public func webhook(id: String, accountID: String) async throws -> Webhook? {
        try await pool.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM webhooks WHERE id = ? AND account_id = ?", arguments: [id, accountID]).map(CatalogRows.webhook)
        }
    }

    public func deleteWebhook(id: String, accountID: String) async throws -> Bool {
        try await pool.write { db in
            try db.execute(sql: "DELETE FROM webhooks WHERE id = ? AND account_id = ?", arguments: [id, accountID])
            return db.changesCount == 1
        }
    }

    public func deliveries(webhookID: String, accountID: String, limit: Int) async throws -> [WebhookDelivery] {
        try await pool.read { db in
            let rows = try Row.fetchAll(
                db,
                sql: """
                    SELECT d.* FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id
                    WHERE d.webhook_id = ? AND w.account_id = ? ORDER BY d.seq DESC LIMIT ?
                    """,
                arguments: [webhookID, accountID, limit])
            return try rows.map { row in
                let attempts = try Row.fetchAll(db, sql: "SELECT * FROM webhook_attempts WHERE delivery_id = ? ORDER BY n", arguments: [row.string("id")])
                return CatalogRows.delivery(row, attempts: attempts.map(CatalogRows.deliveryAttempt))
            }
        }
    }

    public func claimDeliveries(now: Date, lease: Duration, limit: Int) async throws -> [DueDelivery] {
        let nowMs = ms(now)
        return try await pool.write { db in
            let rows = try Row.fetchAll(
                db,
                sql: """
                    SELECT d.id, d.webhook_id, d.event, d.payload, d.created_at, w.account_id, w.url, w.sealed_secret,
                           (SELECT COUNT(*) FROM webhook_attempts a WHERE a.delivery_id = d.id) AS attempts
                    FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id
                    WHERE d.status = 'pending' AND d.next_attempt_at <= ? AND (d.locked_until IS NULL OR d.locked_until <= ?)
                    ORDER BY d.next_attempt_at LIMIT ?
                    """,
                arguments: [nowMs, nowMs, limit])
            let until = ms(now.addingTimeInterval(lease.seconds))
            return try rows.compactMap { row in
                try db.execute(sql: "UPDATE webhook_deliveries SET locked_until = ? WHERE id = ?", arguments: [until, row.string("id")])
                return CatalogRows.dueDelivery(row)
            }
        }
    }

    public func recordDeliveryAttempt(_ delivery: DueDelivery, attempt: DeliveryAttempt, retryAt: Date?) async throws {
        try await pool.write { db in
            // A second sender that took the delivery over after our lock lapsed made the same attempt number.
            try db.execute(
                sql: "INSERT INTO webhook_attempts (delivery_id, n, at, status_code, error, duration_ms) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                arguments: [delivery.id, delivery.attempt, ms(attempt.at), attempt.statusCode, attempt.error, attempt.durationMs])
            if attempt.succeeded {
                try db.execute(
                    sql: "UPDATE webhook_deliveries SET status = 'delivered', delivered_at = ?, next_attempt_at = NULL, locked_until = NULL WHERE id = ?",
                    arguments: [ms(attempt.at), delivery.id])
            } else if let retryAt {
                try db.execute(
                    sql: "UPDATE webhook_deliveries SET next_attempt_at = ?, locked_until = NULL WHERE id = ? AND status = 'pending'",
                    arguments: [ms(retryAt), delivery.id])
            } else {
                try db.execute(
                    sql: "UPDATE webhook_deliveries SET status = 'failed', next_attempt_at = NULL, locked_until = NULL WHERE id = ? AND status = 'pending'",
                    arguments: [delivery.id])
            }
        }
    }

    public func pruneDeliveries(before: Date) async throws -> Int {
        try await pool.write { db in
            try db.execute(sql: "DELETE FROM webhook_deliveries WHERE status <> 'pending' AND created_at < ?", arguments: [ms(before)])
            return db.changesCount
        }
    }

    /// Queues `event` for every webhook of the account that subscribed to it. Runs inside the
    /// caller's transaction.
    static func enqueueEvent(_ event: WebhookEvent, accountID: String, at: Date, data: [String: JSONValue], _ db: GRDB.Database) throws {
        let hooks = try String.fetchAll(
            db, sql: "SELECT id FROM webhooks WHERE account_id = ? AND instr(events, ?) > 0 ORDER BY seq",
            arguments: [accountID, "," + event.rawValue + ","])
        let ids = SecureIDGenerator()
        for hook in hooks {
            let id = ids.make(.delivery)
            try db.execute(
                sql: "INSERT INTO webhook_deliveries (id, webhook_id, event, payload, status, created_at, next_attempt_at) VALUES (?, ?, ?, ?, 'pending', ?, ?)",
                arguments: [id, hook, event.rawValue, WebhookPayload.render(deliveryID: id, event: event, at: at, data: data), ms(at), ms(at)])
        }
    }
}
