import ArgumentParser
import Foundation

/// The exit codes of the client commands: scripts branch on these, so they never change meaning.
enum ClientExit: Int32 {
    /// The service refused the request (a 4xx answer: not found, conflict, bad token, ...).
    case refused = 1
    /// The service could not be reached, timed out, failed (5xx) or answered something that is not its API.
    case unavailable = 3
    /// A job waited for with `--wait` ended `failed`, or a verification found the backup corrupt.
    case jobFailed = 4
    /// `--timeout` passed while a job waited for was still running.
    case timedOut = 5

    /// What `--help` and the README say; 64 is argument-parser's EX_USAGE, kept for every command.
    static let help = """
        Exit codes: 0 success; 1 the service refused the request (4xx); 3 the service could not be \
        reached or failed (connection, timeout, 5xx); 4 a job waited for (--wait) ended failed, or \
        verification found the backup corrupt; 5 --timeout passed while waiting; 64 usage error.
        """
}

/// Options every client command shares: where the service is, who is asking, and for whom the output is.
struct ClientOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The service's base URL (env CLOUDHEED_URL). Default http://127.0.0.1:8080.", valueName: "url"))
    var url: String?
    // The value is never echoed: not as a default in --help, not in any message.
    @Option(help: ArgumentHelp("Account token (env CLOUDHEED_TOKEN, which keeps it out of `ps`).", valueName: "token"))
    var token: String?
    @Flag(help: "Print the API's JSON response unchanged, one document on stdout, for scripts (its error document too, when it refuses).")
    var json = false

    static let defaultURL = "http://127.0.0.1:8080"

    var baseURL: String {
        let configured = url ?? ProcessInfo.processInfo.environment["CLOUDHEED_URL"] ?? Self.defaultURL
        return configured.hasSuffix("/") ? String(configured.dropLast()) : configured
    }

    func validate() throws {
        guard let parsed = URL(string: baseURL), ["http", "https"].contains(parsed.scheme ?? ""), parsed.host != nil else {
            throw ValidationError("--url must be an http:// or https:// URL, not '\(baseURL)'")
        }
    }

    /// Runs `body` with a client of the service. A failure to talk to it is printed on stderr as
    /// `error: <message> (<code>)` (with `--json`, the API's error document also goes to stdout)
    /// and becomes the process's exit code.
    /// Sends one request and prints its answer: the body unchanged with `--json`, else `render`ed for people.
    func show(_ request: (APIClient) async throws -> APIResponse, as render: (APIResponse) -> String) async throws {
        try await run { client in
            let response = try await request(client)
            if json { return Console.json(response) }
            Console.out(render(response))
        }
    }

    func run(_ body: (APIClient) async throws -> Void) async throws {
        guard let token = token ?? ProcessInfo.processInfo.environment["CLOUDHEED_TOKEN"], !token.isEmpty else {
            throw ValidationError("no token: pass --token or set CLOUDHEED_TOKEN")
        }
        let client = APIClient(base: baseURL, token: token)
        let failure: ClientFailure?
        do {
            try await body(client)
            failure = nil
        } catch let error as ClientFailure {
            failure = error
        } catch {
            try? await client.shutdown()
            throw error
        }
        try? await client.shutdown()
        if let failure {
            if json, let body = failure.body { Console.json(body) }
            Console.error("error: \(failure.message)")
            throw ExitCode(failure.exit.rawValue)
        }
    }
}

/// `--wait` and how long to wait, for the commands that start a job.
struct WaitOptions: ParsableArguments {
    @Flag(help: "Wait until the job ends, showing its progress: a progress bar on a terminal, a line every few seconds otherwise.")
    var wait = false
    @Option(help: ArgumentHelp("With --wait: give up after this many seconds (exit 5). Default: wait as long as it takes.", valueName: "seconds"))
    var timeout: Int?

    func validate() throws {
        if let timeout, timeout < 1 { throw ValidationError("--timeout must be at least 1 second") }
    }

    var limit: Duration? { timeout.map { .seconds($0) } }
}
