/// Content-defined chunking for byte streams without page structure (dumps), FastCDC-style:
/// a gear rolling hash cuts where its top bits are zero, with a stricter mask before the
/// average size and a looser one after it ("normalized chunking"), so sizes cluster around
/// the average and an insertion shifts only the chunks around it.
public struct FastCDCParameters: Sendable, Equatable {
    public let minimum: Int
    public let average: Int
    public let maximum: Int

    public init(minimum: Int, average: Int, maximum: Int) {
        precondition(minimum > 0 && minimum <= average && average <= maximum && average.nonzeroBitCount == 1)
        self.minimum = minimum
        self.average = average
        self.maximum = maximum
    }

    /// 256 KiB / 1 MiB / 4 MiB, about restic's.
    public static let `default` = FastCDCParameters(minimum: 256 << 10, average: 1 << 20, maximum: 4 << 20)
}

public struct FastCDCSplitter {
    public let parameters: FastCDCParameters
    let strictMask: UInt64
    let looseMask: UInt64
    var buffer: [UInt8] = []
    /// Where the unchunked bytes start in `buffer`; the consumed front is dropped only once it is
    /// the larger part, so appending costs amortized O(1) copies per byte.
    var start = 0

    public init(_ parameters: FastCDCParameters) {
        self.parameters = parameters
        let bits = parameters.average.trailingZeroBitCount
        // Top-bit masks: with h = (h << 1) + gear[b], the high bits mix the last 64 bytes.
        strictMask = ~UInt64(0) << UInt64(64 - min(63, bits + 1))
        looseMask = ~UInt64(0) << UInt64(64 - max(1, bits - 1))
    }

    /// Feeds bytes; returns the chunks they completed. With `batch` 0 at most `maximum` bytes stay
    /// buffered; a larger `batch` lets that many more gather first, so chunks come out several at
    /// a time (to be hashed in parallel). Boundaries are the same either way: every cut sees at
    /// least `maximum` bytes.
    public mutating func append(_ bytes: [UInt8], batch: Int = 0) -> [[UInt8]] {
        if start > 0, start >= buffer.count - start {
            buffer.removeFirst(start)
            start = 0
        }
        buffer.append(contentsOf: bytes)
        guard buffer.count - start >= parameters.maximum + batch else { return [] }
        var chunks: [[UInt8]] = []
        while buffer.count - start >= parameters.maximum {
            let length = cut(start, buffer.count)
            chunks.append(Array(buffer[start..<(start + length)]))
            start += length
        }
        return chunks
    }

    /// The remaining chunks at the end of the stream.
    public mutating func finish() -> [[UInt8]] {
        var chunks: [[UInt8]] = []
        while start < buffer.count {
            let length = cut(start, buffer.count)
            chunks.append(Array(buffer[start..<(start + length)]))
            start += length
        }
        buffer.removeAll()
        start = 0
        return chunks
    }

    func cut(_ start: Int, _ end: Int) -> Int {
        var n = end - start
        if n <= parameters.minimum { return n }
        if n > parameters.maximum { n = parameters.maximum }
        let normal = min(parameters.average, n)
        let strictMask = strictMask, looseMask = looseMask
        return buffer.withUnsafeBufferPointer { data in
            gearTable.withUnsafeBufferPointer { gear in
                let bytes = data.baseAddress! + start
                var hash: UInt64 = 0
                var i = parameters.minimum
                while i < normal {
                    hash = (hash << 1) &+ gear[Int(bytes[i])]
                    if hash & strictMask == 0 { return i + 1 }
                    i += 1
                }
                while i < n {
                    hash = (hash << 1) &+ gear[Int(bytes[i])]
                    if hash & looseMask == 0 { return i + 1 }
                    i += 1
                }
                return n
            }
        }
    }
}

/// 256 pseudo-random 64-bit values from a fixed SplitMix64 seed: chunk boundaries must be the
/// same on every machine and in every release, or deduplication across backups breaks.
let gearTable: [UInt64] = {
    var state: UInt64 = 0x636C_6F75_6468_6565  // "cloudhee"
    return (0..<256).map { _ in
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}()
