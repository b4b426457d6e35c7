import CZstd

/// How sealed units are compressed: zstd at a level (3 by default), or not at all.
public enum CompressionSetting: Sendable, Equatable, CustomStringConvertible {
    case none
    case zstd(level: Int32)

    public static let `default` = CompressionSetting.zstd(level: 3)

    /// `none`, or a zstd level such as `3` or `zstd:3`.
    public static func parse(_ text: String) -> CompressionSetting? {
        if text == "none" { return CompressionSetting.none }
        let digits = text.hasPrefix("zstd:") ? String(text.dropFirst(5)) : text
        // Levels above 19 are zstd's "ultra" levels, whose windows need far more memory than the
        // service's bound allows.
        guard let level = Int32(digits), (1...19).contains(level) else { return nil }
        return .zstd(level: level)
    }

    public var description: String {
        switch self {
        case .none: "none"
        case .zstd(let level): "zstd:\(level)"
        }
    }
}

/// A zstd compression context, used by one task at a time (contexts are not thread-safe). One is
/// made per sealed pack: creating it is cheap next to compressing about 4 MiB.
final class ZstdCompressor {
    private let context: OpaquePointer

    init() { context = ZSTD_createCCtx() }
    deinit { ZSTD_freeCCtx(context) }

    /// The compressed frame (with its content size recorded), or nil when it would not be smaller.
    func compress(_ input: [UInt8], level: Int32) -> [UInt8]? {
        let bound = ZSTD_compressBound(input.count)
        var output = [UInt8](repeating: 0, count: bound)
        let written = output.withUnsafeMutableBytes { out in
            input.withUnsafeBytes { src in
                ZSTD_compressCCtx(context, out.baseAddress, bound, src.baseAddress, input.count, level)
            }
        }
        guard ZSTD_isError(written) == 0, written < input.count else { return nil }
        output.removeSubrange(written...)
        return output
    }
}

enum Zstd {
    /// Decompresses one frame whose recorded content size is at most `limit` bytes.
    static func decompress(_ input: [UInt8], limit: Int) throws -> [UInt8] {
        let size = input.withUnsafeBytes { ZSTD_getFrameContentSize($0.baseAddress, input.count) }
        guard size != ZSTD_CONTENTSIZE_ERROR, size != ZSTD_CONTENTSIZE_UNKNOWN, size <= UInt64(limit) else {
            throw RepositoryError(.corrupt, "compressed data has an invalid frame header")
        }
        var output = [UInt8](repeating: 0, count: Int(size))
        let written = output.withUnsafeMutableBytes { out in
            input.withUnsafeBytes { src in ZSTD_decompress(out.baseAddress, Int(size), src.baseAddress, input.count) }
        }
        guard ZSTD_isError(written) == 0, written == Int(size) else {
            throw RepositoryError(.corrupt, "compressed data does not decompress")
        }
        return output
    }
}
