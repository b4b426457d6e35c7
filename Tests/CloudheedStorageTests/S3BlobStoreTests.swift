import AsyncHTTPClient
import CloudheedDomain
import CloudheedTestSupport
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import Synchronization
import Testing
@testable import CloudheedStorage

@Suite("S3-compatible storage")
struct S3BlobStoreTests {
    static let awsExample = S3Configuration(
        bucket: "examplebucket", region: "us-east-1", accessKey: "AKIAIOSFODNN7EXAMPLE", secretKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")

    @Test("Signature V4 matches AWS's published examples (list objects with sorted query, bucket lifecycle)", arguments: [
        ([("max-keys", "2"), ("prefix", "J")], "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"),
        ([("lifecycle", "")], "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"),
    ])
    func awsVectors(query: [(String, String)], signature: String) {
        let signed = SigV4.sign(
            method: "GET", url: ("https://examplebucket.s3.amazonaws.com", "/"), query: query, payload: [], configuration: Self.awsExample,
            date: Date(timeIntervalSince1970: 1_369_353_600))
        let authorization = signed.headers.first { $0.0 == "Authorization" }?.1 ?? ""
        #expect(authorization.hasSuffix("Signature=" + signature), "\(authorization)")
        #expect(authorization.contains("SignedHeaders=host;x-amz-content-sha256;x-amz-date"))
    }

    @Test("s3://BUCKET/PREFIX is parsed; anything else is refused")
    func storageURLs() {
        #expect(S3Configuration.parse(storage: "s3://backups/prod/eu")! == ("backups", "prod/eu/"))
        #expect(S3Configuration.parse(storage: "s3://backups")! == ("backups", ""))
        #expect(S3Configuration.parse(storage: "s3://UPPER/x") == nil)
        #expect(S3Configuration.parse(storage: "/var/lib/x") == nil)
    }

    static func store(_ s3: TestS3, endpoint: String? = nil, bucket: String = "cloudheed-test", prefix: String = "node-a/", maxAttempts: Int = 8) -> S3BlobStore {
        S3BlobStore(configuration: S3Configuration(
            bucket: bucket, prefix: prefix, endpoint: endpoint ?? s3.endpoint, region: "us-east-1", pathStyle: true,
            accessKey: TestS3.accessKey, secretKey: TestS3.secretKey), maxAttempts: maxAttempts)
    }

    @Test("Against moto_server: put, get, delete and list under a prefix; a missing object is .missing; 20 MiB goes up in parts")
    func objects() async throws {
        let s3 = try await TestS3.start()
        defer { s3.stop() }
        let store = Self.store(s3)
        try await store.createBucket()
        let small = (0..<1000).map { UInt8($0 % 251) }
        try await store.put("packs/aaaa", small)
        try await store.putBuffered("manifests/bbbb-1", [1, 2, 3])
        try await store.syncBuffered()
        #expect(try await store.get("packs/aaaa") == small)
        #expect(try await store.list(prefix: "packs").map(\.key) == ["packs/aaaa"])
        #expect(try await store.list(prefix: "manifests").map(\.key) == ["manifests/bbbb-1"])
        // Another prefix in the same bucket sees none of it.
        #expect(try await Self.store(s3, prefix: "node-b/").list(prefix: "packs").isEmpty)

        var big = [UInt8](repeating: 0, count: 20 << 20)
        for i in stride(from: 0, to: big.count, by: 4096) { big[i] = UInt8(truncatingIfNeeded: i >> 12) }
        try await store.put("packs/big", big)
        #expect(try await store.get("packs/big") == big)

        try await store.delete("packs/aaaa")
        try await store.delete("packs/aaaa")
        await #expect(throws: RepositoryError.self) { _ = try await store.get("packs/aaaa") }
        do { _ = try await store.get("packs/aaaa") } catch let error as RepositoryError { #expect(error.kind == .missing) }
        await #expect(throws: RepositoryError.self) { try await store.put("../escape", [1]) }
    }

    @Test("The repository on S3: a backup stores, restores byte for byte, and verifies")
    func repositoryOnS3() async throws {
        let s3 = try await TestS3.start()
        defer { s3.stop() }
        let store = Self.store(s3)
        try await store.createBucket()
        let directory = NSTemporaryDirectory() + "cloudheed-s3-repo-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let catalog = try SQLiteCatalog(path: directory + "/catalog.sqlite3", garbageGrace: 0)
        let clock = ManualWallClock(Date(timeIntervalSince1970: 1_773_716_400))
        try await catalog.createAccount(
            Account(id: "acct-s3", name: "s3", storageQuotaBytes: 1 << 40, createdAt: clock.now()),
            token: StoredToken(id: "tok-s3", accountID: "acct-s3", secretHash: [0], createdAt: clock.now()))
        let repository = DedupRepository(
            index: catalog, blobs: store, keyRing: KeyRing(master: MasterKey.generate().0, store: catalog), clock: clock, ids: SecureIDGenerator(), grace: 0)
        var bytes = [UInt8](repeating: 0, count: 6 << 20)
        var rng = SystemRandomNumberGenerator()
        for i in 0..<bytes.count / 8 { withUnsafeBytes(of: rng.next()) { bytes.replaceSubrange(i * 8..<i * 8 + 8, with: $0) } }
        let object = try await repository.storeStream(
            AsyncStream { continuation in
                for start in stride(from: 0, to: bytes.count, by: 1 << 20) { continuation.yield(Array(bytes[start..<min(start + (1 << 20), bytes.count)])) }
                continuation.finish()
            }, target: BackupTarget(accountID: "acct-s3", backupID: "backup-s3", parent: nil))
        var back: [UInt8] = []
        for try await piece in repository.readStream(object, accountID: "acct-s3") { back += piece }
        #expect(back == bytes)
        #expect(try await repository.verify(object, accountID: "acct-s3").isSound)
        #expect(try await !store.list(prefix: "packs").isEmpty)
    }

    @Test("An endpoint that refuses connections fails each attempt at once: a request gives up after its retries, in seconds, not the client's deadline")
    func refused() async throws {
        let refusing = try RefusingLoopbackPort()
        let store = S3BlobStore(configuration: S3Configuration(
            bucket: "cloudheed-test", endpoint: "http://127.0.0.1:\(refusing.port)", pathStyle: true,
            accessKey: TestS3.accessKey, secretKey: TestS3.secretKey), maxAttempts: 3)
        let started = ContinuousClock.now
        do {
            _ = try await store.get("packs/x")
            Issue.record("a refused endpoint answered")
        } catch let error as RepositoryError {
            #expect(error.kind == .io)
        }
        // Three attempts that each waited for the 5 s connect timeout would take 15 s or more (and
        // the request deadline is 60 s); at once, they take well under a second on an idle machine.
        // The bound leaves room for a CI machine busy with the other suites.
        #expect(ContinuousClock.now - started < .seconds(15))
        withExtendedLifetime(refusing) {}
    }

    @Test("Transient failures are retried: through a proxy that answers 500, 503 or 429 to every other request, everything still works")
    func retries() async throws {
        let s3 = try await TestS3.start()
        defer { s3.stop() }
        try await S3Proxy.run(upstream: s3.endpoint, mode: .failEveryOther) { proxy in
            let store = Self.store(s3, endpoint: proxy.endpoint)
            try await store.createBucket()
            let bytes = (0..<100_000).map { UInt8($0 % 253) }
            for n in 0..<5 { try await store.put("packs/p\(n)", bytes) }
            for n in 0..<5 { #expect(try await store.get("packs/p\(n)") == bytes) }
            #expect(try await store.list(prefix: "packs").count == 5)
            #expect(proxy.failures >= 8)
            // With no retries left, a failure surfaces as an error, never as data.
            let impatient = Self.store(s3, endpoint: proxy.endpoint, maxAttempts: 1)
            var errors = 0
            for n in 0..<4 {
                do { #expect(try await impatient.get("packs/p\(n)") == bytes) } catch is RepositoryError { errors += 1 }
            }
            #expect(errors >= 1)
        }
    }
}
