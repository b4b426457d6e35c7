import AsyncHTTPClient
import CloudheedHTTP
import CloudheedTestSupport
import Foundation
import GRDB
import Hummingbird
import Subprocess
import SystemPackage
import Testing

@Suite("Storage choice, readiness and migrations", .postgresServer)
struct StorageServeTests {
    @Test("/healthz/ready reports catalog and storage separately: 200 when both answer, 503 naming the storage when it cannot be written")
    func readiness() async throws {
        let service = try TestService()
        try await service.withClient { api in
            let ready = try await api.call(.get, "/healthz/ready")
            #expect(ready.status == .ok)
            #expect(ready["status"]?.stringValue == "ready")
            #expect(ready["catalog"]?.stringValue == "ok")
            try FileManager.default.removeItem(atPath: service.directory + "/repository")
            let broken = try await api.call(.get, "/healthz/ready")
            #expect(broken.status == .serviceUnavailable)
            #expect(broken["storage"]?.stringValue == "unreachable")
            #expect(broken["catalog"]?.stringValue == "ok")
        }
    }

    @Test("cloudheed migrate applies every migration to a new catalog, and nothing the second time")
    func migrate() async throws {
        let directory = NSTemporaryDirectory() + "cloudheed-migrate-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let first = try await runCloudheed(["migrate", "--data-dir", directory])
        #expect(first.status == .exited(0))
        #expect(first.output.contains("applied: v1, "), "\(first.output)")
        #expect(first.output.contains("v7-drills"))
        let second = try await runCloudheed(["migrate", "--data-dir", directory])
        #expect(second.output.contains("catalog is up to date"), "\(second.output)")
    }

    @Test("cloudheed migrate --catalog postgresql://… migrates the shared catalog once; a malformed URL is a usage error that never echoes the password")
    func migratePostgres() async throws {
        let postgres = try #require(TestPostgres.current)
        try await postgres.superuser("CREATE DATABASE migrated OWNER cloudheed_admin")
        let url = "postgresql://cloudheed_admin:\(TestPostgres.adminPassword)@127.0.0.1:\(postgres.port)/migrated"
        let first = try await runCloudheed(["migrate", "--catalog", url])
        #expect(first.status == .exited(0))
        #expect(first.output.contains("applied: v1-catalog, v2-versions"), "\(first.output)")
        let second = try await runCloudheed(["migrate", "--catalog", url])
        #expect(second.output.contains("catalog is up to date"), "\(second.output)")
        #expect(try await postgres.superuser("SELECT count(*) FROM schema_migrations", database: "migrated") == "2\n")
        let malformed = try await runCloudheed(["migrate", "--catalog", "mysql://root:hunter2-secret@127.0.0.1/x"])
        #expect(malformed.status == .exited(64))
        #expect(malformed.output.contains("postgresql://USER:PASSWORD@HOST:PORT/DBNAME") && !malformed.output.contains("hunter2-secret"), "\(malformed.output)")
    }

    @Test("serve --list-cache-mb out of range is a usage error, before anything is created")
    func listCacheFlag() async throws {
        let directory = NSTemporaryDirectory() + "cloudheed-listcache-\(UUID().uuidString)"
        for value in ["-1", "2000000"] {
            let run = try await runCloudheed(["serve", "--data-dir", directory, "--port", "\(try freeLoopbackPort())", "--list-cache-mb=\(value)"])
            #expect(run.status == .exited(64))
            #expect(run.output.contains("--list-cache-mb must be 0-1048576"), "\(run.output)")
        }
        #expect(!FileManager.default.fileExists(atPath: directory))
    }

    @Test("serve --storage s3://… on moto_server: backups go to the bucket, restore byte for byte, and readiness follows the endpoint")
    func serveOnS3() async throws {
        let s3 = try await TestS3.start()
        defer { s3.stop() }
        // The bucket, made the way an operator would before the first start.
        let (status, _) = try await signedBucketCreate(s3)
        #expect(status == 200)
        try await withLiveServer(
            arguments: ["--storage", "s3://cloudheed-live/eu-1", "--s3-endpoint", s3.endpoint, "--s3-path-style"],
            environment: ["AWS_ACCESS_KEY_ID": TestS3.accessKey, "AWS_SECRET_ACCESS_KEY": TestS3.secretKey]
        ) { server in
            let api = LiveAPI(base: server.url)
            let token = try await server.account()
            let (_, database) = try await api.call(.POST, "/v1/databases", token: token, body: #"{"name":"on-s3","tier":"micro"}"#)
            let id = try #require(database?["id"]?.stringValue)
            let path = try filePath(ofURI: database?["connection"]?["uri"]?.stringValue)
            let queue = try DatabaseQueue(path: path)
            try await queue.write { db in
                try db.execute(sql: "CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
                try db.execute(sql: "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 2000) INSERT INTO t SELECT i, randomblob(1000) FROM s")
            }
            let expected = try await queue.read { db in try Data.fetchAll(db, sql: "SELECT body FROM t ORDER BY id") }
            try queue.close()
            let (_, backup) = try await api.call(.POST, "/v1/databases/\(id)/backups", token: token)
            let backupID = try #require(backup?["id"]?.stringValue)
            let done = try await api.poll("/v1/databases/\(id)/backups/\(backupID)", token: token) { ["completed", "failed"].contains($0["status"]?.stringValue) }
            #expect(done["status"]?.stringValue == "completed", "\(done)")
            // Nothing went to the local repository directory: the objects are in the bucket.
            let local = (try? FileManager.default.contentsOfDirectory(atPath: server.directory + "/repository/packs")) ?? []
            #expect(local.isEmpty)

            let (_, restore) = try await api.call(.POST, "/v1/databases/\(id)/backups/\(backupID)/restore", token: token, body: #"{"target_database_name":"from-s3"}"#)
            let restoreID = try #require(restore?["restore"]?["id"]?.stringValue)
            let restored = try await api.poll("/v1/restores/\(restoreID)", token: token) { ["completed", "failed"].contains($0["restore"]?["status"]?.stringValue) }
            let copy = try DatabaseQueue(path: try filePath(ofURI: restored["database"]?["connection"]?["uri"]?.stringValue))
            #expect(try await copy.read { db in try Data.fetchAll(db, sql: "SELECT body FROM t ORDER BY id") } == expected)
            try copy.close()

            let ready = try await HTTPClient.shared.execute(HTTPClientRequest(url: server.url + "/healthz/ready"), timeout: .seconds(30))
            #expect(ready.status == .ok)
            s3.stop()
            let down = try await HTTPClient.shared.execute(HTTPClientRequest(url: server.url + "/healthz/ready"), timeout: .seconds(30))
            #expect(down.status == .serviceUnavailable)
            let body = try await down.body.collect(upTo: 4096)
            #expect(String(buffer: body).contains(#""storage":"unreachable""#))
        }
    }

    /// PUT /bucket, signed as the service signs (moto accepts any key pair).
    func signedBucketCreate(_ s3: TestS3) async throws -> (Int, String) {
        var request = HTTPClientRequest(url: s3.endpoint + "/cloudheed-live")
        request.method = .PUT
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
        return (Int(response.status.code), String(buffer: try await response.body.collect(upTo: 1 << 16)))
    }
}
