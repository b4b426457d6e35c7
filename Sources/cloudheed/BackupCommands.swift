import ArgumentParser
import CloudheedDomain
import Foundation

extension BackupType: ExpressibleByArgument {}
extension BackupStatus: ExpressibleByArgument {}

/// Which backup a command is about: the API addresses a backup under its database.
struct BackupAddress: ParsableArguments {
    @Argument(help: "Database id (db-…).")
    var database: String
    @Argument(help: "Backup id (backup-…).")
    var backup: String

    var path: String { APIPath.backup(database, backup) }
}

/// `cloudheed backups list|create|show|delete|restore|verify`: `/v1/databases/{id}/backups`.
struct Backups: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Backups of a database: list, create, show, delete, restore into a new database, verify.",
        discussion: ClientExit.help,
        subcommands: [List.self, Create.self, Show.self, Delete.self, Restore.self, Verify.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List a database's backups, newest first.", discussion: ClientExit.help)
        @OptionGroup var options: ClientOptions
        @Argument(help: "Database id (db-…).")
        var database: String
        @Option(help: "Only backups of this type.")
        var type: BackupType?
        @Option(help: "Only backups with this status.")
        var status: BackupStatus?

        func run() async throws {
            let query = APIPath.query([("type", type?.rawValue), ("status", status?.rawValue)])
            try await options.show(
                { client in try await client.get(APIPath.backups(database) + query) },
                as: { BackupView.table($0["backups"]?.arrayValue ?? []) })
        }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Take a manual backup now.", discussion: ClientExit.help)
        @OptionGroup var options: ClientOptions
        @OptionGroup var waiting: WaitOptions
        @Argument(help: "Database id (db-…).")
        var database: String
        @Option(help: "Name of the backup (1-128 characters). Default manual-yyyyMMdd-HHmmss.")
        var name: String?

        func run() async throws {
            try await options.run { client in
                let created = try await client.post(APIPath.backups(database), name.map { .object([("name", .string($0))]) })
                guard waiting.wait, let id = created["id"]?.stringValue else {
                    return options.json ? Console.json(created) : Console.out(BackupView.details(created.json ?? .null))
                }
                let path = APIPath.backup(database, id)
                let last = try await JobWait.run(limit: waiting.limit, display: .forStandardOutput(json: options.json)) {
                    .backup(try await client.get(path))
                }
                try finish(last, options: options, details: BackupView.details)
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one backup, with its progress while it runs.", discussion: ClientExit.help)
        @OptionGroup var options: ClientOptions
        @OptionGroup var address: BackupAddress

        func run() async throws {
            try await options.show({ client in try await client.get(address.path) }, as: { BackupView.details($0.json ?? .null) })
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Delete a manual backup (automatic ones expire by themselves).",
            discussion: "Prints nothing with --json: the API answers 204 without a body.\n\n" + ClientExit.help)
        @OptionGroup var options: ClientOptions
        @OptionGroup var address: BackupAddress

        func run() async throws {
            try await options.run { client in
                _ = try await client.delete(address.path)
                if !options.json { Console.out("Deleted \(address.backup).\n") }
            }
        }
    }

    struct Restore: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Restore a completed backup into a new database; the original stays as it is.",
            discussion: "For PostgreSQL the connection URI printed holds the new owner's password, shown this once.\n\n" + ClientExit.help)
        @OptionGroup var options: ClientOptions
        @OptionGroup var waiting: WaitOptions
        @OptionGroup var address: BackupAddress
        @Option(help: "Name of the new database. Default: the source's name plus the UTC time.")
        var targetName: String?

        func run() async throws {
            try await options.run { client in
                let body = targetName.map { JSONValue.object([("target_database_name", .string($0))]) }
                let created = try await client.post(address.path + "/restore", body)
                guard waiting.wait, let id = created["restore"]?["id"]?.stringValue else {
                    return options.json ? Console.json(created) : Console.out(RestoreView.details(created.json ?? .null))
                }
                if !options.json, let uri = created["database"]?["connection"]?["uri"]?.stringValue, URL(string: uri)?.password != nil {
                    // Later answers leave the password out; this is the only moment to see it.
                    Console.out("connection (shown once): \(uri)\n")
                }
                let last = try await JobWait.run(limit: waiting.limit, display: .forStandardOutput(json: options.json)) {
                    .restore(try await client.get(APIPath.restore(id)))
                }
                try finish(last, options: options, details: RestoreView.details)
            }
        }
    }

    struct Verify: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Verify a completed backup: the service re-reads and checks all of its data, then sets its integrity.",
            discussion: "With --wait, exits 4 when the backup is found corrupt.\n\n" + ClientExit.help)
        @OptionGroup var options: ClientOptions
        @OptionGroup var waiting: WaitOptions
        @OptionGroup var address: BackupAddress

        func run() async throws {
            try await options.run { client in
                if waiting.wait { try await leaveSecondOfLastVerification(client) }
                let requested = try await client.post(address.path + "/verify")
                guard waiting.wait else {
                    return options.json ? Console.json(requested) : Console.out(BackupView.details(requested.json ?? .null))
                }
                // The answer is the backup as it was before this verification ran.
                let before = requested["verified_at"]
                let last = try await JobWait.run(limit: waiting.limit, display: .forStandardOutput(json: options.json)) {
                    .verification(try await client.get(address.path), before: before)
                }
                try finish(last, options: options, details: BackupView.details)
            }
        }

        /// `verified_at` has whole seconds: a verification ending in the same second as the last
        /// one would leave it as it was, and the wait would never see it end. So the request
        /// waits until the service's clock (its `Date` header) has left that second.
        func leaveSecondOfLastVerification(_ client: APIClient) async throws {
            for _ in 0..<5 {
                let backup = try await client.get(address.path)
                guard let text = backup["verified_at"]?.stringValue, let last = try? Date(text, strategy: .iso8601),
                      let now = backup.date, now <= last else { return }
                try await Task.sleep(for: .milliseconds(Int(1000 * min(2, last.timeIntervalSince(now) + 1.05))))
            }
        }
    }
}

/// `cloudheed restores show`: `/v1/restores/{id}`.
struct Restores: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Restores of backups into new databases.", discussion: ClientExit.help, subcommands: [Show.self])

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a restore and the database it restores into.", discussion: ClientExit.help)
        @OptionGroup var options: ClientOptions
        @OptionGroup var waiting: WaitOptions
        @Argument(help: "Restore id (restore-…).")
        var id: String

        func run() async throws {
            try await options.run { client in
                guard waiting.wait else {
                    let response = try await client.get(APIPath.restore(id))
                    return options.json ? Console.json(response) : Console.out(RestoreView.details(response.json ?? .null))
                }
                let last = try await JobWait.run(limit: waiting.limit, display: .forStandardOutput(json: options.json)) {
                    .restore(try await client.get(APIPath.restore(id)))
                }
                try finish(last, options: options, details: RestoreView.details)
            }
        }
    }
}

/// After `--wait`: the job's last state on stdout (as the API sent it with `--json`), then for a
/// failed job its reason on stderr and exit code 4.
func finish(_ last: JobSnapshot, options: ClientOptions, details: (JSONValue) -> String) throws {
    if options.json {
        Console.json(last.response)
    } else {
        Console.out(details(last.response.json ?? .null))
    }
    if let failure = JobWait.failure(last) { throw failure }
}
