import CloudheedDomain
import CloudheedRuntime
import CloudheedStorage
import Foundation
import Hummingbird
import Metrics
import Prometheus

/// The process's metrics registry: swift-metrics is bootstrapped with a Prometheus factory once,
/// the first time a service is wired, and `/metrics` prints this registry.
public enum MetricsExport {
    public static let registry: PrometheusCollectorRegistry = {
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        let jobBuckets: [Duration] = [.milliseconds(100), .milliseconds(500), .seconds(1), .seconds(5), .seconds(15), .seconds(60), .seconds(300), .seconds(900), .seconds(3600), .seconds(4 * 3600)]
        factory.durationHistogramBuckets = [
            "cloudheed_backup_duration_seconds": jobBuckets,
            "cloudheed_restore_duration_seconds": jobBuckets,
        ]
        factory.defaultDurationHistogramBuckets = [
            .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
            .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2), .seconds(5), .seconds(10),
        ]
        MetricsSystem.bootstrap(factory)
        return registry
    }()

    /// Gauges read from the catalog at each scrape, then the whole registry as Prometheus text.
    static func scrape(_ service: BackupService) async throws -> [UInt8] {
        let (pending, running) = try await service.catalog.jobCounts()
        let now = service.clock.now()
        let oldest = try await service.catalog.oldestPendingJob()
        Gauge(label: "cloudheed_jobs_pending").record(pending)
        Gauge(label: "cloudheed_jobs_running").record(running)
        Gauge(label: "cloudheed_oldest_pending_job_age_seconds").record(oldest.map { max(0, now.timeIntervalSince($0)) } ?? 0)
        Gauge(label: "cloudheed_databases_without_backup_26h")
            .record(try await service.catalog.databasesWithoutBackup(since: now.addingTimeInterval(-26 * 3600)))
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return buffer
    }
}

/// `GET /metrics`; with a metrics token configured, only with `Authorization: Bearer <token>`.
struct MetricsController {
    let service: BackupService
    /// Kept hashed, compared in constant time, like the admin token.
    let token: AdminToken?

    func addRoutes(to router: Router<AppRequestContext>) {
        router.get("metrics") { request, _ in
            if let token {
                let presented = request.headers[.authorization].flatMap { $0.hasPrefix("Bearer ") ? String($0.dropFirst(7)) : nil } ?? ""
                guard token.matches(presented) else {
                    throw DomainError(.unauthorized, code: "unauthorized", message: "this service requires the metrics token for /metrics")
                }
            }
            let body = try await MetricsExport.scrape(service)
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(bytes: body)))
        }
    }
}
