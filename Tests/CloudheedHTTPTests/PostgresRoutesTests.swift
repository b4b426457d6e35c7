import CloudheedDomain
import CloudheedEngines
import CloudheedTestSupport
import Foundation
import Logging
import Testing

/// The role, password and database in a `postgresql://` URI.
func credentials(_ uri: String?) throws -> (role: String, password: String?, database: String) {
    let components = try #require(uri.flatMap { URLComponents(string: $0) })
    #expect(components.scheme == "postgresql")
    return (try #require(components.user), components.password, String(components.path.dropFirst()))
}

@Suite("PostgreSQL databases through the API", .postgresServer, .serialized)
struct PostgresRoutesTests {
    static func service() async throws -> (TestService, TestPostgres) {
        let postgres = try #require(TestPostgres.current)
        let tools = await PostgresTools.locate(binDirectory: TestPostgres.bin)
        var logger = Logger(label: "test")
        logger.logLevel = .warning
        return (try TestService(postgres: PostgresEngine(server: postgres.server, tools: tools, logger: logger)), postgres)
    }

    @Test("Create shows the owner's password once; a backup restores into a new database with its own role and password; delete drops it on the server")
    func lifecycle() async throws {
        let (service, postgres) = try await Self.service()
        try await service.withClient { api in
            let (_, token) = try await api.account()
            let created = try await api.call(.post, "/v1/databases", token: token, body: #"{"name":"shop","tier":"micro","engine":"postgres"}"#)
            #expect(created.status == .created)
            #expect(created["engine"]?.stringValue == "postgres")
            #expect(created["status"]?.stringValue == "available")
            let id = try #require(created["id"]?.stringValue)
            let source = try credentials(created["connection"]?["uri"]?.stringValue)
            let password = try #require(source.password)
            #expect(source.role == source.database && source.role.hasPrefix("chd_db_"))
            try await postgres.asRole(source.role, password: password, database: source.database, """
                CREATE TABLE items (id serial PRIMARY KEY, value text NOT NULL);
                INSERT INTO items (value) SELECT 'item ' || i || ' ✓' FROM generate_series(1, 500) i;
                """)
            // Everywhere else, no password.
            let shown = try await api.call(.get, "/v1/databases/\(id)", token: token)
            #expect(shown["connection"]?["uri"]?.stringValue == "postgresql://\(source.role)@127.0.0.1:\(postgres.port)/\(source.database)")

            let backup = try await api.completedBackup(token, database: id)
            #expect((backup["size_bytes"]?.intValue ?? 0) > 0)
            let backupID = try #require(backup["id"]?.stringValue)
            let restore = try await api.call(
                .post, "/v1/databases/\(id)/backups/\(backupID)/restore", token: token, body: #"{"target_database_name":"shop-copy"}"#)
            #expect(restore.status == .accepted)
            #expect(restore["database"]?["status"]?.stringValue == "restoring")
            let target = try credentials(restore["database"]?["connection"]?["uri"]?.stringValue)
            let targetPassword = try #require(target.password)
            #expect(target.role != source.role)
            try await service.runJobs()
            let restoreID = try #require(restore["restore"]?["id"]?.stringValue)
            let done = try await api.call(.get, "/v1/restores/\(restoreID)", token: token)
            #expect(done["restore"]?["status"]?.stringValue == "completed")
            #expect(done["database"]?["status"]?.stringValue == "available")
            #expect(try credentials(done["database"]?["connection"]?["uri"]?.stringValue).password == nil)

            let checksum = "SELECT count(*) || ' ' || md5(string_agg(value, ',' ORDER BY id)) FROM items"
            let expected = try await postgres.asRole(source.role, password: password, database: source.database, checksum)
            #expect(try await postgres.asRole(target.role, password: targetPassword, database: target.database, checksum) == expected)
            #expect(expected.hasPrefix("500 "))
            // The restored database is the new role's: it writes; the source is untouched.
            try await postgres.asRole(target.role, password: targetPassword, database: target.database, "INSERT INTO items (value) VALUES ('new')")
            #expect(try await postgres.asRole(source.role, password: password, database: source.database, checksum) == expected)

            #expect(try await api.call(.delete, "/v1/databases/\(id)", token: token).status == .ok)
            #expect(try await postgres.superuser("SELECT count(*) FROM pg_database WHERE datname = '\(source.database)'") == "0\n")
            #expect(try await postgres.superuser("SELECT count(*) FROM pg_roles WHERE rolname = '\(source.role)'") == "0\n")
            #expect(try await postgres.superuser("SELECT count(*) FROM pg_database WHERE datname = '\(target.database)'") == "1\n")
        }
    }

    @Test("A backup of a database dropped behind the service's back fails with database_missing; the others' scheduled backups go on, day after day")
    func failuresAreData() async throws {
        let (service, postgres) = try await Self.service()
        try await service.withClient { api in
            let (_, token) = try await api.account()
            var ids: [String] = []
            for name in ["gone", "kept"] {
                // Created inside their window: the scheduler backs them up at once.
                let created = try await api.call(
                    .post, "/v1/databases", token: token, body: #"{"name":"\#(name)","tier":"micro","engine":"postgres","backup_window":"03:00-04:00"}"#)
                #expect(created.status == .created)
                ids.append(try #require(created["id"]?.stringValue))
            }
            let gone = try credentials(try await api.call(.get, "/v1/databases/\(ids[0])", token: token)["connection"]?["uri"]?.stringValue)
            try await postgres.superuser("DROP DATABASE \(gone.database) WITH (FORCE)")

            for day in 0..<2 {
                if day > 0 { service.clock.advance(by: 86_400) }
                #expect(try await service.components.scheduler.tick().backupsCreated == 2)
                try await service.runJobs()
                let failed = try await api.call(.get, "/v1/databases/\(ids[0])/backups", token: token)["backups"]?.arrayValue ?? []
                #expect(failed.count == day + 1)
                #expect(failed.allSatisfy { $0["status"]?.stringValue == "failed" && $0["error"]?["code"]?.stringValue == "database_missing" })
                let kept = try await api.call(.get, "/v1/databases/\(ids[1])/backups", token: token)["backups"]?.arrayValue ?? []
                #expect(kept.count == day + 1)
                #expect(kept.allSatisfy { $0["status"]?.stringValue == "completed" && $0["error"] == .null })
            }
        }
    }
}
