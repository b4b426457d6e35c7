import CloudheedDomain
import CloudheedStorage
import CloudheedTestSupport
import Foundation
import GRDB
import Subprocess
import SystemPackage
import Testing

@Suite("Offline commands of the real binary")
struct OfflineCommandTests {
    @Test("cloudheed verify checks every backup, exits 1 naming the backup and pack on damage; keys rotate keeps every backup readable")
    func verifyAndRotate() async throws {
        let directory = NSTemporaryDirectory() + "cloudheed-offline-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let port = try freeLoopbackPort()
        let api = LiveAPI(base: "http://127.0.0.1:\(port)")
        let admin = "offline-test-admin"

        // A service takes two backups, generating its master key into the data directory.
        let served = try await Subprocess.run(
            .path(FilePath(try cloudheedBinary())), arguments: ["serve", "--data-dir", directory, "--port", "\(port)", "--log-level", "error"],
            environment: .inherit.updating(["CLOUDHEED_ADMIN_TOKEN": admin, "CLOUDHEED_MASTER_KEY": nil]), input: .none, output: .discarded, error: .discarded
        ) { execution -> [String] in
            defer { try? execution.send(signal: .terminate) }
            try await api.waitUntilHealthy()
            let token = try #require(try await api.call(.POST, "/v1/accounts", token: admin, body: #"{"name":"o"}"#).1?["token"]?.stringValue)
            let database = try #require(try await api.call(.POST, "/v1/databases", token: token, body: #"{"name":"d","tier":"free"}"#).1)
            let id = try #require(database["id"]?.stringValue)
            try writeRows(path: try filePath(ofURI: database["connection"]?["uri"]?.stringValue), values: (0..<500).map { "value \($0)" })
            var backups: [String] = []
            for _ in 0..<2 {
                let backup = try #require(try await api.call(.POST, "/v1/databases/\(id)/backups", token: token).1?["id"]?.stringValue)
                _ = try await api.poll("/v1/databases/\(id)/backups/\(backup)", token: token) { $0["status"]?.stringValue == "completed" }
                backups.append(backup)
            }
            // Key rotation refuses to run beside the service.
            let refused = try await runCloudheed(["keys", "rotate", "--data-dir", directory, "--new-master-key-file", directory + "/refused-key"])
            #expect(refused.status != .exited(0))
            #expect(refused.output.contains("another cloudheed process"))
            return backups
        }
        let backups = served.closureResult
        #expect(FileManager.default.fileExists(atPath: directory + "/master-key"))

        let sound = try await runCloudheed(["verify", "--data-dir", directory])
        #expect(sound.status == .exited(0), "\(sound.output)")
        #expect(sound.output.contains("2 sound, 0 corrupt"))

        // Damage a pack: both backups share it.
        let packs = directory + "/repository/packs"
        let pack = packs + "/" + (try FileManager.default.contentsOfDirectory(atPath: packs).sorted().first!)
        let original = try Data(contentsOf: URL(fileURLWithPath: pack))
        var damaged = original
        damaged[damaged.count / 2] ^= 0x01
        try damaged.write(to: URL(fileURLWithPath: pack))
        let corrupt = try await runCloudheed(["verify", "--data-dir", directory, "--backup", backups[0]])
        #expect(corrupt.status == .exited(1))
        #expect(corrupt.output.contains("\(backups[0]): CORRUPT"))
        #expect(corrupt.output.contains(URL(fileURLWithPath: pack).lastPathComponent))
        try original.write(to: URL(fileURLWithPath: pack))

        // Rotate to a new key; the old one no longer opens anything, the new one everything.
        let oldKey = directory + "/old-key"
        try FileManager.default.copyItem(atPath: directory + "/master-key", toPath: oldKey)
        let rotated = try await runCloudheed(["keys", "rotate", "--data-dir", directory, "--new-master-key-file", directory + "/new-key"])
        #expect(rotated.status == .exited(0), "\(rotated.output)")
        #expect(rotated.output.contains("Re-wrapped the data keys of 1 accounts"))
        #expect(try await runCloudheed(["verify", "--data-dir", directory]).status == .exited(0))
        let stale = try await runCloudheed(["verify", "--data-dir", directory, "--master-key-file", oldKey])
        #expect(stale.status == .exited(1))
        #expect(stale.output.contains("master key"))
        #expect(try await runCloudheed(["verify", "--data-dir", directory + "/nowhere"]).status != .exited(0))
    }

    @Test("A rotation interrupted after re-wrapping is completed by the next start; every backup stays readable")
    func interruptedRotation() async throws {
        let directory = NSTemporaryDirectory() + "cloudheed-rotation-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let port = try freeLoopbackPort()
        let api = LiveAPI(base: "http://127.0.0.1:\(port)")
        let admin = "rotation-test-admin"
        let arguments: Arguments = ["serve", "--data-dir", directory, "--port", "\(port)", "--log-level", "error"]
        let environment = Environment.inherit.updating(["CLOUDHEED_ADMIN_TOKEN": admin, "CLOUDHEED_MASTER_KEY": nil])
        _ = try await Subprocess.run(.path(FilePath(try cloudheedBinary())), arguments: arguments, environment: environment, input: .none, output: .discarded, error: .discarded) { execution in
            defer { try? execution.send(signal: .terminate) }
            try await api.waitUntilHealthy()
            let token = try #require(try await api.call(.POST, "/v1/accounts", token: admin, body: #"{"name":"r"}"#).1?["token"]?.stringValue)
            let id = try #require(try await api.call(.POST, "/v1/databases", token: token, body: #"{"name":"d","tier":"free"}"#).1?["id"]?.stringValue)
            let backup = try #require(try await api.call(.POST, "/v1/databases/\(id)/backups", token: token).1?["id"]?.stringValue)
            _ = try await api.poll("/v1/databases/\(id)/backups/\(backup)", token: token) { $0["status"]?.stringValue == "completed" }
        }
        // The rotation died after its transaction: keys re-wrapped, master-key not yet replaced.
        let (new, hex) = MasterKey.generate()
        try (hex + "\n").write(toFile: directory + "/master-key.next", atomically: true, encoding: .utf8)
        let old = try MasterKey(hex: try String(contentsOfFile: directory + "/master-key", encoding: .utf8))
        #expect(try await KeyRing.rotate(store: try SQLiteCatalog(path: directory + "/catalog.sqlite3"), from: old, to: new) == 1)
        #expect(try await runCloudheed(["verify", "--data-dir", directory]).status == .exited(1))

        // The next start completes it.
        let restarted = try await Subprocess.run(.path(FilePath(try cloudheedBinary())), arguments: arguments, environment: environment, input: .none, output: .discarded, error: .discarded) { execution in
            defer { try? execution.send(signal: .terminate) }
            try await api.waitUntilHealthy()
        }
        #expect(restarted.terminationStatus == .exited(0))
        #expect(!FileManager.default.fileExists(atPath: directory + "/master-key.next"))
        #expect(try String(contentsOfFile: directory + "/master-key", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines) == hex)
        let verified = try await runCloudheed(["verify", "--data-dir", directory])
        #expect(verified.status == .exited(0), "\(verified.output)")
    }
}
