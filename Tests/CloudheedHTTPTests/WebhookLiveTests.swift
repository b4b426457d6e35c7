import CloudheedHTTP
import CloudheedTestSupport
import Foundation
import Subprocess
import SystemPackage
import Testing

@Suite("Webhook deliveries on the real process")
struct WebhookLiveTests {
    @Test("A backup.failed whose first attempts fail (the receiver answers 500) is delivered, correctly signed, after a service restart")
    func deliveredAfterRestart() async throws {
        let binary = try cloudheedBinary()
        let directory = NSTemporaryDirectory() + "cloudheed-webhooks-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let port = try freeLoopbackPort(), receiverPort = try freeLoopbackPort()
        let api = LiveAPI(base: "http://127.0.0.1:\(port)")
        let admin = "webhook-test-admin-token"
        let arguments: Arguments = [
            "serve", "--data-dir", directory, "--port", "\(port)", "--workers", "1", "--log-level", "error", "--webhook-retry-seconds", "1",
        ]
        let environment = Environment.inherit.updating(["CLOUDHEED_ADMIN_TOKEN": admin])

        // Phase 1: the receiver answers 500 to everything; the backup fails and its event's attempts fail.
        let first = try await WebhookReceiver.run(port: receiverPort, failFirst: 1000) { _ in try await Subprocess.run(.path(FilePath(binary)), arguments: arguments, environment: environment, input: .none, output: .discarded, error: .discarded) { execution -> (token: String, hook: String, secret: String, backup: String) in
            defer { try? execution.send(signal: .terminate) }
            try await api.waitUntilHealthy()
            let (_, account) = try await api.call(.POST, "/v1/accounts", token: admin, body: #"{"name":"hooks"}"#)
            let token = try #require(account?["token"]?.stringValue)
            let (status, webhook) = try await api.call(
                .POST, "/v1/webhooks", token: token, body: #"{"url":"http://127.0.0.1:\#(receiverPort)/hook","events":["backup.failed"]}"#)
            #expect(status == 201)
            let hook = try #require(webhook?["id"]?.stringValue), secret = try #require(webhook?["secret"]?.stringValue)
            let (_, database) = try await api.call(.POST, "/v1/databases", token: token, body: #"{"name":"doomed","tier":"micro"}"#)
            let id = try #require(database?["id"]?.stringValue)
            try FileManager.default.removeItem(atPath: try filePath(ofURI: database?["connection"]?["uri"]?.stringValue))
            let (_, backup) = try await api.call(.POST, "/v1/databases/\(id)/backups", token: token)
            let backupID = try #require(backup?["id"]?.stringValue)
            let failed = try await api.poll("/v1/databases/\(id)/backups/\(backupID)", token: token) { $0["status"]?.stringValue == "failed" }
            #expect(failed["error"]?["code"]?.stringValue == "database_file_missing")
            let pending = try await api.poll("/v1/webhooks/\(hook)/deliveries", token: token) {
                ($0["deliveries"]?.arrayValue?.first?["attempts"]?.arrayValue?.count ?? 0) >= 2
            }
            let delivery = try #require(pending["deliveries"]?.arrayValue?.first)
            #expect(delivery["status"]?.stringValue == "pending")
            #expect(delivery["attempts"]?.arrayValue?.allSatisfy { $0["status_code"]?.intValue == 500 && $0["error"]?.stringValue != nil } == true)
            return (token, hook, secret, backupID)
        } }
        #expect(first.terminationStatus == .exited(0))
        let (token, hook, secret, backup) = first.closureResult

        // Phase 2: the receiver works again; the restarted service takes the pending delivery up again.
        // (The restart also runs the database's first automatic backup, which fails too: find ours by id.)
        try await WebhookReceiver.run(port: receiverPort) { receiver in
            let second = try await Subprocess.run(.path(FilePath(binary)), arguments: arguments, environment: environment, input: .none, output: .discarded, error: .discarded) { execution in
                defer { try? execution.send(signal: .terminate) }
                try await api.waitUntilHealthy()
                var request: WebhookReceiver.Received?
                for _ in 0..<600 where request == nil {
                    request = await receiver.log.requests.first { (($0.json?["data"] as? [String: Any])?["backup"] as? [String: Any])?["id"] as? String == backup }
                    try await Task.sleep(for: .milliseconds(100))
                }
                let delivery = try #require(request)
                #expect(signatureIsValid(delivery, secret: secret))
                let payload = try #require(delivery.json)
                #expect(payload["type"] as? String == "backup.failed")
                let id = try #require(payload["id"] as? String)
                let delivered = try await api.poll("/v1/webhooks/\(hook)/deliveries", token: token) {
                    $0["deliveries"]?.arrayValue?.first { $0["id"]?.stringValue == id }?["status"]?.stringValue == "delivered"
                }
                let attempts = try #require(delivered["deliveries"]?.arrayValue?.first { $0["id"]?.stringValue == id }?["attempts"]?.arrayValue)
                #expect(attempts.count >= 3)
                #expect(attempts.last?["status_code"]?.intValue == 200)
            }
            #expect(second.terminationStatus == .exited(0))
        }
    }
}
