import CloudheedDomain
import Crypto
import Foundation
import Synchronization

/// The 32-byte master key. It only wraps the per-account data keys, so rotating it rewrites
/// one small row per account and never a chunk.
public struct MasterKey: Sendable {
    let key: SymmetricKey

    public init(bytes: [UInt8]) throws {
        guard bytes.count == 32 else { throw KeyError("a master key is 32 bytes, got \(bytes.count)") }
        key = SymmetricKey(data: bytes)
    }

    /// 64 hexadecimal characters.
    public init(hex: String) throws {
        let text = hex.trimmingCharacters(in: .whitespacesAndNewlines)
        guard text.utf8.count == 64 else { throw KeyError("a master key is 64 hexadecimal characters") }
        var bytes: [UInt8] = []
        var iterator = text.utf8.makeIterator()
        while let high = iterator.next(), let low = iterator.next() {
            guard let h = Self.nibble(high), let l = Self.nibble(low) else { throw KeyError("a master key is 64 hexadecimal characters") }
            bytes.append(h << 4 | l)
        }
        try self.init(bytes: bytes)
    }

    public static func generate() -> (MasterKey, hex: String) {
        let key = SymmetricKey(size: .bits256)
        let hex = key.withUnsafeBytes { Array($0) }.hex
        return (try! MasterKey(hex: hex), hex)
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: c - 0x30
        case 0x61...0x66: c - 0x61 + 10
        case 0x41...0x46: c - 0x41 + 10
        default: nil
        }
    }

    static func aad(_ accountID: String) -> [UInt8] { Array("cloudheed/account-key/v1/\(accountID)".utf8) }

    func wrap(_ dataKey: SymmetricKey, accountID: String) throws -> [UInt8] {
        let sealed = try AES.GCM.seal(dataKey.withUnsafeBytes { Array($0) }, using: key, authenticating: Self.aad(accountID))
        return Array(sealed.combined!)
    }

    func unwrap(_ wrapped: [UInt8], accountID: String) throws -> SymmetricKey {
        do {
            let box = try AES.GCM.SealedBox(combined: wrapped)
            return SymmetricKey(data: try AES.GCM.open(box, using: key, authenticating: Self.aad(accountID)))
        } catch {
            throw KeyError("the master key does not open the data key of account \(accountID): wrong master key, or the key store was altered")
        }
    }
}

public struct KeyError: Error, Sendable, Equatable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// A chunk's identity: HMAC-SHA-256 of its plaintext under the account's id key. Equal content in
/// two accounts gets unrelated ids, so ids reveal nothing across accounts.
public struct ChunkID: Hashable, Sendable, Comparable, CustomStringConvertible {
    // Four big-endian words: hashing and comparing stay cheap, with no allocation.
    let a: UInt64, b: UInt64, c: UInt64, d: UInt64

    public init(bytes: some Collection<UInt8>) {
        precondition(bytes.count == 32)
        self = Array(bytes).withUnsafeBytes { ChunkID(raw: $0) }
    }

    /// From exactly 32 bytes in memory.
    init(raw: UnsafeRawBufferPointer) {
        a = UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: 0, as: UInt64.self))
        b = UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        c = UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
        d = UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: 24, as: UInt64.self))
    }

    /// A placeholder, never the id of real data (HMAC-SHA-256 output of all zeros).
    static let zero = ChunkID(bytes: [UInt8](repeating: 0, count: 32))

    public var bytes: [UInt8] {
        var words = (a.bigEndian, b.bigEndian, c.bigEndian, d.bigEndian)
        return withUnsafeBytes(of: &words) { Array($0) }
    }

    /// Appends the 32 bytes without an intermediate array.
    func append(to out: inout [UInt8]) {
        var words = (a.bigEndian, b.bigEndian, c.bigEndian, d.bigEndian)
        withUnsafeBytes(of: &words) { out.append(contentsOf: $0) }
    }

    public var description: String { bytes.hex }

    public static func < (l: ChunkID, r: ChunkID) -> Bool { (l.a, l.b, l.c, l.d) < (r.a, r.b, r.c, r.d) }
}

/// The keys of one account, derived from its data key.
public struct AccountKeys: Sendable {
    let idKey: SymmetricKey
    let encryptionKey: SymmetricKey
    /// Seals the account's small secrets (webhook signing secrets), apart from backup data.
    let secretKey: SymmetricKey
    /// HMAC-SHA-256 under `idKey`, with the keyed inner and outer blocks hashed once: a chunk id
    /// then costs one hash of the chunk and one of 32 bytes, with no key set-up per page.
    let innerState: SHA256
    let outerState: SHA256

    init(dataKey: SymmetricKey) {
        idKey = HKDF<SHA256>.deriveKey(inputKeyMaterial: dataKey, info: Array("cloudheed chunk-id v1".utf8), outputByteCount: 32)
        encryptionKey = HKDF<SHA256>.deriveKey(inputKeyMaterial: dataKey, info: Array("cloudheed encryption v1".utf8), outputByteCount: 32)
        secretKey = HKDF<SHA256>.deriveKey(inputKeyMaterial: dataKey, info: Array("cloudheed secrets v1".utf8), outputByteCount: 32)
        // RFC 2104: the 32-byte key padded to SHA-256's 64-byte block.
        let key = idKey.withUnsafeBytes { Array($0) } + [UInt8](repeating: 0, count: 32)
        var inner = SHA256(), outer = SHA256()
        inner.update(data: key.map { $0 ^ 0x36 })
        outer.update(data: key.map { $0 ^ 0x5C })
        innerState = inner
        outerState = outer
    }

    func chunkID(of bytes: UnsafeRawBufferPointer) -> ChunkID {
        var inner = innerState
        inner.update(bufferPointer: bytes)
        var outer = outerState
        inner.finalize().withUnsafeBytes { outer.update(bufferPointer: $0) }
        return outer.finalize().withUnsafeBytes { ChunkID(raw: $0) }
    }

    func chunkID(of bytes: [UInt8]) -> ChunkID {
        bytes.withUnsafeBytes { chunkID(of: $0) }
    }
}

/// Where wrapped data keys are kept (the catalog).
public protocol AccountKeyStore: Sendable {
    /// The account's wrapped data key, storing `candidate` first if it has none.
    func wrappedDataKey(accountID: String, orInsert candidate: [UInt8]) async throws -> [UInt8]
    /// Re-wraps every account's data key with `transform`, all in one transaction: either every
    /// key is re-wrapped or none is. Returns how many.
    func rewrapAllDataKeys(_ transform: @escaping @Sendable (_ accountID: String, _ wrapped: [UInt8]) throws -> [UInt8]) async throws -> Int
    /// Destroys the account's data key: what was encrypted under it can never be read again.
    func destroyDataKey(accountID: String) async throws
}

/// Unwraps and caches account keys.
public final class KeyRing: Sendable {
    let master: MasterKey
    let store: any AccountKeyStore
    private let cache = Mutex<[String: AccountKeys]>([:])

    public init(master: MasterKey, store: any AccountKeyStore) {
        self.master = master
        self.store = store
    }

    public func keys(for accountID: String) async throws -> AccountKeys {
        if let cached = cache.withLock({ $0[accountID] }) { return cached }
        let candidate = try master.wrap(SymmetricKey(size: .bits256), accountID: accountID)
        let wrapped = try await store.wrappedDataKey(accountID: accountID, orInsert: candidate)
        let keys = AccountKeys(dataKey: try master.unwrap(wrapped, accountID: accountID))
        cache.withLock { $0[accountID] = keys }
        return keys
    }

    public func forget(accountID: String) {
        _ = cache.withLock { $0.removeValue(forKey: accountID) }
    }

    /// Re-wraps every data key under `newMaster` without touching any chunk. Returns how many.
    /// Stop the service first: a running one still holds the old master key.
    public static func rotate(store: any AccountKeyStore, from old: MasterKey, to new: MasterKey) async throws -> Int {
        try await rotate(store: store, fromAnyOf: [old], to: new)
    }

    /// Re-wraps under `new` whatever any of `candidates` opens. With the old and the new key as
    /// candidates this is idempotent, which is how an interrupted rotation is completed.
    public static func rotate(store: any AccountKeyStore, fromAnyOf candidates: [MasterKey], to new: MasterKey) async throws -> Int {
        try await store.rewrapAllDataKeys { accountID, wrapped in
            for candidate in candidates {
                if let dataKey = try? candidate.unwrap(wrapped, accountID: accountID) {
                    return try new.wrap(dataKey, accountID: accountID)
                }
            }
            throw KeyError("no given master key opens the data key of account \(accountID)")
        }
    }
}
