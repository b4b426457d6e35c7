import AsyncHTTPClient
import CloudheedDomain
import CloudheedStorage
import CloudheedTestSupport
import Foundation
import GRDB
import NIOCore
import NIOHTTP1
import Synchronization
import Testing

// Three real `cloudheed serve` processes sharing one PostgreSQL catalog, one S3 endpoint
// (moto_server behind a proxy that can fail) and one directory of SQLite databases, under a
// steady stream of writes, backups, restores and deletes, while nodes are killed, the storage
// fails for a minute and the catalog server restarts.

/// One node: its own data directory and port; the catalog, storage, keys and databases shared.
final class ClusterNode: @unchecked Sendable {
    let index: Int
    let port: Int
    let directory: String
    let arguments: [String]
    let environment: [String: String]
    let api: LiveAPI
    private let lock = NSLock()
    private var process: Process?

    init(index: Int, directory: String, arguments: [String], environment: [String: String]) throws {
        self.index = index
        self.port = try freeLoopbackPort()
        self.directory = directory
        self.arguments = arguments
        self.environment = environment
        self.api = LiveAPI(base: "http://127.0.0.1:\(port)")
    }

    func start() async throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try cloudheedBinary())
        process.arguments = ["serve", "--data-dir", directory, "--port", "\(port)"] + arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        if !FileManager.default.fileExists(atPath: directory + ".log") { _ = FileManager.default.createFile(atPath: directory + ".log", contents: nil) }
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: directory + ".log"))
        try log.seekToEnd()
        process.standardOutput = log
        process.standardError = log
        try process.run()
        lock.withLock { self.process = process }
        try await api.waitUntilHealthy()
    }

    /// SIGKILL: no graceful anything; the kernel drops its connections and locks.
    func kill9() {
        guard let process = lock.withLock({ self.process }) else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    func stop() {
        guard let process = lock.withLock({ self.process }), process.isRunning else { return }
        process.terminate()
        for _ in 0..<200 where process.isRunning { usleep(50_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    var isRunning: Bool { lock.withLock { process?.isRunning ?? false } }
    var pid: Int32? { lock.withLock { process?.processIdentifier } }
}

/// Counts of what the workload did; printed with the figures.
final class WorkloadCounts: Sendable {
    let backups = Atomic<Int>(0)
    let restores = Atomic<Int>(0)
    let deletes = Atomic<Int>(0)
    let writes = Atomic<Int>(0)
    let refused = Atomic<Int>(0)
    let unavailable = Atomic<Int>(0)
    /// Set when the faults are over: the workload stops.
    let stopped = Atomic<Bool>(false)
    var summary: String {
        "backups requested \(backups.load(ordering: .relaxed)), restores \(restores.load(ordering: .relaxed)), deletes \(deletes.load(ordering: .relaxed)), "
            + "writes \(writes.load(ordering: .relaxed)), requests to a down node \(refused.load(ordering: .relaxed)), 503 answers \(unavailable.load(ordering: .relaxed))"
    }
}

struct Cluster: Sendable {
    static let lease = 3
    static let tick = 1
    static let bucket = "cloudheed-cluster"

    let nodes: [ClusterNode]
    let postgres: TestPostgres
    let catalogDatabase: String
    let admin: String
    let store: S3BlobStore

    /// Calls the API on the first node that answers, starting at a random one.
    func call(_ method: HTTPMethod, _ path: String, token: String, body: String? = nil, counts: WorkloadCounts? = nil) async throws -> (Int, JSONValue?) {
        let start = Int.random(in: 0..<nodes.count)
        var lastError: (any Error)?
        for offset in 0..<nodes.count {
            let node = nodes[(start + offset) % nodes.count]
            guard node.isRunning else { continue }
            do {
                let (status, json) = try await node.api.call(method, path, token: token, body: body)
                if status == 503 { counts?.unavailable.add(1, ordering: .relaxed) }
                return (status, json)
            } catch {
                counts?.refused.add(1, ordering: .relaxed)
                lastError = error
            }
        }
        throw lastError ?? CancellationError()
    }

    /// Polls until `done` holds (requests to down nodes and 503s are retried), or fails.
    func poll(_ path: String, token: String, seconds: Double = 120, until done: (JSONValue) -> Bool) async throws -> JSONValue {
        let deadline = ContinuousClock.now + .seconds(seconds)
        var last: JSONValue?
        while ContinuousClock.now < deadline {
            if let (status, json) = try? await call(.GET, path, token: token), status == 200, let json {
                last = json
                if done(json) { return json }
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        Issue.record("timed out polling \(path): \(String(describing: last))")
        throw CancellationError()
    }

    /// A query on the catalog as the superuser; unaligned, tuples only.
    func sql(_ text: String) async throws -> String {
        try await postgres.superuser(text, database: catalogDatabase).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func number(_ text: String) async throws -> Int {
        Int(try await sql(text)) ?? -1
    }
}

/// Watches the jobs table every 100 ms for the whole test: how far past its lease a running job
/// got, and which jobs were taken over (claimed again after a lost worker).
final class JobWatch: Sendable {
    let maxOverdueMs = Atomic<Int>(0)
    let samples = Atomic<Int>(0)
    let stopped = Atomic<Bool>(false)
    /// Set while the catalog is down and reconnecting: no lease can be renewed or taken over then.
    let paused = Atomic<Bool>(false)
    let seen = Mutex<Set<String>>([])

    func run(_ cluster: Cluster) async {
        while !stopped.load(ordering: .relaxed) {
            // Fails while the catalog restarts; the next sample continues.
            if let rows = try? await cluster.sql(
                """
                SELECT id || '|' || attempts || '|' || ((extract(epoch FROM clock_timestamp()) * 1000)::bigint - lease_expires_at)
                FROM jobs WHERE status = 'running'
                """) {
                samples.add(1, ordering: .relaxed)
                for line in rows.split(separator: "\n") {
                    let parts = line.split(separator: "|")
                    guard parts.count == 3, let attempts = Int(parts[1]), let overdue = Int(parts[2]) else { continue }
                    if !paused.load(ordering: .relaxed) { maxOverdueMs.max(overdue, ordering: .relaxed) }
                    if attempts >= 2 { seen.withLock { _ = $0.insert(String(parts[0])) } }
                }
            }
            try? await Task.sleep(for: .milliseconds(100))
        }
    }

    var takenOver: Set<String> { seen.withLock { $0 } }
}

/// What each fault's checks found.
struct FaultFigures: CustomStringConvertible {
    var fault: String
    var killedJobs = 0
    var completed = 0
    var failed = 0
    /// Why those failed: "code ×n" per error code.
    var failureCodes = ""
    var verified = 0
    var restored = 0
    var takenOver = 0
    var quiesceSeconds = 0.0
    var description: String {
        "\(fault): queue drained \(String(format: "%.1f", quiesceSeconds)) s after the workload stopped; "
            + "backups completed \(completed), failed \(failed)\(failureCodes.isEmpty ? "" : " (\(failureCodes))"); verified \(verified), restored \(restored)"
            + (fault.hasPrefix("kill") ? "; jobs the killed nodes held \(killedJobs), seen taken over by other nodes \(takenOver)" : "")
    }
}

@Suite("Three nodes: kill -9, storage outage, catalog restart", .postgresServer)
struct ClusterFaultTests {
    @Test("Nothing is lost: every completed backup restores and verifies, no job stays stuck, one automatic backup per day, GC leaves neither orphans nor holes")
    func faults() async throws {
        let postgres = try #require(TestPostgres.current)
        let catalogDatabase = "cloudheed_catalog"
        try await postgres.superuser("CREATE DATABASE \(catalogDatabase) OWNER cloudheed_admin")
        let s3 = try await TestS3.start()
        defer { s3.stop() }
        let root = NSTemporaryDirectory() + "cloudheed-cluster-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: root) }
        try FileManager.default.createDirectory(atPath: root + "/databases", withIntermediateDirectories: true)

        let location = "s3://\(Cluster.bucket)/c1"
        let (bucket, prefix) = try #require(S3Configuration.parse(storage: location))
        let direct = S3BlobStore(configuration: S3Configuration(
            bucket: bucket, prefix: prefix, endpoint: s3.endpoint, region: "us-east-1", pathStyle: true, accessKey: TestS3.accessKey, secretKey: TestS3.secretKey))
        try await direct.createBucket()

        try await S3Proxy.run(upstream: s3.endpoint) { proxy in
            let admin = "cluster-admin-token-\(UUID().uuidString)"
            let catalogURL = "postgresql://cloudheed_admin:\(TestPostgres.adminPassword)@127.0.0.1:\(postgres.port)/\(catalogDatabase)"
            let arguments = [
                "--catalog", catalogURL, "--storage", location, "--s3-endpoint", proxy.endpoint, "--s3-path-style",
                "--databases-dir", root + "/databases", "--workers", "2", "--lease-seconds", "\(Cluster.lease)",
                "--scheduler-interval", "\(Cluster.tick)", "--gc-interval", "3", "--gc-grace", "5", "--log-level", "warning",
            ]
            let environment = [
                "CLOUDHEED_ADMIN_TOKEN": admin, "CLOUDHEED_MASTER_KEY": String(repeating: "5a", count: 32),
                "AWS_ACCESS_KEY_ID": TestS3.accessKey, "AWS_SECRET_ACCESS_KEY": TestS3.secretKey,
            ]
            let nodes = try (0..<3).map { try ClusterNode(index: $0, directory: root + "/node\($0)", arguments: arguments, environment: environment) }
            defer { nodes.forEach { $0.stop() } }
            // Three nodes starting at once run the migrations once, under the advisory lock.
            try await withThrowingTaskGroup(of: Void.self) { group in
                for node in nodes { group.addTask { try await node.start() } }
                try await group.waitForAll()
            }
            let cluster = Cluster(nodes: nodes, postgres: postgres, catalogDatabase: catalogDatabase, admin: admin, store: direct)
            // Each migration applied once, although three nodes started at once.
            #expect(try await cluster.number("SELECT count(*) FROM schema_migrations") == 2)

            // Accounts and databases whose backup window is open now: each gets its automatic
            // backup at the next tick, from whichever node's scheduler gets there first.
            let (_, account) = try await cluster.call(.POST, "/v1/accounts", token: admin, body: #"{"name":"cluster"}"#)
            let token = try #require(account?["token"]?.stringValue)
            let minute = (Int(Date().timeIntervalSince1970) / 60 + 1440 - 5) % 1440
            let window = String(format: "%02d:%02d-%02d:%02d", minute / 60, minute % 60, ((minute + 60) % 1440) / 60, minute % 60)
            var databases: [(id: String, path: String)] = []
            for n in 0..<6 {
                let (status, created) = try await cluster.call(
                    .POST, "/v1/databases", token: token, body: #"{"name":"db\#(n)","tier":"small","backup_window":"\#(window)","restore_drills":"off"}"#)
                #expect(status == 201, "\(String(describing: created))")
                let id = try #require(created?["id"]?.stringValue)
                let path = try filePath(ofURI: created?["connection"]?["uri"]?.stringValue)
                let queue = try DatabaseQueue(path: path)
                try await queue.write { db in
                    try db.execute(sql: "CREATE TABLE items (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
                    try db.execute(sql: "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 400) INSERT INTO items SELECT i, randomblob(4000) FROM s")
                }
                try queue.close()
                databases.append((id, path))
            }

            var figures: [FaultFigures] = []
            var checkedBackups = Set<String>()
            let watch = JobWatch()
            var readiness = ""
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { await watch.run(cluster) }
                defer { watch.stopped.store(true, ordering: .relaxed) }

                // (1) kill -9, ten times, the node holding a running job (its lease token names its pid).
                var killedJobs: [String] = []
                let first = try await withWorkload(cluster, token: token, databases: databases) {
                    for _ in 0..<10 {
                        var victim: ClusterNode?
                        for _ in 0..<100 where victim == nil {
                            for (job, lease) in try await waitForRunningJobs(cluster) {
                                let pid = Int32(lease.dropFirst().prefix { $0 != "-" })
                                if let node = nodes.first(where: { $0.pid == pid }) {
                                    victim = node
                                    killedJobs.append(job)
                                    break
                                }
                            }
                        }
                        let node = try #require(victim)
                        node.kill9()
                        try await Task.sleep(for: .milliseconds(300))
                        try await node.start()
                    }
                    // The last victim's job is taken over once its lease expires.
                    try await Task.sleep(for: .seconds(Double(Cluster.lease + Cluster.tick)))
                }
                var killFigures = try await check(cluster, token: token, fault: "kill -9 ×10", workload: first, checked: &checkedBackups)
                killFigures.takenOver = Set(killedJobs).intersection(watch.takenOver).count
                    // Jobs held by killed nodes were claimed again by other workers (a takeover that finishes
                // between two 100 ms samples, or a job that finished just before the kill, goes unseen).
                #expect(killFigures.takenOver >= 1, "killed nodes held \(Set(killedJobs).count) jobs; none was seen taken over")
                killFigures.killedJobs = Set(killedJobs).count
            figures.append(killFigures)

                // (2) the S3 endpoint fails every request, slowly, for a minute.
                let second = try await withWorkload(cluster, token: token, databases: databases) {
                    try await Task.sleep(for: .seconds(3))
                    proxy.set(.down)
                    try await Task.sleep(for: .seconds(60))
                    proxy.set(.passThrough)
                    try await Task.sleep(for: .seconds(5))
                }
                figures.append(try await check(cluster, token: token, fault: "S3 down 60 s", workload: second, checked: &checkedBackups))

                // (3) the catalog server crashes under load and is back 5 s later.
                let third = try await withWorkload(cluster, token: token, databases: databases) {
                    _ = try await waitForRunningJobs(cluster)
                    // Down for longer than a lease: heartbeats fail, leases lapse, finished jobs wait to be recorded.
                    watch.paused.store(true, ordering: .relaxed)
                    try await postgres.crash()
                    let down = ContinuousClock.now
                    // Readiness tells the load balancer at once, naming the catalog.
                    let probe = try await HTTPClient.shared.execute(HTTPClientRequest(url: nodes[0].api.base + "/healthz/ready"), timeout: .seconds(30))
                    let answer = String(buffer: try await probe.body.collect(upTo: 4096))
                    readiness = "\(probe.status.code) in \(Int(((ContinuousClock.now - down).seconds * 1000).rounded())) ms: \(answer)"
                    #expect(probe.status == .serviceUnavailable && answer.contains(#""catalog":"unreachable""#), "\(readiness)")
                    try await Task.sleep(until: down + .seconds(5))
                    try await postgres.startServer()
                    // Pools reconnect, then leases are renewed or taken over, within a lease.
                    try await Task.sleep(for: .seconds(Double(Cluster.lease)))
                    watch.paused.store(false, ordering: .relaxed)
                    try await Task.sleep(for: .seconds(5))
                }
                figures.append(try await check(cluster, token: token, fault: "catalog crash, 5 s down", workload: third, checked: &checkedBackups))
                print("readiness while the catalog was down: \(readiness)")
                let alive = nodes.filter(\.isRunning).count
                #expect(alive == nodes.count, "a node died without being killed")
                watch.stopped.store(true, ordering: .relaxed)
                try await group.waitForAll()
            }
            // From the lease's expiry to another worker's claim: at most a worker's poll (2 s) and a
            // tick (not counted: the catalog's own downtime, when no claim can happen).
            let overdue = watch.maxOverdueMs.load(ordering: .relaxed)
            #expect(overdue <= (2 + Cluster.tick) * 1000, "a job stayed running \(overdue) ms past its lease")
            print("jobs table sampled \(watch.samples.load(ordering: .relaxed)) times; longest a running job stayed past its lease: \(overdue) ms; "
                + "jobs taken over after a lost worker: \(watch.takenOver.count)")

            // Exactly one automatic backup per database and day, across all nodes.
            let duplicates = try await cluster.number(
                "SELECT count(*) FROM (SELECT database_id, scheduled_day FROM backups WHERE type = 'automatic' GROUP BY 1, 2 HAVING count(*) > 1) d")
            #expect(duplicates == 0)
            for database in databases {
                #expect(try await cluster.number("SELECT count(*) FROM backups WHERE database_id = '\(database.id)' AND type = 'automatic'") == 1)
            }

            // After GC: every pack object is known to the catalog and every chunk is referenced
            // and stored; nothing waits in the garbage queue.
            let gc = try await garbageCheck(cluster)
            print("cluster figures:\n  " + figures.map(\.description).joined(separator: "\n  ") + "\n  " + gc)
        }
    }

    /// Writes, backups, restores and deletes from one task while `faults` runs; then stops.
    func withWorkload(_ cluster: Cluster, token: String, databases: [(id: String, path: String)], _ faults: () async throws -> Void) async throws -> WorkloadCounts {
        let counts = WorkloadCounts()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                var n = 0
                while !counts.stopped.load(ordering: .relaxed) {
                    n += 1
                    let database = databases[n % databases.count]
                    do {
                        try await workloadStep(cluster, token: token, database: database, step: n, counts: counts)
                    } catch {
                        // A node going down mid-request: the next step goes to another.
                    }
                    try await Task.sleep(for: .milliseconds(300))
                }
            }
            defer { counts.stopped.store(true, ordering: .relaxed) }
            try await faults()
            counts.stopped.store(true, ordering: .relaxed)
            try await group.waitForAll()
        }
        return counts
    }

    func workloadStep(_ cluster: Cluster, token: String, database: (id: String, path: String), step: Int, counts: WorkloadCounts) async throws {
        let queue = try DatabaseQueue(path: database.path)
        try await queue.write { db in
            try db.execute(sql: "INSERT INTO items (body) SELECT randomblob(4000) FROM (SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3)")
            try db.execute(sql: "DELETE FROM items WHERE id IN (SELECT id FROM items ORDER BY random() LIMIT 1)")
        }
        try queue.close()
        counts.writes.add(1, ordering: .relaxed)
        _ = try await cluster.call(.POST, "/v1/databases/\(database.id)/backups", token: token, counts: counts)
        counts.backups.add(1, ordering: .relaxed)
        guard step % 4 == 0 || step % 5 == 0 else { return }
        let (_, list) = try await cluster.call(.GET, "/v1/databases/\(database.id)/backups?status=completed&type=manual", token: token, counts: counts)
        let completed = list?["backups"]?.arrayValue?.compactMap { $0["id"]?.stringValue } ?? []
        if step % 4 == 0, let backup = completed.first {
            let (status, restore) = try await cluster.call(
                .POST, "/v1/databases/\(database.id)/backups/\(backup)/restore", token: token, body: #"{"target_database_name":"r\#(step)-\#(UUID().uuidString.prefix(6).lowercased())"}"#,
                counts: counts)
            if status == 202, restore != nil { counts.restores.add(1, ordering: .relaxed) }
        }
        if step % 5 == 0, completed.count > 3, let oldest = completed.last {
            let (status, _) = try await cluster.call(.DELETE, "/v1/databases/\(database.id)/backups/\(oldest)", token: token, counts: counts)
            if status == 204 { counts.deletes.add(1, ordering: .relaxed) }
        }
    }

    /// Waits until at least one job runs; returns the running jobs with their lease tokens.
    func waitForRunningJobs(_ cluster: Cluster) async throws -> [(String, String)] {
        for _ in 0..<200 {
            let rows = try await cluster.sql("SELECT id || '|' || lease_token FROM jobs WHERE status = 'running'")
            let running = rows.split(separator: "\n").compactMap { line -> (String, String)? in
                let parts = line.split(separator: "|")
                return parts.count == 2 ? (String(parts[0]), String(parts[1])) : nil
            }
            if !running.isEmpty { return running }
            try await Task.sleep(for: .milliseconds(50))
        }
        Issue.record("no job was ever running")
        return []
    }

    /// Once the workload stopped: no job outlives its lease by more than a tick, every backup
    /// ends completed or failed, and every completed backup verifies and restores.
    func check(_ cluster: Cluster, token: String, fault: String, workload: WorkloadCounts, checked: inout Set<String>) async throws -> FaultFigures {
        var figures = FaultFigures(fault: fault)
        let started = ContinuousClock.now
        // Until the queue drains (the watcher measures how far past its lease any running job got).
        while true {
            if try await cluster.number("SELECT count(*) FROM jobs") == 0 { break }
            guard ContinuousClock.now - started < .seconds(240) else {
                Issue.record("\(fault): jobs still queued after 4 minutes: \(try await cluster.sql("SELECT kind, status, attempts FROM jobs"))")
                break
            }
            try await Task.sleep(for: .milliseconds(200))
        }
        figures.quiesceSeconds = Double((ContinuousClock.now - started).components.seconds)
        #expect(try await cluster.number("SELECT count(*) FROM backups WHERE status IN ('pending','in_progress')") == 0)
        #expect(try await cluster.number("SELECT count(*) FROM restores WHERE status IN ('pending','in_progress')") == 0)

        figures.completed = try await cluster.number("SELECT count(*) FROM backups WHERE status = 'completed'")
        figures.failed = try await cluster.number("SELECT count(*) FROM backups WHERE status = 'failed'")
        figures.failureCodes = try await cluster.sql(
            "SELECT string_agg(error_code || ' ×' || n, ', ') FROM (SELECT error_code, count(*) AS n FROM backups WHERE status = 'failed' GROUP BY 1 ORDER BY 1) f")
        // Every completed backup not checked before: verified (all its data read and checked), and restored.
        let rows = try await cluster.sql("SELECT id || '|' || database_id FROM backups WHERE status = 'completed' ORDER BY created_at")
        let fresh = rows.split(separator: "\n").compactMap { line -> (backup: String, database: String)? in
            let parts = line.split(separator: "|")
            return parts.count == 2 && !checked.contains(String(parts[0])) ? (String(parts[0]), String(parts[1])) : nil
        }
        for item in fresh {
            let (status, _) = try await cluster.call(.POST, "/v1/databases/\(item.database)/backups/\(item.backup)/verify", token: token)
            #expect(status == 202, "verify \(item.backup): \(status)")
        }
        for item in fresh {
            let done = try await cluster.poll("/v1/databases/\(item.database)/backups/\(item.backup)", token: token) { $0["integrity"]?.stringValue != "unverified" }
            #expect(done["integrity"]?.stringValue == "verified", "\(fault): \(done)")
            if done["integrity"]?.stringValue == "verified" { figures.verified += 1 }
        }
        // And every one restored into a new database (its integrity checked by the engine before
        // it is made available), then dropped again.
        var restores: [String] = []
        for (n, item) in fresh.enumerated() {
            let (status, restore) = try await cluster.call(
                .POST, "/v1/databases/\(item.database)/backups/\(item.backup)/restore", token: token,
                body: #"{"target_database_name":"check-\#(n)-\#(UUID().uuidString.prefix(8).lowercased())"}"#)
            #expect(status == 202, "restore \(item.backup): \(status) \(String(describing: restore))")
            if let id = restore?["restore"]?["id"]?.stringValue { restores.append(id) }
        }
        for id in restores {
            let done = try await cluster.poll("/v1/restores/\(id)", token: token) { ["completed", "failed"].contains($0["restore"]?["status"]?.stringValue) }
            #expect(done["restore"]?["status"]?.stringValue == "completed", "\(fault): \(done)")
            if done["restore"]?["status"]?.stringValue == "completed" { figures.restored += 1 }
            // The copy served its purpose; deleting it keeps the next phase's load the same.
            if let target = done["database"]?["id"]?.stringValue {
                _ = try await cluster.call(.DELETE, "/v1/databases/\(target)", token: token)
            }
        }
        checked.formUnion(fresh.map(\.backup))
        print("\(fault): workload \(workload.summary)")
        return figures
    }

    /// Waits for garbage collection to settle, then compares the bucket with the catalog.
    func garbageCheck(_ cluster: Cluster) async throws -> String {
        let unreferencedChunks = "SELECT count(*) FROM chunks c WHERE NOT EXISTS (SELECT 1 FROM layer_chunks lc WHERE lc.account_id = c.account_id AND lc.chunk_id = c.id)"
        // Restored copies of automatic backups were deleted: give expiry, GC (every 3 s, 5 s grace) time.
        var objects: [String] = []
        for _ in 0..<60 {
            try await Task.sleep(for: .seconds(1))
            let queued = try await cluster.number("SELECT count(*) FROM garbage_objects")
            let unreferenced = try await cluster.number(unreferencedChunks)
            objects = try await cluster.store.list(prefix: "packs").map(\.key)
            let packs = try await cluster.number("SELECT count(*) FROM packs")
            if queued == 0, unreferenced == 0, objects.count == packs { break }
        }
        let known = Set(try await cluster.sql("SELECT 'packs/' || id FROM packs").split(separator: "\n").map(String.init))
        let stored = Set(objects)
        #expect(stored.subtracting(known).isEmpty, "pack objects the catalog does not know: \(stored.subtracting(known).prefix(5))")
        #expect(known.subtracting(stored).isEmpty, "packs the catalog refers to that are missing: \(known.subtracting(stored).prefix(5))")
        let unreferenced = try await cluster.number(unreferencedChunks)
        let holes = try await cluster.number(
            "SELECT count(*) FROM layer_chunks lc WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.account_id = lc.account_id AND c.id = lc.chunk_id)")
        #expect(unreferenced == 0)
        #expect(holes == 0)
        let manifests = Set(try await cluster.store.list(prefix: "manifests").map(\.key))
        let headers = Set(try await cluster.sql("SELECT 'manifests/' || id FROM layers WHERE object_checksum <> ''").split(separator: "\n").map(String.init))
        #expect(headers.subtracting(manifests).isEmpty, "manifests the catalog refers to that are missing: \(headers.subtracting(manifests).prefix(5))")
        return "after GC: \(stored.count) pack objects, \(known.count) packs in the catalog, \(unreferenced) unreferenced chunks, \(holes) references to missing chunks, "
            + "\(headers.count) manifests all stored"
    }
}
