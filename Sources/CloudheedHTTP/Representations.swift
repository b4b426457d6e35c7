import CloudheedDomain
import CloudheedRuntime

/// The API's JSON shapes, in the documentation page's field order and snake_case.
enum Representation {
    static func account(_ a: Account, storageUsed: Int64? = nil) -> JSONValue {
        var pairs: [(String, JSONValue)] = [
            ("id", .string(a.id)),
            ("name", .string(a.name)),
            ("storage_quota_bytes", .int(a.storageQuotaBytes)),
        ]
        if let storageUsed { pairs.append(("storage_used_bytes", .int(storageUsed))) }
        pairs.append(("created_at", .date(a.createdAt)))
        return .object(pairs)
    }

    static func database(_ d: ManagedDatabase, uri: String?) -> JSONValue {
        .object([
            ("id", .string(d.id)),
            ("name", .string(d.name)),
            ("tier", .string(d.tier.rawValue)),
            ("engine", .string(d.engine.rawValue)),
            ("status", .string(d.status.rawValue)),
            ("backup_window", .string(d.backupWindow.description)),
            ("created_at", .date(d.createdAt)),
            ("deleted_at", .optional(d.deletedAt)),
            ("connection", d.status == .deleted ? .null : .object([("uri", .optional(uri))])),
            ("restore_drills", .string(d.restoreDrills.rawValue)),
            ("next_drill_at", .optional(d.nextDrillAt)),
            ("last_drill", drill(d.lastDrill)),
            ("error", error(d.error)),
        ])
    }

    /// `unique_bytes` is computed per request (it changes as other backups come and go).
    static func backup(_ b: Backup, uniqueBytes: Int64? = nil) -> JSONValue {
        .object([
            ("id", .string(b.id)),
            ("database_id", .string(b.databaseID)),
            ("name", .string(b.name)),
            ("type", .string(b.type.rawValue)),
            ("status", .string(b.status.rawValue)),
            ("size_bytes", .optional(b.sizeBytes)),
            ("stored_bytes", .optional(b.status == .completed ? b.object?.storedBytes : nil)),
            ("unique_bytes", .optional(b.status == .completed ? uniqueBytes : nil)),
            ("created_at", .date(b.createdAt)),
            ("started_at", .optional(b.startedAt)),
            ("completed_at", .optional(b.completedAt)),
            ("expires_at", .optional(b.expiresAt)),
            ("integrity", .string(b.integrity.rawValue)),
            ("verified_at", .optional(b.verifiedAt)),
            ("progress", progress(b.progress)),
            ("last_drill", drill(b.lastDrill)),
            ("error", error(b.error)),
        ])
    }

    static func restore(_ r: Restore) -> JSONValue {
        .object([
            ("id", .string(r.id)),
            ("status", .string(r.status.rawValue)),
            ("backup_id", .string(r.backupID)),
            ("source_database_id", .string(r.sourceDatabaseID)),
            ("target_database_id", .string(r.targetDatabaseID)),
            ("created_at", .date(r.createdAt)),
            ("completed_at", .optional(r.completedAt)),
            ("progress", progress(r.progress)),
            ("error", error(r.error)),
        ])
    }

    static func webhook(_ w: Webhook) -> JSONValue {
        .object([
            ("id", .string(w.id)),
            ("url", .string(w.url)),
            ("events", .array(w.events.map { .string($0.rawValue) })),
            ("description", .optional(w.description)),
            ("created_at", .date(w.createdAt)),
        ])
    }

    static func delivery(_ d: WebhookDelivery) -> JSONValue {
        .object([
            ("id", .string(d.id)),
            ("event", .string(d.event.rawValue)),
            ("status", .string(d.status.rawValue)),
            ("created_at", .date(d.createdAt)),
            ("next_attempt_at", .optional(d.nextAttemptAt)),
            ("delivered_at", .optional(d.deliveredAt)),
            ("attempts", .array(d.attempts.map { a in
                .object([
                    ("at", .date(a.at)),
                    ("status_code", .optional(a.statusCode.map(Int64.init))),
                    ("error", .optional(a.error)),
                    ("duration_ms", .int(a.durationMs)),
                ])
            })),
        ])
    }

    /// `{"bytes_done", "bytes_total", "started_at"}` while running, else null.
    static func progress(_ p: JobProgress?) -> JSONValue {
        guard let p else { return .null }
        return .object([("bytes_done", .int(p.bytesDone)), ("bytes_total", .optional(p.bytesTotal)), ("started_at", .date(p.startedAt))])
    }

    /// `{"at", "result", "duration_ms", "error"}` of the last restore drill, or null.
    static func drill(_ d: DrillResult?) -> JSONValue {
        guard let d else { return .null }
        return .object([("at", .date(d.at)), ("result", .string(d.result.rawValue)), ("duration_ms", .int(d.durationMs)), ("error", error(d.error))])
    }

    static func error(_ e: ErrorInfo?) -> JSONValue {
        guard let e else { return .null }
        return .object([("code", .string(e.code)), ("message", .string(e.message))])
    }
}
