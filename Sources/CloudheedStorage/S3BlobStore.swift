import AsyncHTTPClient
import Crypto
import Foundation
import NIOCore
import NIOHTTP1

/// Where an S3-compatible bucket is and how to sign for it.
public struct S3Configuration: Sendable, Equatable {
    public var bucket: String
    /// Prepended to every key (`backups/` for `s3://bucket/backups`); empty for the bucket root.
    public var prefix: String
    /// `http(s)://host[:port]`; AWS's regional endpoint when nil.
    public var endpoint: String?
    public var region: String
    /// `https://endpoint/bucket/key` rather than `https://bucket.endpoint/key` (MinIO, moto, Ceph).
    public var pathStyle: Bool
    public var accessKey: String
    public var secretKey: String
    public var sessionToken: String?

    public init(
        bucket: String, prefix: String = "", endpoint: String? = nil, region: String = "us-east-1", pathStyle: Bool = false,
        accessKey: String, secretKey: String, sessionToken: String? = nil
    ) {
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint = endpoint
        self.region = region
        self.pathStyle = pathStyle
        self.accessKey = accessKey
        self.secretKey = secretKey
        self.sessionToken = sessionToken
    }

    /// Parses `s3://BUCKET[/PREFIX]`.
    public static func parse(storage: String) -> (bucket: String, prefix: String)? {
        guard storage.hasPrefix("s3://") else { return nil }
        let rest = storage.dropFirst("s3://".count)
        let parts = rest.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let bucket = parts.first, (3...63).contains(bucket.count),
              bucket.utf8.allSatisfy({ ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D || $0 == 0x2E })
        else { return nil }
        var prefix = parts.count > 1 ? String(parts[1]) : ""
        while prefix.hasSuffix("/") { prefix.removeLast() }
        return (String(bucket), prefix.isEmpty ? "" : prefix + "/")
    }
}

/// Repository objects in an S3-compatible bucket, signed with AWS Signature V4.
///
/// Objects above `multipartThreshold` go up in parts. Every request is retried with exponential
/// backoff and full jitter on 5xx, 429, timeouts and dropped connections, and at most
/// `maxConcurrentRequests` are in flight. A PUT is durable when S3 answers, so `putBuffered` is a
/// plain PUT and `syncBuffered` has nothing to do. `list` (LIST requests) is only used by the
/// garbage collector's sweep for objects a crash left behind; backups and restores never list:
/// the catalog knows what exists.
public final class S3BlobStore: BlobStore {
    public let configuration: S3Configuration
    let client: HTTPClient
    let limiter: RequestLimiter
    let multipartThreshold: Int
    let partSize: Int
    let maxAttempts: Int
    /// Time of a request for signing; injected by tests that check signatures.
    let now: @Sendable () -> Date

    public init(
        configuration: S3Configuration, client: HTTPClient = S3BlobStore.sharedClient, maxConcurrentRequests: Int = 16,
        multipartThreshold: Int = 16 << 20, partSize: Int = 8 << 20, maxAttempts: Int = 8, now: @escaping @Sendable () -> Date = { Date() }
    ) {
        self.configuration = configuration
        self.client = client
        self.limiter = RequestLimiter(permits: maxConcurrentRequests)
        self.multipartThreshold = max(multipartThreshold, 5 << 20)
        self.partSize = max(partSize, 5 << 20)
        self.maxAttempts = max(1, maxAttempts)
        self.now = now
    }

    /// One client for every store of the process, never shut down (it lives as long as the
    /// process). A refused connection fails the attempt at once instead of being retried by the
    /// client until the request's deadline: our own backoff decides when to try again.
    public static let sharedClient: HTTPClient = {
        var configuration = HTTPClient.Configuration()
        configuration.timeout = .init(connect: .seconds(5), read: .seconds(60))
        configuration.connectionPool.retryConnectionEstablishment = false
        configuration.redirectConfiguration = .disallow
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }()

    // MARK: BlobStore

    public func put(_ key: String, _ bytes: [UInt8]) async throws {
        try Self.checkKey(key)
        if bytes.count > multipartThreshold {
            try await putMultipart(key, bytes)
        } else {
            _ = try await send(.PUT, key: key, body: bytes, accept: [200])
        }
    }

    public func putBuffered(_ key: String, _ bytes: [UInt8]) async throws {
        try await put(key, bytes)
    }

    public func syncBuffered() async throws {}

    public func get(_ key: String) async throws -> [UInt8] {
        try Self.checkKey(key)
        let response = try await send(.GET, key: key, accept: [200, 404])
        guard response.status == 200 else { throw RepositoryError(.missing, "object \(key) is missing from the bucket") }
        return response.body
    }

    public func delete(_ key: String) async throws {
        try Self.checkKey(key)
        // S3 answers 204 whether or not the object existed: deleting is idempotent.
        _ = try await send(.DELETE, key: key, accept: [200, 204, 404])
    }

    public func list(prefix: String) async throws -> [RepositoryEntry] {
        var entries: [RepositoryEntry] = []
        var continuation: String?
        repeat {
            var query = [("list-type", "2"), ("prefix", configuration.prefix + prefix + "/")]
            if let continuation { query.append(("continuation-token", continuation)) }
            let response = try await send(.GET, key: nil, query: query, accept: [200])
            let page = ListBucketResult.parse(response.body)
            for object in page.objects where object.key.hasPrefix(configuration.prefix) {
                entries.append(RepositoryEntry(key: String(object.key.dropFirst(configuration.prefix.count)), modifiedAt: object.modified))
            }
            continuation = page.truncated ? page.nextToken : nil
        } while continuation != nil
        return entries
    }

    /// One signed request: a missing object answers 404 when the bucket is there and the keys are accepted.
    public func probe() async throws {
        _ = try await send(.GET, key: "health-probe", accept: [200, 404], attempts: 1, timeout: .seconds(5))
    }

    /// Creates the bucket (tests and first set-up); an existing bucket of ours is fine.
    public func createBucket() async throws {
        _ = try await send(.PUT, key: nil, accept: [200, 409])
    }

    // MARK: Multipart

    func putMultipart(_ key: String, _ bytes: [UInt8]) async throws {
        let created = try await send(.POST, key: key, query: [("uploads", "")], accept: [200])
        guard let uploadID = XMLValues.first("UploadId", in: created.body) else {
            throw RepositoryError(.io, "S3 did not return an upload id for \(key)")
        }
        do {
            var parts: [(Int, String)] = []
            var offset = 0, number = 1
            while offset < bytes.count {
                let end = min(offset + partSize, bytes.count)
                let response = try await send(
                    .PUT, key: key, query: [("partNumber", "\(number)"), ("uploadId", uploadID)], body: Array(bytes[offset..<end]), accept: [200])
                guard let etag = response.etag else { throw RepositoryError(.io, "S3 returned no ETag for part \(number) of \(key)") }
                parts.append((number, etag))
                offset = end
                number += 1
            }
            let xml = "<CompleteMultipartUpload>" + parts.map { "<Part><PartNumber>\($0.0)</PartNumber><ETag>\(XMLValues.escape($0.1))</ETag></Part>" }.joined()
                + "</CompleteMultipartUpload>"
            let completed = try await send(.POST, key: key, query: [("uploadId", uploadID)], body: Array(xml.utf8), accept: [200])
            // S3 may answer 200 and report the failure in the body.
            if let code = XMLValues.first("Code", in: completed.body) {
                throw RepositoryError(.io, "S3 could not complete the upload of \(key): \(code)")
            }
        } catch {
            _ = try? await send(.DELETE, key: key, query: [("uploadId", uploadID)], accept: [204, 200, 404])
            throw error
        }
    }

    // MARK: Requests

    struct S3Response {
        var status: Int
        var body: [UInt8]
        var etag: String?
    }

    /// One request, signed afresh for each attempt, retried while S3 or the network fails transiently.
    func send(
        _ method: HTTPMethod, key: String?, query: [(String, String)] = [], body: [UInt8] = [], accept: Set<Int>,
        attempts: Int? = nil, timeout: TimeAmount = .seconds(60)
    ) async throws -> S3Response {
        let maxAttempts = attempts ?? self.maxAttempts
        var attempt = 0
        while true {
            attempt += 1
            let outcome: Result<S3Response, any Error>
            do {
                outcome = .success(try await limiter.run { try await self.once(method, key: key, query: query, body: body, timeout: timeout) })
            } catch {
                outcome = .failure(error)
            }
            switch outcome {
            case .success(let response) where accept.contains(response.status):
                return response
            case .success(let response) where Self.isTransient(status: response.status) && attempt < maxAttempts:
                break
            case .success(let response):
                throw Self.error(for: response, method: method, key: key)
            case .failure(let error) where error is CancellationError:
                throw error
            case .failure(let error) where attempt < maxAttempts && Self.isTransient(error):
                break
            case .failure(let error):
                throw RepositoryError(.io, "S3 request \(method) \(key ?? configuration.bucket) failed: \(error)")
            }
            try await Task.sleep(for: Self.backoff(attempt: attempt))
        }
    }

    func once(_ method: HTTPMethod, key: String?, query: [(String, String)], body: [UInt8], timeout: TimeAmount) async throws -> S3Response {
        let signed = SigV4.sign(
            method: method.rawValue, url: url(key: key), query: query, payload: body, configuration: configuration, date: now())
        var request = HTTPClientRequest(url: signed.url)
        request.method = method
        for (name, value) in signed.headers { request.headers.add(name: name, value: value) }
        if !body.isEmpty || method == .PUT || method == .POST {
            request.body = .bytes(ByteBuffer(bytes: body))
            request.headers.replaceOrAdd(name: "Content-Length", value: "\(body.count)")
        }
        let response = try await client.execute(request, timeout: timeout)
        let bytes = try await response.body.collect(upTo: 512 << 20)
        return S3Response(status: Int(response.status.code), body: Array(bytes.readableBytesView), etag: response.headers.first(name: "ETag"))
    }

    /// `(scheme://host[:port], path)` of a key, or of the bucket when `key` is nil.
    func url(key: String?) -> (base: String, path: String) {
        let objectPath = key.map { "/" + configuration.prefix + $0 } ?? "/"
        let endpoint = configuration.endpoint ?? "https://s3.\(configuration.region).amazonaws.com"
        if configuration.pathStyle {
            return (endpoint, "/" + configuration.bucket + (key == nil ? "" : objectPath))
        }
        guard var components = URLComponents(string: endpoint), let host = components.host else { return (endpoint, objectPath) }
        components.host = configuration.bucket + "." + host
        return (components.string ?? endpoint, objectPath)
    }

    static func isTransient(status: Int) -> Bool { status >= 500 || status == 429 }

    static func isTransient(_ error: any Error) -> Bool {
        // Timeouts, refused or dropped connections, and half-read responses: all worth another try.
        if let error = error as? HTTPClientError {
            return ![HTTPClientError.invalidURL, .emptyHost, .emptyScheme, .redirectLimitReached, .redirectCycleDetected].contains(error)
        }
        return error is IOError || error is ChannelError || "\(error)".contains("onnection")
    }

    /// Full jitter over 100 ms doubling per attempt, at most 5 s.
    static func backoff(attempt: Int) -> Duration {
        let cap = min(5.0, 0.1 * pow(2, Double(attempt - 1)))
        return .milliseconds(Int(Double.random(in: 0...cap) * 1000))
    }

    static func error(for response: S3Response, method: HTTPMethod, key: String?) -> RepositoryError {
        let code = XMLValues.first("Code", in: response.body) ?? "HTTP \(response.status)"
        let message = XMLValues.first("Message", in: response.body).map { ": " + $0 } ?? ""
        return RepositoryError(.io, "S3 answered \(method) \(key ?? "bucket") with \(response.status) \(code)\(message)")
    }

    static func checkKey(_ key: String) throws {
        guard !key.isEmpty, key.utf8.allSatisfy({ ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D || $0 == 0x2F }) else {
            throw RepositoryError(.invalidKey, "invalid object key '\(key)'")
        }
    }
}

/// At most `permits` requests in flight; the rest wait in order.
actor RequestLimiter {
    private var available: Int
    private var waiters: [CheckedContinuation<Void, Never>] = []

    init(permits: Int) { available = max(1, permits) }

    func acquire() async {
        if available > 0 {
            available -= 1
            return
        }
        await withCheckedContinuation { waiters.append($0) }
    }

    func release() {
        if waiters.isEmpty { available += 1 } else { waiters.removeFirst().resume() }
    }

    nonisolated func run<T: Sendable>(_ body: @Sendable () async throws -> T) async throws -> T {
        await acquire()
        do {
            let value = try await body()
            await release()
            return value
        } catch {
            await release()
            throw error
        }
    }
}

/// AWS Signature Version 4 for S3 (header authorization, payload hashed).
enum SigV4 {
    static func sign(
        method: String, url: (base: String, path: String), query: [(String, String)], payload: [UInt8], configuration: S3Configuration, date: Date
    ) -> (url: String, headers: [(String, String)]) {
        let (amzDate, day) = stamps(date)
        let host = URLComponents(string: url.base).map { c in c.host.map { h in c.port.map { "\(h):\($0)" } ?? h } ?? "" } ?? ""
        let payloadHash = hex(SHA256.hash(data: payload))
        var headers: [(String, String)] = [("host", host), ("x-amz-content-sha256", payloadHash), ("x-amz-date", amzDate)]
        if let token = configuration.sessionToken { headers.append(("x-amz-security-token", token)) }
        headers.sort { $0.0 < $1.0 }
        let canonicalPath = url.path.split(separator: "/", omittingEmptySubsequences: false).map { encode(String($0)) }.joined(separator: "/")
        let canonicalQuery = query.map { (encode($0.0), encode($0.1)) }.sorted { $0 < $1 }.map { "\($0.0)=\($0.1)" }.joined(separator: "&")
        let signedHeaders = headers.map(\.0).joined(separator: ";")
        let canonicalRequest = [
            method, canonicalPath, canonicalQuery, headers.map { "\($0.0):\($0.1)\n" }.joined(), signedHeaders, payloadHash,
        ].joined(separator: "\n")
        let scope = "\(day)/\(configuration.region)/s3/aws4_request"
        let stringToSign = ["AWS4-HMAC-SHA256", amzDate, scope, hex(SHA256.hash(data: Array(canonicalRequest.utf8)))].joined(separator: "\n")
        var key = SymmetricKey(data: Array(("AWS4" + configuration.secretKey).utf8))
        for part in [day, configuration.region, "s3", "aws4_request"] {
            key = SymmetricKey(data: Array(HMAC<SHA256>.authenticationCode(for: Array(part.utf8), using: key)))
        }
        let signature = hex(HMAC<SHA256>.authenticationCode(for: Array(stringToSign.utf8), using: key))
        let authorization = "AWS4-HMAC-SHA256 Credential=\(configuration.accessKey)/\(scope), SignedHeaders=\(signedHeaders), Signature=\(signature)"
        let full = url.base + canonicalPath + (canonicalQuery.isEmpty ? "" : "?" + canonicalQuery)
        return (full, headers.filter { $0.0 != "host" } + [("Authorization", authorization)])
    }

    /// RFC 3986 unreserved characters stay; everything else is %XX (what SigV4 requires).
    static func encode(_ text: String) -> String {
        var out = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                out += String(format: "%%%02X", byte)
            }
        }
        return out
    }

    static func stamps(_ date: Date) -> (amzDate: String, day: String) {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        let c = calendar.dateComponents([.year, .month, .day, .hour, .minute, .second], from: date)
        let day = String(format: "%04d%02d%02d", c.year!, c.month!, c.day!)
        return (day + String(format: "T%02d%02d%02dZ", c.hour!, c.minute!, c.second!), day)
    }

    static func hex<D: Sequence>(_ digest: D) -> String where D.Element == UInt8 {
        digest.map { String(format: "%02x", $0) }.joined()
    }
}

/// The few values read from S3's XML answers.
enum XMLValues {
    /// The text of the first `<name>` element, found by plain scanning (S3's answers are flat enough).
    static func first(_ name: String, in body: [UInt8]) -> String? {
        let text = String(decoding: body, as: UTF8.self)
        guard let open = text.range(of: "<\(name)>"), let close = text.range(of: "</\(name)>", range: open.upperBound..<text.endIndex) else { return nil }
        return unescape(String(text[open.upperBound..<close.lowerBound]))
    }

    static func all(_ name: String, in text: Substring) -> [Substring] {
        var values: [Substring] = []
        var rest = text[...]
        while let open = rest.range(of: "<\(name)>"), let close = rest.range(of: "</\(name)>", range: open.upperBound..<rest.endIndex) {
            values.append(rest[open.upperBound..<close.lowerBound])
            rest = rest[close.upperBound...]
        }
        return values
    }

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
            .replacingOccurrences(of: "\"", with: "&quot;")
    }

    static func unescape(_ s: String) -> String {
        s.replacingOccurrences(of: "&quot;", with: "\"").replacingOccurrences(of: "&lt;", with: "<").replacingOccurrences(of: "&gt;", with: ">")
            .replacingOccurrences(of: "&apos;", with: "'").replacingOccurrences(of: "&#34;", with: "\"").replacingOccurrences(of: "&amp;", with: "&")
    }
}

/// A page of ListObjectsV2.
struct ListBucketResult {
    var objects: [(key: String, modified: Date)] = []
    var truncated = false
    var nextToken: String?

    static func parse(_ body: [UInt8]) -> ListBucketResult {
        let text = String(decoding: body, as: UTF8.self)
        var result = ListBucketResult()
        result.truncated = XMLValues.first("IsTruncated", in: body) == "true"
        result.nextToken = XMLValues.first("NextContinuationToken", in: body)
        let iso = ISO8601DateFormatter()
        iso.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        let plain = ISO8601DateFormatter()
        for contents in XMLValues.all("Contents", in: text[...]) {
            guard let key = XMLValues.all("Key", in: contents).first else { continue }
            let stamp = XMLValues.all("LastModified", in: contents).first.map(String.init) ?? ""
            // An unreadable time counts as new: the sweep only removes old objects.
            let modified = iso.date(from: stamp) ?? plain.date(from: stamp) ?? Date()
            result.objects.append((XMLValues.unescape(String(key)), modified))
        }
        return result
    }
}
