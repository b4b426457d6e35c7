import Hummingbird
import Logging

/// Runs `router` on 127.0.0.1:`port` for as long as `body` runs: a test's own HTTP peer (a
/// webhook receiver, a faulty proxy). `body` starts once the server listens.
public func withLoopbackServer<T: Sendable>(
    _ router: Router<BasicRequestContext>, port: Int, label: String, _ body: () async throws -> T
) async throws -> T {
    let (ready, readyContinuation) = AsyncStream<Void>.makeStream()
    var logger = Logger(label: label)
    // Cancelling the server at the end of a test is not an error worth printing.
    logger.logLevel = .critical
    let app = Application(
        router: router, configuration: .init(address: .hostname("127.0.0.1", port: port)),
        onServerRunning: { _ in readyContinuation.yield() }, logger: logger)
    return try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await app.runService(gracefulShutdownSignals: []) }
        for await _ in ready { break }
        defer { group.cancelAll() }
        return try await body()
    }
}
