import CloudheedEngines
import Foundation
import Subprocess
import Testing

/// A PostgreSQL 15 server of the test run's own: `initdb` into a temporary directory (as the
/// `postgres` user when the tests run as root), listening only on 127.0.0.1 at a free port, with
/// password authentication over TCP; stopped and removed when the suite using it ends.
///
/// The service connects as `cloudheed_admin`, a role with CREATEDB and CREATEROLE but not a
/// superuser, as a platform would configure it. Test set-up and checks use the superuser.
public final class TestPostgres: Sendable {
    public static let bin = "/usr/lib/postgresql/15/bin"
    public static let adminPassword = "admin-secret-7"
    public let directory: String
    public let port: Int

    @TaskLocal public static var current: TestPostgres?

    public var server: PostgresServer {
        PostgresServer(host: "127.0.0.1", port: port, username: "cloudheed_admin", password: Self.adminPassword, database: "postgres")
    }

    static var asRoot: Bool { getuid() == 0 }

    /// Runs a PostgreSQL tool, as `postgres` when we are root (or, `asPostgres: false`, a system
    /// tool from /usr/bin as ourselves); throws with its output if it fails.
    @discardableResult
    public static func tool(
        _ name: String, _ arguments: [String], environment: [Environment.Key: String?] = [:], asPostgres: Bool = true
    ) async throws -> String {
        let path = asPostgres ? bin + "/" + name : "/usr/bin/" + name
        let executable = asRoot && asPostgres ? "/usr/sbin/runuser" : path
        let args = asRoot && asPostgres ? ["-u", "postgres", "--", path] + arguments : arguments
        let result = try await run(
            .path(.init(executable)), arguments: .init(args), environment: .inherit.updating(environment),
            output: .string(limit: 16 << 20), error: .string(limit: 1 << 20))
        guard result.terminationStatus.isSuccess else {
            throw TestPostgresError(message: "\(name) \(arguments.prefix(3)) failed: \(result.standardError)\(result.standardOutput)")
        }
        return result.standardOutput
    }

    public static func freePort() throws -> Int { try freeLoopbackPort() }

    init(directory: String, port: Int) {
        self.directory = directory
        self.port = port
    }

    public static func start() async throws -> TestPostgres {
        guard FileManager.default.isExecutableFile(atPath: bin + "/initdb") else {
            throw TestPostgresError(message: "PostgreSQL 15 is not installed (scripts/install-deps installs postgresql-15)")
        }
        let directory = NSTemporaryDirectory() + "cloudheed-pg-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let passwordFile = directory + "/superuser-password"
        try "postgres-secret\n".write(toFile: passwordFile, atomically: true, encoding: .utf8)
        if asRoot { _ = try await run(.path("/bin/chown"), arguments: ["-R", "postgres:postgres", directory], output: .discarded) }
        try await tool("initdb", ["-D", directory + "/data", "-U", "postgres", "--pwfile=\(passwordFile)", "--auth-local=trust",
                                  "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"])
        var lastError: (any Error)?
        for _ in 0..<5 {
            let server = TestPostgres(directory: directory, port: try freePort())
            do {
                try await server.startServer()
                try await server.superuser("CREATE ROLE cloudheed_admin LOGIN CREATEDB CREATEROLE PASSWORD '\(adminPassword)'")
                return server
            } catch {
                lastError = error
            }
        }
        throw lastError!
    }

    public func startServer() async throws {
        try await Self.tool("pg_ctl", ["-D", directory + "/data", "-l", directory + "/log", "-w", "-t", "60", "start", "-o",
                                       "-c listen_addresses=127.0.0.1 -c port=\(port) -c unix_socket_directories=\(directory) -c fsync=off -c full_page_writes=off -c max_connections=120"])
    }

    /// Crashes the server (`pg_ctl stop -m immediate`: no checkpoint, clients cut off);
    /// `startServer()` brings it back on the same port, recovering from its WAL.
    public func crash() async throws {
        try await Self.tool("pg_ctl", ["-D", directory + "/data", "-m", "immediate", "-w", "stop"])
    }

    public func stop() async {
        _ = try? await Self.tool("pg_ctl", ["-D", directory + "/data", "-m", "immediate", "-w", "stop"])
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Runs SQL as the superuser over the server's socket; returns unaligned, tuples-only output.
    @discardableResult
    public func superuser(_ sql: String, database: String = "postgres") async throws -> String {
        try await Self.tool("psql", ["-h", directory, "-p", String(port), "-U", "postgres", "-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
    }

    /// Runs SQL as `role` over TCP with its password, as an application would.
    @discardableResult
    public func asRole(_ role: String, password: String, database: String, _ sql: String) async throws -> String {
        try await Self.tool(
            "psql", ["-h", "127.0.0.1", "-p", String(port), "-U", role, "-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql],
            environment: ["PGPASSWORD": password])
    }
}

/// A port nothing listens on right now: bind port 0 on loopback and read what the kernel chose.
public func freeLoopbackPort() throws -> Int {
    let (fd, port) = try boundLoopbackSocket()
    close(fd)
    return port
}

/// A loopback port bound but never listened on, for as long as this lives: connections to it are
/// refused at once, and nothing else can take the port meanwhile (a port from `freeLoopbackPort`
/// could be handed to another test's server in between).
public final class RefusingLoopbackPort: Sendable {
    public let port: Int
    private let fd: Int32

    public init() throws {
        (fd, port) = try boundLoopbackSocket()
    }

    deinit { close(fd) }
}

/// A TCP socket bound to a free loopback port, and the port.
func boundLoopbackSocket() throws -> (fd: Int32, port: Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
    }
    guard fd >= 0, bound else {
        if fd >= 0 { close(fd) }
        throw TestPostgresError(message: "no free loopback port")
    }
    return (fd, Int(UInt16(bigEndian: address.sin_port)))
}

public struct TestPostgresError: Error, CustomStringConvertible {
    public let message: String
    public init(message: String) { self.message = message }
    public var description: String { message }
}

/// Gives a suite its own PostgreSQL server for as long as it runs (`TestPostgres.current`).
public struct PostgresServerTrait: SuiteTrait, TestScoping {
    public func provideScope(for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void) async throws {
        let server = try await TestPostgres.start()
        do {
            try await TestPostgres.$current.withValue(server) { try await function() }
        } catch {
            await server.stop()
            throw error
        }
        await server.stop()
    }
}

extension Trait where Self == PostgresServerTrait {
    public static var postgresServer: Self { Self() }
}
