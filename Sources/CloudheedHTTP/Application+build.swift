import CloudheedDomain
import CloudheedEngines
import CloudheedRuntime
import CloudheedStorage
import Foundation
import Hummingbird
import Logging

/// What `cloudheed serve` is configured with.
public struct ServeConfiguration: Sendable {
    public var dataDirectory: String
    public var host: String
    public var port: Int
    public var settings: RuntimeSettings
    /// `CLOUDHEED_ADMIN_TOKEN`; when nil the token in `<data-dir>/admin-token` is used, generated on first start.
    public var adminToken: String?

    public init(dataDirectory: String, host: String = "127.0.0.1", port: Int = 8080, settings: RuntimeSettings = .init(), adminToken: String? = nil) {
        self.dataDirectory = dataDirectory
        self.host = host
        self.port = port
        self.settings = settings
        self.adminToken = adminToken
    }
}

/// The service's parts, wired once. Tests build the same parts with a test clock and seeded ids.
public struct Components: Sendable {
    public let service: BackupService
    public let runner: JobRunner
    public let scheduler: Scheduler
    public let janitor: RepositoryJanitor
    public let admin: AdminToken

    /// Lays out `<data-dir>` (catalog.sqlite3, repository/, databases/, tmp/) and opens everything in it.
    public static func make(
        dataDirectory: String, settings: RuntimeSettings, adminToken: String, clock: any WallClock = SystemWallClock(),
        ids: any IDGenerator = SecureIDGenerator(), logger: Logger
    ) throws -> Components {
        let root = URL(fileURLWithPath: dataDirectory).standardizedFileURL.path
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let scratch = root + "/tmp"
        // Scratch files belong to jobs of an earlier run; their jobs restart from scratch.
        try? FileManager.default.removeItem(atPath: scratch)
        let catalog = try SQLiteCatalog(path: root + "/catalog.sqlite3")
        let repository = try FileSystemRepository(root: root + "/repository")
        let engines = EngineRegistry([try SQLiteEngine(databasesDirectory: root + "/databases", scratchDirectory: scratch)])
        let service = BackupService(
            catalog: catalog, repository: repository, engines: engines, clock: clock, ids: ids, signal: WorkSignal(), settings: settings)
        return Components(
            service: service,
            runner: JobRunner(service: service, logger: logger),
            scheduler: Scheduler(service: service, logger: logger),
            janitor: RepositoryJanitor(service: service, logger: logger),
            admin: AdminToken(adminToken))
    }

    public func buildRouter() -> Router<AppRequestContext> {
        let router = Router(context: AppRequestContext.self)
        router.add(middleware: ErrorMiddleware())
        router.get("healthz") { _, _ in json(.object([("status", .string("ok"))])) }

        let accounts = AccountController(service: service)
        accounts.addAdminRoutes(to: router.group("v1/accounts").add(middleware: AdminAuthMiddleware(admin: admin)))

        let v1 = router.group("v1").add(middleware: AccountAuthMiddleware(service: service))
        accounts.addAccountRoutes(to: v1)
        DatabaseController(service: service).addRoutes(to: v1)
        BackupController(service: service).addRoutes(to: v1)
        return router
    }
}

/// Reads the admin token from `<data-dir>/admin-token`, creating it (mode 0600) on first start.
/// Returns the token and whether it was just generated, so the caller can show it once.
public func loadOrCreateAdminToken(dataDirectory: String, ids: any IDGenerator = SecureIDGenerator()) throws -> (token: String, generated: Bool) {
    try FileManager.default.createDirectory(atPath: dataDirectory, withIntermediateDirectories: true)
    let path = dataDirectory + "/admin-token"
    if let existing = FileManager.default.contents(atPath: path) {
        let token = String(decoding: existing, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        if !token.isEmpty { return (token, false) }
    }
    let token = "chdadmin_" + ids.randomString(count: 40)
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    guard fd >= 0 else { throw CocoaError(.fileWriteNoPermission, userInfo: [NSFilePathErrorKey: path]) }
    defer { close(fd) }
    _ = fchmod(fd, 0o600)
    let bytes = Array((token + "\n").utf8)
    guard write(fd, bytes, bytes.count) == bytes.count, fsync(fd) == 0 else {
        throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path])
    }
    return (token, true)
}

/// Builds the whole service: HTTP API, job workers and scheduler, run as one ServiceGroup that
/// shuts down gracefully on SIGTERM / SIGINT.
public func buildApplication(
    _ configuration: ServeConfiguration, clock: any WallClock = SystemWallClock(), ids: any IDGenerator = SecureIDGenerator(),
    logger: Logger, announce: @escaping @Sendable (String) -> Void = { print($0) }
) throws -> some ApplicationProtocol {
    let adminToken: String
    if let configured = configuration.adminToken, !configured.isEmpty {
        adminToken = configured
    } else {
        let (token, generated) = try loadOrCreateAdminToken(dataDirectory: configuration.dataDirectory, ids: ids)
        if generated {
            // Shown once, on the terminal that started the service; never logged.
            announce("Generated admin token (stored in \(configuration.dataDirectory)/admin-token, mode 0600):\n\(token)")
        }
        adminToken = token
    }
    let components = try Components.make(
        dataDirectory: configuration.dataDirectory, settings: configuration.settings, adminToken: adminToken,
        clock: clock, ids: ids, logger: logger)
    let workers = JobWorkerService(
        runner: components.runner, signal: components.service.signal, settings: configuration.settings, logger: logger)
    let scheduler = SchedulerService(
        scheduler: components.scheduler, janitor: components.janitor, interval: configuration.settings.schedulerInterval, logger: logger)
    return Application(
        router: components.buildRouter(),
        configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "cloudheed"),
        services: [workers, scheduler],
        logger: logger)
}
