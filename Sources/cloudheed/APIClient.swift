import AsyncHTTPClient
import CloudheedDomain
import Foundation
import NIOCore
import NIOHTTP1

/// Why a client command failed, already worded for people, with the exit code scripts see.
struct ClientFailure: Error {
    let exit: ClientExit
    let message: String
    /// The service's error document (`{"error": {...}}`), which `--json` puts on stdout.
    var body: APIResponse? = nil
}

/// One answer of the service: its status, its body as sent (for `--json`) and parsed, and the
/// service's clock (its `Date` header, whole seconds).
struct APIResponse: Sendable {
    let status: Int
    let body: [UInt8]
    let json: JSONValue?
    var date: Date? = nil

    subscript(key: String) -> JSONValue? { json?[key] }
}

/// The service's HTTP API, as the command line uses it. Every answer that is not a success
/// becomes a `ClientFailure` carrying the API's own error message and code.
struct APIClient: Sendable {
    /// Bodies are collected up to this size; the API's largest answers (lists) stay far below it.
    static let maxBodyBytes = 16 << 20

    let base: String
    let token: String
    let http: HTTPClient

    init(base: String, token: String) {
        self.base = base
        self.token = token
        var configuration = HTTPClient.Configuration()
        // A redirect could carry the Bearer token to another host: the API never redirects.
        configuration.redirectConfiguration = .disallow
        configuration.timeout = .init(connect: .seconds(10), read: .seconds(60))
        // A refused connection fails the command at once instead of being retried until the
        // connect timeout; `--wait` rides out a restarting service on its own (JobWait).
        configuration.connectionPool.retryConnectionEstablishment = false
        http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }

    func shutdown() async throws { try await http.shutdown() }

    func get(_ path: String) async throws -> APIResponse { try await send(.GET, path) }
    func post(_ path: String, _ body: JSONValue? = nil) async throws -> APIResponse { try await send(.POST, path, body: body) }
    func delete(_ path: String) async throws -> APIResponse { try await send(.DELETE, path) }

    func send(_ method: HTTPMethod, _ path: String, body: JSONValue? = nil) async throws -> APIResponse {
        var request = HTTPClientRequest(url: base + path)
        request.method = method
        request.headers.add(name: "Authorization", value: "Bearer \(token)")
        request.headers.add(name: "Accept", value: "application/json")
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: body.serialized()))
        }
        let status: Int
        let bytes: [UInt8]
        let date: Date?
        do {
            let response = try await http.execute(request, timeout: .seconds(120))
            status = Int(response.status.code)
            date = response.headers.first(name: "Date").flatMap(Self.httpDate)
            bytes = Array(try await response.body.collect(upTo: Self.maxBodyBytes).readableBytesView)
        } catch is NIOTooManyBytesError {
            throw ClientFailure(exit: .unavailable, message: "the answer from \(base) exceeds \(Self.maxBodyBytes) bytes")
        } catch {
            throw ClientFailure(exit: .unavailable, message: "cannot reach \(base): \(Self.describe(error))")
        }
        let json = bytes.isEmpty ? nil : try? JSONValue.parse(bytes)
        guard (200..<300).contains(status) else {
            var failure = Self.failure(status: status, json: json)
            if json != nil { failure.body = APIResponse(status: status, body: bytes, json: json, date: date) }
            throw failure
        }
        if !bytes.isEmpty && json == nil {
            throw ClientFailure(exit: .unavailable, message: "\(base) answered \(status) with a body that is not JSON: is --url the Cloudheed API?")
        }
        return APIResponse(status: status, body: bytes, json: json, date: date)
    }

    /// An IMF-fixdate (`Tue, 24 Nov 2026 23:27:31 GMT`), the only form a current server sends.
    static func httpDate(_ text: String) -> Date? {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss zzz"
        return formatter.date(from: text)
    }

    /// `<message> (<code>)` from the API's error body; 4xx is the caller's problem, anything else the service's.
    static func failure(status: Int, json: JSONValue?) -> ClientFailure {
        let exit: ClientExit = (400..<500).contains(status) ? .refused : .unavailable
        if let message = json?["error"]?["message"]?.stringValue {
            let code = json?["error"]?["code"]?.stringValue ?? "http_\(status)"
            return ClientFailure(exit: exit, message: "\(message) (\(code))")
        }
        let reason = HTTPResponseStatus(statusCode: status).reasonPhrase
        return ClientFailure(exit: exit, message: "the service answered HTTP \(status) \(reason) (http_\(status))")
    }

    /// AsyncHTTPClient's errors name their type; people want the cause.
    static func describe(_ error: any Error) -> String {
        if let error = error as? HTTPClientError {
            switch error {
            case .connectTimeout: return "connection timed out"
            case .readTimeout, .deadlineExceeded: return "the service did not answer in time"
            case .remoteConnectionClosed: return "the connection was closed"
            default: return "\(error)"
            }
        }
        if let error = error as? IOError { return String(cString: strerror(error.errnoCode)).lowercased() }
        return String(describing: error)
    }
}

/// Paths of the API, each id percent-encoded as one path segment.
enum APIPath {
    static func segment(_ id: String) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~")
        return id.addingPercentEncoding(withAllowedCharacters: allowed) ?? id
    }

    static func query(_ items: [(String, String?)]) -> String {
        let present = items.compactMap { key, value in value.map { "\(key)=\(segment($0))" } }
        return present.isEmpty ? "" : "?" + present.joined(separator: "&")
    }

    static func database(_ id: String) -> String { "/v1/databases/\(segment(id))" }
    static func backups(_ databaseID: String) -> String { database(databaseID) + "/backups" }
    static func backup(_ databaseID: String, _ id: String) -> String { backups(databaseID) + "/\(segment(id))" }
    static func restore(_ id: String) -> String { "/v1/restores/\(segment(id))" }
    static func webhook(_ id: String) -> String { "/v1/webhooks/\(segment(id))" }
}
