import CloudheedDomain
@testable import CloudheedEngines
import CloudheedStorage
import CloudheedTestSupport
import Foundation
import Logging
import Subprocess
import Testing

/// Tables, types and objects pg_dump must carry over: numeric, unicode text, bytea, jsonb,
/// arrays, timestamptz, an enum, a large object, a sequence past its start, indexes, a view,
/// a function, a trigger and a foreign key.
let richSchema = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE customers (
    id bigserial PRIMARY KEY, name text NOT NULL, email text UNIQUE, balance numeric(12,2), mood mood,
    tags text[], attrs jsonb, photo bytea, seen_at timestamptz);
CREATE TABLE orders (
    id serial PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers(id), total numeric, note text);
CREATE INDEX orders_by_customer ON orders (customer_id);
CREATE VIEW big_spenders AS
    SELECT c.name, sum(o.total) AS spent FROM customers c JOIN orders o ON o.customer_id = c.id GROUP BY c.name;
CREATE FUNCTION mark_note() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.note := coalesce(NEW.note, '') || ' (marked)'; RETURN NEW; END $$;
CREATE TRIGGER orders_mark BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION mark_note();
INSERT INTO customers (name, email, balance, mood, tags, attrs, photo, seen_at)
    SELECT 'Zoë ' || i || ' 日本語 🎉', 'c' || i || '@example.com', i * 1.25, (ARRAY['sad', 'ok', 'happy']::mood[])[1 + i % 3],
           ARRAY['a' || i, 'b'], jsonb_build_object('i', i, 'nested', jsonb_build_object('x', i % 7)),
           decode(md5(i::text), 'hex'), timestamptz '2026-01-01 00:00:00+00' + i * interval '1 hour'
    FROM generate_series(1, 2000) i;
INSERT INTO orders (customer_id, total, note)
    SELECT 1 + i % 2000, i * 0.5, CASE WHEN i % 5 = 0 THEN NULL ELSE 'order ' || i END FROM generate_series(1, 5000) i;
CREATE SEQUENCE invoice_numbers START 1000;
SELECT setval('invoice_numbers', 4242);
SELECT lo_from_bytea(0, convert_to(repeat('large object ', 10000), 'UTF8'));
"""

struct PostgresFixture {
    let directory = NSTemporaryDirectory() + "cloudheed-pg-engine-\(UUID().uuidString)"
    let postgres: TestPostgres
    let engine: PostgresEngine
    let repository: DedupRepository
    let tools: PostgresTools

    init() async throws {
        postgres = try #require(TestPostgres.current)
        tools = try #require(await PostgresTools.locate(binDirectory: TestPostgres.bin))
        engine = PostgresEngine(server: postgres.server, tools: tools, logger: Logger(label: "test"))
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let catalog = try SQLiteCatalog(path: directory + "/catalog.sqlite3")
        try await catalog.createAccount(
            Account(id: "acct-engine", name: "engine", storageQuotaBytes: 1 << 40, createdAt: Date()),
            token: StoredToken(id: "tok-engine", accountID: "acct-engine", secretHash: [0], createdAt: Date()))
        repository = try DedupRepository.local(root: directory + "/repository", catalog: catalog, masterKey: MasterKey.generate().0)
    }

    func engine(server: PostgresServer? = nil, tools: PostgresTools?) -> PostgresEngine {
        PostgresEngine(server: server ?? postgres.server, tools: tools, logger: Logger(label: "test"))
    }

    func target(_ backupID: String = "backup-\(UUID().uuidString.prefix(8).lowercased())") -> BackupTarget {
        BackupTarget(accountID: "acct-engine", backupID: backupID, parent: nil)
    }

    func location() -> String {
        engine.location(forDatabaseID: "db-" + SecureIDGenerator().randomString(count: 16))
    }

    func cleanup() { try? FileManager.default.removeItem(atPath: directory) }

    /// A new database of the engine's: pgbench data at `scale` and then `sql`, run as its owner.
    func database(pgbenchScale scale: Int? = nil, sql: String? = nil) async throws -> (name: String, password: String) {
        let name = location()
        let password = try #require(try await engine.create(at: name))
        if let scale { try await pgbench(["-i", "-s", "\(scale)", "-q"], role: name, password: password, database: name) }
        if let sql { try await postgres.asRole(name, password: password, database: name, sql) }
        return (name, password)
    }

    /// Restores `object` into a new database, its role made first as the API does.
    func restore(_ object: StoredObject) async throws -> (name: String, password: String) {
        let name = location()
        let password = try #require(try await engine.prepareRestore(at: name))
        try await engine.restore(object, from: repository, accountID: "acct-engine", to: name)
        return (name, password)
    }

    /// What must be equal between a database and its restored copy.
    func fingerprint(_ database: String) async throws -> [String] {
        var parts: [String] = []
        let tables = try await postgres.superuser(
            "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'", database: database)
        for table in tables.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ",") {
            // Rows in a total order (their text), so equal tables give equal checksums.
            parts.append("\(table): " + (try await postgres.superuser(
                "SELECT count(*) || ' ' || md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM public.\(table) t", database: database)))
        }
        parts.append("sequences: " + (try await postgres.superuser(
            "SELECT string_agg(sequencename || '=' || coalesce(last_value::text, 'unset'), ',' ORDER BY sequencename) FROM pg_sequences WHERE schemaname = 'public'",
            database: database)))
        parts.append("large objects: " + (try await postgres.superuser(
            "SELECT count(*) || ' ' || coalesce(string_agg(md5(lo_get(oid)), ',' ORDER BY md5(lo_get(oid))), '') FROM pg_largeobject_metadata", database: database)))
        let schema = try await TestPostgres.tool(
            "pg_dump", ["--schema-only", "--no-owner", "--no-privileges", "-h", postgres.directory, "-p", String(postgres.port), "-U", "postgres", database])
        // pg_dump 15.14+ brackets its output with a random \restrict key.
        parts.append(schema.split(separator: "\n").filter { !$0.hasPrefix("\\restrict") && !$0.hasPrefix("\\unrestrict") }.joined(separator: "\n"))
        return parts
    }

    func pgbench(_ arguments: [String], role: String, password: String, database: String) async throws {
        try await TestPostgres.tool(
            "pgbench", arguments + ["-h", "127.0.0.1", "-p", String(postgres.port), "-U", role, database], environment: ["PGPASSWORD": password])
    }

    func exists(_ name: String) async throws -> (database: Bool, role: Bool) {
        let database = try await postgres.superuser("SELECT count(*) FROM pg_database WHERE datname = '\(name)'")
        let role = try await postgres.superuser("SELECT count(*) FROM pg_roles WHERE rolname = '\(name)'")
        return (database.hasPrefix("1"), role.hasPrefix("1"))
    }

    func expectFailure(_ code: String, _ body: () async throws -> Void, sourceLocation: SourceLocation = #_sourceLocation) async {
        do {
            try await body()
            Issue.record("expected \(code), but it succeeded", sourceLocation: sourceLocation)
        } catch let error as EngineError {
            #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
            #expect(!error.message.contains(TestPostgres.adminPassword), sourceLocation: sourceLocation)
        } catch {
            Issue.record("expected \(code), got \(error)", sourceLocation: sourceLocation)
        }
    }
}

@Suite("PostgreSQL engine", .postgresServer, .serialized)
struct PostgresEngineTests {
    @Test("Create gives an owner role with a password; the database is the role's, closed to others, and drop removes both")
    func createAndDrop() async throws {
        let f = try await PostgresFixture()
        defer { f.cleanup() }
        let name = f.location()
        let password = try #require(try await f.engine.create(at: name))
        #expect(f.engine.connectionURI(location: name, password: password) == "postgresql://\(name):\(password)@127.0.0.1:\(f.postgres.port)/\(name)")
        #expect(f.engine.connectionURI(location: name) == "postgresql://\(name)@127.0.0.1:\(f.postgres.port)/\(name)")
        #expect(try await f.postgres.asRole(name, password: password, database: name, "SELECT current_user") == "\(name)\n")
        // Another tenant's role cannot even connect.
        let other = f.location()
        let otherPassword = try #require(try await f.engine.create(at: other))
        await #expect(throws: TestPostgresError.self) { try await f.postgres.asRole(other, password: otherPassword, database: name, "SELECT 1") }
        // Drop terminates open sessions.
        let session = Task { try? await f.postgres.asRole(name, password: password, database: name, "SELECT pg_sleep(30)") }
        try await Task.sleep(for: .milliseconds(300))
        try await f.engine.drop(at: name)
        _ = await session.value
        #expect(try await f.exists(name) == (false, false))
        try await f.engine.drop(at: other)
    }

    @Test("pgbench data and a schema of many types round-trip exactly into a new database owned by a new role")
    func roundTrip() async throws {
        let f = try await PostgresFixture()
        defer { f.cleanup() }
        let (source, _) = try await f.database(pgbenchScale: 2, sql: richSchema)
        let object = try await f.engine.backup(at: source, into: f.repository, target: f.target())
        #expect(object.sizeBytes > 0)
        #expect(try await f.repository.verify(object, accountID: "acct-engine").isSound)

        let (target, targetPassword) = try await f.restore(object)
        let expected = try await f.fingerprint(source)
        let actual = try await f.fingerprint(target)
        #expect(expected.count == actual.count)
        for (e, a) in zip(expected, actual) { #expect(e == a) }
        #expect(expected.contains { $0.hasPrefix("sequences: ") && $0.contains("invoice_numbers=4242") })
        #expect(expected.contains { $0.hasPrefix("large objects: 1 ") })
        // The new role owns what it restored and can use it; the source is untouched.
        #expect(try await f.postgres.asRole(target, password: targetPassword, database: target, "SELECT count(*) FROM customers") == "2000\n")
        try await f.postgres.asRole(target, password: targetPassword, database: target, "INSERT INTO orders (customer_id, total) VALUES (1, 1)")
        #expect(try await f.postgres.asRole(target, password: targetPassword, database: target, "SELECT tableowner FROM pg_tables WHERE tablename = 'orders'") == "\(target)\n")
        #expect(try await f.fingerprint(source) == expected)
        try await f.engine.drop(at: source)
        try await f.engine.drop(at: target)
    }

    @Test("A backup taken while pgbench keeps committing restores to a state pgbench committed")
    func consistentUnderWrites() async throws {
        let f = try await PostgresFixture()
        defer { f.cleanup() }
        let (source, password) = try await f.database(pgbenchScale: 5)
        let writer = Task { try await f.pgbench(["-n", "-T", "8", "-c", "2"], role: source, password: password, database: source) }
        try await Task.sleep(for: .seconds(1))
        let object = try await f.engine.backup(at: source, into: f.repository, target: f.target())
        try await writer.value

        let (target, _) = try await f.restore(object)
        // Every pgbench transaction moves the same delta through all four tables at once.
        let sums = try await f.postgres.superuser(
            """
            SELECT (SELECT sum(abalance) FROM pgbench_accounts) || ' ' || (SELECT sum(tbalance) FROM pgbench_tellers) || ' ' ||
                   (SELECT sum(bbalance) FROM pgbench_branches) || ' ' || (SELECT coalesce(sum(delta), 0) FROM pgbench_history) || ' ' ||
                   (SELECT count(*) FROM pgbench_history)
            """, database: target)
        let values = sums.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: " ")
        #expect(values.count == 5 && Set(values.prefix(4)).count == 1, "\(sums)")
        let restoredTransactions = Int(values.last ?? "") ?? 0
        let finalTransactions = Int(try await f.postgres.superuser("SELECT count(*) FROM pgbench_history", database: source).trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        #expect(restoredTransactions > 0, "the backup began after the writer had committed")
        #expect(finalTransactions > restoredTransactions, "the writer went on committing after the snapshot")
        // The row counts recorded with the backup are those of the dump's own snapshot.
        let counts = try #require(object.tableCounts)
        #expect(counts.rows["public.pgbench_history"] == Int64(restoredTransactions))
        #expect(counts.rows["public.pgbench_accounts"] == 500_000)
        #expect(counts.rows.count == 4)
        try await f.engine.drop(at: source)
        try await f.engine.drop(at: target)
    }

    @Test("Failures are errors with codes: unreachable server, refused login, database dropped behind our back, no pg_dump, too old a pg_dump, pg_dump killed")
    func backupFailures() async throws {
        let f = try await PostgresFixture()
        defer { f.cleanup() }
        let (name, _) = try await f.database(pgbenchScale: 20)

        var closed = f.postgres.server
        closed.port = try TestPostgres.freePort()
        await f.expectFailure("database_server_unreachable") { _ = try await f.engine(server: closed, tools: f.tools).backup(at: name, into: f.repository, target: f.target()) }
        var refused = f.postgres.server
        refused.password = "wrong"
        await f.expectFailure("database_auth_failed") { _ = try await f.engine(server: refused, tools: f.tools).backup(at: name, into: f.repository, target: f.target()) }
        await f.expectFailure("pg_dump_unavailable") { _ = try await f.engine(tools: nil).backup(at: name, into: f.repository, target: f.target()) }
        var old = f.tools
        old.majorVersion = 14
        await f.expectFailure("pg_dump_too_old") { _ = try await f.engine(tools: old).backup(at: name, into: f.repository, target: f.target()) }

        // pg_dump killed mid-dump: find ours by the database in its environment.
        let backup = Task { try await f.engine.backup(at: name, into: f.repository, target: f.target()) }
        var killed = false
        for _ in 0..<400 where !killed {
            for pid in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] where Int32(pid) != nil {
                guard (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8)) == "pg_dump\n",
                      let environ = FileManager.default.contents(atPath: "/proc/\(pid)/environ"),
                      String(decoding: environ, as: UTF8.self).contains("PGDATABASE=\(name)\0") else { continue }
                kill(Int32(pid)!, SIGKILL)
                killed = true
            }
            if !killed { try await Task.sleep(for: .milliseconds(10)) }
        }
        #expect(killed)
        await f.expectFailure("pg_dump_failed") { _ = try await backup.value }

        // Dropped behind the service's back.
        try await f.postgres.superuser("DROP DATABASE \(name) WITH (FORCE)")
        await f.expectFailure("database_missing") { _ = try await f.engine.backup(at: name, into: f.repository, target: f.target()) }
        try await f.engine.drop(at: name)
    }

    @Test("Storage filling up mid-backup ends the backup with storage_full and stops pg_dump", .enabled(if: getuid() == 0, "mounts a 4 MiB tmpfs"))
    func storageFull() async throws {
        let f = try await PostgresFixture()
        defer { f.cleanup() }
        // 24 MiB that no compressor shrinks.
        let (name, _) = try await f.database(
            sql: "CREATE TABLE noise AS SELECT i, decode(string_agg(md5(random()::text), ''), 'hex') AS bytes FROM generate_series(1, 1500) i, generate_series(1, 1000) j GROUP BY i")
        let small = f.directory + "/small"
        try FileManager.default.createDirectory(atPath: small, withIntermediateDirectories: true)
        try await TestPostgres.tool("mount", ["-t", "tmpfs", "-o", "size=4m", "tmpfs", small], asPostgres: false)
        do {
            let catalog = try SQLiteCatalog(path: f.directory + "/small-catalog.sqlite3")
            try await catalog.createAccount(
                Account(id: "acct-engine", name: "engine", storageQuotaBytes: 1 << 40, createdAt: Date()),
                token: StoredToken(id: "tok-engine", accountID: "acct-engine", secretHash: [0], createdAt: Date()))
            let repository = try DedupRepository.local(root: small + "/repository", catalog: catalog, masterKey: MasterKey.generate().0)
            do {
                _ = try await f.engine.backup(at: name, into: repository, target: f.target())
                Issue.record("a backup larger than the storage succeeded")
            } catch let error as RepositoryError {
                #expect(error.kind == .storageFull, "\(error)")
                #expect(error.info.code == "storage_full")
            }
            // pg_dump was stopped, not left writing into a pipe nobody reads.
            try await Task.sleep(for: .milliseconds(200))
            #expect(try await f.postgres.superuser("SELECT count(*) FROM pg_stat_activity WHERE datname = '\(name)' AND application_name = 'cloudheed'") == "0\n")
        } catch {
            _ = try? await TestPostgres.tool("umount", [small], asPostgres: false)
            throw error
        }
        try await TestPostgres.tool("umount", [small], asPostgres: false)
        try await f.engine.drop(at: name)
    }

    @Test("A late attempt of a restore (one that lost its job lease) cannot replace or drop the database a finished attempt made")
    func supersededAttempt() async throws {
        let f = try await PostgresFixture()
        defer { f.cleanup() }
        let (source, _) = try await f.database(sql: richSchema)
        let object = try await f.engine.backup(at: source, into: f.repository, target: f.target())
        let (target, targetPassword) = try await f.restore(object)
        let restored = try await f.fingerprint(target)
        await f.expectFailure("restore_superseded") { try await f.engine.restore(object, from: f.repository, accountID: "acct-engine", to: target) }
        #expect(try await f.exists(target) == (true, true))
        #expect(try await f.fingerprint(target) == restored)
        #expect(try await f.postgres.asRole(target, password: targetPassword, database: target, "SELECT count(*) FROM customers") == "2000\n")
        #expect(try await f.postgres.superuser("SELECT count(*) FROM pg_database WHERE datname LIKE '\(target)_r%'") == "0\n")
        try await f.engine.drop(at: source)
        try await f.engine.drop(at: target)
        #expect(try await f.exists(target) == (false, false))
    }

    @Test("pg_dump and pg_restore are found in the configured directory, then on PATH, then in the newest /usr/lib/postgresql/*/bin")
    func locatingTools() async throws {
        let configured = try #require(await PostgresTools.locate(binDirectory: TestPostgres.bin, path: "/usr/bin"))
        #expect(configured.pgDump == TestPostgres.bin + "/pg_dump" && configured.majorVersion == 15)
        let fallback = try #require(await PostgresTools.locate(binDirectory: "/nonexistent", path: "/nonexistent-either"))
        #expect(fallback.pgDump.hasPrefix("/usr/lib/postgresql/") && fallback.pgRestore.hasSuffix("/pg_restore"))
        let onPath = try #require(await PostgresTools.locate(binDirectory: nil, path: TestPostgres.bin))
        #expect(onPath.pgDump == TestPostgres.bin + "/pg_dump")
    }

    @Test("A drill restores into a scratch database, counts what the backup recorded, and drops it; a damaged backup fails it, leaving nothing")
    func drill() async throws {
        let f = try await PostgresFixture()
        defer { f.cleanup() }
        let (source, _) = try await f.database(pgbenchScale: 1, sql: richSchema)
        let object = try await f.engine.backup(at: source, into: f.repository, target: f.target())
        let recorded = try #require(object.tableCounts)
        #expect(recorded.rows["public.pgbench_accounts"] == 100_000)
        let counts = try await f.engine.drill(object, from: f.repository, accountID: "acct-engine")
        #expect(counts == recorded)
        let leftovers = "SELECT (SELECT count(*) FROM pg_database WHERE datname LIKE 'chd_drill%') + (SELECT count(*) FROM pg_roles WHERE rolname LIKE 'chd_drill%')"
        #expect(try await f.postgres.superuser(leftovers).trimmingCharacters(in: .whitespacesAndNewlines) == "0")

        for pack in try FileManager.default.contentsOfDirectory(atPath: f.directory + "/repository/packs") {
            let path = f.directory + "/repository/packs/" + pack
            var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
            bytes[bytes.count / 2] ^= 0x01
            try Data(bytes).write(to: URL(fileURLWithPath: path))
        }
        await #expect(throws: RepositoryError.self) { _ = try await f.engine.drill(object, from: f.repository, accountID: "acct-engine") }
        #expect(try await f.postgres.superuser(leftovers).trimmingCharacters(in: .whitespacesAndNewlines) == "0")
        try await f.engine.drop(at: source)
    }

    @Test("A restore that fails leaves neither database nor role behind")
    func restoreFailureCleansUp() async throws {
        let f = try await PostgresFixture()
        defer { f.cleanup() }
        let (source, _) = try await f.database(sql: richSchema)
        let object = try await f.engine.backup(at: source, into: f.repository, target: f.target())
        // Damage every pack: the stream fails authentication part-way, and pg_restore must not
        // commit what it got.
        for pack in try FileManager.default.contentsOfDirectory(atPath: f.directory + "/repository/packs") {
            let path = f.directory + "/repository/packs/" + pack
            var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
            bytes[bytes.count / 2] ^= 0x01
            try Data(bytes).write(to: URL(fileURLWithPath: path))
        }
        let target = f.location()
        _ = try await f.engine.prepareRestore(at: target)
        do {
            try await f.engine.restore(object, from: f.repository, accountID: "acct-engine", to: target)
            Issue.record("a restore of a damaged backup succeeded")
        } catch let error as RepositoryError {
            #expect(error.kind == .corrupt)
        }
        #expect(try await f.exists(target) == (false, false))
        // Server unreachable: the same.
        var closed = f.postgres.server
        closed.port = try TestPostgres.freePort()
        await f.expectFailure("database_server_unreachable") {
            try await f.engine(server: closed, tools: f.tools).restore(object, from: f.repository, accountID: "acct-engine", to: f.location())
        }
        try await f.engine.drop(at: source)
    }
}
