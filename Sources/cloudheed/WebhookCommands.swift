import ArgumentParser
import CloudheedDomain
import Foundation

/// `cloudheed webhooks list|create|show|delete|deliveries`: `/v1/webhooks`.
struct Webhooks: AsyncParsableCommand {
    /// The events a webhook can subscribe to, as the API names them.
    static let events = ["backup.completed", "backup.failed", "restore.completed", "restore.failed", "drill.failed"]

    static let configuration = CommandConfiguration(
        abstract: "Webhooks: URLs the service calls when backups and restores end.",
        discussion: ClientExit.help,
        subcommands: [List.self, Create.self, Show.self, Delete.self, Deliveries.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the account's webhooks.", discussion: ClientExit.help)
        @OptionGroup var options: ClientOptions

        func run() async throws {
            try await options.show(
                { client in try await client.get("/v1/webhooks") },
                as: { WebhookView.table($0["webhooks"]?.arrayValue ?? []) })
        }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a webhook. Its signing secret is printed this once: keep it.",
            discussion: "Events: \(Webhooks.events.joined(separator: ", ")).\n\n" + ClientExit.help)
        @OptionGroup var options: ClientOptions
        @Argument(help: "The URL the service posts events to.")
        var endpoint: String
        @Option(name: .customLong("event"), help: "An event to send; repeat it or separate events with commas. At least one.")
        var events: [String] = []
        @Option(help: "A note for people.")
        var description: String?

        var eventNames: [String] {
            events.flatMap { $0.split(separator: ",") }.map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        }

        func validate() throws {
            guard !eventNames.isEmpty else {
                throw ValidationError("name at least one --event: \(Webhooks.events.joined(separator: ", "))")
            }
        }

        func run() async throws {
            var body: [(String, JSONValue)] = [("url", .string(endpoint)), ("events", .array(eventNames.map { .string($0) }))]
            if let description { body.append(("description", .string(description))) }
            try await options.show(
                { client in try await client.post("/v1/webhooks", .object(body)) },
                as: { WebhookView.details($0.json ?? .null) })
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one webhook.", discussion: ClientExit.help)
        @OptionGroup var options: ClientOptions
        @Argument(help: "Webhook id.")
        var id: String

        func run() async throws {
            try await options.show({ client in try await client.get(APIPath.webhook(id)) }, as: { WebhookView.details($0.json ?? .null) })
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Delete a webhook.", discussion: "Prints nothing with --json: the API answers 204 without a body.\n\n" + ClientExit.help)
        @OptionGroup var options: ClientOptions
        @Argument(help: "Webhook id.")
        var id: String

        func run() async throws {
            try await options.run { client in
                _ = try await client.delete(APIPath.webhook(id))
                if !options.json { Console.out("Deleted \(id).\n") }
            }
        }
    }

    struct Deliveries: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List a webhook's deliveries with their attempts (the last one in the table; all of them with --json).",
            discussion: ClientExit.help)
        @OptionGroup var options: ClientOptions
        @Argument(help: "Webhook id.")
        var id: String

        func run() async throws {
            try await options.show(
                { client in try await client.get(APIPath.webhook(id) + "/deliveries") },
                as: { WebhookView.deliveries($0["deliveries"]?.arrayValue ?? []) })
        }
    }
}
