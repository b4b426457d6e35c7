import CloudheedTestSupport
import Foundation
import Subprocess
import SystemPackage
import Testing

@Suite("Logs of the real process")
struct LogTests {
    @Test("At trace level the logs carry request, job, backup and database ids, and never a token or a webhook secret")
    func noSecretsInLogs() async throws {
        let binary = try cloudheedBinary()
        let directory = NSTemporaryDirectory() + "cloudheed-logs-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let port = try freeLoopbackPort()
        let api = LiveAPI(base: "http://127.0.0.1:\(port)")
        let admin = "chdadmin_logtestadmintokenlogtestadmintoken"
        let run = try await Subprocess.run(
            .path(FilePath(binary)), arguments: ["serve", "--data-dir", directory, "--port", "\(port)", "--workers", "1", "--log-level", "trace"],
            environment: .inherit.updating(["CLOUDHEED_ADMIN_TOKEN": admin]), input: .none, output: .discarded, error: .string(limit: 16 << 20)
        ) { execution -> [String] in
            defer { try? execution.send(signal: .terminate) }
            try await api.waitUntilHealthy()
            let (_, account) = try await api.call(.POST, "/v1/accounts", token: admin, body: #"{"name":"logs"}"#)
            let token = try #require(account?["token"]?.stringValue)
            let (_, webhook) = try await api.call(.POST, "/v1/webhooks", token: token, body: #"{"url":"http://127.0.0.1:9/x","events":["backup.completed"]}"#)
            let secret = try #require(webhook?["secret"]?.stringValue)
            let (_, database) = try await api.call(.POST, "/v1/databases", token: token, body: #"{"name":"logged","tier":"micro"}"#)
            let id = try #require(database?["id"]?.stringValue)
            let (_, backup) = try await api.call(.POST, "/v1/databases/\(id)/backups", token: token)
            let backupID = try #require(backup?["id"]?.stringValue)
            _ = try await api.poll("/v1/databases/\(id)/backups/\(backupID)", token: token) { $0["status"]?.stringValue == "completed" }
            _ = try await api.call(.GET, "/v1/databases", token: "chd_wrongwrongwrongw_wrongwrongwrongwrongwrongwrongwrongwrong")
            // Let the webhook attempt (refused) be logged too.
            try await Task.sleep(for: .seconds(1))
            return [token, secret, String(token.split(separator: "_").last ?? ""), String(secret.dropFirst("whsec_".count)), id, backupID]
        }
        let logs = run.standardError ?? ""
        let values = run.closureResult
        let (token, secret, tokenSecretPart, secretPart, database, backup) = (values[0], values[1], values[2], values[3], values[4], values[5])
        #expect(!logs.isEmpty)
        for sensitive in [admin, token, tokenSecretPart, secret, secretPart, "wrongwrongwrongwrong"] {
            #expect(!logs.contains(sensitive), "the logs hold a secret")
        }
        #expect(logs.contains("hb.request.id="))
        #expect(logs.contains("job.id=job-"))
        #expect(logs.contains("backup.id=\(backup)"))
        #expect(logs.contains("database.id=\(database)"))
    }
}
