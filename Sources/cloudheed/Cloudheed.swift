import ArgumentParser

@main
struct Cloudheed: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cloudheed",
        abstract: "Cloudheed Backups: automatic and manual backups of SQLite and PostgreSQL databases, with restores into new databases.",
        discussion: """
            The service runs with `serve`; `verify` and `keys` work on its data directory. `databases`, \
            `backups`, `restores` and `webhooks` are a client of its HTTP API: they find it at --url or \
            CLOUDHEED_URL (default \(ClientOptions.defaultURL)) and authenticate with --token or \
            CLOUDHEED_TOKEN (an account token).

            \(ClientExit.help)
            """,
        subcommands: [
            Serve.self, Migrate.self, Verify.self, Keys.self,
            Databases.self, Backups.self, Restores.self, Webhooks.self,
        ])
}
