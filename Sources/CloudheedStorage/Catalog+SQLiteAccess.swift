import CloudheedDomain
import Foundation
import GRDB
import Synchronization

/// The version counter and the access check of the SQLite catalog.
///
/// `database_versions.version` is raised by triggers, in the transaction of the change, whenever
/// anything a database's backup list shows may have changed (`AccessCheck.databaseVersion`
/// says when), so no write path can forget to. The API caches a rendered backup list under it and
/// serves it while it is unchanged.
///
/// The access check (token, account, database version) is answered from memory while no
/// transaction has changed the tables it reads: this process is the catalog's only writer (the
/// data directory lock), and a transaction observer counts the commits that touch those tables.
/// An answer is kept with the count it was read under and used only while the count is the same;
/// a commit's count is raised before its `write` returns, so a request that starts after a change
/// was acknowledged never sees the state before it.
extension SQLiteCatalog {
    static func registerVersionsMigration(_ migrator: inout DatabaseMigrator) {
        migrator.registerMigration("v8-versions") { db in
            // Rows are never deleted, so a counter never goes back to a value a cache has seen.
            try db.execute(sql: """
                CREATE TABLE database_versions (database_id TEXT PRIMARY KEY, version INTEGER NOT NULL);
                CREATE INDEX backups_by_object ON backups(object_key) WHERE object_key IS NOT NULL;
                """)
            let bump = { (databases: String) in
                "INSERT INTO database_versions (database_id, version) \(databases) ON CONFLICT (database_id) DO UPDATE SET version = version + 1;"
            }
            // The backups whose layer is now the only one to reference the chunk (the reference
            // just added made it shared, or the one just removed left it to that layer alone).
            let soleOtherLayer = { (row: String) in
                bump("""
                    SELECT DISTINCT b.database_id, 1 FROM backups b WHERE b.object_key = (
                        SELECT min(layer_id) FROM (
                            SELECT layer_id FROM layer_chunks WHERE account_id = \(row).account_id AND chunk_id = \(row).chunk_id
                              AND layer_id <> \(row).layer_id LIMIT 2)
                        HAVING count(*) = 1)
                    """)
            }
            for (name, event, table, body) in [
                ("backups_changed_insert", "INSERT", "backups", bump("VALUES (NEW.database_id, 1)")),
                ("backups_changed_update", "UPDATE", "backups", bump("VALUES (NEW.database_id, 1)")),
                ("backups_changed_delete", "DELETE", "backups", bump("VALUES (OLD.database_id, 1)")),
                ("layer_chunks_changed_insert", "INSERT", "layer_chunks", soleOtherLayer("NEW")),
                ("layer_chunks_changed_delete", "DELETE", "layer_chunks", soleOtherLayer("OLD")),
                ("layers_changed_refs", "UPDATE OF refs", "layers", bump("SELECT DISTINCT database_id, 1 FROM backups WHERE object_key = NEW.id")),
            ] {
                try db.execute(sql: "CREATE TRIGGER \(name) AFTER \(event) ON \(table) BEGIN \(body) END")
            }
        }
    }

    static let accessCheckSQL = CatalogRows.accessCheckSQL.replacingOccurrences(of: "$", with: "?")

    public func accessCheck(tokenID: String, databaseID: String?) async throws -> AccessCheck? {
        let key = AccessMemo.Key(tokenID: tokenID, databaseID: databaseID)
        let generation = changes.generation.load(ordering: .acquiring)
        if let remembered = memo.answer(for: key, generation: generation) { return remembered }
        let answer = try await pool.read { db in
            try Row.fetchOne(
                db.cachedStatement(sql: Self.accessCheckSQL), arguments: [tokenID, databaseID]
            ).map(CatalogRows.accessCheck)
        }
        memo.remember(answer, for: key, generation: generation)
        return answer
    }
}

/// Counts the committed transactions that changed a table the access check reads.
final class CatalogChangeCounter: TransactionObserver, Sendable {
    static let tables: Set<String> = ["tokens", "accounts", "databases", "database_versions"]
    let generation = Atomic<Int>(0)
    private let changedInTransaction = Atomic<Bool>(false)

    func observes(eventsOfKind eventKind: DatabaseEventKind) -> Bool { Self.tables.contains(eventKind.tableName) }
    func databaseDidChange() { changedInTransaction.store(true, ordering: .relaxed) }
    func databaseDidChange(with event: DatabaseEvent) { changedInTransaction.store(true, ordering: .relaxed) }
    func databaseDidCommit(_ db: Database) {
        if changedInTransaction.exchange(false, ordering: .relaxed) { generation.add(1, ordering: .releasing) }
    }
    func databaseDidRollback(_ db: Database) { changedInTransaction.store(false, ordering: .relaxed) }
}

/// Access-check answers with the change count they were read under.
final class AccessMemo: Sendable {
    struct Key: Hashable, Sendable {
        var tokenID: String
        var databaseID: String?
    }

    /// Answers kept at most; the whole memo is dropped when it is full (it refills from one read each).
    static let capacity = 100_000
    private let entries = Mutex<[Key: (generation: Int, answer: AccessCheck?)]>([:])

    func answer(for key: Key, generation: Int) -> AccessCheck?? {
        entries.withLock { entries in
            guard let entry = entries[key], entry.generation == generation else { return nil }
            return .some(entry.answer)
        }
    }

    /// Only answers that found the token are kept: ids nobody issued do not fill the memo.
    func remember(_ answer: AccessCheck?, for key: Key, generation: Int) {
        guard answer != nil else { return }
        entries.withLock { entries in
            if entries.count >= Self.capacity { entries.removeAll(keepingCapacity: true) }
            entries[key] = (generation, answer)
        }
    }
}
