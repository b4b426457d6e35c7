import AsyncHTTPClient
import HTTPTypes
import Hummingbird
import NIOCore
import Synchronization

/// A proxy in front of moto_server whose failures a test switches on and off: it passes
/// requests through, fails every other one (500, 503 or 429 in turn), or is down (each request
/// stalls for a second and then gets a 503), as an S3 endpoint in trouble would.
public final class S3Proxy: Sendable {
    public enum Mode: Int, Sendable {
        case passThrough, failEveryOther, down
    }

    public let endpoint: String
    let mode: Atomic<Int>
    let requests = Atomic<Int>(0)
    let failuresMade = Atomic<Int>(0)

    init(endpoint: String, mode: Mode) {
        self.endpoint = endpoint
        self.mode = Atomic(mode.rawValue)
    }

    public func set(_ mode: Mode) { self.mode.store(mode.rawValue, ordering: .relaxed) }
    /// Requests answered with an error so far.
    public var failures: Int { failuresMade.load(ordering: .relaxed) }

    public static func run<T: Sendable>(upstream: String, mode: Mode = .passThrough, _ body: (S3Proxy) async throws -> T) async throws -> T {
        let port = try freeLoopbackPort()
        let proxy = S3Proxy(endpoint: "http://127.0.0.1:\(port)", mode: mode)
        let router = Router()
        let forward: @Sendable (Request, BasicRequestContext) async throws -> Response = { request, _ in
            let n = proxy.requests.add(1, ordering: .relaxed).oldValue
            switch Mode(rawValue: proxy.mode.load(ordering: .relaxed)) ?? .passThrough {
            case .down:
                proxy.failuresMade.add(1, ordering: .relaxed)
                try await Task.sleep(for: .seconds(1))
                return Response(status: .serviceUnavailable, body: .init(byteBuffer: ByteBuffer(string: "<Error><Code>ServiceUnavailable</Code></Error>")))
            case .failEveryOther where n % 2 == 1:
                proxy.failuresMade.add(1, ordering: .relaxed)
                let status: HTTPResponse.Status = [.internalServerError, .serviceUnavailable, .tooManyRequests][(n / 2) % 3]
                return Response(status: status, body: .init(byteBuffer: ByteBuffer(string: "<Error><Code>SlowDown</Code></Error>")))
            case .failEveryOther, .passThrough:
                break
            }
            var upstreamRequest = HTTPClientRequest(url: upstream + request.uri.description)
            upstreamRequest.method = .init(rawValue: request.method.rawValue)
            for field in request.headers { upstreamRequest.headers.add(name: field.name.rawName, value: field.value) }
            upstreamRequest.body = .bytes(try await request.body.collect(upTo: 64 << 20))
            let response = try await HTTPClient.shared.execute(upstreamRequest, timeout: .seconds(30))
            var headers = HTTPFields()
            for (name, value) in response.headers where name.lowercased() != "content-length" && name.lowercased() != "transfer-encoding" {
                if let field = HTTPField.Name(name) { headers.append(HTTPField(name: field, value: value)) }
            }
            let bytes = try await response.body.collect(upTo: 64 << 20)
            return Response(status: .init(code: Int(response.status.code)), headers: headers, body: .init(byteBuffer: bytes))
        }
        for method in [HTTPRequest.Method.get, .put, .post, .delete, .head] {
            router.on("/", method: method, use: forward)
            router.on("**", method: method, use: forward)
        }
        return try await withLoopbackServer(router, port: port, label: "s3-proxy") { try await body(proxy) }
    }
}
