import CloudheedDomain
import CloudheedStorage
import Foundation
import Logging
import PostgresNIO
import Subprocess

/// The PostgreSQL server managed databases live on, reached as a role that may create databases
/// and roles (`--postgres-url postgresql://USER:PASSWORD@HOST:PORT/DBNAME`).
public struct PostgresServer: Sendable, Equatable {
    public var host: String
    public var port: Int
    public var username: String
    public var password: String?
    /// The database the admin connection opens (the URL's path; `postgres` if it has none).
    public var database: String

    public init(host: String, port: Int, username: String, password: String?, database: String) {
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.database = database
    }

    /// Parses `postgresql://` or `postgres://` URLs; the message never repeats the password.
    public init(url: String) throws(EngineError) {
        let endpoint: PostgresCatalog.Endpoint
        do {
            endpoint = try PostgresCatalog.Endpoint(url: url, defaultDatabase: "postgres")
        } catch {
            throw EngineError(code: "invalid_configuration", message: "the PostgreSQL URL must look like postgresql://USER:PASSWORD@HOST:PORT/DBNAME")
        }
        self.init(host: endpoint.host, port: endpoint.port, username: endpoint.username, password: endpoint.password, database: endpoint.database)
    }

    func configuration(database: String? = nil) -> PostgresConnection.Configuration {
        var configuration = PostgresConnection.Configuration(
            host: host, port: port, username: username, password: password, database: database ?? self.database, tls: .disable)
        configuration.options.connectTimeout = .seconds(10)
        return configuration
    }

    /// libpq's environment for pg_dump and pg_restore: the password never shows on a command line.
    func environment(database: String) -> [Environment.Key: String?] {
        var values: [Environment.Key: String?] = [
            "PGHOST": host, "PGPORT": String(port), "PGUSER": username, "PGDATABASE": database, "PGCONNECT_TIMEOUT": "10",
            "PGAPPNAME": "cloudheed", "PGSSLMODE": "disable", "PGPASSFILE": "/dev/null", "PGSERVICEFILE": "/dev/null",
        ]
        values["PGPASSWORD"] = password
        return values
    }

    /// A URI naming `role` on this server, with its password only when one is given.
    func uri(role: String, password: String?, database: String) -> String {
        let hostPart = host.contains(":") ? "[\(host)]" : host
        let credentials = password.map { "\(role):\($0)" } ?? role
        return "postgresql://\(credentials)@\(hostPart):\(port)/\(database)"
    }
}

/// `pg_dump` and `pg_restore`, found in the configured directory, then on `PATH`, then in the
/// newest `/usr/lib/postgresql/*/bin`.
public struct PostgresTools: Sendable, Equatable {
    public var pgDump: String
    public var pgRestore: String
    /// The major version `pg_dump --version` reports.
    public var majorVersion: Int

    public static func locate(binDirectory: String?, path: String? = ProcessInfo.processInfo.environment["PATH"]) async -> PostgresTools? {
        var directories: [String] = []
        if let binDirectory { directories.append(binDirectory) }
        directories += (path ?? "").split(separator: ":").map(String.init)
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib/postgresql")) ?? []).compactMap(Int.init).sorted(by: >)
        directories += versions.map { "/usr/lib/postgresql/\($0)/bin" }
        for directory in directories {
            let dump = directory + "/pg_dump", restore = directory + "/pg_restore"
            guard FileManager.default.isExecutableFile(atPath: dump), FileManager.default.isExecutableFile(atPath: restore),
                  let version = await majorVersion(of: dump) else { continue }
            return PostgresTools(pgDump: dump, pgRestore: restore, majorVersion: version)
        }
        return nil
    }

    /// "pg_dump (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)" gives 15.
    static func majorVersion(of executable: String) async -> Int? {
        guard let result = try? await run(.path(.init(executable)), arguments: ["--version"], output: .string(limit: 4096)),
              result.terminationStatus.isSuccess, case let text = result.standardOutput,
              let range = text.range(of: #"\) (\d+)"#, options: .regularExpression) else { return nil }
        return Int(text[range].dropFirst(2))
    }
}

/// PostgreSQL databases on a server the service administers. Each managed database is a
/// database and an owner role of the same name, derived from its id (`chd_db_...`), so nothing a
/// user chose reaches SQL; identifiers are quoted all the same.
///
/// Backups are logical: `pg_dump` in custom format (its compression off: the repository's zstd
/// is faster and dedups better) streamed straight into the repository, consistent because
/// pg_dump reads everything in one repeatable-read snapshot. Restores stream the dump into
/// `pg_restore` in one transaction, as the new owner role, into a new database.
public struct PostgresEngine: DatabaseEngine {
    public let kind = EngineKind.postgres
    let server: PostgresServer
    let tools: PostgresTools?
    let logger: Logger

    /// What postgres-nio may log: errors only. At debug level it would log query text, and
    /// `CREATE ROLE ... PASSWORD` carries a password.
    let driverLogger: Logger

    public init(server: PostgresServer, tools: PostgresTools?, logger: Logger) {
        self.server = server
        self.tools = tools
        self.logger = logger
        var quiet = logger
        quiet.logLevel = .error
        self.driverLogger = quiet
    }

    public func location(forDatabaseID id: String) -> String {
        "chd_" + id.replacingOccurrences(of: "-", with: "_")
    }

    public func connectionURI(location: String, password: String?) -> String {
        server.uri(role: location, password: password, database: location)
    }

    static func identifier(_ name: String) throws -> String {
        guard !name.isEmpty, name.count <= 63, name.utf8.allSatisfy({ ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x5F }) else {
            throw EngineError(code: "invalid_database_name", message: "'\(name)' is not a name this service gives databases")
        }
        return "\"\(name)\""
    }

    /// A password of 32 base-32 characters: nothing in it needs quoting.
    static func newPassword() -> String {
        SecureIDGenerator().randomString(count: 32)
    }

    public func create(at location: String) async throws -> String? {
        let name = try Self.identifier(location)
        let password = Self.newPassword()
        try await createRole(name, password: password)
        do {
            try await admin { connection in
                try await connection.query(PostgresQuery(unsafeSQL: "CREATE DATABASE \(name) OWNER \(name)"), logger: driverLogger)
                try await connection.query(PostgresQuery(unsafeSQL: "REVOKE ALL ON DATABASE \(name) FROM PUBLIC"), logger: driverLogger)
            }
        } catch {
            try? await drop(at: location)
            throw error
        }
        return password
    }

    public func prepareRestore(at location: String) async throws -> String? {
        let password = Self.newPassword()
        try await createRole(try Self.identifier(location), password: password)
        return password
    }

    /// The owner role, which the admin role joins so pg_dump can read and pg_restore can act as it.
    func createRole(_ name: String, password: String) async throws {
        try await admin { connection in try await createRole(name, password: password, on: connection) }
    }

    func createRole(_ name: String, password: String, on connection: PostgresConnection) async throws {
        try await connection.query(PostgresQuery(unsafeSQL: "CREATE ROLE \(name) LOGIN PASSWORD '\(password)'"), logger: driverLogger)
        try await connection.query(PostgresQuery(unsafeSQL: "GRANT \(name) TO CURRENT_USER"), logger: driverLogger)
    }

    public func drop(at location: String) async throws {
        let name = try Self.identifier(location)
        try await admin { connection in
            // The database, and any a restore attempt left (`<name>_r...`): all the role's.
            var databases = [location]
            let owned = try await connection.query(
                "SELECT datname FROM pg_database WHERE datdba = (SELECT oid FROM pg_roles WHERE rolname = \(location))", logger: driverLogger)
            for try await datname in owned.decode(String.self) where datname != location { databases.append(datname) }
            for database in databases { try await dropDatabase(try Self.identifier(database), location: database, owner: location, on: connection) }
            try await connection.query(PostgresQuery(unsafeSQL: "DROP ROLE IF EXISTS \(name)"), logger: driverLogger)
        }
    }

    /// Ends the owner's sessions, then drops the database. Not `WITH (FORCE)`: that refuses to
    /// end superuser processes such as an autovacuum worker, which a plain DROP stops by itself.
    /// A session that slips in between is ended on the next attempt.
    func dropDatabase(_ name: String, location: String, owner: String, on connection: PostgresConnection) async throws {
        for attempt in 1...20 {
            try await connection.query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = \(location) AND usename = \(owner)", logger: driverLogger)
            do {
                try await connection.query(PostgresQuery(unsafeSQL: "DROP DATABASE IF EXISTS \(name)"), logger: driverLogger)
                return
            } catch let error as PSQLError where error.serverInfo?[.sqlState] == "55006" && attempt < 20 {
                try await Task.sleep(for: .milliseconds(250))
            }
        }
    }

    /// pg_dump reads the snapshot our own repeatable-read transaction exported, and that
    /// transaction counts each table's rows meanwhile: the counts are exactly those of the dump,
    /// and a drill compares its restored copy against them.
    public func backup(at location: String, into repository: any BackupRepository, target: BackupTarget) async throws -> StoredObject {
        let tools = try await checkedTools()
        _ = try Self.identifier(location)
        return try await connected(to: location) { connection in
            try await connection.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", logger: driverLogger)
            var snapshot = ""
            for try await id in try await connection.query("SELECT pg_export_snapshot()", logger: driverLogger).decode(String.self) { snapshot = id }
            async let counts = Self.countRows(on: connection, logger: driverLogger)
            let result: ExecutionResult<StoredObject, SequenceOutput, StringOutput<UTF8>>
            do {
                result = try await run(
                    .path(.init(tools.pgDump)),
                    arguments: ["--format=custom", "--compress=0", "--no-owner", "--no-privileges", "--no-sync", "--snapshot=\(snapshot)"],
                    environment: .inherit.updating(server.environment(database: location)),
                    input: .none, output: .sequence, error: .string(limit: 1 << 20)
                ) { execution in
                    try await repository.storeStream(OutputBytes(base: execution.standardOutput), target: target)
                }
            } catch let error as SubprocessError {
                throw EngineError(code: "pg_dump_failed", message: "pg_dump could not be run: \(error)")
            }
            guard result.terminationStatus.isSuccess else {
                throw Self.toolError("pg_dump", status: result.terminationStatus, stderr: result.standardError, database: location)
            }
            var object = result.closureResult
            object.tableCounts = try await counts
            try await connection.query("COMMIT", logger: driverLogger)
            return object
        }
    }

    /// Restores into a database of its own (`chd_drill_<random>`), counts its rows, and drops it
    /// and its role whatever happened.
    public func drill(_ object: StoredObject, from repository: any BackupRepository, accountID: String) async throws -> TableCounts {
        let location = "chd_drill_" + SecureIDGenerator().randomString(count: 12)
        do {
            _ = try await prepareRestore(at: location)
            try await restore(object, from: repository, accountID: accountID, to: location)
            let counts = try await connected(to: location) { connection in try await Self.countRows(on: connection, logger: driverLogger) }
            try await drop(at: location)
            return counts
        } catch {
            try? await drop(at: location)
            throw error
        }
    }

    /// `count(*)` of every ordinary table outside the system schemas, keyed `schema.table`.
    static func countRows(on connection: PostgresConnection, logger: Logger) async throws -> TableCounts {
        let tables = try await connection.query(
            """
            SELECT n.nspname || '.' || c.relname, format('%I.%I', n.nspname, c.relname)
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
            ORDER BY 1
            """, logger: logger)
        var names: [(String, String)] = []
        for try await (name, quoted) in tables.decode((String, String).self) { names.append((name, quoted)) }
        var rows: [String: Int64] = [:]
        for (name, quoted) in names {
            // `quoted` comes from the server's own format('%I'), so it is a safe identifier.
            for try await count in try await connection.query(PostgresQuery(unsafeSQL: "SELECT count(*) FROM ONLY \(quoted)"), logger: logger).decode(Int64.self) {
                rows[name] = count
            }
        }
        return TableCounts(rows)
    }

    /// Restores into a database of this attempt's own (`<name>_r<random>`), renamed to the
    /// target's name only when pg_restore has committed: an attempt that lost its job lease can
    /// never damage or drop the database a later attempt finished.
    public func restore(_ object: StoredObject, from repository: any BackupRepository, accountID: String, to location: String) async throws {
        let tools = try await checkedTools()
        let name = try Self.identifier(location)
        let scratchName = location + "_r" + SecureIDGenerator().randomString(count: 8)
        let scratch = try Self.identifier(scratchName)
        do {
            try await admin { connection in
                // The role normally exists: it was made when the restore was requested, to show
                // its password.
                let role = try await connection.query("SELECT 1 FROM pg_roles WHERE rolname = \(location)", logger: driverLogger)
                if try await role.collect().isEmpty {
                    try await createRole(name, password: Self.newPassword(), on: connection)
                }
                try await connection.query(PostgresQuery(unsafeSQL: "CREATE DATABASE \(scratch) OWNER \(name)"), logger: driverLogger)
                try await connection.query(PostgresQuery(unsafeSQL: "REVOKE ALL ON DATABASE \(scratch) FROM PUBLIC"), logger: driverLogger)
            }
            let result = try await run(
                .path(.init(tools.pgRestore)),
                arguments: ["--format=custom", "--no-owner", "--no-privileges", "--role=\(location)", "--single-transaction", "--exit-on-error",
                            "--dbname=\(scratchName)"],
                environment: .inherit.updating(server.environment(database: scratchName)),
                input: .inputWriter, output: .discarded, error: .string(limit: 1 << 20)
            ) { execution in
                // A repository error (a damaged backup) ends the closure, and pg_restore is
                // stopped before it could commit a partial dump.
                do {
                    for try await piece in repository.readStream(object, accountID: accountID) {
                        _ = try await execution.standardInputWriter.write(piece)
                    }
                    try await execution.standardInputWriter.finish()
                } catch let error as SubprocessError {
                    // pg_restore stopped reading: its exit status and message say why.
                    logger.debug("pg_restore closed its input", metadata: ["error": "\(error)"])
                }
            }
            guard result.terminationStatus.isSuccess else {
                throw Self.toolError("pg_restore", status: result.terminationStatus, stderr: result.standardError, database: scratchName)
            }
            try await admin { connection in
                do {
                    try await connection.query(PostgresQuery(unsafeSQL: "ALTER DATABASE \(scratch) RENAME TO \(name)"), logger: driverLogger)
                } catch let error as PSQLError where error.serverInfo?[.sqlState] == "42P04" {
                    throw EngineError(code: "restore_superseded", message: "another attempt of this restore finished first")
                }
            }
        } catch {
            try? await abandon(scratchName: scratchName, location: location)
            if let error = error as? SubprocessError {
                throw EngineError(code: "pg_restore_failed", message: "pg_restore could not be run: \(error)")
            }
            throw error
        }
    }

    /// After a failed attempt: drops its own database, and the role unless a database of it is
    /// still there (another attempt's, finished or running): DROP ROLE refuses then.
    func abandon(scratchName: String, location: String) async throws {
        let scratch = try Self.identifier(scratchName), name = try Self.identifier(location)
        try await admin { connection in
            try await dropDatabase(scratch, location: scratchName, owner: location, on: connection)
            do {
                try await connection.query(PostgresQuery(unsafeSQL: "DROP ROLE IF EXISTS \(name)"), logger: driverLogger)
            } catch let error as PSQLError where error.serverInfo?[.sqlState] == "2BP01" {
                logger.debug("restore role kept: another attempt's database depends on it")
            }
        }
    }

    // MARK: Helpers

    /// The tools, refusing a pg_dump older than the server (it cannot dump newer servers).
    func checkedTools() async throws -> PostgresTools {
        guard let tools else {
            throw EngineError(code: "pg_dump_unavailable", message: "pg_dump and pg_restore were not found (configure --postgres-bin-dir, or install postgresql-client)")
        }
        guard FileManager.default.isExecutableFile(atPath: tools.pgDump), FileManager.default.isExecutableFile(atPath: tools.pgRestore) else {
            throw EngineError(code: "pg_dump_unavailable", message: "\(tools.pgDump) or \(tools.pgRestore) is missing")
        }
        let serverMajor = try await admin { connection in
            let rows = try await connection.query("SHOW server_version_num", logger: driverLogger)
            for try await (text) in rows.decode(String.self) { return (Int(text) ?? 0) / 10000 }
            return 0
        }
        guard tools.majorVersion >= serverMajor else {
            throw EngineError(
                code: "pg_dump_too_old",
                message: "pg_dump \(tools.majorVersion) cannot back up a PostgreSQL \(serverMajor) server; install postgresql-client-\(serverMajor) or configure --postgres-bin-dir")
        }
        return tools
    }

    /// Runs `body` on a fresh admin connection to `database` (the configured one when nil);
    /// server failures become engine errors with codes.
    func connected<T>(to database: String? = nil, _ body: (PostgresConnection) async throws -> T) async throws -> T {
        let connection: PostgresConnection
        do {
            connection = try await PostgresConnection.connect(configuration: server.configuration(database: database), id: 1, logger: driverLogger)
        } catch {
            throw Self.serverError(error, server: server)
        }
        do {
            let value = try await body(connection)
            try? await connection.close()
            return value
        } catch {
            try? await connection.close()
            throw Self.serverError(error, server: server)
        }
    }

    /// Runs `body` on a fresh admin connection to the configured database.
    func admin<T>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        try await connected(to: nil, body)
    }

    static func serverError(_ error: any Error, server: PostgresServer) -> any Error {
        guard let error = error as? PSQLError else { return error }
        let place = "\(server.host):\(server.port)"
        switch error.code {
        case .server:
            let state = error.serverInfo?[.sqlState] ?? ""
            let message = error.serverInfo?[.message] ?? "unknown error"
            switch state {
            case "28P01", "28000": return EngineError(code: "database_auth_failed", message: "the PostgreSQL server at \(place) refused the configured role: \(message)")
            case "3D000": return EngineError(code: "database_missing", message: "the database is missing on the PostgreSQL server: \(message)")
            case "57P01", "57P02", "57P03": return EngineError(code: "database_server_unavailable", message: "the PostgreSQL server at \(place) is shutting down or starting: \(message)")
            default: return EngineError(code: "database_server_error", message: "the PostgreSQL server at \(place) answered \(state): \(message)")
            }
        case .connectionError, .serverClosedConnection, .uncleanShutdown:
            return EngineError(code: "database_server_unreachable", message: "cannot reach the PostgreSQL server at \(place)")
        default:
            return EngineError(code: "database_server_error", message: "talking to the PostgreSQL server at \(place) failed: \(error.code)")
        }
    }

    /// pg_dump's or pg_restore's failure, classified from its exit and its message.
    static func toolError(_ tool: String, status: TerminationStatus, stderr: String, database: String) -> EngineError {
        let message = stderr.split(separator: "\n").filter { !$0.isEmpty }.suffix(3).joined(separator: " ").prefix(600)
        if case .signaled(let signal) = status {
            return EngineError(code: "\(tool)_failed", message: "\(tool) was killed by signal \(signal)")
        }
        if stderr.contains("password authentication failed") || stderr.contains("no pg_hba.conf entry") {
            return EngineError(code: "database_auth_failed", message: "\(tool): \(message)")
        }
        if stderr.contains("database \"\(database)\" does not exist") {
            return EngineError(code: "database_missing", message: "the database was dropped on the PostgreSQL server outside this service")
        }
        if stderr.contains("Connection refused") || stderr.contains("could not connect") || stderr.contains("timeout expired") {
            return EngineError(code: "database_server_unreachable", message: "\(tool): \(message)")
        }
        return EngineError(code: "\(tool)_failed", message: "\(tool) failed (\(status)): \(message)")
    }
}

/// pg_dump's output as byte arrays for the repository.
struct OutputBytes: AsyncSequence, Sendable {
    typealias Element = [UInt8]
    let base: SubprocessOutputSequence
    struct AsyncIterator: AsyncIteratorProtocol {
        var base: SubprocessOutputSequence.AsyncIterator
        mutating func next() async throws -> [UInt8]? {
            guard let buffer = try await base.next() else { return nil }
            return buffer.withUnsafeBytes { Array($0) }
        }
    }
    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(base: base.makeAsyncIterator()) }
}
