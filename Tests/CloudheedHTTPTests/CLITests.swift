import CloudheedDomain
import CloudheedHTTP
import CloudheedTestSupport
import Foundation
import GRDB
import Subprocess
import SystemPackage
import Testing

/// What one run of the client printed and how it exited.
struct CLIRun: Sendable {
    let status: TerminationStatus
    let stdout: String
    let stderr: String

    var json: JSONValue? { try? JSONValue.parse(Array(stdout.utf8)) }
    var lines: [Substring] { stdout.split(separator: "\n") }
}

/// The client as a script runs it: the service and the token from the environment.
struct CLI: Sendable {
    let url: String
    let token: String?

    var environment: Environment { .inherit.updating(["CLOUDHEED_URL": url, "CLOUDHEED_TOKEN": token]) }

    func run(_ arguments: String...) async throws -> CLIRun {
        let result = try await Subprocess.run(
            .path(FilePath(try cloudheedBinary())), arguments: Arguments(arguments), environment: environment,
            input: .none, output: .string(limit: 4 << 20), error: .string(limit: 1 << 20))
        return CLIRun(status: result.terminationStatus, stdout: result.standardOutput, stderr: result.standardError)
    }

    /// Runs with stdout on a pseudo-terminal; returns how it exited and every byte it drew there.
    func runOnTerminal(_ arguments: String...) async throws -> (status: TerminationStatus, drawn: String, stderr: String) {
        let terminal = try PseudoTerminal()
        async let drawn = terminal.readAll()
        let result = try await Subprocess.run(
            .path(FilePath(try cloudheedBinary())), arguments: Arguments(arguments), environment: environment,
            input: .none, output: .fileDescriptor(terminal.takeSlave(), closeAfterSpawningProcess: true), error: .string(limit: 1 << 20))
        return (result.terminationStatus, String(decoding: await drawn, as: UTF8.self), result.standardError)
    }
}

@Suite("The command-line client against the real service")
struct CLITests {
    @Test("Databases and backups through the client: --json documents, tables, --wait to completion, a restore into a new database, verification")
    func workflow() async throws {
        try await withLiveServer { server in
            let token = try await server.account()
            let cli = CLI(url: server.url, token: token)

            // Given a database created through the client, with rows in it
            let created = try await cli.run("databases", "create", "shop", "--tier", "micro", "--backup-window", "03:00-04:00", "--json")
            #expect(created.status == .exited(0), "\(created.stderr)")
            let database = try #require(created.json)
            #expect(database["name"]?.stringValue == "shop")
            #expect(database["tier"]?.stringValue == "micro")
            #expect(database["engine"]?.stringValue == "sqlite")
            #expect(database["backup_window"]?.stringValue == "03:00-04:00")
            #expect(database["status"]?.stringValue == "available")
            let id = try #require(database["id"]?.stringValue)
            try writeRows(path: try filePath(ofURI: database["connection"]?["uri"]?.stringValue), values: ["tea", "cake"])

            // Then it is listed (JSON and table) and shown
            let listed = try await cli.run("databases", "list", "--json")
            #expect(listed.json?["databases"]?.arrayValue?.compactMap { $0["id"]?.stringValue } == [id])
            let table = try await cli.run("databases", "list")
            #expect(table.lines.first?.hasPrefix("ID ") == true, "\(table.stdout)")
            #expect(table.lines.contains { $0.hasPrefix(id) && $0.contains(" shop ") && $0.contains(" available ") }, "\(table.stdout)")
            let shown = try await cli.run("databases", "show", id)
            #expect(shown.lines.contains { $0.wholeMatch(of: /name: +shop/) != nil }, "\(shown.stdout)")
            #expect(shown.lines.contains { $0.wholeMatch(of: /backup_window: +03:00-04:00 UTC/) != nil }, "\(shown.stdout)")

            // When a manual backup is taken with --wait, stdout not a terminal
            let backedUp = try await cli.run("backups", "create", id, "--name", "before-migration", "--wait")
            // Then it ends completed with exit 0, its progress in plain lines, never redrawn
            #expect(backedUp.status == .exited(0), "\(backedUp.stderr)")
            #expect(!backedUp.stdout.contains("\r"))
            let progress = backedUp.lines.filter { $0.hasPrefix("backup-") }
            #expect(progress.last?.contains(": completed") == true, "\(backedUp.stdout)")
            #expect(backedUp.lines.contains { $0.wholeMatch(of: /status: +completed/) != nil }, "\(backedUp.stdout)")

            // And the backups table shows it by name
            let backups = try await cli.run("backups", "list", id)
            #expect(backups.lines.first?.hasPrefix("ID ") == true)
            #expect(backups.lines.contains { $0.contains("before-migration") && $0.contains(" manual ") && $0.contains(" completed ") }, "\(backups.stdout)")
            let backupID = try #require(try await cli.run("backups", "list", id, "--json").json?["backups"]?.arrayValue?.first?["id"]?.stringValue)

            // When it is restored with --wait
            let restored = try await cli.run("backups", "restore", id, backupID, "--target-name", "shop-copy", "--wait", "--json")
            // Then a new database holds its rows, and the original stays
            #expect(restored.status == .exited(0), "\(restored.stderr)")
            let restore = try #require(restored.json)
            #expect(restore["restore"]?["status"]?.stringValue == "completed", "\(restored.stdout)")
            #expect(restore["database"]?["name"]?.stringValue == "shop-copy")
            #expect(restore["database"]?["status"]?.stringValue == "available")
            #expect(try readRows(path: try filePath(ofURI: restore["database"]?["connection"]?["uri"]?.stringValue)) == ["tea", "cake"])
            let names = try await cli.run("databases", "list", "--json").json?["databases"]?.arrayValue?.compactMap { $0["name"]?.stringValue }
            #expect(names == ["shop", "shop-copy"])
            let restoreID = try #require(restore["restore"]?["id"]?.stringValue)
            #expect(try await cli.run("restores", "show", restoreID, "--json").json?["restore"]?["status"]?.stringValue == "completed")

            // When it is verified with --wait, twice in a row
            let verified = try await cli.run("backups", "verify", id, backupID, "--wait", "--json")
            #expect(verified.status == .exited(0), "\(verified.stderr)")
            #expect(verified.json?["integrity"]?.stringValue == "verified")
            let first = try #require(verified.json?["verified_at"]?.stringValue)
            // (verified_at has whole seconds: the second wait must still see its own verification end)
            let again = try await cli.run("backups", "verify", id, backupID, "--wait", "--timeout", "30", "--json")
            #expect(again.status == .exited(0), "\(again.stderr)")
            #expect(try #require(again.json?["verified_at"]?.stringValue) > first)

            // When the backup is deleted, then it is gone
            let deleted = try await cli.run("backups", "delete", id, backupID, "--json")
            #expect(deleted.status == .exited(0) && deleted.stdout.isEmpty, "\(deleted.stdout)\(deleted.stderr)")
            let gone = try await cli.run("backups", "show", id, backupID)
            #expect(gone.status == .exited(1))
            #expect(gone.stderr == "error: no such backup (backup_not_found)\n")

            // When the database is deleted, then its document says so
            let dropped = try await cli.run("databases", "delete", id, "--json")
            #expect(dropped.status == .exited(0))
            #expect(dropped.json?["status"]?.stringValue == "deleted")
        }
    }

    @Test("Refusals: the API's message on stderr and exit 1, its error document on stdout with --json; bad tokens exit 1; usage errors 64; the token is never printed")
    func refusals() async throws {
        try await withLiveServer { server in
            let token = try await server.account()
            let cli = CLI(url: server.url, token: token)
            var runs: [CLIRun] = []

            // A database that does not exist
            let missing = try await cli.run("databases", "show", "db-aaaaaaaaaaaaaaaa")
            #expect(missing.status == .exited(1))
            #expect(missing.stderr == "error: no such database (database_not_found)\n")
            #expect(missing.stdout.isEmpty)
            let missingJSON = try await cli.run("databases", "show", "db-aaaaaaaaaaaaaaaa", "--json")
            #expect(missingJSON.status == .exited(1))
            #expect(missingJSON.json?["error"]?["code"]?.stringValue == "database_not_found", "\(missingJSON.stdout)")
            let noBackup = try await cli.run("backups", "create", "db-aaaaaaaaaaaaaaaa", "--wait")
            #expect(noBackup.status == .exited(1))
            #expect(noBackup.stderr.contains("(database_not_found)"))
            runs += [missing, missingJSON, noBackup]

            // A name already taken: the API's conflict, word for word
            let first = try await cli.run("databases", "create", "shop", "--tier", "free")
            let second = try await cli.run("databases", "create", "shop", "--tier", "free")
            #expect(first.status == .exited(0))
            #expect(second.status == .exited(1))
            #expect(second.stderr == "error: a database named 'shop' already exists in this account (database_name_taken)\n")
            runs += [first, second]

            // A token the service does not know
            let stranger = try await CLI(url: server.url, token: "chd_aaaaaaaaaaaaaaaa_" + String(repeating: "b", count: 40)).run("databases", "list")
            #expect(stranger.status == .exited(1))
            #expect(stranger.stderr.contains("(unauthorized)"), "\(stranger.stderr)")

            // Usage errors: no token at all, a tier that does not exist, a URL that is not one
            let anonymous = try await CLI(url: server.url, token: nil).run("databases", "list")
            #expect(anonymous.status == .exited(64))
            #expect(anonymous.stderr.contains("CLOUDHEED_TOKEN"))
            let badTier = try await cli.run("databases", "create", "other", "--tier", "huge")
            #expect(badTier.status == .exited(64))
            #expect(badTier.stderr.contains("micro"), "\(badTier.stderr)")
            let badURL = try await cli.run("databases", "list", "--url", "localhost:8080")
            #expect(badURL.status == .exited(64))
            let noEvents = try await cli.run("webhooks", "create", "https://hooks.example/cloudheed")
            #expect(noEvents.status == .exited(64))
            #expect(noEvents.stderr.contains("--event"), "\(noEvents.stderr)")
            runs += [badTier, badURL, noEvents]

            for run in runs { #expect(!run.stdout.contains(token) && !run.stderr.contains(token)) }
        }
    }

    @Test("Webhooks through the client: create shows the secret once, list and show, deliveries of a failed backup, delete; restore drills set on create")
    func webhooks() async throws {
        try await withLiveServer { server in
            let cli = CLI(url: server.url, token: try await server.account())
            let created = try await cli.run("webhooks", "create", "http://127.0.0.1:9/hook", "--event", "backup.failed,drill.failed", "--description", "pager", "--json")
            #expect(created.status == .exited(0), "\(created.stderr)")
            let id = try #require(created.json?["id"]?.stringValue)
            #expect(created.json?["secret"]?.stringValue?.hasPrefix("whsec_") == true)
            #expect(created.json?["events"] == .array([.string("backup.failed"), .string("drill.failed")]))
            let table = try await cli.run("webhooks", "list")
            #expect(table.status == .exited(0))
            #expect(table.stdout.contains(id) && table.stdout.contains("http://127.0.0.1:9/hook"), "\(table.stdout)")
            #expect(!table.stdout.contains("whsec_"))
            let shown = try await cli.run("webhooks", "show", id)
            #expect(shown.stdout.contains("pager"))

            let database = try #require(try await cli.run("databases", "create", "hooked", "--tier", "micro", "--restore-drills", "daily", "--json").json)
            #expect(database["restore_drills"]?.stringValue == "daily")
            let databaseID = try #require(database["id"]?.stringValue)
            try FileManager.default.removeItem(atPath: try filePath(ofURI: database["connection"]?["uri"]?.stringValue))
            #expect(try await cli.run("backups", "create", databaseID, "--wait").status == .exited(4))
            var deliveries: JSONValue?
            for _ in 0..<100 {
                deliveries = try await cli.run("webhooks", "deliveries", id, "--json").json
                if deliveries?["deliveries"]?.arrayValue?.first?["attempts"]?.arrayValue?.isEmpty == false { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            let delivery = try #require(deliveries?["deliveries"]?.arrayValue?.first)
            #expect(delivery["event"]?.stringValue == "backup.failed")
            #expect(delivery["attempts"]?.arrayValue?.first?["error"]?.stringValue != nil)
            let people = try await cli.run("webhooks", "deliveries", id)
            #expect(people.stdout.contains("backup.failed"), "\(people.stdout)")

            #expect(try await cli.run("webhooks", "delete", id).status == .exited(0))
            let gone = try await cli.run("webhooks", "show", id)
            #expect(gone.status == .exited(1))
            #expect(gone.stderr.contains("(webhook_not_found)"), "\(gone.stderr)")
        }
    }

    @Test("A service that cannot be reached exits 3 at once, naming the URL")
    func unreachable() async throws {
        // A port held bound but never listened on: refused, and no other test can take it.
        let refusing = try RefusingLoopbackPort()
        let url = "http://127.0.0.1:\(refusing.port)"
        let started = ContinuousClock.now
        let run = try await CLI(url: url, token: "chd_aaaaaaaaaaaaaaaa_" + String(repeating: "b", count: 40)).run("databases", "list", "--json")
        #expect(run.status == .exited(3))
        // Not after the connect timeout (10 s): a refused connection is not retried.
        #expect(ContinuousClock.now - started < .seconds(8))
        withExtendedLifetime(refusing) {}
        #expect(run.stderr.hasPrefix("error: cannot reach \(url): "), "\(run.stderr)")
        #expect(run.stdout.isEmpty)
    }

    @Test("A backup waited for that fails exits 4, with its error on stderr and its document on stdout")
    func failedJob() async throws {
        try await withLiveServer { server in
            let cli = CLI(url: server.url, token: try await server.account())
            let database = try #require(try await cli.run("databases", "create", "doomed", "--tier", "free", "--json").json)
            let id = try #require(database["id"]?.stringValue)
            // Given a database whose file went away behind the service's back
            try FileManager.default.removeItem(atPath: try filePath(ofURI: database["connection"]?["uri"]?.stringValue))

            let run = try await cli.run("backups", "create", id, "--wait", "--json")
            #expect(run.status == .exited(4))
            #expect(run.json?["status"]?.stringValue == "failed", "\(run.stdout)")
            #expect(run.stderr.contains("failed: the database file is missing (database_file_missing)"), "\(run.stderr)")
        }
    }

    @Test("--wait on a terminal redraws one line with a bar, percent, bytes and rate; --timeout gives up with exit 5 while the job goes on")
    func progressOnTerminal() async throws {
        try await withLiveServer(workers: 1) { server in
            // A ~190 MB database: its first backup takes seconds.
            let (token, id) = try await server.api.bigDatabase(admin: server.admin, rows: 48000)
            let cli = CLI(url: server.url, token: token)

            // When a backup is waited for with stdout on a terminal
            let terminal = try await cli.runOnTerminal("backups", "create", id, "--wait")
            #expect(terminal.status == .exited(0), "\(terminal.stderr)")
            // Then one line is redrawn in place: carriage returns, no new line between them
            let redraws = terminal.drawn.split(separator: "\r", omittingEmptySubsequences: false).dropFirst()
            #expect(redraws.count >= 3, "\(terminal.drawn.debugDescription)")
            // showing a partly filled bar with the percentage, bytes of the total and the rate
            let partial = redraws.filter { $0.firstMatch(of: /\[#*\.+\]  [0-9]{1,2}%  [0-9.]+ [KMG]iB \/ [0-9.]+ MiB  [0-9.]+ [KMG]iB\/s/) != nil }
            #expect(!partial.isEmpty, "\(terminal.drawn.debugDescription)")
            #expect(terminal.drawn.contains("completed"))
            #expect(terminal.drawn.firstMatch(of: /status: +completed/) != nil)

            // Given the worker busy with a backup of rewritten pages
            let queue = try DatabaseQueue(path: try filePath(ofURI: try await server.api.call(.GET, "/v1/databases/\(id)", token: token).1?["connection"]?["uri"]?.stringValue))
            try await queue.write { db in try db.execute(sql: "UPDATE items SET body = randomblob(4000)") }
            try queue.close()
            let (_, busy) = try await server.api.call(.POST, "/v1/databases/\(id)/backups", token: token)
            let busyID = try #require(busy?["id"]?.stringValue)

            // When another backup is waited for with a one-second timeout
            let impatient = try await cli.run("backups", "create", id, "--wait", "--timeout", "1")
            // Then the client gives up with exit 5, having said in plain lines that it was pending
            #expect(impatient.status == .exited(5), "\(impatient.stdout)\(impatient.stderr)")
            #expect(impatient.stderr.contains("gave up after 1s"), "\(impatient.stderr)")
            #expect(impatient.stderr.hasSuffix("(timed_out)\n"))
            #expect(impatient.lines.first?.contains(": pending") == true, "\(impatient.stdout)")
            #expect(!impatient.stdout.contains("\r"))
            // and both backups go on to completion
            for backup in [busyID] + impatient.lines.compactMap({ $0.split(separator: ":").first.map(String.init) }).prefix(1) {
                let done = try await server.api.poll("/v1/databases/\(id)/backups/\(backup)", token: token, seconds: 120) {
                    ["completed", "failed"].contains($0["status"]?.stringValue)
                }
                #expect(done["status"]?.stringValue == "completed", "\(done)")
            }
        }
    }

    @Test("--wait rides out a restart of the service: the backup handed back at shutdown completes after it, and the wait ends with exit 0")
    func waitAcrossRestart() async throws {
        let server = try LiveServer.make()
        defer { server.removeData() }
        try await withThrowingTaskGroup(of: CLIRun.self) { group in
            // Given a client waiting for a backup that is running
            let (cli, id) = try await server.run { server in
                let (token, id) = try await server.api.bigDatabase(admin: server.admin, rows: 48000)
                let cli = CLI(url: server.url, token: token)
                group.addTask { try await cli.run("backups", "create", id, "--wait", "--json") }
                _ = try await server.api.poll("/v1/databases/\(id)/backups", token: token) {
                    $0["backups"]?.arrayValue?.first?["status"]?.stringValue == "in_progress"
                }
                return (cli, id)
            }
            // When the service stops (SIGTERM) and starts again two seconds later, polls failing meanwhile
            try await Task.sleep(for: .seconds(2))
            try await server.run { server in
                let waited = try #require(try await group.next())
                // Then the wait ends with the backup completed
                #expect(waited.status == .exited(0), "\(waited.stdout)\(waited.stderr)")
                #expect(waited.json?["status"]?.stringValue == "completed", "\(waited.stdout)")
                let listed = try await cli.run("backups", "list", id, "--json")
                #expect(listed.json?["backups"]?.arrayValue?.count == 1)
            }
        }
    }
}
