import CloudheedDomain
import Foundation

/// Knobs of the background machinery; tests shrink the intervals.
public struct RuntimeSettings: Sendable {
    /// Jobs that may run at once.
    public var workers: Int
    /// How long a claimed job belongs to its worker without a heartbeat.
    public var leaseDuration: Duration
    /// Attempts (claims) before a job whose worker keeps dying is failed.
    public var maxAttempts: Int
    /// How often workers look for work when nothing woke them.
    public var pollInterval: Duration
    /// How often the scheduler runs a tick.
    public var schedulerInterval: Duration
    /// How often garbage collection runs (on every node; it is safe to run concurrently).
    public var gcInterval: Duration
    /// Storage quota of accounts created without one.
    public var defaultQuotaBytes: Int64
    /// When failed webhook deliveries are tried again.
    public var webhookRetry: WebhookRetryPolicy
    /// Hosts webhooks may point at (lower-case); nil: any.
    public var webhookAllowedHosts: Set<String>?

    public init(
        workers: Int = ProcessInfo.processInfo.activeProcessorCount,
        leaseDuration: Duration = .seconds(60),
        maxAttempts: Int = 3,
        pollInterval: Duration = .seconds(2),
        schedulerInterval: Duration = .seconds(60),
        gcInterval: Duration = .seconds(600),
        defaultQuotaBytes: Int64 = 10 * 1024 * 1024 * 1024,
        webhookRetry: WebhookRetryPolicy = .init(),
        webhookAllowedHosts: Set<String>? = nil
    ) {
        self.webhookRetry = webhookRetry
        self.webhookAllowedHosts = webhookAllowedHosts
        self.workers = workers
        self.leaseDuration = leaseDuration
        self.maxAttempts = maxAttempts
        self.pollInterval = pollInterval
        self.schedulerInterval = schedulerInterval
        self.gcInterval = gcInterval
        self.defaultQuotaBytes = defaultQuotaBytes
    }
}
