import CloudheedDomain
import CloudheedStorage
import Crypto
import Foundation

/// Account tokens look like `chd_<token id>_<secret>`. The catalog finds the token by its id and
/// holds only SHA-256 of the secret, which is compared in constant time.
public struct TokenIssuer: Sendable {
    let ids: any IDGenerator

    public init(ids: any IDGenerator) { self.ids = ids }

    public struct Issued: Sendable {
        public var plaintext: String
        public var stored: StoredToken
    }

    public func issue(accountID: String, at date: Date) -> Issued {
        let id = ids.randomString(count: 16)
        let secret = ids.randomString(count: 40)
        return Issued(
            plaintext: "chd_\(id)_\(secret)",
            stored: StoredToken(id: id, accountID: accountID, secretHash: Self.hash(secret), createdAt: date))
    }

    static func hash(_ secret: String) -> [UInt8] { Array(SHA256.hash(data: Array(secret.utf8))) }

    /// Splits a presented token into its id and secret, or nil when it is not shaped like ours.
    static func parse(_ token: String) -> (id: Substring, secret: Substring)? {
        let parts = token.split(separator: "_", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0] == "chd", parts[1].count == 16, !parts[2].isEmpty else { return nil }
        return (parts[1], parts[2])
    }
}

/// Constant-time equality of two byte strings of equal length.
func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    guard a.count == b.count else { return false }
    var difference: UInt8 = 0
    for i in a.indices { difference |= a[i] ^ b[i] }
    return difference == 0
}

/// Checks the admin token, kept in memory only as a hash.
public struct AdminToken: Sendable {
    let hash: [UInt8]
    public init(_ plaintext: String) { hash = Array(SHA256.hash(data: Array(plaintext.utf8))) }
    public func matches(_ presented: String) -> Bool {
        constantTimeEqual(Array(SHA256.hash(data: Array(presented.utf8))), hash)
    }
}
