import CloudheedDomain
import Foundation
import Testing

@Suite("Webhook rules")
struct WebhookTests {
    @Test("Only absolute http(s) URLs with a host and without credentials are accepted", arguments: [
        ("https://alerts.example.com/hook", true),
        ("http://127.0.0.1:9000/x?y=1", true),
        ("ftp://example.com/hook", false),
        ("https://user:pass@example.com/hook", false),
        ("https://user@example.com/hook", false),
        ("/relative/path", false),
        ("https:///nohost", false),
        ("https://example.com/hook#frag", false),
        ("https://exa mple.com/", false),
        ("javascript:alert(1)", false),
    ])
    func urls(url: String, accepted: Bool) {
        #expect(((try? WebhookURL.validate(url)) != nil) == accepted, "\(url)")
    }

    @Test("An operator's host list limits destinations")
    func allowedHosts() throws {
        #expect(try WebhookURL.validate("http://127.0.0.1:1/x", allowedHosts: ["127.0.0.1"]) == "http://127.0.0.1:1/x")
        #expect(throws: DomainError.self) { try WebhookURL.validate("http://example.com/x", allowedHosts: ["127.0.0.1"]) }
    }

    @Test("Events must be known and at least one; duplicates count once")
    func events() throws {
        #expect(try Webhook.validateEvents(["backup.failed", "backup.failed", "drill.failed"]) == [.backupFailed, .drillFailed])
        #expect(throws: DomainError.self) { try Webhook.validateEvents([]) }
        #expect(throws: DomainError.self) { try Webhook.validateEvents(["backup.exploded"]) }
    }

    @Test("Retries double from the base, at most an hour apart, and stop a day after the event")
    func retries() {
        let policy = WebhookRetryPolicy(base: .seconds(10))
        let created = Date(timeIntervalSince1970: 1_000_000)
        #expect(policy.nextAttempt(after: 1, failedAt: created, createdAt: created) == created.addingTimeInterval(10))
        #expect(policy.nextAttempt(after: 4, failedAt: created, createdAt: created) == created.addingTimeInterval(80))
        #expect(policy.nextAttempt(after: 20, failedAt: created, createdAt: created) == created.addingTimeInterval(3600))
        let late = created.addingTimeInterval(86_000)
        #expect(policy.nextAttempt(after: 30, failedAt: late, createdAt: created) == nil)
        // Attempts over a whole day at most an hour apart: about 30, not thousands.
        var at = created, attempts = 1
        while let next = policy.nextAttempt(after: attempts, failedAt: at, createdAt: created) { at = next; attempts += 1 }
        #expect((25...40).contains(attempts))
    }

    @Test("A payload is JSON with sorted keys and escaped strings")
    func payload() throws {
        let backup = Backup(
            id: "backup-a", accountID: "acct-a", databaseID: "db-a", name: "quote \" and \n newline", type: .manual, status: .failed,
            engine: .sqlite, createdAt: Date(timeIntervalSince1970: 0), expiresAt: nil, error: ErrorInfo(code: "x", message: "y"))
        let text = WebhookPayload.render(deliveryID: "dlv-1", event: .backupFailed, at: Date(timeIntervalSince1970: 60), data: WebhookPayload.backup(backup))
        let object = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        #expect(object["type"] as? String == "backup.failed")
        #expect(object["id"] as? String == "dlv-1")
        let data = try #require(object["data"] as? [String: Any])
        let payloadBackup = try #require(data["backup"] as? [String: Any])
        #expect(payloadBackup["name"] as? String == "quote \" and \n newline")
        #expect((payloadBackup["error"] as? [String: Any])?["code"] as? String == "x")
        #expect(text.hasPrefix(#"{"created_at":"#))
    }
}
