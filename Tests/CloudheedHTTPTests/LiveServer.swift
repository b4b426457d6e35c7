import AsyncHTTPClient
import CloudheedDomain
import CloudheedHTTP
import CloudheedTestSupport
import Foundation
import GRDB
import NIOCore
import NIOHTTP1
import Subprocess
import SystemPackage
import Testing

// The real binary, as a server on loopback and as a command run by the tests.

/// The real `cloudheed` binary, built by `swift build --build-tests` beside the test bundle
/// (whatever the scratch path), else in `.build/debug`, or named by CLOUDHEED_BIN.
func cloudheedBinary() throws -> String {
    if let configured = ProcessInfo.processInfo.environment["CLOUDHEED_BIN"] { return configured }
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    let beside = Bundle.main.executableURL.map { $0.resolvingSymlinksInPath().deletingLastPathComponent().appendingPathComponent("cloudheed").path }
    let candidates = [beside, root.appendingPathComponent(".build/debug/cloudheed").path].compactMap { $0 }
    guard let path = candidates.first(where: FileManager.default.isExecutableFile(atPath:)) else {
        throw CocoaError(.fileNoSuchFile, userInfo: [NSFilePathErrorKey: candidates.joined(separator: ", ") + " (run swift build first)"])
    }
    return path
}

/// A client of a live server on loopback.
struct LiveAPI: Sendable {
    let base: String

    func call(_ method: HTTPMethod, _ path: String, token: String, body: String? = nil) async throws -> (Int, JSONValue?) {
        var request = HTTPClientRequest(url: base + path)
        request.method = method
        request.headers.add(name: "Authorization", value: "Bearer \(token)")
        if let body { request.body = .bytes(ByteBuffer(string: body)) }
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
        let bytes = try await response.body.collect(upTo: 1 << 20)
        return (Int(response.status.code), bytes.readableBytes == 0 ? nil : try JSONValue.parse(Array(bytes.readableBytesView)))
    }

    /// A new account with a SQLite database of `rows` random 4,000-byte rows (`items`).
    func bigDatabase(admin: String, rows: Int) async throws -> (token: String, database: String) {
        let (_, account) = try await call(.POST, "/v1/accounts", token: admin, body: #"{"name":"live"}"#)
        let token = try #require(account?["token"]?.stringValue)
        let (_, database) = try await call(.POST, "/v1/databases", token: token, body: #"{"name":"big","tier":"small"}"#)
        let id = try #require(database?["id"]?.stringValue)
        let queue = try DatabaseQueue(path: try filePath(ofURI: database?["connection"]?["uri"]?.stringValue))
        try await queue.write { db in
            try db.execute(sql: "CREATE TABLE items (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
            try db.execute(sql: "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < ?) INSERT INTO items SELECT i, randomblob(4000) FROM s", arguments: [rows])
        }
        try queue.close()
        return (token, id)
    }

    func waitUntilHealthy() async throws {
        for _ in 0..<300 {
            if let response = try? await HTTPClient.shared.execute(HTTPClientRequest(url: base + "/healthz"), timeout: .seconds(1)),
               response.status == .ok { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        Issue.record("server at \(base) never became healthy")
        throw CancellationError()
    }

    /// Polls until `done` holds for the response, or fails after `seconds`.
    func poll(_ path: String, token: String, seconds: Double = 60, until done: (JSONValue) -> Bool) async throws -> JSONValue {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while ContinuousClock.now < deadline {
            let (_, json) = try await call(.GET, path, token: token)
            if let json, done(json) { return json }
            try await Task.sleep(for: .milliseconds(5))
        }
        let (_, json) = try await call(.GET, path, token: token)
        Issue.record("timed out polling \(path): \(String(describing: json))")
        return try #require(json)
    }
}

/// Runs the real binary and collects what it printed and how it exited.
func runCloudheed(_ arguments: [String]) async throws -> (status: TerminationStatus, output: String) {
    let result = try await Subprocess.run(
        .path(FilePath(try cloudheedBinary())), arguments: Arguments(arguments), environment: .inherit.updating(["CLOUDHEED_MASTER_KEY": nil]),
        output: .string(limit: 1 << 20), error: .string(limit: 1 << 20))
    return (result.terminationStatus, result.standardOutput + result.standardError)
}


/// A `cloudheed serve` of a test's own: a free loopback port, a temporary data directory and a
/// known admin token. It can be run more than once on the same port and data (a restart).
struct LiveServer: Sendable {
    let api: LiveAPI
    let admin: String
    let directory: String
    let port: Int

    var url: String { api.base }

    static func make() throws -> LiveServer {
        let port = try freeLoopbackPort()
        return LiveServer(
            api: LiveAPI(base: "http://127.0.0.1:\(port)"), admin: "live-test-admin-token-\(UUID().uuidString)",
            directory: NSTemporaryDirectory() + "cloudheed-live-\(UUID().uuidString)", port: port)
    }

    /// Runs the service for as long as `body` runs, then stops it gracefully (SIGTERM).
    func run<T: Sendable>(
        workers: Int = 1, arguments: [String] = [], environment: [String: String] = [:], _ body: (LiveServer) async throws -> T
    ) async throws -> T {
        var variables: [Environment.Key: String?] = ["CLOUDHEED_ADMIN_TOKEN": admin]
        for (name, value) in environment { variables[Environment.Key(stringLiteral: name)] = value }
        let run = try await Subprocess.run(
            .path(FilePath(try cloudheedBinary())),
            arguments: Arguments(["serve", "--data-dir", directory, "--port", "\(port)", "--workers", "\(workers)", "--log-level", "error"] + arguments),
            environment: .inherit.updating(variables), input: .none, output: .discarded, error: .discarded
        ) { execution in
            defer { try? execution.send(signal: .terminate) }
            try await api.waitUntilHealthy()
            return try await body(self)
        }
        return run.closureResult
    }

    func removeData() { try? FileManager.default.removeItem(atPath: directory) }

    /// A new account's token.
    func account(_ name: String = "live") async throws -> String {
        let (status, created) = try await api.call(.POST, "/v1/accounts", token: admin, body: #"{"name":"\#(name)"}"#)
        #expect(status == 201)
        return try #require(created?["token"]?.stringValue)
    }
}

/// Runs `body` against a fresh server, stopped and its data removed afterwards.
func withLiveServer<T: Sendable>(
    workers: Int = 1, arguments: [String] = [], environment: [String: String] = [:], _ body: (LiveServer) async throws -> T
) async throws -> T {
    let server = try LiveServer.make()
    defer { server.removeData() }
    return try await server.run(workers: workers, arguments: arguments, environment: environment, body)
}
