import CloudheedHTTP
import CloudheedTestSupport
import Foundation
import Subprocess
import SystemPackage
import Testing

/// schemathesis (PyPI), installed by scripts/install-deps into `.build/tools-venv`, or named by
/// CLOUDHEED_SCHEMATHESIS, or on PATH.
func schemathesisBinary() throws -> String {
    if let configured = ProcessInfo.processInfo.environment["CLOUDHEED_SCHEMATHESIS"] { return configured }
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    var candidates = [root.appendingPathComponent(".build/tools-venv/bin/schemathesis").path]
    candidates += (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map { "\($0)/schemathesis" }
    guard let found = candidates.first(where: FileManager.default.isExecutableFile(atPath:)) else {
        throw CocoaError(.fileNoSuchFile, userInfo: [NSFilePathErrorKey: "schemathesis (run scripts/install-deps)"])
    }
    return found
}

@Suite("Contract: schemathesis against the live service")
struct SchemathesisTests {
    @Test("Every operation, fuzzed from the document with an account token: no 5xx, no response the document does not allow")
    func schemathesis() async throws {
        let binary = try cloudheedBinary()
        let tool = try schemathesisBinary()
        let directory = NSTemporaryDirectory() + "cloudheed-contract-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let port = try freeLoopbackPort()
        let api = LiveAPI(base: "http://127.0.0.1:\(port)")
        let admin = "contract-test-admin-token"
        _ = try await Subprocess.run(
            .path(FilePath(binary)), arguments: ["serve", "--data-dir", directory, "--port", "\(port)", "--log-level", "critical",
                              // Fuzzed webhook URLs must not send traffic off this machine.
                              "--webhook-allowed-hosts", "127.0.0.1"],
            environment: .inherit.updating(["CLOUDHEED_ADMIN_TOKEN": admin]), input: .none, output: .discarded, error: .discarded
        ) { execution in
            defer { try? execution.send(signal: .terminate) }
            try await api.waitUntilHealthy()
            let (_, account) = try await api.call(.POST, "/v1/accounts", token: admin, body: #"{"name":"contract"}"#)
            let token = try #require(account?["token"]?.stringValue)
            // Something to find: a database with a completed backup.
            let (_, database) = try await api.call(.POST, "/v1/databases", token: token, body: #"{"name":"fuzzed","tier":"micro"}"#)
            let id = try #require(database?["id"]?.stringValue)
            let (_, backup) = try await api.call(.POST, "/v1/databases/\(id)/backups", token: token)
            let backupID = try #require(backup?["id"]?.stringValue)
            _ = try await api.poll("/v1/databases/\(id)/backups/\(backupID)", token: token) { $0["status"]?.stringValue == "completed" }

            let result = try await Subprocess.run(
                .path(FilePath(tool)),
                arguments: [
                    "run", "http://127.0.0.1:\(port)/v1/openapi.json", "--header", "Authorization: Bearer \(token)",
                    "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
                    "--max-examples", "25", "--seed", "7", "--no-color",
                ],
                environment: .inherit.updating(["SCHEMATHESIS_HOOKS": nil]),
                // Its cache (.schemathesis/) goes to the temporary directory, not the repository.
                workingDirectory: FilePath(directory),
                output: .string(limit: 8 << 20), error: .string(limit: 8 << 20))
            let report = result.standardOutput + result.standardError
            #expect(result.terminationStatus.isSuccess, "schemathesis found problems:\n\(report.suffix(12_000))")
            #expect(report.contains("openapi.json") || report.contains("operations"), "\(report.suffix(2000))")
        }
    }
}
