import ServiceLifecycle
import Synchronization

/// Wakes idle workers when work is enqueued, so a new backup starts within a moment instead of
/// at the next catalog poll. A generation counter, checked every few milliseconds by a waiting
/// worker: no continuation bookkeeping, nothing to leak on cancellation.
public final class WorkSignal: Sendable {
    private let generation = Atomic<UInt64>(0)

    public init() {}

    public func notify() {
        generation.add(1, ordering: .releasing)
    }

    /// Returns when notified after the call began, after `timeout`, or on cancellation or shutdown.
    func wait(timeout: Duration) async {
        let start = generation.load(ordering: .acquiring)
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while ContinuousClock.now < deadline, generation.load(ordering: .acquiring) == start, !Task.isShuttingDownGracefully {
            do { try await Task.sleep(for: .milliseconds(20)) } catch { return }
        }
    }
}
