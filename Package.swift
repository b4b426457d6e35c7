// swift-tools-version:6.2
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "cloudheed",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "cloudheed", targets: ["cloudheed"]),
        .executable(name: "cloudheed-bench", targets: ["cloudheed-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-configuration.git", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/swiftlang/swift-subprocess.git", from: "1.0.2"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
    ],
    targets: [
        // The system's libzstd (Debian: libzstd-dev, installed by scripts/install-deps).
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        // syncfs(2), which needs _GNU_SOURCE.
        .target(name: "CLinuxShims"),
        // Domain: backups, databases, tiers, retention, windows, jobs. No HTTP, no SQL.
        .target(
            name: "CloudheedDomain",
            dependencies: [],
            swiftSettings: swiftSettings
        ),
        // Storage: catalog and repository protocols with their implementations.
        .target(
            name: "CloudheedStorage",
            dependencies: [
                "CloudheedDomain",
                "CZstd",
                "CLinuxShims",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // Engine adapters: how a database of each engine is created, snapshotted and restored.
        .target(
            name: "CloudheedEngines",
            dependencies: [
                "CloudheedDomain",
                "CloudheedStorage",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Subprocess", package: "swift-subprocess"),
            ],
            swiftSettings: swiftSettings
        ),
        // Runtime: the long-running services (job workers, scheduler) and the operations the API calls.
        .target(
            name: "CloudheedRuntime",
            dependencies: [
                "CloudheedDomain",
                "CloudheedStorage",
                "CloudheedEngines",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
            ],
            swiftSettings: swiftSettings
        ),
        // HTTP: router, controllers, auth, and the application builder.
        .target(
            name: "CloudheedHTTP",
            dependencies: [
                "CloudheedDomain",
                "CloudheedStorage",
                "CloudheedEngines",
                "CloudheedRuntime",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            // The API's OpenAPI document (also at the repository's root, a link to this file).
            resources: [.copy("Resources/openapi.json")],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "cloudheed",
            dependencies: [
                "CloudheedHTTP",
                "CloudheedRuntime",
                "CloudheedStorage",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // Benchmark driver (bench/run-sqlite.sh): our pipeline, timed in its own process.
        .executableTarget(
            name: "cloudheed-bench",
            dependencies: [
                "CloudheedDomain", "CloudheedStorage", "CloudheedEngines", "CloudheedRuntime",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // What tests share: a PostgreSQL server of their own (TestPostgres).
        .target(
            name: "CloudheedTestSupport",
            dependencies: [
                "CloudheedEngines",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Subprocess", package: "swift-subprocess"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "CloudheedDomainTests",
            dependencies: ["CloudheedDomain"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "CloudheedStorageTests",
            dependencies: [
                "CloudheedDomain", "CloudheedStorage", "CloudheedTestSupport",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "CloudheedEnginesTests",
            dependencies: [
                "CloudheedDomain", "CloudheedStorage", "CloudheedEngines", "CloudheedTestSupport",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Subprocess", package: "swift-subprocess"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "CloudheedRuntimeTests",
            dependencies: [
                "CloudheedDomain", "CloudheedStorage", "CloudheedEngines", "CloudheedRuntime",
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "CloudheedHTTPTests",
            dependencies: [
                "CloudheedDomain", "CloudheedStorage", "CloudheedEngines", "CloudheedRuntime", "CloudheedHTTP", "CloudheedTestSupport",
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Subprocess", package: "swift-subprocess"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)
