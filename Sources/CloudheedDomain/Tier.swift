/// Database size tiers and the automatic-backup retention each one buys
/// (documentation page: Free 1 day, Micro 7, Small+ 14, Large+ 30).
public enum Tier: String, CaseIterable, Codable, Sendable {
    case free, micro, small, medium, large, xlarge

    public var retentionDays: Int {
        switch self {
        case .free: 1
        case .micro: 7
        case .small, .medium: 14
        case .large, .xlarge: 30
        }
    }

    /// How long an automatic backup taken at this tier is kept.
    public var retention: Duration { .seconds(Int64(retentionDays) * 86_400) }

    public static func parse(_ raw: String) throws(DomainError) -> Tier {
        guard let tier = Tier(rawValue: raw) else {
            throw .invalidField("tier", "unknown tier '\(raw)'; expected one of \(Tier.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return tier
    }
}
