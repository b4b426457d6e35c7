import Synchronization

/// Bytes a backup or restore has read or written so far, counted by the repository as it goes
/// and reported by the job runner. The repository finds the meter of the job it works for as a
/// task-local value, so no call signature has to carry it.
public final class ProgressMeter: Sendable {
    let state = Mutex<(done: Int64, total: Int64?)>((0, nil))

    @TaskLocal public static var current: ProgressMeter?

    public init() {}

    /// Starts counting again (a store that retries begins from zero).
    public func reset(total: Int64?) { state.withLock { $0 = (0, total) } }
    public func add(_ bytes: Int) { state.withLock { $0.done += Int64(bytes) } }
    public var snapshot: (done: Int64, total: Int64?) { state.withLock { $0 } }
}
