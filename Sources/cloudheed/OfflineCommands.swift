import ArgumentParser
import CloudheedDomain
import CloudheedStorage
import Foundation
import Logging

/// Options of the commands that work on a data directory directly.
struct DataDirectoryOptions: ParsableArguments {
    @Option(help: "Data directory (env CLOUDHEED_DATA_DIR). Default ./cloudheed-data.")
    var dataDir: String?
    @Option(help: "File holding the master key. Else CLOUDHEED_MASTER_KEY (hex), else <data-dir>/master-key.")
    var masterKeyFile: String?

    var directory: String { dataDir ?? ProcessInfo.processInfo.environment["CLOUDHEED_DATA_DIR"] ?? "./cloudheed-data" }

    /// The master key in use; never generates one.
    func masterKey() throws -> (MasterKey, source: String) {
        if let masterKeyFile { return (try readKey(masterKeyFile), masterKeyFile) }
        if let hex = ProcessInfo.processInfo.environment["CLOUDHEED_MASTER_KEY"] { return (try MasterKey(hex: hex), "CLOUDHEED_MASTER_KEY") }
        return (try readKey(directory + "/master-key"), directory + "/master-key")
    }

    func catalog() throws -> SQLiteCatalog {
        let path = directory + "/catalog.sqlite3"
        guard FileManager.default.fileExists(atPath: path) else { throw ValidationError("no catalog at \(path): is --data-dir right?") }
        return try SQLiteCatalog(path: path)
    }
}

func readKey(_ path: String) throws -> MasterKey {
    guard FileManager.default.fileExists(atPath: path) else { throw ValidationError("cannot read the master key file \(path)") }
    return try MasterKey(hex: keyFileHex(path))
}

/// `cloudheed verify`: re-reads every chunk of every completed backup (or one), offline.
struct Verify: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Verify backups offline: every manifest, pack and chunk is read, authenticated and checked against its id.",
        discussion: "Exits 0 when every backup checked is sound, 1 when any is not (each problem is printed, naming the backup and the chunk or object).")

    @OptionGroup var options: DataDirectoryOptions
    @Option(help: "Verify only this backup.")
    var backup: String?

    func run() async throws {
        let catalog = try options.catalog()
        let (key, _) = try options.masterKey()
        let repository = try DedupRepository.local(root: options.directory + "/repository", catalog: catalog, masterKey: key, sweepIncoming: false)
        var backups = try await catalog.completedBackups()
        if let backup {
            backups = backups.filter { $0.id == backup }
            guard !backups.isEmpty else { throw ValidationError("no completed backup \(backup)") }
        }
        var failures = 0
        for backup in backups {
            guard let object = backup.object else { continue }
            let report: VerificationReport
            do {
                report = try await repository.verify(object, accountID: backup.accountID)
            } catch let error as RepositoryError {
                report = VerificationReport(chunksChecked: 0, packsChecked: 0, problems: [error.message])
            }
            try await catalog.recordVerification(backupID: backup.id, integrity: report.isSound ? .verified : .corrupt, at: Date())
            if report.isSound {
                print("\(backup.id): ok (\(report.chunksChecked) chunks in \(report.packsChecked) packs)")
            } else {
                failures += 1
                print("\(backup.id): CORRUPT")
                for problem in report.problems { print("  \(backup.id): \(problem)") }
            }
        }
        print("\(backups.count - failures) sound, \(failures) corrupt")
        if failures > 0 { throw ExitCode(1) }
    }
}

/// `cloudheed keys rotate`: re-wraps every account's data key under a new master key.
struct Keys: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Manage the master key.", subcommands: [Rotate.self])

    struct Rotate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Re-wrap every account's data key under a new master key, without rewriting any stored chunk.",
            discussion: """
                Stop the service first. The new key is read from --new-master-key-file, which is created with a fresh \
                key (mode 0600) if it does not exist. When the current key is <data-dir>/master-key, that file is \
                replaced by the new key; otherwise start the service with the new key afterwards.
                """)

        @OptionGroup var options: DataDirectoryOptions
        @Option(help: "File with the new master key (created with a fresh key if missing).")
        var newMasterKeyFile: String

        func run() async throws {
            let lock = try DataDirectoryLock(directory: options.directory)
            defer { withExtendedLifetime(lock) {} }
            let catalog = try options.catalog()
            let (old, source) = try options.masterKey()
            let new: MasterKey
            if FileManager.default.fileExists(atPath: newMasterKeyFile) {
                new = try readKey(newMasterKeyFile)
            } else {
                let (generated, hex) = MasterKey.generate()
                try writeKeyFile(hex, to: newMasterKeyFile)
                print("Generated a new master key in \(newMasterKeyFile). Back it up.")
                new = generated
            }
            let replacesDefault = source == options.directory + "/master-key"
            // Crash-safe order for the default key file: the new key is on disk before any data
            // key is re-wrapped under it; a restart finishes an interrupted rotation.
            let pending = options.directory + "/master-key.next"
            if replacesDefault { try writeKeyFile(try keyFileHex(newMasterKeyFile), to: pending) }
            let count: Int
            do {
                count = try await KeyRing.rotate(store: catalog, from: old, to: new)
            } catch {
                // Nothing was re-wrapped (one transaction): the pending key must not be completed later.
                if replacesDefault { unlink(pending) }
                throw error
            }
            print("Re-wrapped the data keys of \(count) accounts.")
            if replacesDefault {
                guard rename(pending, source) == 0 else { throw ValidationError("cannot move \(pending) to \(source)") }
                print("Replaced \(source) with the new key.")
            } else {
                print("Start the service with the new key (--master-key-file \(newMasterKeyFile)).")
            }
        }
    }
}

/// A key file's key as 64 hex characters, whether the file holds raw bytes or hex.
func keyFileHex(_ path: String) throws -> String {
    guard let data = FileManager.default.contents(atPath: path) else { throw ValidationError("cannot read \(path)") }
    return data.count == 32 ? [UInt8](data).hex : String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
}

/// Writes a key file readable by its owner only, replacing any by an atomic rename.
func writeKeyFile(_ text: String, to path: String) throws {
    let temporary = path + ".tmp"
    let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    guard fd >= 0 else { throw ValidationError("cannot write \(path)") }
    let bytes = Array((text.hasSuffix("\n") ? text : text + "\n").utf8)
    let ok = write(fd, bytes, bytes.count) == bytes.count && fsync(fd) == 0
    close(fd)
    guard ok, rename(temporary, path) == 0 else { throw ValidationError("cannot write \(path)") }
}

/// `cloudheed migrate`: brings the catalog's schema up to date and exits; `serve` does the same
/// at start, so this is for upgrading ahead of a rolling restart.
struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the catalog's migrations and exit.")

    @Option(help: "Data directory (env CLOUDHEED_DATA_DIR). Default ./cloudheed-data, created if missing.")
    var dataDir: String?
    @Option(help: "The shared catalog, postgresql://USER:PASSWORD@HOST:PORT/DBNAME (env CLOUDHEED_CATALOG_URL); without it the SQLite catalog in the data directory.")
    var catalog: String?

    func run() async throws {
        let environment = ProcessInfo.processInfo.environment
        let applied: [String]
        if let url = catalog ?? environment["CLOUDHEED_CATALOG_URL"] {
            let endpoint: PostgresCatalog.Endpoint
            do { endpoint = try PostgresCatalog.Endpoint(url: url) } catch { throw ValidationError("--catalog: \(error.message)") }
            do {
                applied = try await PostgresCatalog.migrate(endpoint, logger: Logger(label: "cloudheed.migrate"))
            } catch let error as DomainError {
                throw ValidationError(error.message)
            }
        } else {
            let directory = dataDir ?? environment["CLOUDHEED_DATA_DIR"] ?? "./cloudheed-data"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            applied = try SQLiteCatalog.migrate(path: directory + "/catalog.sqlite3")
        }
        print(applied.isEmpty ? "catalog is up to date" : "applied: " + applied.joined(separator: ", "))
    }
}
