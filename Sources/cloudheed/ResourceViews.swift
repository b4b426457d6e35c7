import CloudheedDomain

/// How each API resource reads for people: the columns of its table and the lines of its
/// details, under the API's own field names so they map onto `--json` output.
enum DatabaseView {
    static func table(_ databases: [JSONValue]) -> String {
        Format.table(
            ["ID", "NAME", "ENGINE", "TIER", "STATUS", "WINDOW", "CREATED"],
            databases.map { d in
                ["id", "name", "engine", "tier", "status", "backup_window", "created_at"].map { Format.text(d[$0]) }
            })
    }

    static func details(_ d: JSONValue) -> String {
        Format.keyValues([
            ("id", Format.text(d["id"])),
            ("name", Format.text(d["name"])),
            ("engine", Format.text(d["engine"])),
            ("tier", Format.text(d["tier"])),
            ("status", Format.text(d["status"])),
            ("backup_window", Format.text(d["backup_window"]) + " UTC"),
            ("connection", Format.text(d["connection"]?["uri"])),
            ("created_at", Format.text(d["created_at"])),
            ("deleted_at", Format.text(d["deleted_at"])),
            ("restore_drills", Format.text(d["restore_drills"])),
            ("next_drill_at", Format.text(d["next_drill_at"])),
            ("last_drill", drill(d["last_drill"])),
            ("error", Format.error(d["error"])),
        ])
    }
}

extension DatabaseView {
    /// "passed at <time> (1234 ms)", or the failure with its error; "-" before the first drill.
    static func drill(_ d: JSONValue?) -> String {
        guard let d, let result = d["result"]?.stringValue else { return "-" }
        let line = "\(result) at \(Format.text(d["at"])) (\(Format.text(d["duration_ms"])) ms)"
        return result == "passed" ? line : line + ": " + Format.error(d["error"])
    }
}

enum BackupView {
    static func table(_ backups: [JSONValue]) -> String {
        Format.table(
            ["ID", "NAME", "TYPE", "STATUS", "SIZE", "STORED", "INTEGRITY", "CREATED"],
            backups.map { b in
                [
                    Format.text(b["id"]), Format.text(b["name"]), Format.text(b["type"]), Format.text(b["status"]),
                    Format.bytes(b["size_bytes"]), Format.bytes(b["stored_bytes"]), Format.text(b["integrity"]), Format.text(b["created_at"]),
                ]
            })
    }

    static func details(_ b: JSONValue) -> String {
        Format.keyValues([
            ("id", Format.text(b["id"])),
            ("database_id", Format.text(b["database_id"])),
            ("name", Format.text(b["name"])),
            ("type", Format.text(b["type"])),
            ("status", Format.text(b["status"])),
            ("progress", progress(b["progress"])),
            ("size_bytes", Format.exactBytes(b["size_bytes"])),
            ("stored_bytes", Format.exactBytes(b["stored_bytes"])),
            ("unique_bytes", Format.exactBytes(b["unique_bytes"])),
            ("created_at", Format.text(b["created_at"])),
            ("started_at", Format.text(b["started_at"])),
            ("completed_at", Format.text(b["completed_at"])),
            ("expires_at", Format.text(b["expires_at"])),
            ("integrity", Format.text(b["integrity"])),
            ("verified_at", Format.text(b["verified_at"])),
            ("last_drill", DatabaseView.drill(b["last_drill"])),
            ("error", Format.error(b["error"])),
        ])
    }

    /// `{"bytes_done", "bytes_total", "started_at"}` as `45%  85.3 MiB / 190.0 MiB since …`.
    static func progress(_ p: JSONValue?) -> String {
        guard let p, p != .null else { return "-" }
        let figures = ProgressText.figures(done: p["bytes_done"]?.intValue, total: p["bytes_total"]?.intValue, rate: nil, remaining: nil)
        return "\(figures) since \(Format.text(p["started_at"]))"
    }
}

enum RestoreView {
    /// `{"restore", "database"}`: the restore, then the database it creates.
    static func details(_ response: JSONValue) -> String {
        let r = response["restore"] ?? .null
        let d = response["database"] ?? .null
        return Format.keyValues([
            ("id", Format.text(r["id"])),
            ("status", Format.text(r["status"])),
            ("progress", BackupView.progress(r["progress"])),
            ("backup_id", Format.text(r["backup_id"])),
            ("source_database_id", Format.text(r["source_database_id"])),
            ("target_database_id", Format.text(r["target_database_id"])),
            ("created_at", Format.text(r["created_at"])),
            ("completed_at", Format.text(r["completed_at"])),
            ("error", Format.error(r["error"])),
            ("database", "\(Format.text(d["name"])) (\(Format.text(d["status"])))"),
            ("connection", Format.text(d["connection"]?["uri"])),
        ])
    }
}

enum WebhookView {
    static func table(_ webhooks: [JSONValue]) -> String {
        Format.table(
            ["ID", "URL", "EVENTS", "CREATED", "DESCRIPTION"],
            webhooks.map { w in
                [Format.text(w["id"]), Format.text(w["url"]), Format.text(w["events"]), Format.text(w["created_at"]), Format.text(w["description"])]
            })
    }

    static func details(_ w: JSONValue) -> String {
        var pairs = [
            ("id", Format.text(w["id"])),
            ("url", Format.text(w["url"])),
            ("events", Format.text(w["events"])),
            ("description", Format.text(w["description"])),
            ("created_at", Format.text(w["created_at"])),
        ]
        // Present only in the create response.
        if let secret = w["secret"]?.stringValue { pairs.append(("secret", secret)) }
        return Format.keyValues(pairs)
    }

    static func deliveries(_ deliveries: [JSONValue]) -> String {
        Format.table(
            ["ID", "EVENT", "STATUS", "ATTEMPTS", "LAST_ATTEMPT", "CREATED", "NEXT_ATTEMPT", "DELIVERED"],
            deliveries.map { d in
                let attempts = d["attempts"]?.arrayValue ?? []
                return [
                    Format.text(d["id"]), Format.text(d["event"]), Format.text(d["status"]), String(attempts.count),
                    attempts.last.map(attempt) ?? "-", Format.text(d["created_at"]), Format.text(d["next_attempt_at"]), Format.text(d["delivered_at"]),
                ]
            })
    }

    /// One attempt as `HTTP 500 in 120 ms` or `connection refused in 3 ms`.
    static func attempt(_ a: JSONValue) -> String {
        let outcome = a["status_code"]?.intValue.map { "HTTP \($0)" } ?? a["error"]?.stringValue ?? "no answer"
        return a["duration_ms"]?.intValue.map { "\(outcome) in \($0) ms" } ?? outcome
    }
}
