import Foundation
import Synchronization

/// Makes resource ids (`db-…`, `backup-…`) and secret tokens. Injected so tests can be deterministic.
public protocol IDGenerator: Sendable {
    /// `count` random characters from the lowercase base-32 alphabet.
    func randomString(count: Int) -> String
}

extension IDGenerator {
    public func make(_ prefix: IDPrefix) -> String { "\(prefix.rawValue)-\(randomString(count: 16))" }
}

public enum IDPrefix: String, Sendable {
    case account = "acct"
    case database = "db"
    case backup = "backup"
    case restore = "restore"
    case job = "job"
    case token = "tok"
    case lease = "lease"
    case webhook = "wh"
    case delivery = "dlv"
}

let base32Alphabet = Array("abcdefghijklmnopqrstuvwxyz234567".utf8)

/// Cryptographically secure randomness (the system generator reads the kernel's CSPRNG).
public struct SecureIDGenerator: IDGenerator {
    public init() {}
    public func randomString(count: Int) -> String {
        var rng = SystemRandomNumberGenerator()
        return String(decoding: (0..<count).map { _ in base32Alphabet[Int(rng.next() % 32)] }, as: UTF8.self)
    }
}

/// Deterministic ids for tests: a seeded SplitMix64 sequence.
public final class SeededIDGenerator: IDGenerator {
    private let state: Mutex<UInt64>
    public init(seed: UInt64) { state = Mutex(seed) }
    public func randomString(count: Int) -> String {
        state.withLock { s in
            String(decoding: (0..<count).map { _ in
                s &+= 0x9E37_79B9_7F4A_7C15
                var z = s
                z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
                z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
                return base32Alphabet[Int((z ^ (z >> 31)) % 32)]
            }, as: UTF8.self)
        }
    }
}
