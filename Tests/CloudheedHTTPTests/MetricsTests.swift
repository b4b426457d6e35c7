import CloudheedDomain
import Foundation
import Testing

/// The value of one sample of Prometheus text, by name and exact labels (0 when absent).
func sample(_ text: String, _ name: String, _ labels: [String: String] = [:]) -> Double {
    for line in text.split(separator: "\n") where !line.hasPrefix("#") {
        guard let space = line.lastIndex(of: " ") else { continue }
        let key = line[..<space], value = Double(line[line.index(after: space)...]) ?? 0
        let metric = key.split(separator: "{", maxSplits: 1)
        guard metric.first.map(String.init) == name else { continue }
        var found: [String: String] = [:]
        if metric.count == 2 {
            for pair in metric[1].dropLast().split(separator: ",") {
                let parts = pair.split(separator: "=", maxSplits: 1)
                if parts.count == 2 { found[String(parts[0])] = parts[1].trimmingCharacters(in: CharacterSet(charactersIn: "\"")) }
            }
        }
        if found == labels { return value }
    }
    return 0
}

@Suite("Metrics")
struct MetricsTests {
    func scrape(_ api: API, token: String? = nil) async throws -> String {
        try await api.client.execute(uri: "/metrics", method: .get, headers: token.map { [.authorization: "Bearer \($0)"] } ?? [:]) { response in
            #expect(response.status == .ok)
            #expect(response.headers[.contentType]?.hasPrefix("text/plain") == true)
            return String(buffer: response.body)
        }
    }

    @Test("Backup counters, durations and bytes move after a backup and after a failure; gauges come from the catalog; no label holds an id")
    func metricsMove() async throws {
        let service = try TestService()
        try await service.withClient { api in
            let (_, token) = try await api.account()
            let database = try await api.database(token, name: "metered", tier: "medium")
            let id = try #require(database["id"]?.stringValue)
            try writeRows(path: try filePath(ofURI: database["connection"]?["uri"]?.stringValue), values: (0..<200).map { "row \($0)" })
            let labels = ["type": "manual", "engine": "sqlite", "tier": "medium"]
            let before = try await scrape(api)

            _ = try await api.completedBackup(token, database: id)
            let after = try await scrape(api)
            #expect(sample(after, "cloudheed_backups_started_total", labels) == sample(before, "cloudheed_backups_started_total", labels) + 1)
            #expect(sample(after, "cloudheed_backups_completed_total", labels) == sample(before, "cloudheed_backups_completed_total", labels) + 1)
            let duration = ["type": "manual", "engine": "sqlite", "tier": "medium", "result": "completed"]
            #expect(sample(after, "cloudheed_backup_duration_seconds_count", duration) == sample(before, "cloudheed_backup_duration_seconds_count", duration) + 1)
            #expect(sample(after, "cloudheed_backup_bytes_read_total") > sample(before, "cloudheed_backup_bytes_read_total"))
            #expect(sample(after, "cloudheed_backup_bytes_written_total") > sample(before, "cloudheed_backup_bytes_written_total"))
            // A second backup of the same data is all deduplicated. (The byte counters have no
            // labels and other tests run beside this one: they can only have added more.)
            let second = try await api.completedBackup(token, database: id)
            let again = try await scrape(api)
            #expect(sample(again, "cloudheed_backup_bytes_deduplicated_total") - sample(after, "cloudheed_backup_bytes_deduplicated_total")
                    >= Double(try #require(second["size_bytes"]?.intValue)))

            // A failure: the database file vanished.
            try FileManager.default.removeItem(atPath: try filePath(ofURI: database["connection"]?["uri"]?.stringValue))
            let created = try await api.call(.post, "/v1/databases/\(id)/backups", token: token)
            let pendingNow = try await scrape(api)
            #expect(sample(pendingNow, "cloudheed_jobs_pending") >= 1)
            #expect(sample(pendingNow, "cloudheed_oldest_pending_job_age_seconds") >= 0)
            try await service.runJobs()
            let failedBackup = try await api.call(.get, "/v1/databases/\(id)/backups/\(created["id"]!.stringValue!)", token: token)
            let code = try #require(failedBackup["error"]?["code"]?.stringValue)
            let failed = try await scrape(api)
            #expect(sample(failed, "cloudheed_backups_failed_total", labels.merging(["code": code]) { a, _ in a })
                    == sample(again, "cloudheed_backups_failed_total", labels.merging(["code": code]) { a, _ in a }) + 1)

            // HTTP requests by route pattern and status, with latencies; never an id in a label.
            #expect(failed.contains("hb_requests{http_route=\"/v1/databases/{id}/backups\""))
            #expect(failed.contains("http_server_request_duration_bucket"))
            #expect(!failed.contains(id))
            #expect(!failed.contains(token))
        }
    }

    @Test("Databases without a backup for 26 hours are counted")
    func staleDatabases() async throws {
        let service = try TestService()
        try await service.withClient { api in
            let (_, token) = try await api.account()
            let before = sample(try await scrape(api), "cloudheed_databases_without_backup_26h")
            _ = try await api.database(token, name: "quiet", window: "10:00-11:00")
            service.clock.advance(by: 27 * 3600)
            // Gauges are per process; other services' databases may count too, so compare.
            #expect(sample(try await scrape(api), "cloudheed_databases_without_backup_26h") >= before + 1)
        }
    }

    @Test("With a metrics token configured, /metrics requires it")
    func token() async throws {
        let service = try TestService(metricsToken: "scrape-secret")
        try await service.withClient { api in
            let refused = try await api.call(.get, "/metrics")
            #expect(refused.status == .unauthorized)
            #expect(refused.errorCode == "unauthorized")
            #expect(try await api.call(.get, "/metrics", token: "wrong").status == .unauthorized)
            #expect(try await api.call(.get, "/metrics", token: "scrape-secret").status == .ok)
        }
    }
}
