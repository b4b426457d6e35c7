import AsyncHTTPClient
import CloudheedDomain
import CloudheedHTTP
import CloudheedTestSupport
import Foundation
import GRDB
import NIOCore
import NIOHTTP1
import Subprocess
import SystemPackage
import Testing

@Suite("The real process, killed")
struct ProcessCrashTests {
    @Test("kill -9 during a backup: after a restart the backup completes and restores; nothing stays in progress")
    func killDuringBackup() async throws {
        let binary = try cloudheedBinary()
        let directory = NSTemporaryDirectory() + "cloudheed-crash-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let port = try freeLoopbackPort()
        let api = LiveAPI(base: "http://127.0.0.1:\(port)")
        let admin = "crash-test-admin-token"
        let arguments: Arguments = ["serve", "--data-dir", directory, "--port", "\(port)", "--lease-seconds", "3", "--workers", "1", "--log-level", "error"]
        let environment = Environment.inherit.updating(["CLOUDHEED_ADMIN_TOKEN": admin])

        // Phase 1: a backup of a ~150 MB database is running when the process is killed.
        let first = try await Subprocess.run(.path(FilePath(binary)), arguments: arguments, environment: environment, input: .none, output: .discarded, error: .discarded) { execution -> (token: String, database: String, backup: String, rows: Int) in
            defer { try? execution.send(signal: .kill) }
            try await api.waitUntilHealthy()
            let (token, id) = try await api.bigDatabase(admin: admin, rows: 36000)
            // Kill as soon as the backup runs; retry with a new backup if one slipped through first.
            for _ in 0..<10 {
                let (status, created) = try await api.call(.POST, "/v1/databases/\(id)/backups", token: token)
                #expect(status == 202)
                let backup = try #require(created?["id"]?.stringValue)
                let seen = try await api.poll("/v1/databases/\(id)/backups/\(backup)", token: token) { $0["status"]?.stringValue != "pending" }
                if seen["status"]?.stringValue == "in_progress" {
                    try execution.send(signal: .kill)
                    return (token, id, backup, 36000)
                }
            }
            Issue.record("never caught a backup in progress")
            throw CancellationError()
        }
        #expect(first.terminationStatus == TerminationStatus.signaled(SIGKILL))
        let (token, database, backup, rows) = first.closureResult

        // Phase 2: restart; once the dead worker's lease expires the backup is taken up again.
        let second = try await Subprocess.run(.path(FilePath(binary)), arguments: arguments, environment: environment, input: .none, output: .discarded, error: .discarded) { execution in
            defer { try? execution.send(signal: .terminate) }
            try await api.waitUntilHealthy()
            let done = try await api.poll("/v1/databases/\(database)/backups/\(backup)", token: token) {
                ["completed", "failed"].contains($0["status"]?.stringValue)
            }
            #expect(done["status"]?.stringValue == "completed", "\(done)")
            let (_, list) = try await api.call(.GET, "/v1/databases/\(database)/backups", token: token)
            #expect(list?["backups"]?.arrayValue?.allSatisfy { $0["status"]?.stringValue == "completed" } == true)

            let (status, restore) = try await api.call(.POST, "/v1/databases/\(database)/backups/\(backup)/restore", token: token, body: #"{"target_database_name":"after-crash"}"#)
            #expect(status == 202)
            let restoreID = try #require(restore?["restore"]?["id"]?.stringValue)
            let restored = try await api.poll("/v1/restores/\(restoreID)", token: token) { $0["restore"]?["status"]?.stringValue != "pending" && $0["restore"]?["status"]?.stringValue != "in_progress" }
            #expect(restored["database"]?["status"]?.stringValue == "available")
            let path = try filePath(ofURI: restored["database"]?["connection"]?["uri"]?.stringValue)
            let queue = try DatabaseQueue(path: path)
            #expect(try await queue.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM items") } == rows)
            try queue.close()
            // The killed attempt's scratch snapshot is gone.
            #expect(try FileManager.default.contentsOfDirectory(atPath: directory + "/tmp").isEmpty)
        }
        // SIGTERM is a graceful shutdown.
        #expect(second.terminationStatus == TerminationStatus.exited(0))
        // Every completed backup verifies, chunk by chunk, after the crash.
        let verified = try await runCloudheed(["verify", "--data-dir", directory])
        #expect(verified.status == TerminationStatus.exited(0), "\(verified.output)")
        #expect(verified.output.contains("0 corrupt"))
    }
}

@Suite("Progress of a running job, on the real process")
struct LiveProgressTests {
    @Test("A running backup shows bytes done of bytes total, growing, and no progress once completed")
    func backupProgress() async throws {
        let binary = try cloudheedBinary()
        let directory = NSTemporaryDirectory() + "cloudheed-progress-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let port = try freeLoopbackPort()
        let api = LiveAPI(base: "http://127.0.0.1:\(port)")
        let admin = "progress-test-admin-token"
        _ = try await Subprocess.run(
            .path(FilePath(binary)), arguments: ["serve", "--data-dir", directory, "--port", "\(port)", "--workers", "1", "--log-level", "error"],
            environment: .inherit.updating(["CLOUDHEED_ADMIN_TOKEN": admin]), input: .none, output: .discarded, error: .discarded
        ) { execution in
            defer { try? execution.send(signal: .terminate) }
            try await api.waitUntilHealthy()
            let (token, id) = try await api.bigDatabase(admin: admin, rows: 48000)
            let (_, created) = try await api.call(.POST, "/v1/databases/\(id)/backups", token: token)
            let backup = try #require(created?["id"]?.stringValue)
            #expect(created?["progress"] == .null)
            // Seen while running: some bytes done, of the snapshot's size.
            let running = try await api.poll("/v1/databases/\(id)/backups/\(backup)", token: token) {
                $0["status"]?.stringValue != "in_progress" || ($0["progress"]?["bytes_done"]?.intValue ?? 0) > 0
            }
            #expect(running["status"]?.stringValue == "in_progress", "the backup ended before any progress was seen: \(running)")
            let done = try #require(running["progress"]?["bytes_done"]?.intValue)
            let total = try #require(running["progress"]?["bytes_total"]?.intValue)
            #expect(done > 0 && done <= total)
            #expect(total >= 48000 * 4000)
            #expect(running["progress"]?["started_at"]?.stringValue != nil)
            let finished = try await api.poll("/v1/databases/\(id)/backups/\(backup)", token: token) { $0["status"]?.stringValue == "completed" }
            #expect(finished["progress"] == .null)
            #expect(finished["size_bytes"]?.intValue == total)
        }
    }
}
