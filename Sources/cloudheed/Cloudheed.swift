import ArgumentParser

@main
struct Cloudheed: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cloudheed",
        abstract: "Cloudheed Backups: automatic and manual backups of SQLite databases, with restores into new databases.",
        subcommands: [Serve.self, Verify.self, Keys.self])
}
