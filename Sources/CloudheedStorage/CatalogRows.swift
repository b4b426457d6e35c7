import CloudheedDomain
import Foundation

/// A result row of either catalog, read by column name. Both catalogs keep the same columns with
/// the same meaning (timestamps as integer milliseconds since 1970), so turning a row into a
/// domain value is written once, here, for SQLite and PostgreSQL alike.
protocol CatalogRow {
    /// The column as text; nil when it is NULL.
    func text(_ column: String) -> String?
    /// The column as an integer; nil when it is NULL.
    func integer(_ column: String) -> Int64?
    /// The column as bytes; nil when it is NULL.
    func bytes(_ column: String) -> [UInt8]?
}

extension CatalogRow {
    func string(_ column: String) -> String { text(column) ?? "" }
    func int(_ column: String) -> Int { Int(integer(column) ?? 0) }
    func int64(_ column: String) -> Int64 { integer(column) ?? 0 }
    func date(_ column: String) -> Date { CloudheedStorage.date(integer(column) ?? 0) }
    func optionalDate(_ column: String) -> Date? { integer(column).map(CloudheedStorage.date) }
}

/// Domain values from catalog rows (`SELECT *` of their tables).
enum CatalogRows {
    static func errorInfo<R: CatalogRow>(_ row: R) -> ErrorInfo? {
        guard let code = row.text("error_code") else { return nil }
        return ErrorInfo(code: code, message: row.text("error_message") ?? "")
    }

    /// The access check: $1 the token id, $2 the database id or NULL. Both catalogs run it (SQLite
    /// reads `$n` as `?n`).
    static let accessCheckSQL = """
        SELECT t.id, t.account_id, t.secret_hash, t.created_at, a.name, a.storage_quota_bytes, a.created_at AS account_created_at,
               d.id AS database_id, COALESCE(v.version, 0) AS database_version
        FROM tokens t
        JOIN accounts a ON a.id = t.account_id AND a.deleted_at IS NULL
        LEFT JOIN databases d ON d.id = $2 AND d.account_id = t.account_id
        LEFT JOIN database_versions v ON v.database_id = d.id
        WHERE t.id = $1
        """

    /// A row of the access-check query.
    static func accessCheck<R: CatalogRow>(_ row: R) -> AccessCheck {
        AccessCheck(
            token: StoredToken(id: row.string("id"), accountID: row.string("account_id"), secretHash: row.bytes("secret_hash") ?? [], createdAt: row.date("created_at")),
            account: Account(id: row.string("account_id"), name: row.string("name"), storageQuotaBytes: row.int64("storage_quota_bytes"), createdAt: row.date("account_created_at")),
            databaseVersion: row.text("database_id") == nil ? nil : row.int64("database_version"))
    }

    /// Stored length by chunk id, from the `id, stored_length` rows of the chunks `ids` names; throws
    /// when any of them is gone (garbage-collected while the backup referring to it ran).
    static func storedLengths<R: CatalogRow>(_ rows: [R], referencing ids: [ChunkID]) throws -> [ChunkID: Int] {
        var lengths: [ChunkID: Int] = [:]
        lengths.reserveCapacity(rows.count)
        for row in rows { lengths[chunkID(row)] = row.int("stored_length") }
        let distinct = Set(ids).count
        guard lengths.count == distinct else {
            throw RepositoryError(.chunksCollected, "\(distinct - lengths.count) chunks this backup refers to were garbage-collected while it ran")
        }
        return lengths
    }

    static func database<R: CatalogRow>(_ row: R) -> ManagedDatabase {
        ManagedDatabase(
            id: row.string("id"), accountID: row.string("account_id"), name: row.string("name"),
            tier: Tier(rawValue: row.string("tier"))!, engine: EngineKind(rawValue: row.string("engine")) ?? .sqlite,
            status: DatabaseStatus(rawValue: row.string("status"))!,
            // The schema's CHECK constraints hold the same bounds as the initializer.
            backupWindow: try! BackupWindow(startMinute: row.int("window_start_minute"), durationMinutes: row.int("window_minutes")),
            location: row.string("location"), createdAt: row.date("created_at"), deletedAt: row.optionalDate("deleted_at"),
            nextBackupAt: row.date("next_backup_at"), error: errorInfo(row),
            restoreDrills: RestoreDrills(rawValue: row.string("restore_drills")) ?? .weekly, nextDrillAt: row.optionalDate("next_drill_at"),
            lastDrill: drill(row))
    }

    /// The progress columns of an in-progress backup or restore (started: the backup's start).
    static func progress<R: CatalogRow>(_ row: R, started: Date?) -> JobProgress? {
        guard row.text("status") == "in_progress" else { return nil }
        let startedAt = row.optionalDate("progress_started_at") ?? started ?? row.date("created_at")
        return JobProgress(bytesDone: row.int64("progress_done"), bytesTotal: row.integer("progress_total"), startedAt: startedAt)
    }

    static func backup<R: CatalogRow>(_ row: R) -> Backup {
        var object: StoredObject?
        if let key = row.text("object_key"), let size = row.integer("size_bytes"), let checksum = row.text("checksum") {
            object = StoredObject(
                key: key, sizeBytes: size, checksum: checksum, storedBytes: row.int64("stored_bytes"),
                tableCounts: row.text("table_counts").flatMap(TableCounts.parse(json:)))
        }
        var backup = Backup(
            id: row.string("id"), accountID: row.string("account_id"), databaseID: row.string("database_id"), name: row.string("name"),
            type: BackupType(rawValue: row.string("type"))!, status: BackupStatus(rawValue: row.string("status"))!,
            engine: EngineKind(rawValue: row.string("engine")) ?? .sqlite, createdAt: row.date("created_at"),
            startedAt: row.optionalDate("started_at"), completedAt: row.optionalDate("completed_at"),
            expiresAt: row.optionalDate("expires_at"), scheduledDay: row.text("scheduled_day"), object: object,
            error: errorInfo(row), integrity: BackupIntegrity(rawValue: row.string("integrity")) ?? .unverified,
            verifiedAt: row.optionalDate("verified_at"))
        backup.progress = progress(row, started: backup.startedAt)
        backup.lastDrill = drill(row)
        return backup
    }

    static func restore<R: CatalogRow>(_ row: R) -> Restore {
        var restore = Restore(
            id: row.string("id"), accountID: row.string("account_id"), backupID: row.string("backup_id"),
            sourceDatabaseID: row.string("source_database_id"), targetDatabaseID: row.string("target_database_id"),
            status: RestoreStatus(rawValue: row.string("status"))!, createdAt: row.date("created_at"),
            completedAt: row.optionalDate("completed_at"), error: errorInfo(row))
        restore.progress = progress(row, started: nil)
        return restore
    }

    /// The last drill recorded on a backup or database row.
    static func drill<R: CatalogRow>(_ row: R) -> DrillResult? {
        guard let at = row.integer("drill_at"), let result = DrillOutcome(rawValue: row.string("drill_result")) else { return nil }
        let error = row.text("drill_error_code").map { ErrorInfo(code: $0, message: row.text("drill_error_message") ?? "") }
        return DrillResult(at: CloudheedStorage.date(at), result: result, durationMs: row.int64("drill_duration_ms"), error: error)
    }

    /// Webhooks keep their events as ",backup.failed,restore.failed,": one substring test finds an event's subscribers.
    static func webhookEvents(_ events: [WebhookEvent]) -> String {
        "," + events.map(\.rawValue).joined(separator: ",") + ","
    }

    static func webhook<R: CatalogRow>(_ row: R) -> Webhook {
        let events = row.string("events").split(separator: ",").compactMap { WebhookEvent(rawValue: String($0)) }
        return Webhook(
            id: row.string("id"), accountID: row.string("account_id"), url: row.string("url"), events: events,
            description: row.text("description"), createdAt: row.date("created_at"))
    }

    static func deliveryAttempt<R: CatalogRow>(_ row: R) -> DeliveryAttempt {
        DeliveryAttempt(at: row.date("at"), statusCode: row.integer("status_code").map(Int.init), error: row.text("error"), durationMs: row.int64("duration_ms"))
    }

    static func delivery<R: CatalogRow>(_ row: R, attempts: [DeliveryAttempt]) -> WebhookDelivery {
        WebhookDelivery(
            id: row.string("id"), webhookID: row.string("webhook_id"), event: WebhookEvent(rawValue: row.string("event")) ?? .backupFailed,
            status: DeliveryStatus(rawValue: row.string("status")) ?? .pending, createdAt: row.date("created_at"),
            nextAttemptAt: row.optionalDate("next_attempt_at"), deliveredAt: row.optionalDate("delivered_at"), attempts: attempts)
    }

    /// A claimed delivery: the delivery's columns with its webhook's and the count of attempts made.
    static func dueDelivery<R: CatalogRow>(_ row: R) -> DueDelivery? {
        guard let event = WebhookEvent(rawValue: row.string("event")) else { return nil }
        return DueDelivery(
            id: row.string("id"), webhookID: row.string("webhook_id"), accountID: row.string("account_id"), url: row.string("url"), event: event,
            payload: row.string("payload"), sealedSecret: row.bytes("sealed_secret") ?? [], createdAt: row.date("created_at"),
            attempt: row.int("attempts") + 1)
    }

    static func chunkID<R: CatalogRow>(_ row: R, _ column: String = "id") -> ChunkID {
        (row.bytes(column) ?? []).withUnsafeBytes { ChunkID(raw: $0) }
    }

    static func chunkLocation<R: CatalogRow>(_ row: R) -> ChunkLocation {
        ChunkLocation(
            id: chunkID(row), packID: row.string("pack_id"), offset: row.int("offset"), length: row.int("length"), storedLength: row.int("stored_length"))
    }

    static func pack<R: CatalogRow>(_ row: R) -> PackRecord {
        PackRecord(id: row.string("id"), accountID: row.string("account_id"), storedSize: row.int("stored_size"), plainSize: row.int("plain_size"), createdAt: row.date("created_at"))
    }

    static func layer<R: CatalogRow>(_ row: R) -> LayerRecord {
        LayerRecord(
            id: row.string("id"), accountID: row.string("account_id"), parentID: row.text("parent_id"), depth: row.int("depth"),
            kind: LayerRecord.Kind(rawValue: row.string("kind"))!, pageSize: row.int("page_size"), entryCount: row.int("entry_count"),
            logicalSize: row.int64("logical_size"), storedBytes: row.int64("stored_bytes"), objectChecksum: row.string("object_checksum"),
            segments: row.int("segments"), createdAt: row.date("created_at"))
    }
}
