import CloudheedDomain
import Metrics
import NIOCore
import Synchronization

/// Rendered `GET /v1/databases/{id}/backups` bodies, each kept with the catalog version of the
/// database it was rendered under (`AccessCheck.databaseVersion`: raised by the catalog's own
/// triggers in the transaction of every change that can alter the list, `unique_bytes` included).
/// A body is served only while the version the request's access check just read is the same, so
/// the cache never answers with anything the catalog would not: a change committed before the
/// request started always shows. The version is read before the list, so a body rendered from a
/// newer state than its version is only ever discarded early, never served stale.
///
/// Bounded by bytes (`--list-cache-mb`); the oldest bodies go first. A budget of 0 turns it off.
public final class BackupListCache: Sendable {
    struct Key: Hashable, Sendable {
        var accountID: String
        var databaseID: String
        var type: BackupType?
        var status: BackupStatus?
    }

    private struct Entry {
        var version: Int64
        var body: ByteBuffer
        var serial: Int
    }

    private struct State {
        var entries: [Key: Entry] = [:]
        /// Insertion order for eviction; a key whose entry was replaced since is skipped by serial.
        var order: [(key: Key, serial: Int)] = []
        var head = 0
        var bytes = 0
        var nextSerial = 0
        var hits = 0
        var misses = 0
    }

    let budgetBytes: Int
    private let state = Mutex(State())
    private let hits = Counter(label: "cloudheed_list_cache_hits_total")
    private let misses = Counter(label: "cloudheed_list_cache_misses_total")

    /// Lists served from the cache, and lists rendered, since this cache was made.
    public var statistics: (hits: Int, misses: Int) { state.withLock { ($0.hits, $0.misses) } }

    init(budgetBytes: Int) {
        self.budgetBytes = budgetBytes
    }

    /// The body rendered under exactly this version, if kept.
    func body(for key: Key, version: Int64) -> ByteBuffer? {
        guard budgetBytes > 0 else { return nil }
        let body = state.withLock { state -> ByteBuffer? in
            guard let entry = state.entries[key], entry.version == version else {
                state.misses += 1
                return nil
            }
            state.hits += 1
            return entry.body
        }
        (body == nil ? misses : hits).increment()
        return body
    }

    func store(_ body: ByteBuffer, for key: Key, version: Int64) {
        let size = body.readableBytes
        guard size <= budgetBytes / 4 else { return }
        state.withLock { state in
            let serial = state.nextSerial
            state.nextSerial += 1
            if let old = state.entries.updateValue(Entry(version: version, body: body, serial: serial), forKey: key) {
                state.bytes -= old.body.readableBytes
            }
            state.bytes += size
            state.order.append((key, serial))
            while state.bytes > budgetBytes, state.head < state.order.count {
                let (oldest, oldestSerial) = state.order[state.head]
                state.head += 1
                if let entry = state.entries[oldest], entry.serial == oldestSerial {
                    state.entries[oldest] = nil
                    state.bytes -= entry.body.readableBytes
                }
            }
            // Drop the consumed and superseded positions once they outnumber the live ones.
            if state.order.count > 2 * state.entries.count + 1024 {
                state.order = state.order[state.head...].filter { state.entries[$0.key]?.serial == $0.serial }
                state.head = 0
            }
        }
    }
}
