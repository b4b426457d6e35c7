import AsyncHTTPClient
import CloudheedDomain
import CloudheedStorage
import Crypto
import Foundation
import Logging
import NIOCore
import ServiceLifecycle

/// Delivers queued webhook events: a JSON POST signed with HMAC-SHA-256, retried with growing
/// delays for up to a day. Deliveries live in the catalog, so a restart (or another node)
/// carries on where this one stopped; a sender that dies mid-attempt holds its lock for
/// `lockDuration` at most.
///
/// Signature header: `Cloudheed-Signature: t=<unix seconds>,v1=<hex HMAC-SHA-256(secret, "<t>.<body>")>`.
/// Receivers recompute it over the raw body and reject stale timestamps, which stops replays.
public struct WebhookSender: Sendable {
    let service: BackupService
    let client: HTTPClient
    let logger: Logger
    /// How long one attempt may take.
    static let attemptTimeout: TimeAmount = .seconds(15)
    /// Longer than an attempt can take; a sender that stopped mid-attempt holds a delivery this long at most.
    let lockDuration: Duration = .seconds(30)
    let batchSize = 16

    public init(service: BackupService, client: HTTPClient, logger: Logger) {
        self.service = service
        self.client = client
        self.logger = logger
    }

    /// A client that never follows redirects (a 3xx is not a delivery) and gives up on slow receivers.
    public static func makeClient() -> HTTPClient {
        var configuration = HTTPClient.Configuration()
        configuration.redirectConfiguration = .disallow
        configuration.timeout = .init(connect: .seconds(5), read: .seconds(10))
        // A receiver that is down fails the attempt at once; the retry schedule decides what next.
        configuration.connectionPool.retryConnectionEstablishment = false
        configuration.decompression = .disabled
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }

    /// Sends every delivery that is due now; returns how many were attempted.
    @discardableResult
    public func sendDue() async throws -> Int {
        let due = try await service.catalog.claimDeliveries(now: service.clock.now(), lease: lockDuration, limit: batchSize)
        await withTaskGroup(of: Void.self) { group in
            for delivery in due {
                group.addTask { await self.deliver(delivery) }
            }
        }
        return due.count
    }

    func deliver(_ delivery: DueDelivery) async {
        var logger = self.logger
        logger[metadataKey: "webhook.id"] = "\(delivery.webhookID)"
        logger[metadataKey: "delivery.id"] = "\(delivery.id)"
        let attempt: DeliveryAttempt
        do {
            let secret = try await service.repository.openSecret(
                delivery.sealedSecret, accountID: delivery.accountID, context: BackupService.secretContext(delivery.webhookID))
            attempt = await post(delivery, secret: secret)
        } catch {
            attempt = DeliveryAttempt(at: service.clock.now(), statusCode: nil, error: "the webhook's secret could not be read", durationMs: 0)
            logger.error("webhook secret unreadable", metadata: ["error": "\(error)"])
        }
        // Shutting down mid-attempt: record nothing; the lock lapses and the attempt is made again.
        if Task.isCancelled { return }
        let retryAt = attempt.succeeded
            ? nil : service.settings.webhookRetry.nextAttempt(after: delivery.attempt, failedAt: attempt.at, createdAt: delivery.createdAt)
        do {
            try await service.catalog.recordDeliveryAttempt(delivery, attempt: attempt, retryAt: retryAt)
        } catch {
            logger.warning("webhook attempt not recorded", metadata: ["error": "\(error)"])
        }
        if attempt.succeeded {
            logger.info("webhook delivered", metadata: ["delivery.attempt": "\(delivery.attempt)", "http.status": "\(attempt.statusCode ?? 0)"])
        } else {
            logger.notice("webhook delivery failed", metadata: [
                "delivery.attempt": "\(delivery.attempt)", "error": "\(attempt.error ?? "")",
                "retry_at": "\(retryAt.map(UTCFormat.rfc3339) ?? "never")",
            ])
        }
    }

    func post(_ delivery: DueDelivery, secret: [UInt8]) async -> DeliveryAttempt {
        let at = service.clock.now()
        let body = Array(delivery.payload.utf8)
        var request = HTTPClientRequest(url: delivery.url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "User-Agent", value: "cloudheed-webhooks/1")
        request.headers.add(name: "Cloudheed-Event", value: delivery.event.rawValue)
        request.headers.add(name: "Cloudheed-Delivery", value: delivery.id)
        request.headers.add(name: "Cloudheed-Signature", value: Self.signature(secret: secret, timestamp: Int64(at.timeIntervalSince1970), body: body))
        request.body = .bytes(ByteBuffer(bytes: body))
        let started = ContinuousClock.now
        func elapsed() -> Int64 { Int64((ContinuousClock.now - started).seconds * 1000) }
        do {
            let response = try await client.execute(request, timeout: Self.attemptTimeout)
            // Keep the start of an error body: receivers often say there what went wrong.
            var excerpt: String?
            if !(200..<300).contains(Int(response.status.code)) {
                var collected = ByteBuffer()
                for try await var part in response.body {
                    collected.writeBuffer(&part)
                    if collected.readableBytes >= 512 { break }
                }
                let text = String(decoding: collected.readableBytesView.prefix(512), as: UTF8.self)
                excerpt = "HTTP \(response.status.code)" + (text.isEmpty ? "" : ": " + text)
            } else {
                for try await _ in response.body {}
            }
            return DeliveryAttempt(at: at, statusCode: Int(response.status.code), error: excerpt, durationMs: elapsed())
        } catch {
            return DeliveryAttempt(at: at, statusCode: nil, error: Self.describe(error), durationMs: elapsed())
        }
    }

    /// `t=<timestamp>,v1=<hex>`, the HMAC over "<timestamp>.<body>".
    public static func signature(secret: [UInt8], timestamp: Int64, body: [UInt8]) -> String {
        var message = Array("\(timestamp).".utf8)
        message.append(contentsOf: body)
        let mac = HMAC<SHA256>.authenticationCode(for: message, using: SymmetricKey(data: secret))
        return "t=\(timestamp),v1=" + mac.map { String(format: "%02x", $0) }.joined()
    }

    static func describe(_ error: any Error) -> String {
        if let error = error as? HTTPClientError {
            switch error {
            case .deadlineExceeded, .readTimeout, .connectTimeout: return "the receiver did not answer in time"
            case .remoteConnectionClosed: return "the receiver closed the connection"
            default: return "request failed: \(error)"
            }
        }
        let text = "\(error)"
        if text.contains("refused") { return "connection refused" }
        return "request failed: " + String(text.prefix(200))
    }
}

/// Runs the sender every second until shutdown, and prunes deliveries finished a month ago.
public struct WebhookSenderService: Service {
    let service: BackupService
    let logger: Logger
    let interval: Duration

    public init(service: BackupService, logger: Logger, interval: Duration = .seconds(1)) {
        self.service = service
        self.logger = logger
        self.interval = interval
    }

    public func run() async throws {
        let client = WebhookSender.makeClient()
        let sender = WebhookSender(service: service, client: client, logger: logger)
        var lastPrune: ContinuousClock.Instant?
        while !Task.isCancelled, !Task.isShuttingDownGracefully {
            var sent = 0
            do {
                sent = try await cancelWhenGracefulShutdown { try await sender.sendDue() }
                if lastPrune.map({ ContinuousClock.now - $0 > .seconds(3600) }) ?? true {
                    _ = try await service.catalog.pruneDeliveries(before: service.clock.now().addingTimeInterval(-30 * 86_400))
                    lastPrune = .now
                }
            } catch {
                if !Task.isShuttingDownGracefully { logger.error("webhook sender could not reach the catalog", metadata: ["error": "\(error)"]) }
            }
            if sent == 0 { try? await cancelWhenGracefulShutdown { try await Task.sleep(for: self.interval) } }
        }
        try await client.shutdown()
    }
}
