import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import CloudheedTestSupport
import Testing

/// A webhook receiver on loopback: records every POST to `/hook` and answers 500 to the first
/// `failFirst` of them, 200 after.
struct WebhookReceiver: Sendable {
    struct Received: Sendable {
        let headers: HTTPFields
        let body: [UInt8]
        var json: [String: Any]? { try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any] }
        var text: String { String(decoding: body, as: UTF8.self) }
    }

    actor Log {
        var requests: [Received] = []
        var failuresLeft: Int
        init(failFirst: Int) { failuresLeft = failFirst }
        func record(_ request: Received) -> HTTPResponse.Status {
            requests.append(request)
            guard failuresLeft > 0 else { return .ok }
            failuresLeft -= 1
            return .internalServerError
        }
    }

    let url: String
    let log: Log

    /// Runs `body` while the receiver listens on `port` (a free one if nil).
    static func run<T: Sendable>(port: Int? = nil, failFirst: Int = 0, _ body: @Sendable (WebhookReceiver) async throws -> T) async throws -> T {
        let port = try port ?? freeLoopbackPort()
        let log = Log(failFirst: failFirst)
        let router = Router()
        router.post("hook") { request, _ -> Response in
            let bytes = try await request.body.collect(upTo: 1 << 20)
            let status = await log.record(Received(headers: request.headers, body: Array(bytes.readableBytesView)))
            return Response(status: status, body: .init(byteBuffer: ByteBuffer(string: status == .ok ? "thanks" : "receiver is down for maintenance")))
        }
        return try await withLoopbackServer(router, port: port, label: "webhook-receiver") {
            try await body(WebhookReceiver(url: "http://127.0.0.1:\(port)/hook", log: log))
        }
    }

    /// Waits until `count` requests arrived, or fails after `seconds`.
    func waitFor(_ count: Int, seconds: Double = 60) async throws -> [Received] {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while ContinuousClock.now < deadline {
            let requests = await log.requests
            if requests.count >= count { return requests }
            try await Task.sleep(for: .milliseconds(50))
        }
        Issue.record("the receiver got \(await log.requests.count) requests, expected \(count)")
        throw CancellationError()
    }
}

/// Checks `Cloudheed-Signature: t=<ts>,v1=<hex>` the way a receiver would: HMAC-SHA-256 under
/// the secret over "<ts>.<raw body>", and a timestamp within five minutes.
func signatureIsValid(_ request: WebhookReceiver.Received, secret: String, now: Date = Date()) -> Bool {
    guard let header = request.headers[HTTPField.Name("Cloudheed-Signature")!] else { return false }
    var fields: [String: String] = [:]
    for part in header.split(separator: ",") {
        let pair = part.split(separator: "=", maxSplits: 1)
        if pair.count == 2 { fields[String(pair[0])] = String(pair[1]) }
    }
    guard let t = fields["t"], let timestamp = Double(t), let v1 = fields["v1"], abs(now.timeIntervalSince1970 - timestamp) < 300 else { return false }
    let mac = HMAC<SHA256>.authenticationCode(for: Array((t + ".").utf8) + request.body, using: SymmetricKey(data: Array(secret.utf8)))
    return Data(mac).map { String(format: "%02x", $0) }.joined() == v1
}
