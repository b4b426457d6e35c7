import Crypto
import Foundation

/// The unit of compression and encryption: a pack of chunks, or a manifest.
///
/// Layout: `[version 1][flags][12-byte nonce][ciphertext][16-byte tag]`; flags bit 0 = zstd.
/// The associated data binds the kind, the unit's id and the header, so a unit cannot be
/// swapped for another, relabelled, or have its compression flag flipped unnoticed.
enum SealedUnit {
    enum Kind: String { case pack, manifest }
    static let version: UInt8 = 1
    static let maxPlaintext = 256 << 20

    static func aad(_ kind: Kind, id: String, flags: UInt8) -> [UInt8] {
        Array("cloudheed/\(kind.rawValue)/v1/\(id)".utf8) + [version, flags]
    }

    static func seal(_ plaintext: [UInt8], kind: Kind, id: String, key: SymmetricKey, compression: CompressionSetting) throws -> [UInt8] {
        var flags: UInt8 = 0
        var body = plaintext
        if case .zstd(let level) = compression, let compressed = ZstdCompressor().compress(plaintext, level: level) {
            flags |= 1
            body = compressed
        }
        let box = try AES.GCM.seal(body, using: key, authenticating: aad(kind, id: id, flags: flags))
        // One output buffer: a manifest can be tens of MiB, and each extra copy is resident memory.
        var out: [UInt8] = []
        out.reserveCapacity(2 + 12 + body.count + 16)
        out.append(version)
        out.append(flags)
        out.append(contentsOf: box.nonce)
        out.append(contentsOf: box.ciphertext)
        out.append(contentsOf: box.tag)
        return out
    }

    static func open(_ sealed: [UInt8], kind: Kind, id: String, key: SymmetricKey) throws -> [UInt8] {
        guard sealed.count >= 2 + 12 + 16, sealed[0] == version else {
            throw RepositoryError(.corrupt, "\(kind.rawValue) \(id) is truncated or of an unknown format")
        }
        let flags = sealed[1]
        let plaintext: [UInt8]
        do {
            let box = try AES.GCM.SealedBox(
                nonce: try AES.GCM.Nonce(data: sealed[2..<14]), ciphertext: sealed[14..<(sealed.count - 16)], tag: sealed[(sealed.count - 16)...])
            plaintext = Array(try AES.GCM.open(box, using: key, authenticating: aad(kind, id: id, flags: flags)))
        } catch {
            throw RepositoryError(.corrupt, "\(kind.rawValue) \(id) fails authentication: its stored bytes were altered, or it was encrypted under another key")
        }
        return flags & 1 == 0 ? plaintext : try Zstd.decompress(plaintext, limit: maxPlaintext)
    }
}
