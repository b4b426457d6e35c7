import CloudheedDomain
import CloudheedEngines
import CloudheedRuntime
import CloudheedStorage
import Foundation
import Hummingbird
import Logging
import ServiceLifecycle

/// What `cloudheed serve` is configured with.
public struct ServeConfiguration: Sendable {
    public var dataDirectory: String
    public var host: String
    public var port: Int
    public var settings: RuntimeSettings
    /// `CLOUDHEED_ADMIN_TOKEN`; when nil the token in `<data-dir>/admin-token` is used, generated on first start.
    public var adminToken: String?
    public var masterKey: MasterKeySource
    public var compression: CompressionSetting
    /// `--postgres-url`: the server PostgreSQL databases are created on; without it the engine is off.
    public var postgres: PostgresServer?
    /// `--postgres-bin-dir`: where pg_dump and pg_restore are, before PATH and /usr/lib/postgresql.
    public var postgresBinDirectory: String?
    /// `CLOUDHEED_METRICS_TOKEN`: when set, `/metrics` requires it.
    public var metricsToken: String?
    /// `--storage s3://...`: the bucket backup data goes to; nil keeps it in `<data-dir>/repository`.
    public var s3: S3Configuration?
    /// `--catalog postgresql://...`: the catalog shared by several nodes; nil keeps `<data-dir>/catalog.sqlite3`.
    public var catalog: PostgresCatalog.Endpoint?
    /// `--gc-grace`: seconds an object no backup refers to is kept before it is deleted.
    public var garbageGrace: TimeInterval = 3600
    /// `--databases-dir`: where SQLite databases live; several nodes must share it. Default `<data-dir>/databases`.
    public var databasesDirectory: String?
    /// `--list-cache-mb`: memory for rendered backup lists (0: none).
    public var listCacheBytes = ServeConfiguration.defaultListCacheBytes
    /// 256 MiB: the lists of 10,000 databases with 40 backups each (16 KB each).
    public static let defaultListCacheBytes = 256 << 20

    public init(
        dataDirectory: String, host: String = "127.0.0.1", port: Int = 8080, settings: RuntimeSettings = .init(), adminToken: String? = nil,
        masterKey: MasterKeySource = .dataDirectory, compression: CompressionSetting = .default, postgres: PostgresServer? = nil,
        postgresBinDirectory: String? = nil, metricsToken: String? = nil
    ) {
        self.metricsToken = metricsToken
        self.postgres = postgres
        self.postgresBinDirectory = postgresBinDirectory
        self.dataDirectory = dataDirectory
        self.host = host
        self.port = port
        self.settings = settings
        self.adminToken = adminToken
        self.masterKey = masterKey
        self.compression = compression
    }
}

/// Where the master key comes from: `--master-key-file`, `CLOUDHEED_MASTER_KEY`, or
/// `<data-dir>/master-key`, generated on first start.
public enum MasterKeySource: Sendable {
    case file(String)
    case hex(String)
    case dataDirectory

    /// The key, and the path of a key file it just generated (which the operator must back up).
    public func load(dataDirectory: String) async throws -> (MasterKey, generated: String?) {
        switch self {
        case .hex(let hex):
            return (try MasterKey(hex: hex), nil)
        case .file(let path):
            guard let data = FileManager.default.contents(atPath: path) else { throw KeyError("cannot read the master key file \(path)") }
            return (try data.count == 32 ? MasterKey(bytes: [UInt8](data)) : MasterKey(hex: String(decoding: data, as: UTF8.self)), nil)
        case .dataDirectory:
            let path = dataDirectory + "/master-key"
            try await completeInterruptedRotation(dataDirectory: dataDirectory)
            if FileManager.default.fileExists(atPath: path) { return (try await MasterKeySource.file(path).load(dataDirectory: dataDirectory).0, nil) }
            try FileManager.default.createDirectory(atPath: dataDirectory, withIntermediateDirectories: true)
            let (key, hex) = MasterKey.generate()
            try writeSecret(hex + "\n", to: path)
            return (key, path)
        }
    }
}

/// The service's parts, wired once. Tests build the same parts with a test clock and seeded ids.
public struct Components: Sendable {
    public let service: BackupService
    public let runner: JobRunner
    public let scheduler: Scheduler
    public let collector: GarbageCollector
    public let admin: AdminToken
    public let catalog: any Catalog & RepositoryIndex
    /// When set, `/metrics` requires it as a Bearer token.
    let metricsToken: AdminToken?
    /// Rendered backup lists, checked against the catalog's versions on every request.
    public let listCache: BackupListCache

    /// Lays out `<data-dir>` (catalog.sqlite3, repository/, databases/, tmp/) and opens everything in it;
    /// `catalog`, `blobs` and `databasesDirectory` replace their parts of it (several nodes share those).
    public static func make(
        dataDirectory: String, settings: RuntimeSettings, adminToken: String, masterKey: MasterKey,
        compression: CompressionSetting = .default, postgres: PostgresEngine? = nil, metricsToken: String? = nil, garbageGrace: TimeInterval = 3600,
        listCacheBytes: Int = ServeConfiguration.defaultListCacheBytes,
        catalog sharedCatalog: (any Catalog & RepositoryIndex)? = nil, blobs: (any BlobStore)? = nil, databasesDirectory: String? = nil,
        clock: any WallClock = SystemWallClock(), ids: any IDGenerator = SecureIDGenerator(), logger: Logger
    ) throws -> Components {
        _ = MetricsExport.registry  // swift-metrics bootstrapped, once per process
        let root = URL(fileURLWithPath: dataDirectory).standardizedFileURL.path
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let scratch = root + "/tmp"
        // Scratch files belong to jobs of an earlier run; their jobs restart from scratch.
        try? FileManager.default.removeItem(atPath: scratch)
        let catalog = try sharedCatalog ?? SQLiteCatalog(path: root + "/catalog.sqlite3", garbageGrace: garbageGrace)
        let repository = DedupRepository(
            index: catalog, blobs: try blobs ?? FileBlobStore(root: root + "/repository"), keyRing: KeyRing(master: masterKey, store: catalog),
            clock: clock, ids: ids, compression: compression, grace: garbageGrace)
        let sqlite: any DatabaseEngine = try SQLiteEngine(databasesDirectory: databasesDirectory ?? root + "/databases", scratchDirectory: scratch)
        let engines = EngineRegistry([sqlite] + (postgres.map { [$0] } ?? []))
        let service = BackupService(
            catalog: catalog, repository: repository, engines: engines, clock: clock, ids: ids, signal: WorkSignal(), settings: settings)
        return Components(
            service: service,
            runner: JobRunner(service: service, logger: logger),
            scheduler: Scheduler(service: service, logger: logger),
            collector: GarbageCollector(service: service, logger: logger),
            admin: AdminToken(adminToken),
            catalog: catalog,
            metricsToken: metricsToken.map(AdminToken.init),
            listCache: BackupListCache(budgetBytes: listCacheBytes))
    }

    /// `openapi.json`, from this module's resource bundle (next to the executable); nil when the
    /// binary was copied without it.
    public static let openAPIDocument: [UInt8]? = Bundle.module.url(forResource: "openapi", withExtension: "json")
        .flatMap { try? Data(contentsOf: $0) }.map { [UInt8]($0) }

    public func buildRouter() -> Router<AppRequestContext> {
        let router = Router(context: AppRequestContext.self)
        router.add(middleware: RequestIDMiddleware())
        // Outside the error middleware, so it sees the status that gives; labelled by route pattern.
        router.add(middleware: MetricsMiddleware())
        router.add(middleware: ErrorMiddleware())
        router.get("healthz") { _, _ in json(.object([("status", .string("ok"))])) }
        // Readiness: the catalog and the object storage, each checked on its own.
        let service = self.service
        router.get("healthz/ready") { _, context in
            var catalog = "ok", storage = "ok"
            do { try await service.catalog.probe() } catch { catalog = "unreachable" }
            do { try await service.repository.probeStorage() } catch {
                storage = "unreachable"
                context.logger.warning("storage probe failed", metadata: ["error": "\(error)"])
            }
            let ready = catalog == "ok" && storage == "ok"
            return json(
                .object([("status", .string(ready ? "ready" : "unavailable")), ("catalog", .string(catalog)), ("storage", .string(storage))]),
                status: ready ? .ok : .serviceUnavailable)
        }
        // The contract, without auth: clients and contract tests read it from the service itself.
        let document = Self.openAPIDocument
        router.get("v1/openapi.json") { _, _ in
            guard let document else {
                throw DomainError(.unavailable, code: "document_unavailable", message: "this binary was installed without its resource bundle (cloudheed_CloudheedHTTP.resources)")
            }
            return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: document)))
        }

        MetricsController(service: service, token: metricsToken).addRoutes(to: router)

        let accounts = AccountController(service: service)
        accounts.addAdminRoutes(to: router.group("v1/accounts").add(middleware: AdminAuthMiddleware(admin: admin)))

        let v1 = router.group("v1").add(middleware: AccountAuthMiddleware(service: service))
        accounts.addAccountRoutes(to: v1)
        DatabaseController(service: service).addRoutes(to: v1)
        let backups = BackupController(service: service, listCache: listCache)
        backups.addRoutes(to: v1)
        backups.addDatabaseRoutes(
            to: router.group("v1/databases/:id/backups").add(middleware: AccountAuthMiddleware(service: service, databaseParameter: "id")))
        WebhookController(service: service).addRoutes(to: v1)
        return router
    }
}

/// `cloudheed keys rotate` writes the new key to `<data-dir>/master-key.next`, re-wraps the data
/// keys, then renames it over `master-key`. If it died in between, this finishes the job: every
/// data key is re-wrapped under the new key from whichever of the two opens it (idempotent), and
/// the new key takes the old one's place.
public func completeInterruptedRotation(dataDirectory: String) async throws {
    let current = dataDirectory + "/master-key", next = current + ".next"
    guard FileManager.default.fileExists(atPath: next), FileManager.default.fileExists(atPath: dataDirectory + "/catalog.sqlite3") else { return }
    let old = try await MasterKeySource.file(current).load(dataDirectory: dataDirectory).0
    let new = try await MasterKeySource.file(next).load(dataDirectory: dataDirectory).0
    _ = try await KeyRing.rotate(store: try SQLiteCatalog(path: dataDirectory + "/catalog.sqlite3"), fromAnyOf: [old, new], to: new)
    guard rename(next, current) == 0 else { throw KeyError("cannot move \(next) to \(current): errno \(errno)") }
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
    try writeSecret(token + "\n", to: path)
    return (token, true)
}

/// Writes a secret file readable by its owner only (mode 0600), synced to disk.
func writeSecret(_ text: String, to path: String) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    guard fd >= 0 else { throw CocoaError(.fileWriteNoPermission, userInfo: [NSFilePathErrorKey: path]) }
    defer { close(fd) }
    _ = fchmod(fd, 0o600)
    let bytes = Array(text.utf8)
    guard write(fd, bytes, bytes.count) == bytes.count, fsync(fd) == 0 else {
        throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path])
    }
}

/// Builds the whole service: HTTP API, job workers and scheduler, run as one ServiceGroup that
/// shuts down gracefully on SIGTERM / SIGINT.
public func buildApplication(
    _ configuration: ServeConfiguration, clock: any WallClock = SystemWallClock(), ids: any IDGenerator = SecureIDGenerator(),
    logger: Logger, announce: @escaping @Sendable (String) -> Void = { print($0) }
) async throws -> some ApplicationProtocol {
    // Held for the life of the process; the kernel releases it if the process dies.
    let lock = try DataDirectoryLock(directory: configuration.dataDirectory)
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
    let (masterKey, generatedKey) = try await configuration.masterKey.load(dataDirectory: configuration.dataDirectory)
    if let generatedKey {
        // Without this key no backup can ever be read again.
        let warning = "WARNING: generated a new master key at \(generatedKey). Back it up somewhere safe: every backup is encrypted under it, and without it none can be restored."
        announce(warning)
        logger.warning("generated a new master key; back it up", metadata: ["path": "\(generatedKey)"])
    }
    var postgres: PostgresEngine?
    if let server = configuration.postgres {
        let tools = await PostgresTools.locate(binDirectory: configuration.postgresBinDirectory)
        if tools == nil { logger.warning("pg_dump and pg_restore were not found: PostgreSQL backups and restores will fail until they are installed") }
        postgres = PostgresEngine(server: server, tools: tools, logger: logger)
    }
    // The shared catalog's pool is the first service, so the ServiceGroup stops it last: workers
    // giving their jobs back at shutdown still reach the catalog.
    var catalogServices: [any Service] = []
    var sharedCatalog: PostgresCatalog?
    if let endpoint = configuration.catalog {
        let catalog = try await PostgresCatalog.open(endpoint, garbageGrace: configuration.garbageGrace, logger: logger)
        catalogServices.append(catalog.service)
        sharedCatalog = catalog
    }
    let components = try Components.make(
        dataDirectory: configuration.dataDirectory, settings: configuration.settings, adminToken: adminToken, masterKey: masterKey,
        compression: configuration.compression, postgres: postgres, metricsToken: configuration.metricsToken,
        garbageGrace: configuration.garbageGrace, listCacheBytes: configuration.listCacheBytes, catalog: sharedCatalog,
        blobs: configuration.s3.map { S3BlobStore(configuration: $0) }, databasesDirectory: configuration.databasesDirectory,
        clock: clock, ids: ids, logger: logger)
    let workers = JobWorkerService(
        runner: components.runner, signal: components.service.signal, settings: configuration.settings, logger: logger)
    let scheduler = SchedulerService(
        scheduler: components.scheduler, collector: components.collector, interval: configuration.settings.schedulerInterval,
        gcInterval: configuration.settings.gcInterval, logger: logger)
    let webhooks = WebhookSenderService(service: components.service, logger: logger)
    return Application(
        router: components.buildRouter(),
        configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "cloudheed"),
        services: catalogServices + [workers, scheduler, webhooks],
        onServerRunning: { _ in withExtendedLifetime(lock) {} },
        logger: logger)
}
