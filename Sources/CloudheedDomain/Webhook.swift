import Foundation

/// What a webhook can be told about.
public enum WebhookEvent: String, CaseIterable, Codable, Sendable {
    case backupCompleted = "backup.completed"
    case backupFailed = "backup.failed"
    case restoreCompleted = "restore.completed"
    case restoreFailed = "restore.failed"
    case drillFailed = "drill.failed"

    public static func parse(_ raw: String) throws(DomainError) -> WebhookEvent {
        guard let event = WebhookEvent(rawValue: raw) else {
            throw .invalidField("events", "unknown event '\(raw)'; expected any of \(allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return event
    }
}

/// An account's subscription: events POSTed as signed JSON to `url`.
public struct Webhook: Sendable, Equatable {
    public var id: String
    public var accountID: String
    public var url: String
    public var events: [WebhookEvent]
    public var description: String?
    public var createdAt: Date

    public init(id: String, accountID: String, url: String, events: [WebhookEvent], description: String?, createdAt: Date) {
        self.id = id
        self.accountID = accountID
        self.url = url
        self.events = events
        self.description = description
        self.createdAt = createdAt
    }

    /// An account may have this many webhooks; each event fans out to all of them.
    public static let limitPerAccount = 25

    /// Events listed once each, at least one.
    public static func validateEvents(_ raw: [String]) throws(DomainError) -> [WebhookEvent] {
        guard !raw.isEmpty else { throw .invalidField("events", "'events' must list at least one event") }
        var events: [WebhookEvent] = []
        for name in raw {
            let event = try WebhookEvent.parse(name)
            if !events.contains(event) { events.append(event) }
        }
        return events
    }

    public static func validateDescription(_ text: String) throws(DomainError) {
        guard text.count <= 256, !text.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            throw .invalidField("description", "'description' must be at most 256 characters without control characters")
        }
    }
}

/// Where deliveries may go: an absolute http(s) URL with a host and without credentials (a
/// secret in a URL would show in every listing), at most 2048 bytes. `allowedHosts`, when the
/// operator set it, limits the hosts (lower-cased, exact match).
public enum WebhookURL {
    public static func validate(_ raw: String, allowedHosts: Set<String>? = nil) throws(DomainError) -> String {
        func invalid(_ why: String) -> DomainError { .invalidField("url", "'url' \(why)") }
        guard raw.utf8.count <= 2048 else { throw invalid("must be at most 2048 bytes") }
        guard !raw.unicodeScalars.contains(where: { $0.properties.generalCategory == .control || $0 == " " }),
              let components = URLComponents(string: raw), let scheme = components.scheme?.lowercased()
        else { throw invalid("must be an absolute http or https URL") }
        guard scheme == "http" || scheme == "https" else { throw invalid("must use http or https, not \(scheme)") }
        guard let host = components.host, !host.isEmpty else { throw invalid("must name a host") }
        guard components.user == nil, components.password == nil else { throw invalid("must not carry credentials") }
        guard components.fragment == nil else { throw invalid("must not have a fragment") }
        if let port = components.port, !(1...65535).contains(port) { throw invalid("has an invalid port") }
        if let allowedHosts, !allowedHosts.contains(host.lowercased()) {
            throw DomainError(.unprocessable, code: "webhook_host_not_allowed", message: "this service only delivers webhooks to: \(allowedHosts.sorted().joined(separator: ", "))")
        }
        return raw
    }
}

public enum DeliveryStatus: String, CaseIterable, Codable, Sendable {
    /// Waiting for its next attempt.
    case pending
    /// The receiver answered 2xx.
    case delivered
    /// Every attempt within a day failed; no more are made.
    case failed
}

/// One POST of a delivery and what came back.
public struct DeliveryAttempt: Sendable, Equatable {
    public var at: Date
    /// The receiver's HTTP status; nil when no response came (refused, timed out).
    public var statusCode: Int?
    /// Why there was no usable response, or the start of the body of a non-2xx one.
    public var error: String?
    public var durationMs: Int64

    public init(at: Date, statusCode: Int?, error: String?, durationMs: Int64) {
        self.at = at
        self.statusCode = statusCode
        self.error = error
        self.durationMs = durationMs
    }

    public var succeeded: Bool { statusCode.map { (200..<300).contains($0) } ?? false }
}

/// One event for one webhook, with its attempts so far.
public struct WebhookDelivery: Sendable, Equatable {
    public var id: String
    public var webhookID: String
    public var event: WebhookEvent
    public var status: DeliveryStatus
    public var createdAt: Date
    public var nextAttemptAt: Date?
    public var deliveredAt: Date?
    public var attempts: [DeliveryAttempt]

    public init(
        id: String, webhookID: String, event: WebhookEvent, status: DeliveryStatus, createdAt: Date, nextAttemptAt: Date?,
        deliveredAt: Date?, attempts: [DeliveryAttempt]
    ) {
        self.id = id
        self.webhookID = webhookID
        self.event = event
        self.status = status
        self.createdAt = createdAt
        self.nextAttemptAt = nextAttemptAt
        self.deliveredAt = deliveredAt
        self.attempts = attempts
    }
}

/// When a failed delivery is tried again: `base` doubled after each attempt, at most an hour
/// apart, and never once a day has passed since the event.
public struct WebhookRetryPolicy: Sendable, Equatable {
    public var base: Duration
    public var maxDelay: Duration
    public var giveUpAfter: Duration

    public init(base: Duration = .seconds(10), maxDelay: Duration = .seconds(3600), giveUpAfter: Duration = .seconds(86_400)) {
        self.base = base
        self.maxDelay = maxDelay
        self.giveUpAfter = giveUpAfter
    }

    /// The time of the attempt after attempt number `attempt` (1-based) failed at `now`; nil: give up.
    public func nextAttempt(after attempt: Int, failedAt now: Date, createdAt: Date) -> Date? {
        let doubled = base.seconds * pow(2, Double(min(attempt - 1, 30)))
        let delay = min(doubled, maxDelay.seconds)
        let next = now.addingTimeInterval(delay)
        return next.timeIntervalSince(createdAt) <= giveUpAfter.seconds ? next : nil
    }
}

extension Duration {
    /// The duration in (fractional) seconds.
    public var seconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}

/// The JSON body of a delivery: `{"id", "type", "created_at", "data": {...}}`, rendered once
/// when the event happens so every attempt sends (and signs) the same bytes.
public enum WebhookPayload {
    public static func render(deliveryID: String, event: WebhookEvent, at: Date, data: [String: JSONValue]) -> String {
        let body: [String: JSONValue] = [
            "id": .string(deliveryID), "type": .string(event.rawValue), "created_at": .date(at), "data": .sortedObject(data),
        ]
        return String(decoding: JSONValue.sortedObject(body).serialized(), as: UTF8.self)
    }

    public static func backup(_ b: Backup) -> [String: JSONValue] {
        ["backup": .sortedObject([
            "id": .string(b.id), "database_id": .string(b.databaseID), "name": .string(b.name), "type": .string(b.type.rawValue),
            "status": .string(b.status.rawValue), "engine": .string(b.engine.rawValue), "created_at": .date(b.createdAt),
            "completed_at": b.completedAt.map(JSONValue.date) ?? .null, "size_bytes": b.sizeBytes.map(JSONValue.int) ?? .null,
            "error": error(b.error),
        ])]
    }

    public static func restore(_ r: Restore) -> [String: JSONValue] {
        ["restore": .sortedObject([
            "id": .string(r.id), "backup_id": .string(r.backupID), "source_database_id": .string(r.sourceDatabaseID),
            "target_database_id": .string(r.targetDatabaseID), "status": .string(r.status.rawValue),
            "completed_at": r.completedAt.map(JSONValue.date) ?? .null, "error": error(r.error),
        ])]
    }

    public static func drill(backup b: Backup, drill d: DrillResult) -> [String: JSONValue] {
        ["drill": .sortedObject([
            "backup_id": .string(b.id), "database_id": .string(b.databaseID), "at": .date(d.at), "result": .string(d.result.rawValue),
            "duration_ms": .int(d.durationMs), "error": error(d.error),
        ])]
    }

    static func error(_ e: ErrorInfo?) -> JSONValue {
        e.map { .object([("code", .string($0.code)), ("message", .string($0.message))]) } ?? .null
    }
}
