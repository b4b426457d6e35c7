import CloudheedDomain
import CloudheedHTTP
import CloudheedRuntime
import CloudheedTestSupport
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import Testing

@Suite("Webhooks: subscriptions, signed deliveries, retries")
struct WebhookRoutesTests {
    @Test("Create shows the secret once; list and show never do; bad input gets 422 with a code")
    func crud() async throws {
        let service = try TestService()
        try await service.withClient { api in
            let (_, token) = try await api.account()
            let created = try await api.call(.post, "/v1/webhooks", token: token, body: #"{"url":"https://alerts.example.com/x","events":["backup.failed","drill.failed"],"description":"pager"}"#)
            #expect(created.status == .created)
            let id = try #require(created["id"]?.stringValue)
            #expect(created["secret"]?.stringValue?.hasPrefix("whsec_") == true)
            #expect(created["events"] == .array([.string("backup.failed"), .string("drill.failed")]))
            let shown = try await api.call(.get, "/v1/webhooks/\(id)", token: token)
            #expect(shown.status == .ok)
            #expect(shown["secret"] == nil)
            #expect(shown["description"]?.stringValue == "pager")
            let list = try await api.call(.get, "/v1/webhooks", token: token)
            #expect(list["webhooks"]?.arrayValue?.count == 1)
            #expect(list["webhooks"]?.arrayValue?.first?["secret"] == nil)

            let bad: [(String, String)] = [
                (#"{"url":"ftp://example.com/x","events":["backup.failed"]}"#, "invalid_url"),
                (#"{"url":"https://u:p@example.com/x","events":["backup.failed"]}"#, "invalid_url"),
                (#"{"url":"https://example.com/x","events":[]}"#, "invalid_events"),
                (#"{"url":"https://example.com/x","events":["backup.exploded"]}"#, "invalid_events"),
                (#"{"url":"https://example.com/x","events":"backup.failed"}"#, "invalid_events"),
                (#"{"url":"https://example.com/x"}"#, "missing_events"),
                (#"{"events":["backup.failed"]}"#, "missing_url"),
                (#"{"url":"https://example.com/x","events":["backup.failed"],"secret":"mine"}"#, "unknown_field"),
            ]
            for (body, code) in bad {
                let response = try await api.call(.post, "/v1/webhooks", token: token, body: body)
                #expect(response.status == .unprocessableContent, "\(body)")
                #expect(response.errorCode == code, "\(body)")
            }

            // Another account sees nothing, exactly as for a missing webhook.
            let (_, other) = try await api.account("other")
            for uri in ["/v1/webhooks/\(id)", "/v1/webhooks/\(id)/deliveries"] {
                let foreign = try await api.call(.get, uri, token: other)
                #expect(foreign.status == .notFound)
                #expect(foreign.json == (try await api.call(.get, uri.replacingOccurrences(of: id, with: "wh-missing"), token: other)).json)
            }
            #expect(try await api.call(.delete, "/v1/webhooks/\(id)", token: other).status == .notFound)
            #expect(try await api.call(.get, "/v1/webhooks", token: other)["webhooks"]?.arrayValue?.isEmpty == true)

            #expect(try await api.call(.delete, "/v1/webhooks/\(id)", token: token).status == .noContent)
            #expect(try await api.call(.get, "/v1/webhooks/\(id)", token: token).errorCode == "webhook_not_found")
        }
    }

    @Test("An account may have 25 webhooks; the 26th gets webhook_limit_reached")
    func limit() async throws {
        let service = try TestService()
        try await service.withClient { api in
            let (_, token) = try await api.account()
            for n in 0..<Webhook.limitPerAccount {
                #expect(try await api.call(.post, "/v1/webhooks", token: token, body: #"{"url":"https://example.com/\#(n)","events":["backup.failed"]}"#).status == .created)
            }
            let refused = try await api.call(.post, "/v1/webhooks", token: token, body: #"{"url":"https://example.com/x","events":["backup.failed"]}"#)
            #expect(refused.status == .conflict)
            #expect(refused.errorCode == "webhook_limit_reached")
        }
    }

    @Test("A failed backup sends a signed backup.failed to subscribers only; a 500 is retried later and the attempts are listed")
    func failedBackupIsDelivered() async throws {
        let service = try TestService()
        try await WebhookReceiver.run(failFirst: 1) { receiver in
            try await service.withClient { api in
                let (_, token) = try await api.account()
                let subscribed = try await api.call(.post, "/v1/webhooks", token: token, body: #"{"url":"\#(receiver.url)","events":["backup.failed"]}"#)
                let secret = try #require(subscribed["secret"]?.stringValue)
                let hook = try #require(subscribed["id"]?.stringValue)
                // Subscribed to other events only: gets nothing.
                let other = try await api.call(.post, "/v1/webhooks", token: token, body: #"{"url":"\#(receiver.url)","events":["backup.completed"]}"#)
                let otherID = try #require(other["id"]?.stringValue)

                // Given a backup that fails: its database file is gone.
                let database = try await api.database(token)
                let id = try #require(database["id"]?.stringValue)
                try FileManager.default.removeItem(atPath: try filePath(ofURI: database["connection"]?["uri"]?.stringValue))
                let backup = try #require(try await api.call(.post, "/v1/databases/\(id)/backups", token: token)["id"]?.stringValue)
                try await service.runJobs()
                #expect(try await api.call(.get, "/v1/databases/\(id)/backups/\(backup)", token: token)["status"]?.stringValue == "failed")

                // When the sender runs: the receiver answers 500 once.
                let sender = WebhookSender(service: service.components.service, client: .shared, logger: Logger(label: "test"))
                #expect(try await sender.sendDue() == 1)
                var deliveries = try await api.call(.get, "/v1/webhooks/\(hook)/deliveries", token: token)
                var delivery = try #require(deliveries["deliveries"]?.arrayValue?.first)
                #expect(delivery["status"]?.stringValue == "pending")
                #expect(delivery["attempts"]?.arrayValue?.first?["status_code"]?.intValue == 500)
                #expect(delivery["attempts"]?.arrayValue?.first?["error"]?.stringValue?.contains("maintenance") == true)
                // Not due again until the retry delay (10 s) passed.
                #expect(try await sender.sendDue() == 0)
                service.clock.advance(by: 11)
                #expect(try await sender.sendDue() == 1)

                // Then: two POSTs of the same signed body, and the delivery is delivered.
                let received = try await receiver.waitFor(2)
                #expect(received[0].body == received[1].body)
                for request in received {
                    #expect(signatureIsValid(request, secret: secret, now: service.clock.now()))
                    #expect(!signatureIsValid(request, secret: secret + "x", now: service.clock.now()))
                    #expect(request.headers[HTTPField.Name("Cloudheed-Event")!] == "backup.failed")
                }
                let payload = try #require(received[1].json)
                #expect(payload["type"] as? String == "backup.failed")
                let data = try #require((payload["data"] as? [String: Any])?["backup"] as? [String: Any])
                #expect(data["id"] as? String == backup)
                #expect((data["error"] as? [String: Any])?["code"] as? String == "database_file_missing")
                deliveries = try await api.call(.get, "/v1/webhooks/\(hook)/deliveries", token: token)
                delivery = try #require(deliveries["deliveries"]?.arrayValue?.first)
                #expect(delivery["status"]?.stringValue == "delivered")
                #expect(delivery["id"]?.stringValue == payload["id"] as? String)
                #expect(received[1].headers[HTTPField.Name("Cloudheed-Delivery")!] == payload["id"] as? String)
                #expect(delivery["attempts"]?.arrayValue?.map { $0["status_code"]?.intValue } == [500, 200])
                #expect(try await api.call(.get, "/v1/webhooks/\(otherID)/deliveries", token: token)["deliveries"]?.arrayValue?.isEmpty == true)
            }
        }
    }

    @Test("A receiver that is down fails the attempt at once, recorded without a status; the delivery stays pending for its retry")
    func receiverDown() async throws {
        let service = try TestService()
        try await service.withClient { api in
            let (_, token) = try await api.account()
            let closed = try RefusingLoopbackPort()
            let hook = try #require(try await api.call(.post, "/v1/webhooks", token: token, body: #"{"url":"http://127.0.0.1:\#(closed.port)/x","events":["backup.completed"]}"#)["id"]?.stringValue)
            let database = try #require(try await api.database(token)["id"]?.stringValue)
            _ = try await api.completedBackup(token, database: database)
            // The sender's own client, as the service configures it.
            let client = WebhookSender.makeClient()
            let sender = WebhookSender(service: service.components.service, client: client, logger: Logger(label: "test"))
            let started = ContinuousClock.now
            let sent = try await sender.sendDue()
            try await client.shutdown()
            #expect(sent == 1)
            // Under the sender's 5 s connect timeout: a refused connection fails at once.
            #expect(ContinuousClock.now - started < .seconds(5))
            withExtendedLifetime(closed) {}
            let delivery = try #require(try await api.call(.get, "/v1/webhooks/\(hook)/deliveries", token: token)["deliveries"]?.arrayValue?.first)
            #expect(delivery["status"]?.stringValue == "pending")
            #expect(delivery["next_attempt_at"]?.stringValue != nil)
            let attempt = try #require(delivery["attempts"]?.arrayValue?.first)
            #expect(attempt["status_code"] == .null)
            #expect(attempt["error"]?.stringValue?.contains("refused") == true, "\(attempt)")
        }
    }

    @Test("A completed backup and a completed restore send their events; deleting the account removes its webhooks")
    func completedEvents() async throws {
        let service = try TestService()
        try await service.withClient { api in
            let (accountID, token) = try await api.account()
            let hook = try #require(try await api.call(.post, "/v1/webhooks", token: token, body: #"{"url":"http://127.0.0.1:9/none","events":["backup.completed","restore.completed","restore.failed"]}"#)["id"]?.stringValue)
            let database = try #require(try await api.database(token)["id"]?.stringValue)
            let backup = try #require(try await api.completedBackup(token, database: database)["id"]?.stringValue)
            _ = try await api.call(.post, "/v1/databases/\(database)/backups/\(backup)/restore", token: token)
            try await service.runJobs()
            let events = try await api.call(.get, "/v1/webhooks/\(hook)/deliveries", token: token)["deliveries"]?.arrayValue?.compactMap { $0["event"]?.stringValue }
            #expect(events == ["restore.completed", "backup.completed"])

            #expect(try await api.call(.delete, "/v1/accounts/\(accountID)", token: TestService.adminToken).status == .noContent)
            #expect(try await service.components.catalog.webhooks(accountID: accountID).isEmpty)
        }
    }
}
