import Foundation

public struct Account: Sendable, Equatable {
    public var id: String
    public var name: String
    public var storageQuotaBytes: Int64
    public var createdAt: Date

    public init(id: String, name: String, storageQuotaBytes: Int64, createdAt: Date) {
        self.id = id
        self.name = name
        self.storageQuotaBytes = storageQuotaBytes
        self.createdAt = createdAt
    }

    public static func validateName(_ name: String) throws(DomainError) {
        guard (1...128).contains(name.count), !name.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            throw .invalidField("name", "'name' must be 1-128 characters without control characters")
        }
    }

    public static func validateQuota(_ bytes: Int64) throws(DomainError) {
        guard bytes >= 0 else { throw .invalidField("storage_quota_bytes", "'storage_quota_bytes' must be zero or more") }
    }
}
