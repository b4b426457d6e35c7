import CloudheedDomain
import CloudheedEngines
import CloudheedHTTP
import CloudheedRuntime
import CloudheedStorage
import Foundation
import GRDB
import Hummingbird
import HummingbirdTesting
import Logging
import Testing

/// A service in a temporary data directory with a hand-moved clock and seeded ids. Jobs run only
/// when a test asks (`runJobs`), so every test sees each state in turn.
struct TestService: Sendable {
    let directory: String
    let clock: ManualWallClock
    let components: Components
    static let adminToken = "test-admin-token"

    init(quotaBytes: Int64 = 10 * 1024 * 1024 * 1024, start: Date = Date(timeIntervalSince1970: 1_773_716_400), postgres: PostgresEngine? = nil, metricsToken: String? = nil,
         listCacheBytes: Int = ServeConfiguration.defaultListCacheBytes) throws {
        directory = NSTemporaryDirectory() + "cloudheed-http-\(UUID().uuidString)"
        clock = ManualWallClock(start)
        var logger = Logger(label: "test")
        logger.logLevel = .warning
        // No grace period: tests run garbage collection when they want to see its effect.
        components = try Components.make(
            dataDirectory: directory, settings: RuntimeSettings(workers: 1, defaultQuotaBytes: quotaBytes),
            adminToken: Self.adminToken, masterKey: MasterKey.generate().0, postgres: postgres, metricsToken: metricsToken, garbageGrace: 0,
            listCacheBytes: listCacheBytes, clock: clock,
            ids: SeededIDGenerator(seed: UInt64.random(in: 0...UInt64.max)), logger: logger)
    }

    func cleanup() { try? FileManager.default.removeItem(atPath: directory) }

    /// Runs every pending job to its end.
    func runJobs() async throws {
        while try await components.runner.runNextJob() {}
    }

    func withClient(_ body: @escaping @Sendable (API) async throws -> Void) async throws {
        defer { cleanup() }
        let app = Application(router: components.buildRouter())
        try await app.test(.router) { client in
            try await body(API(client: client, service: self))
        }
    }
}

struct APIResponse: Sendable {
    let status: HTTPResponse.Status
    let headers: HTTPFields
    let json: JSONValue?

    subscript(key: String) -> JSONValue? { json?[key] }
    var errorCode: String? { json?["error"]?["code"]?.stringValue }
}

/// A thin client over the router with Bearer tokens and JSON bodies.
struct API: Sendable {
    let client: any TestClientProtocol
    let service: TestService

    func call(_ method: HTTPRequest.Method, _ uri: String, token: String? = nil, body: String? = nil) async throws -> APIResponse {
        var headers: HTTPFields = [:]
        if let token { headers[.authorization] = "Bearer \(token)" }
        if body != nil { headers[.contentType] = "application/json" }
        return try await client.execute(uri: uri, method: method, headers: headers, body: body.map { ByteBuffer(string: $0) }) { response in
            let bytes = Array(response.body.readableBytesView)
            let isJSON = response.headers[.contentType]?.contains("json") ?? true
            return APIResponse(status: response.status, headers: response.headers, json: bytes.isEmpty || !isJSON ? nil : try JSONValue.parse(bytes))
        }
    }

    /// Creates an account and returns its id and token.
    func account(_ name: String = "acme", quota: Int64? = nil) async throws -> (id: String, token: String) {
        let body = quota.map { #"{"name":"\#(name)","storage_quota_bytes":\#($0)}"# } ?? #"{"name":"\#(name)"}"#
        let response = try await call(.post, "/v1/accounts", token: TestService.adminToken, body: body)
        #expect(response.status == .created)
        return (try #require(response["account"]?["id"]?.stringValue), try #require(response["token"]?.stringValue))
    }

    func database(_ token: String, name: String = "shop", tier: String = "micro", window: String? = nil) async throws -> JSONValue {
        let windowField = window.map { #","backup_window":"\#($0)""# } ?? ""
        let response = try await call(.post, "/v1/databases", token: token, body: #"{"name":"\#(name)","tier":"\#(tier)"\#(windowField)}"#)
        #expect(response.status == .created)
        return try #require(response.json)
    }

    /// Creates a manual backup and runs it to completion.
    func completedBackup(_ token: String, database: String, name: String? = nil) async throws -> JSONValue {
        let body = name.map { #"{"name":"\#($0)"}"# }
        let created = try await call(.post, "/v1/databases/\(database)/backups", token: token, body: body)
        #expect(created.status == .accepted)
        try await service.runJobs()
        let id = try #require(created["id"]?.stringValue)
        let done = try await call(.get, "/v1/databases/\(database)/backups/\(id)", token: token)
        #expect(done["status"]?.stringValue == "completed")
        return try #require(done.json)
    }
}

/// Writes rows into a database file the way an application would.
func writeRows(path: String, values: [String]) throws {
    let queue = try DatabaseQueue(path: path)
    try queue.write { db in
        try db.execute(sql: "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, value TEXT NOT NULL)")
        for value in values { try db.execute(sql: "INSERT INTO items (value) VALUES (?)", arguments: [value]) }
    }
    try queue.close()
}

func readRows(path: String) throws -> [String] {
    let queue = try DatabaseQueue(path: path)
    defer { try? queue.close() }
    return try queue.read { db in try String.fetchAll(db, sql: "SELECT value FROM items ORDER BY id") }
}

/// Files under `<data-dir>/repository/<kind>` (packs or manifests).
func repositoryObjects(_ service: TestService, _ kind: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: service.directory + "/repository/" + kind)) ?? []).sorted()
}

func filePath(ofURI uri: String?) throws -> String {
    let text = try #require(uri)
    return try #require(URL(string: text)).path
}
