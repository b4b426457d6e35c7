import Foundation

/// An S3-compatible endpoint of the test run's own: `moto_server` (PyPI `moto[server]`, which
/// `scripts/install-deps` puts in `.build/tools-venv`) on 127.0.0.1 at a free port, stopped
/// when the test ends. Buckets live in its memory, so each start is empty.
public final class TestS3: @unchecked Sendable {
    public let port: Int
    let process: Process
    public static let accessKey = "cloudheed-test-key"
    public static let secretKey = "cloudheed-test-secret"

    public var endpoint: String { "http://127.0.0.1:\(port)" }

    init(port: Int, process: Process) {
        self.port = port
        self.process = process
    }

    /// `CLOUDHEED_MOTO_SERVER`, else the tools virtualenv, else PATH.
    static func binary() throws -> String {
        if let configured = ProcessInfo.processInfo.environment["CLOUDHEED_MOTO_SERVER"] { return configured }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let venv = root.appendingPathComponent(".build/tools-venv/bin/moto_server").path
        if FileManager.default.isExecutableFile(atPath: venv) { return venv }
        for directory in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") {
            let candidate = String(directory) + "/moto_server"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        throw TestPostgresError(message: "moto_server was not found (scripts/install-deps installs moto[server] into .build/tools-venv)")
    }

    /// Starts moto_server on `port` (a free one when nil) and waits until it answers.
    public static func start(port: Int? = nil) async throws -> TestS3 {
        let port = try port ?? freeLoopbackPort()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try binary())
        process.arguments = ["-H", "127.0.0.1", "-p", "\(port)"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        let s3 = TestS3(port: port, process: process)
        for _ in 0..<300 {
            if s3.answers() { return s3 }
            try await Task.sleep(for: .milliseconds(50))
        }
        s3.stop()
        throw TestPostgresError(message: "moto_server did not start on port \(port)")
    }

    /// Whether something accepts connections on the port.
    func answers() -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        return withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }

    public func stop() {
        guard process.isRunning else { return }
        // moto_server's HTTP server outlives SIGTERM; it keeps nothing worth a graceful stop.
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
}
