import CloudheedDomain
import Foundation
import GRDB

/// Restore drills: when each database's next one is due, the drill jobs, and what each found,
/// kept on the backup drilled and on its database.
extension SQLiteCatalog {
    static func registerDrillMigration(_ migrator: inout DatabaseMigrator) {
        migrator.registerMigration("v7-drills") { db in
            try db.execute(sql: """
                ALTER TABLE databases ADD COLUMN restore_drills TEXT NOT NULL DEFAULT 'weekly' CHECK (restore_drills IN ('off','weekly','daily'));
                ALTER TABLE databases ADD COLUMN next_drill_at INTEGER;
                UPDATE databases SET next_drill_at = next_backup_at + 7200000 WHERE status <> 'deleted';
                CREATE INDEX databases_drill_due ON databases(next_drill_at) WHERE status = 'available' AND next_drill_at IS NOT NULL;
                ALTER TABLE backups ADD COLUMN table_counts TEXT;
                """)
            for table in ["databases", "backups"] {
                try db.execute(sql: """
                    ALTER TABLE \(table) ADD COLUMN drill_at INTEGER;
                    ALTER TABLE \(table) ADD COLUMN drill_result TEXT CHECK (drill_result IN ('passed','failed'));
                    ALTER TABLE \(table) ADD COLUMN drill_duration_ms INTEGER;
                    ALTER TABLE \(table) ADD COLUMN drill_error_code TEXT;
                    ALTER TABLE \(table) ADD COLUMN drill_error_message TEXT;
                    """)
            }
            try db.execute(sql: "ALTER TABLE databases ADD COLUMN drill_backup_id TEXT")
            // A CHECK cannot be altered in SQLite: the jobs table is rebuilt to admit drills.
            try db.execute(sql: """
                CREATE TABLE jobs_v7 (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    id TEXT NOT NULL UNIQUE,
                    kind TEXT NOT NULL CHECK (kind IN ('backup','restore','verify','drill')),
                    subject_id TEXT NOT NULL,
                    status TEXT NOT NULL CHECK (status IN ('pending','running')),
                    attempts INTEGER NOT NULL DEFAULT 0,
                    lease_token TEXT,
                    lease_expires_at INTEGER,
                    created_at INTEGER NOT NULL,
                    UNIQUE (kind, subject_id)
                );
                INSERT INTO jobs_v7 SELECT * FROM jobs;
                DROP TABLE jobs;
                ALTER TABLE jobs_v7 RENAME TO jobs;
                CREATE INDEX jobs_pending ON jobs(kind, seq) WHERE status = 'pending';
                CREATE INDEX jobs_leases ON jobs(lease_expires_at) WHERE status = 'running';
                """)
        }
    }

    public func dueDrills(now: Date, limit: Int) async throws -> [ManagedDatabase] {
        try await pool.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT * FROM databases WHERE status = 'available' AND restore_drills <> 'off' AND next_drill_at IS NOT NULL AND next_drill_at <= ?
                    ORDER BY next_drill_at LIMIT ?
                    """,
                arguments: [ms(now), limit]
            ).map(CatalogRows.database)
        }
    }

    public func enqueueDrill(databaseID: String, jobID: String, now: Date, next: Date, retryWithoutBackup: Date) async throws -> String? {
        try await pool.write { db in
            // Re-checked here: the database may have been deleted, or drills turned off, since it was read.
            guard try Bool.fetchOne(
                db,
                sql: "SELECT 1 FROM databases WHERE id = ? AND status = 'available' AND restore_drills <> 'off' AND next_drill_at IS NOT NULL AND next_drill_at <= ?",
                arguments: [databaseID, ms(now)]) != nil
            else { return nil }
            guard let backupID = try String.fetchOne(
                db,
                sql: "SELECT id FROM backups WHERE database_id = ? AND status = 'completed' ORDER BY completed_at DESC, seq DESC LIMIT 1",
                arguments: [databaseID])
            else {
                try db.execute(sql: "UPDATE databases SET next_drill_at = ? WHERE id = ?", arguments: [ms(retryWithoutBackup), databaseID])
                return nil
            }
            try db.execute(sql: "UPDATE databases SET next_drill_at = ? WHERE id = ?", arguments: [ms(next), databaseID])
            try db.execute(
                sql: "INSERT INTO jobs (id, kind, subject_id, status, created_at) VALUES (?, 'drill', ?, 'pending', ?) ON CONFLICT DO NOTHING",
                arguments: [jobID, backupID, ms(now)])
            return db.changesCount == 1 ? backupID : nil
        }
    }

    /// Records a drill's result on the backup and its database, and alerts when it failed.
    static func applyDrill(_ result: DrillResult, backupID: String, _ db: GRDB.Database) throws -> Bool {
        guard let row = try Row.fetchOne(db, sql: "SELECT * FROM backups WHERE id = ?", arguments: [backupID]) else { return false }
        let backup = CatalogRows.backup(row)
        let values: StatementArguments = [ms(result.at), result.result.rawValue, result.durationMs, result.error?.code, result.error?.message]
        try db.execute(
            sql: "UPDATE backups SET drill_at = ?, drill_result = ?, drill_duration_ms = ?, drill_error_code = ?, drill_error_message = ? WHERE id = ?",
            arguments: values + [backupID])
        try db.execute(
            sql: """
                UPDATE databases SET drill_at = ?, drill_result = ?, drill_duration_ms = ?, drill_error_code = ?, drill_error_message = ?,
                    drill_backup_id = ? WHERE id = ?
                """,
            arguments: values + [backupID, backup.databaseID])
        if result.result == .failed {
            try enqueueEvent(.drillFailed, accountID: backup.accountID, at: result.at, data: WebhookPayload.drill(backup: backup, drill: result), db)
        }
        return true
    }
}
