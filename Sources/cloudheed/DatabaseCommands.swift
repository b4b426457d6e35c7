import ArgumentParser
import CloudheedDomain

extension Tier: ExpressibleByArgument {}
extension EngineKind: ExpressibleByArgument {}

/// `cloudheed databases list|create|show|delete`: `/v1/databases`.
struct Databases: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The account's databases: list, create, show, delete.",
        discussion: ClientExit.help,
        subcommands: [List.self, Create.self, Show.self, Delete.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the databases, oldest first.", discussion: ClientExit.help)
        @OptionGroup var options: ClientOptions
        @Flag(help: "Include deleted databases.")
        var includeDeleted = false

        func run() async throws {
            try await options.show(
                { client in try await client.get("/v1/databases" + APIPath.query([("include_deleted", includeDeleted ? "true" : nil)])) },
                as: { DatabaseView.table($0["databases"]?.arrayValue ?? []) })
        }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a database.",
            discussion: "For PostgreSQL the connection URI printed holds the owner's password, shown this once.\n\n" + ClientExit.help)
        @OptionGroup var options: ClientOptions
        @Argument(help: "Name: 1-63 lowercase letters, digits and hyphens, starting with a letter.")
        var name: String
        @Option(help: "Tier, which sets how long automatic backups are kept.")
        var tier: Tier
        @Option(help: "Database engine. Default sqlite.")
        var engine: EngineKind?
        @Option(help: ArgumentHelp("Daily UTC window for automatic backups, at least 30 minutes. Default: one hour chosen by the service.", valueName: "HH:MM-HH:MM"))
        var backupWindow: String?
        @Option(help: ArgumentHelp("How often the service restores the latest backup to prove it works: off, weekly or daily. Default weekly.", valueName: "off|weekly|daily"))
        var restoreDrills: String?

        func run() async throws {
            var body: [(String, JSONValue)] = [("name", .string(name)), ("tier", .string(tier.rawValue))]
            if let engine { body.append(("engine", .string(engine.rawValue))) }
            if let backupWindow { body.append(("backup_window", .string(backupWindow))) }
            if let restoreDrills { body.append(("restore_drills", .string(restoreDrills))) }
            try await options.show(
                { client in try await client.post("/v1/databases", .object(body)) },
                as: { DatabaseView.details($0.json ?? .null) })
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one database.", discussion: ClientExit.help)
        @OptionGroup var options: ClientOptions
        @Argument(help: "Database id (db-…).")
        var id: String

        func run() async throws {
            try await options.show({ client in try await client.get(APIPath.database(id)) }, as: { DatabaseView.details($0.json ?? .null) })
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Delete a database: its file and automatic backups go; manual backups stay.", discussion: ClientExit.help)
        @OptionGroup var options: ClientOptions
        @Argument(help: "Database id (db-…).")
        var id: String

        func run() async throws {
            try await options.show(
                { client in try await client.delete(APIPath.database(id)) },
                as: { DatabaseView.details($0.json ?? .null) })
        }
    }
}
