import CloudheedDomain
import Foundation
import Testing

func utc(_ text: String) -> Date {
    let formatter = ISO8601DateFormatter()
    formatter.timeZone = TimeZone(identifier: "UTC")
    return formatter.date(from: text)!
}

@Suite("Backup windows")
struct BackupWindowTests {
    @Test("Valid windows parse and print back", arguments: ["03:00-04:00", "23:30-00:15", "00:00-00:30", "12:00-11:59", "22:00-06:00"])
    func validWindows(_ text: String) throws {
        #expect(try BackupWindow.parse(text).description == text)
    }

    @Test("Invalid windows are refused with invalid_backup_window",
          arguments: ["", "03:00", "03:00-03:29", "03:00-03:00", "24:00-01:00", "03:60-04:00", "3:00-04:00", "03:00-4:00", "03:00–04:00", "ab:cd-ef:gh", "03:00-04:00-05:00", " 03:00-04:00"])
    func invalidWindows(_ text: String) {
        #expect(throws: DomainError.invalidField("backup_window", "backup_window must look like HH:MM-HH:MM (UTC) and span at least 30 minutes; got '\(text)'")) {
            try BackupWindow.parse(text)
        }
    }

    @Test("A window crossing midnight contains times on both sides and belongs to the day it opened")
    func midnight() throws {
        let window = try BackupWindow.parse("23:30-00:30")
        #expect(window.durationMinutes == 60)
        #expect(window.contains(utc("2026-03-17T23:45:00Z")))
        #expect(window.contains(utc("2026-03-18T00:10:00Z")))
        #expect(!window.contains(utc("2026-03-18T00:30:00Z")))
        #expect(!window.contains(utc("2026-03-17T23:29:59Z")))
        #expect(window.latestStart(atOrBefore: utc("2026-03-18T00:10:00Z")) == utc("2026-03-17T23:30:00Z"))
        #expect(window.latestStart(atOrBefore: utc("2026-03-17T23:30:00Z")) == utc("2026-03-17T23:30:00Z"))
    }

    @Test("A new database's first due occurrence is the open window, else the next one")
    func firstDue() throws {
        let window = try BackupWindow.parse("03:00-04:00")
        #expect(window.firstDueStart(createdAt: utc("2026-03-17T03:30:00Z")) == utc("2026-03-17T03:00:00Z"))
        #expect(window.firstDueStart(createdAt: utc("2026-03-17T04:00:00Z")) == utc("2026-03-18T03:00:00Z"))
        #expect(window.firstDueStart(createdAt: utc("2026-03-17T02:59:00Z")) == utc("2026-03-17T03:00:00Z"))
    }

    @Test("Default windows are one hour, deterministic per id, and spread over the day")
    func defaults() {
        let ids = (0..<2000).map { "db-\($0)" }
        let windows = ids.map(BackupWindow.defaultWindow(forDatabaseID:))
        #expect(windows.allSatisfy { $0.durationMinutes == 60 && $0.startMinute % 30 == 0 })
        #expect(ids.map(BackupWindow.defaultWindow(forDatabaseID:)) == windows)
        let perSlot = Dictionary(grouping: windows, by: \.startMinute).mapValues(\.count)
        #expect(perSlot.count == 48)
        // Roughly even: 2000 / 48 ≈ 42 per slot.
        #expect(perSlot.values.allSatisfy { (15...80).contains($0) })
    }
}

@Suite("Tiers, names and formats")
struct DomainRuleTests {
    @Test("Retention per tier matches the documentation page")
    func retention() {
        let days = Dictionary(uniqueKeysWithValues: Tier.allCases.map { ($0.rawValue, $0.retentionDays) })
        #expect(days == ["free": 1, "micro": 7, "small": 14, "medium": 14, "large": 30, "xlarge": 30])
        #expect(Tier.micro.retention == .seconds(7 * 86_400))
        #expect(throws: DomainError.self) { try Tier.parse("gold") }
    }

    @Test("Database names: lowercase letters, digits, hyphens, starting with a letter, 1-63 characters")
    func names() {
        for good in ["a", "shop", "shop-2", String(repeating: "a", count: 63)] {
            #expect(throws: Never.self) { try DatabaseName.validate(good) }
        }
        for bad in ["", "Shop", "2shop", "-shop", "shop_db", "shöp", "shop db", String(repeating: "a", count: 64)] {
            #expect(throws: DomainError.self) { try DatabaseName.validate(bad) }
        }
    }

    @Test("A restore's default name is source + UTC stamp, and always a valid name")
    func restoreName() throws {
        let at = utc("2026-03-17T10:00:05Z")
        #expect(DatabaseName.restoreDefault(sourceName: "shop", at: at) == "shop-20260317-100005")
        let long = DatabaseName.restoreDefault(sourceName: String(repeating: "a", count: 46) + "-" + String(repeating: "b", count: 16), at: at)
        #expect(long.count <= 63)
        try DatabaseName.validate(long)
    }

    @Test("Timestamps are RFC 3339 UTC with a Z")
    func formats() {
        #expect(UTCFormat.rfc3339(utc("2026-03-17T03:00:00Z")) == "2026-03-17T03:00:00Z")
        #expect(UTCFormat.rfc3339(utc("2026-03-17T03:00:00Z").addingTimeInterval(0.999)) == "2026-03-17T03:00:00Z")
        #expect(UTCFormat.day(utc("2026-12-31T23:59:59Z")) == "2026-12-31")
        #expect(UTCFormat.compactStamp(utc("2026-01-02T03:04:05Z")) == "20260102-030405")
    }

    @Test("Only finished manual backups are deletable; only completed ones restorable")
    func backupRules() {
        func backup(_ type: BackupType, _ status: BackupStatus) -> Backup {
            Backup(id: "b", accountID: "a", databaseID: "d", name: "n", type: type, status: status, engine: .sqlite,
                   createdAt: Date(), expiresAt: nil, object: status == .completed ? StoredObject(key: "k", sizeBytes: 1, checksum: "c") : nil)
        }
        #expect(throws: DomainError.automaticBackupNotDeletable) { try backup(.automatic, .completed).checkDeletable() }
        #expect(throws: DomainError.backupRunning) { try backup(.manual, .inProgress).checkDeletable() }
        #expect(throws: DomainError.backupRunning) { try backup(.manual, .pending).checkDeletable() }
        #expect(throws: Never.self) { try backup(.manual, .failed).checkDeletable() }
        #expect(throws: Never.self) { try backup(.manual, .completed).checkDeletable() }
        #expect(throws: DomainError.self) { try backup(.manual, .failed).checkRestorable() }
        #expect(throws: Never.self) { try backup(.automatic, .completed).checkRestorable() }
    }

    @Test("Seeded ids repeat; secure ids do not")
    func ids() {
        #expect(SeededIDGenerator(seed: 7).make(.backup) == SeededIDGenerator(seed: 7).make(.backup))
        let secure = SecureIDGenerator()
        #expect(Set((0..<1000).map { _ in secure.make(.database) }).count == 1000)
        #expect(secure.make(.database).hasPrefix("db-"))
    }
}
