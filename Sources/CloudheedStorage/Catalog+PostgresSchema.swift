import Foundation
import Logging
import PostgresNIO

/// The PostgreSQL catalog's schema, as versioned migrations. The tables and columns are those of
/// the SQLite catalog after its migrations (timestamps as BIGINT milliseconds since 1970, so both
/// catalogs share their row mapping); the PostgreSQL history starts at that shape.
///
/// Migrations run at start under a transaction-scoped advisory lock, so several nodes starting
/// at once apply each one exactly once; PostgreSQL's DDL is transactional, so a migration is
/// applied whole or not at all.
extension PostgresCatalog {
    /// `pg_advisory_xact_lock` key of the migrations ("chd-migr").
    static let migrationLock: Int64 = 0x6368_642D_6D69_6772

    static let migrations: [(name: String, statements: [String])] = [
        ("v1-catalog", [
            """
            CREATE TABLE accounts (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                storage_quota_bytes BIGINT NOT NULL CHECK (storage_quota_bytes >= 0),
                created_at BIGINT NOT NULL,
                deleted_at BIGINT
            )
            """,
            """
            CREATE TABLE tokens (
                id TEXT PRIMARY KEY,
                account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
                secret_hash BYTEA NOT NULL,
                created_at BIGINT NOT NULL
            )
            """,
            """
            CREATE TABLE databases (
                seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                id TEXT NOT NULL UNIQUE,
                account_id TEXT NOT NULL REFERENCES accounts(id),
                name TEXT NOT NULL,
                tier TEXT NOT NULL CHECK (tier IN ('free','micro','small','medium','large','xlarge')),
                engine TEXT NOT NULL,
                status TEXT NOT NULL CHECK (status IN ('creating','restoring','available','failed','deleted')),
                window_start_minute BIGINT NOT NULL CHECK (window_start_minute BETWEEN 0 AND 1439),
                window_minutes BIGINT NOT NULL CHECK (window_minutes BETWEEN 30 AND 1439),
                location TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                deleted_at BIGINT,
                next_backup_at BIGINT NOT NULL,
                error_code TEXT,
                error_message TEXT,
                restore_drills TEXT NOT NULL DEFAULT 'weekly' CHECK (restore_drills IN ('off','weekly','daily')),
                next_drill_at BIGINT,
                drill_at BIGINT,
                drill_result TEXT CHECK (drill_result IN ('passed','failed')),
                drill_duration_ms BIGINT,
                drill_error_code TEXT,
                drill_error_message TEXT,
                drill_backup_id TEXT
            )
            """,
            "CREATE UNIQUE INDEX databases_live_name ON databases(account_id, name) WHERE status <> 'deleted'",
            "CREATE INDEX databases_by_account ON databases(account_id, created_at)",
            "CREATE INDEX databases_due ON databases(next_backup_at) WHERE status = 'available'",
            "CREATE INDEX databases_drill_due ON databases(next_drill_at) WHERE status = 'available' AND next_drill_at IS NOT NULL",
            """
            CREATE TABLE backups (
                seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                id TEXT NOT NULL UNIQUE,
                account_id TEXT NOT NULL REFERENCES accounts(id),
                database_id TEXT NOT NULL REFERENCES databases(id),
                name TEXT NOT NULL,
                type TEXT NOT NULL CHECK (type IN ('automatic','manual')),
                status TEXT NOT NULL CHECK (status IN ('pending','in_progress','completed','failed')),
                engine TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                started_at BIGINT,
                completed_at BIGINT,
                expires_at BIGINT,
                scheduled_day TEXT,
                object_key TEXT,
                size_bytes BIGINT,
                checksum TEXT,
                error_code TEXT,
                error_message TEXT,
                stored_bytes BIGINT,
                integrity TEXT NOT NULL DEFAULT 'unverified' CHECK (integrity IN ('unverified','verified','corrupt')),
                verified_at BIGINT,
                progress_done BIGINT,
                progress_total BIGINT,
                progress_started_at BIGINT,
                table_counts TEXT,
                drill_at BIGINT,
                drill_result TEXT CHECK (drill_result IN ('passed','failed')),
                drill_duration_ms BIGINT,
                drill_error_code TEXT,
                drill_error_message TEXT,
                CHECK ((type = 'automatic') = (scheduled_day IS NOT NULL)),
                CHECK (status <> 'completed' OR (object_key IS NOT NULL AND size_bytes IS NOT NULL AND checksum IS NOT NULL))
            )
            """,
            // The guarantee of one automatic backup per database and day, whatever number of nodes schedule.
            "CREATE UNIQUE INDEX backups_one_automatic_per_day ON backups(database_id, scheduled_day) WHERE scheduled_day IS NOT NULL",
            "CREATE INDEX backups_by_database ON backups(database_id, created_at, seq)",
            "CREATE INDEX backups_expiry ON backups(expires_at) WHERE expires_at IS NOT NULL",
            "CREATE INDEX backups_manual_usage ON backups(account_id) WHERE type = 'manual' AND status = 'completed'",
            "CREATE INDEX backups_running ON backups(started_at) WHERE status = 'in_progress'",
            """
            CREATE TABLE restores (
                seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                id TEXT NOT NULL UNIQUE,
                account_id TEXT NOT NULL REFERENCES accounts(id),
                backup_id TEXT NOT NULL,
                source_database_id TEXT NOT NULL REFERENCES databases(id),
                target_database_id TEXT NOT NULL REFERENCES databases(id),
                status TEXT NOT NULL CHECK (status IN ('pending','in_progress','completed','failed')),
                created_at BIGINT NOT NULL,
                completed_at BIGINT,
                error_code TEXT,
                error_message TEXT,
                progress_done BIGINT,
                progress_total BIGINT,
                progress_started_at BIGINT
            )
            """,
            "CREATE INDEX restores_active_by_backup ON restores(backup_id) WHERE status IN ('pending','in_progress')",
            """
            CREATE TABLE jobs (
                seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                id TEXT NOT NULL UNIQUE,
                kind TEXT NOT NULL CHECK (kind IN ('backup','restore','verify','drill')),
                subject_id TEXT NOT NULL,
                status TEXT NOT NULL CHECK (status IN ('pending','running')),
                attempts BIGINT NOT NULL DEFAULT 0,
                lease_token TEXT,
                lease_expires_at BIGINT,
                created_at BIGINT NOT NULL,
                UNIQUE (kind, subject_id)
            )
            """,
            "CREATE INDEX jobs_pending ON jobs(kind, seq) WHERE status = 'pending'",
            "CREATE INDEX jobs_leases ON jobs(lease_expires_at) WHERE status = 'running'",
            """
            CREATE TABLE account_keys (
                account_id TEXT PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
                wrapped_key BYTEA NOT NULL,
                created_at BIGINT NOT NULL
            )
            """,
            """
            CREATE TABLE packs (
                id TEXT PRIMARY KEY,
                account_id TEXT NOT NULL,
                stored_size BIGINT NOT NULL,
                plain_size BIGINT NOT NULL,
                created_at BIGINT NOT NULL
            )
            """,
            "CREATE INDEX packs_by_account ON packs(account_id)",
            """
            CREATE TABLE chunks (
                account_id TEXT NOT NULL,
                id BYTEA NOT NULL,
                pack_id TEXT NOT NULL REFERENCES packs(id),
                "offset" BIGINT NOT NULL,
                length BIGINT NOT NULL,
                stored_length BIGINT NOT NULL,
                created_at BIGINT NOT NULL,
                PRIMARY KEY (account_id, id)
            )
            """,
            "CREATE INDEX chunks_by_pack ON chunks(pack_id)",
            """
            CREATE TABLE layers (
                id TEXT PRIMARY KEY,
                account_id TEXT NOT NULL,
                parent_id TEXT REFERENCES layers(id),
                depth BIGINT NOT NULL,
                kind TEXT NOT NULL CHECK (kind IN ('pages-full','pages-delta','stream')),
                page_size BIGINT NOT NULL,
                entry_count BIGINT NOT NULL,
                logical_size BIGINT NOT NULL,
                stored_bytes BIGINT NOT NULL,
                object_checksum TEXT NOT NULL,
                refs BIGINT NOT NULL DEFAULT 0,
                created_at BIGINT NOT NULL,
                segments BIGINT NOT NULL DEFAULT 0
            )
            """,
            "CREATE INDEX layers_unreferenced ON layers(created_at) WHERE refs <= 0",
            "CREATE INDEX layers_by_parent ON layers(parent_id)",
            """
            CREATE TABLE layer_chunks (
                layer_id TEXT NOT NULL REFERENCES layers(id) ON DELETE CASCADE,
                account_id TEXT NOT NULL,
                chunk_id BYTEA NOT NULL,
                PRIMARY KEY (layer_id, chunk_id)
            )
            """,
            "CREATE INDEX layer_chunks_by_chunk ON layer_chunks(account_id, chunk_id)",
            """
            CREATE TABLE garbage_objects (
                key TEXT PRIMARY KEY,
                deletable_at BIGINT NOT NULL
            )
            """,
            """
            CREATE TABLE webhooks (
                seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                id TEXT NOT NULL UNIQUE,
                account_id TEXT NOT NULL REFERENCES accounts(id),
                url TEXT NOT NULL,
                events TEXT NOT NULL,
                description TEXT,
                sealed_secret BYTEA NOT NULL,
                created_at BIGINT NOT NULL
            )
            """,
            "CREATE INDEX webhooks_by_account ON webhooks(account_id, seq)",
            """
            CREATE TABLE webhook_deliveries (
                seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                id TEXT NOT NULL UNIQUE,
                webhook_id TEXT NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
                event TEXT NOT NULL,
                payload TEXT NOT NULL,
                status TEXT NOT NULL CHECK (status IN ('pending','delivered','failed')),
                created_at BIGINT NOT NULL,
                next_attempt_at BIGINT,
                locked_until BIGINT,
                delivered_at BIGINT,
                CHECK ((status = 'pending') = (next_attempt_at IS NOT NULL))
            )
            """,
            "CREATE INDEX webhook_deliveries_due ON webhook_deliveries(next_attempt_at) WHERE status = 'pending'",
            "CREATE INDEX webhook_deliveries_by_webhook ON webhook_deliveries(webhook_id, seq)",
            """
            CREATE TABLE webhook_attempts (
                delivery_id TEXT NOT NULL REFERENCES webhook_deliveries(id) ON DELETE CASCADE,
                n BIGINT NOT NULL,
                at BIGINT NOT NULL,
                status_code BIGINT,
                error TEXT,
                duration_ms BIGINT NOT NULL,
                PRIMARY KEY (delivery_id, n)
            )
            """,
        ]),
        // The version the API's backup-list cache is checked against (`AccessCheck.databaseVersion`
        // says when it moves). Statement-level triggers where a statement changes many rows, so a
        // database is raised once per statement; rows are upserted in key order, so two
        // statements lock them in one order.
        ("v2-versions", [
            "CREATE TABLE database_versions (database_id TEXT PRIMARY KEY, version BIGINT NOT NULL)",
            "CREATE INDEX backups_by_object ON backups(object_key) WHERE object_key IS NOT NULL",
            """
            CREATE FUNCTION chd_backups_changed() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO database_versions AS v (database_id, version)
                    SELECT DISTINCT database_id, 1 FROM changed_rows ORDER BY database_id
                    ON CONFLICT (database_id) DO UPDATE SET version = v.version + 1;
                RETURN NULL;
            END $$
            """,
            // The backups whose layer is now the only one to reference a chunk whose reference
            // was just added (it is shared now) or removed (one layer alone is left with it).
            """
            CREATE FUNCTION chd_references_changed() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO database_versions AS v (database_id, version)
                    SELECT DISTINCT b.database_id, 1 FROM changed_rows n
                    CROSS JOIN LATERAL (
                        SELECT min(o.layer_id) AS layer_id FROM (
                            SELECT layer_id FROM layer_chunks WHERE account_id = n.account_id AND chunk_id = n.chunk_id
                              AND layer_id <> n.layer_id LIMIT 2) o
                        HAVING count(*) = 1) sole
                    JOIN backups b ON b.object_key = sole.layer_id
                    ORDER BY 1
                    ON CONFLICT (database_id) DO UPDATE SET version = v.version + 1;
                RETURN NULL;
            END $$
            """,
            """
            CREATE FUNCTION chd_layer_refs_changed() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO database_versions AS v (database_id, version)
                    SELECT DISTINCT database_id, 1 FROM backups WHERE object_key = NEW.id ORDER BY 1
                    ON CONFLICT (database_id) DO UPDATE SET version = v.version + 1;
                RETURN NULL;
            END $$
            """,
            "CREATE TRIGGER backups_inserted AFTER INSERT ON backups REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION chd_backups_changed()",
            "CREATE TRIGGER backups_updated AFTER UPDATE ON backups REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION chd_backups_changed()",
            "CREATE TRIGGER backups_deleted AFTER DELETE ON backups REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION chd_backups_changed()",
            "CREATE TRIGGER layer_chunks_inserted AFTER INSERT ON layer_chunks REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION chd_references_changed()",
            "CREATE TRIGGER layer_chunks_deleted AFTER DELETE ON layer_chunks REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION chd_references_changed()",
            "CREATE TRIGGER layers_refs_changed AFTER UPDATE OF refs ON layers FOR EACH ROW WHEN (OLD.refs IS DISTINCT FROM NEW.refs) EXECUTE FUNCTION chd_layer_refs_changed()",
        ]),
    ]

    /// Applies the migrations `client`'s database has not had yet, in one transaction under the
    /// migration lock; returns their names.
    static func runMigrations(on connection: PostgresConnection, logger: Logger) async throws -> [String] {
        try await connection.run("BEGIN", logger)
        do {
            try await connection.run("SELECT pg_advisory_xact_lock(\(migrationLock))", logger)
            try await connection.run(
                "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())", logger)
            var applied = Set<String>()
            for try await name in try await connection.query("SELECT name FROM schema_migrations", logger: logger).decode(String.self) {
                applied.insert(name)
            }
            var ran: [String] = []
            for migration in migrations where !applied.contains(migration.name) {
                for statement in migration.statements {
                    try await connection.run(PostgresQuery(unsafeSQL: statement), logger)
                }
                try await connection.run("INSERT INTO schema_migrations (name) VALUES (\(migration.name))", logger)
                ran.append(migration.name)
            }
            try await connection.run("COMMIT", logger)
            return ran
        } catch {
            try? await connection.run("ROLLBACK", logger)
            throw error
        }
    }
}
