import CloudheedDomain
import Foundation

/// The fields of a request's JSON object, read one by one with a clear error for each mistake.
struct RequestFields {
    let pairs: [(String, JSONValue)]

    /// Accepts only an object whose keys are all in `allowed`; a misspelled field is an error, not ignored.
    init(_ value: JSONValue, allowed: Set<String>) throws(DomainError) {
        guard case .object(let pairs) = value else {
            throw DomainError(.badRequest, code: "invalid_body", message: "the request body must be a JSON object")
        }
        if let unknown = pairs.map(\.0).first(where: { !allowed.contains($0) }) {
            throw DomainError(.unprocessable, code: "unknown_field", message: "unknown field '\(unknown)'; allowed: \(allowed.sorted().joined(separator: ", "))")
        }
        self.pairs = pairs
    }

    init() { pairs = [] }

    func value(_ key: String) -> JSONValue? {
        guard let v = pairs.first(where: { $0.0 == key })?.1, v != .null else { return nil }
        return v
    }

    func string(_ key: String) throws(DomainError) -> String? {
        guard let v = value(key) else { return nil }
        guard let s = v.stringValue else { throw .invalidField(key, "'\(key)' must be a string") }
        return s
    }

    func requiredString(_ key: String) throws(DomainError) -> String {
        guard let s = try string(key) else { throw DomainError(.unprocessable, code: "missing_\(key)", message: "'\(key)' is required") }
        return s
    }

    func stringArray(_ key: String) throws(DomainError) -> [String]? {
        guard let v = value(key) else { return nil }
        guard let items = v.arrayValue, items.count <= 64 else { throw .invalidField(key, "'\(key)' must be an array of at most 64 strings") }
        var strings: [String] = []
        for item in items {
            guard let s = item.stringValue else { throw .invalidField(key, "'\(key)' must be an array of strings") }
            strings.append(s)
        }
        return strings
    }

    func int64(_ key: String) throws(DomainError) -> Int64? {
        guard let v = value(key) else { return nil }
        guard let i = v.intValue else { throw .invalidField(key, "'\(key)' must be an integer") }
        return i
    }
}
