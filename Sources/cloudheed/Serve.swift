import ArgumentParser
import CloudheedDomain
import CloudheedEngines
import CloudheedHTTP
import CloudheedRuntime
import CloudheedStorage
import Configuration
import Foundation
import Hummingbird
import Logging

/// `cloudheed serve`: flags first, then `CLOUDHEED_*` environment variables, then defaults.
struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the HTTP API, the scheduler and the job workers.")

    @Option(help: "Data directory (env CLOUDHEED_DATA_DIR). Default ./cloudheed-data, created if missing.")
    var dataDir: String?
    @Option(help: "Address to listen on (env CLOUDHEED_HOST). Default 127.0.0.1.")
    var host: String?
    @Option(help: "Port to listen on (env CLOUDHEED_PORT). Default 8080.")
    var port: Int?
    @Option(help: "Seconds between scheduler ticks (env CLOUDHEED_SCHEDULER_INTERVAL). Default 60.")
    var schedulerInterval: Int?
    @Option(help: "Seconds between garbage collections (env CLOUDHEED_GC_INTERVAL). Default 600.")
    var gcInterval: Int?
    @Option(help: "Seconds data no backup refers to any more is kept before deletion, so readers that looked it up can finish (env CLOUDHEED_GC_GRACE). Default 3600.")
    var gcGrace: Int?
    @Option(help: "MiB of memory for rendered backup lists, served while the catalog says they are current (env CLOUDHEED_LIST_CACHE_MB; 0 turns it off). Default 256.")
    var listCacheMb: Int?
    @Option(help: "Jobs run at once (env CLOUDHEED_WORKERS). Default: number of cores.")
    var workers: Int?
    @Option(help: "Storage quota of accounts created without one, in bytes (env CLOUDHEED_DEFAULT_QUOTA_BYTES). Default 10 GiB.")
    var defaultQuotaBytes: Int?
    @Option(help: "Seconds a worker holds a job without a heartbeat (env CLOUDHEED_LEASE_SECONDS). Default 60.")
    var leaseSeconds: Int?
    @Option(help: "trace, debug, info, notice, warning, error or critical (env CLOUDHEED_LOG_LEVEL). Default info.")
    var logLevel: String?
    @Option(help: "File holding the 32-byte master key, raw or as 64 hex characters. Else CLOUDHEED_MASTER_KEY (hex), else <data-dir>/master-key, generated on first start.")
    var masterKeyFile: String?
    @Option(help: "Compression of stored data: a zstd level 1-19, or none (env CLOUDHEED_COMPRESSION). Default 3.")
    var compression: String?
    @Option(help: "PostgreSQL server for postgres databases, as a role that may create databases and roles: postgresql://USER:PASSWORD@HOST:PORT/DBNAME (env CLOUDHEED_POSTGRES_URL). Without it the postgres engine is off.")
    var postgresURL: String?
    @Option(help: "Directory holding pg_dump and pg_restore (env CLOUDHEED_POSTGRES_BIN_DIR). Default: PATH, then the newest /usr/lib/postgresql/*/bin.")
    var postgresBinDir: String?

    @Option(help: "Comma-separated hosts webhooks may be sent to (env CLOUDHEED_WEBHOOK_ALLOWED_HOSTS). Default: any host.")
    var webhookAllowedHosts: String?
    @Option(help: "Seconds before the first retry of a failed webhook delivery, doubling up to an hour, for a day (env CLOUDHEED_WEBHOOK_RETRY_SECONDS). Default 10.")
    var webhookRetrySeconds: Int?

    @Option(help: "The catalog shared by several nodes: postgresql://USER:PASSWORD@HOST:PORT/DBNAME (env CLOUDHEED_CATALOG_URL). Default: <data-dir>/catalog.sqlite3, for one node.")
    var catalog: String?
    @Option(help: "Directory of SQLite databases (env CLOUDHEED_DATABASES_DIR); nodes sharing a catalog must share it. Default <data-dir>/databases.")
    var databasesDir: String?
    @Option(help: "Where backup data goes: s3://BUCKET[/PREFIX] (env CLOUDHEED_STORAGE; credentials from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN). Default <data-dir>/repository.")
    var storage: String?
    @Option(help: "S3 endpoint, http(s)://HOST[:PORT] (env CLOUDHEED_S3_ENDPOINT). Default AWS's regional endpoint.")
    var s3Endpoint: String?
    @Option(help: "S3 region (env CLOUDHEED_S3_REGION). Default us-east-1.")
    var s3Region: String?
    @Flag(help: "Address the bucket in the path, not the host name (env CLOUDHEED_S3_PATH_STYLE=true); MinIO and most self-hosted stores need it.")
    var s3PathStyle = false

    func run() async throws {
        var flags: [AbsoluteConfigKey: ConfigValue] = [:]
        func set(_ key: AbsoluteConfigKey, _ value: ConfigContent?) {
            if let value { flags[key] = ConfigValue(value, isSecret: false) }
        }
        set("cloudheed.data.dir", dataDir.map { .string($0) })
        set("cloudheed.host", host.map { .string($0) })
        set("cloudheed.port", port.map { .int($0) })
        set("cloudheed.scheduler.interval", schedulerInterval.map { .int($0) })
        set("cloudheed.workers", workers.map { .int($0) })
        set("cloudheed.gc.interval", gcInterval.map { .int($0) })
        set("cloudheed.gc.grace", gcGrace.map { .int($0) })
        set("cloudheed.default.quota.bytes", defaultQuotaBytes.map { .int($0) })
        set("cloudheed.lease.seconds", leaseSeconds.map { .int($0) })
        set("cloudheed.log.level", logLevel.map { .string($0) })
        set("cloudheed.compression", compression.map { .string($0) })
        set("cloudheed.postgres.bin.dir", postgresBinDir.map { .string($0) })
        set("cloudheed.webhook.allowed.hosts", webhookAllowedHosts.map { .string($0) })
        set("cloudheed.webhook.retry.seconds", webhookRetrySeconds.map { .int($0) })
        set("cloudheed.storage", storage.map { .string($0) })
        set("cloudheed.s3.endpoint", s3Endpoint.map { .string($0) })
        set("cloudheed.s3.region", s3Region.map { .string($0) })
        if s3PathStyle { set("cloudheed.s3.path.style", .bool(true)) }
        set("cloudheed.databases.dir", databasesDir.map { .string($0) })
        set("cloudheed.list.cache.mb", listCacheMb.map { .int($0) })
        if let postgresURL { flags["cloudheed.postgres.url"] = ConfigValue(.string(postgresURL), isSecret: true) }
        if let catalog { flags["cloudheed.catalog.url"] = ConfigValue(.string(catalog), isSecret: true) }
        let config = ConfigReader(providers: [InMemoryProvider(name: "flags", values: flags), EnvironmentVariablesProvider()])

        let levelName = config.string(forKey: "cloudheed.log.level", default: "info")
        guard let level = Logger.Level(rawValue: levelName) else { throw ValidationError("unknown log level '\(levelName)'") }
        let port = config.int(forKey: "cloudheed.port", default: 8080)
        guard (1...65535).contains(port) else { throw ValidationError("--port must be 1-65535") }
        let workers = config.int(forKey: "cloudheed.workers", default: ProcessInfo.processInfo.activeProcessorCount)
        guard workers >= 1 else { throw ValidationError("--workers must be at least 1") }
        let interval = config.int(forKey: "cloudheed.scheduler.interval", default: 60)
        guard interval >= 1 else { throw ValidationError("--scheduler-interval must be at least 1 second") }
        let gcEvery = config.int(forKey: "cloudheed.gc.interval", default: 600)
        guard gcEvery >= 1 else { throw ValidationError("--gc-interval must be at least 1 second") }
        let gcGrace = config.int(forKey: "cloudheed.gc.grace", default: 3600)
        guard gcGrace >= 1 else { throw ValidationError("--gc-grace must be at least 1 second") }
        let lease = config.int(forKey: "cloudheed.lease.seconds", default: 60)
        guard lease >= 3 else { throw ValidationError("--lease-seconds must be at least 3") }
        let listCacheMB = config.int(forKey: "cloudheed.list.cache.mb", default: ServeConfiguration.defaultListCacheBytes >> 20)
        guard (0...1 << 20).contains(listCacheMB) else { throw ValidationError("--list-cache-mb must be 0-1048576") }
        let quota = config.int(forKey: "cloudheed.default.quota.bytes", default: 10 * 1024 * 1024 * 1024)
        guard quota >= 0 else { throw ValidationError("--default-quota-bytes must be zero or more") }

        let retrySeconds = config.int(forKey: "cloudheed.webhook.retry.seconds", default: 10)
        guard (1...3600).contains(retrySeconds) else { throw ValidationError("--webhook-retry-seconds must be 1-3600") }
        let allowedHosts = config.string(forKey: "cloudheed.webhook.allowed.hosts").map { text in
            Set(text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces).lowercased() }.filter { !$0.isEmpty })
        }

        var s3: S3Configuration?
        if let location = config.string(forKey: "cloudheed.storage") {
            guard let (bucket, prefix) = S3Configuration.parse(storage: location) else {
                throw ValidationError("--storage must be s3://BUCKET[/PREFIX] with a valid bucket name, not '\(location)'")
            }
            let environment = ProcessInfo.processInfo.environment
            guard let accessKey = environment["AWS_ACCESS_KEY_ID"], let secretKey = environment["AWS_SECRET_ACCESS_KEY"] else {
                throw ValidationError("--storage s3://... needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment")
            }
            let endpoint = config.string(forKey: "cloudheed.s3.endpoint")
            if let endpoint, URLComponents(string: endpoint)?.host == nil || !(endpoint.hasPrefix("http://") || endpoint.hasPrefix("https://")) {
                throw ValidationError("--s3-endpoint must be http(s)://HOST[:PORT], not '\(endpoint)'")
            }
            s3 = S3Configuration(
                bucket: bucket, prefix: prefix, endpoint: endpoint, region: config.string(forKey: "cloudheed.s3.region", default: "us-east-1"),
                pathStyle: config.bool(forKey: "cloudheed.s3.path.style", default: false), accessKey: accessKey, secretKey: secretKey,
                sessionToken: environment["AWS_SESSION_TOKEN"])
        }

        let compressionText = config.string(forKey: "cloudheed.compression", default: "3")
        guard let compression = CompressionSetting.parse(compressionText) else {
            throw ValidationError("--compression must be a zstd level 1-19 or none, not '\(compressionText)'")
        }
        let masterKey: MasterKeySource
        if let masterKeyFile {
            masterKey = .file(masterKeyFile)
        } else if let hex = config.string(forKey: "cloudheed.master.key", isSecret: true) {
            masterKey = .hex(hex)
        } else {
            masterKey = .dataDirectory
        }

        var postgres: PostgresServer?
        if let url = config.string(forKey: "cloudheed.postgres.url", isSecret: true) {
            do { postgres = try PostgresServer(url: url) } catch { throw ValidationError("--postgres-url: \(error.message)") }
        }

        var catalogEndpoint: PostgresCatalog.Endpoint?
        if let url = config.string(forKey: "cloudheed.catalog.url", isSecret: true) {
            do { catalogEndpoint = try PostgresCatalog.Endpoint(url: url) } catch { throw ValidationError("--catalog: \(error.message)") }
        }

        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "cloudheed")

        let settings = RuntimeSettings(
            workers: workers, leaseDuration: .seconds(lease), schedulerInterval: .seconds(interval), gcInterval: .seconds(gcEvery), defaultQuotaBytes: Int64(quota),
            webhookRetry: WebhookRetryPolicy(base: .seconds(retrySeconds)), webhookAllowedHosts: allowedHosts)
        var serve = ServeConfiguration(
            dataDirectory: config.string(forKey: "cloudheed.data.dir", default: "./cloudheed-data"),
            host: config.string(forKey: "cloudheed.host", default: "127.0.0.1"),
            port: port,
            settings: settings,
            adminToken: config.string(forKey: "cloudheed.admin.token", isSecret: true),
            masterKey: masterKey, compression: compression, postgres: postgres,
            postgresBinDirectory: config.string(forKey: "cloudheed.postgres.bin.dir"),
            metricsToken: config.string(forKey: "cloudheed.metrics.token", isSecret: true))
        serve.s3 = s3
        serve.catalog = catalogEndpoint
        serve.garbageGrace = TimeInterval(gcGrace)
        serve.databasesDirectory = config.string(forKey: "cloudheed.databases.dir")
        serve.listCacheBytes = listCacheMB << 20
        let app = try await buildApplication(serve, logger: logger) { message in
            // Unbuffered, so it shows even when stdout is a pipe or a file.
            FileHandle.standardOutput.write(Data((message + "\n").utf8))
        }
        try await app.runService()
    }
}
