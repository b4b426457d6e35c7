import CloudheedHTTP
import Foundation
import Hummingbird
import Testing

/// `/v1/databases/:id` and `/v1/databases/{id}` both become `/v1/databases/{}`.
func normalizedPath(_ path: String) -> String {
    "/" + path.split(separator: "/").map { $0.hasPrefix(":") || $0.hasPrefix("{") ? "{}" : String($0) }.joined(separator: "/")
}

@Suite("OpenAPI contract")
struct OpenAPIContractTests {
    @Test("The document is served without a token, and describes exactly the routes the router has")
    func documentMatchesRouter() async throws {
        let service = try TestService()
        let bundled = try #require(Components.openAPIDocument)
        let document = try #require(try JSONSerialization.jsonObject(with: Data(bundled)) as? [String: Any])
        let version = try #require(document["openapi"] as? String)
        #expect(version.hasPrefix("3.1"))
        let paths = try #require(document["paths"] as? [String: [String: Any]])
        let methods: Set<String> = ["get", "put", "post", "patch", "delete", "head", "options"]
        let documented = Set(paths.flatMap { path, operations in
            operations.keys.filter(methods.contains).map { "\($0.uppercased()) \(normalizedPath(path))" }
        })
        let routed = Set(service.components.buildRouter().routes.map { "\($0.method.rawValue) \(normalizedPath($0.path.description))" })
        #expect(routed.subtracting(documented).sorted() == [], "routes the document does not describe")
        #expect(documented.subtracting(routed).sorted() == [], "documented operations no route serves")
        #expect(routed.count >= 18)

        try await service.withClient { api in
            let served = try await api.call(.get, "/v1/openapi.json")
            #expect(served.status == .ok)
            #expect(served.headers[.contentType] == "application/json")
            #expect(served["openapi"]?.stringValue == version)
            #expect(served["paths"]?["/v1/openapi.json"] != nil)
        }
    }
}
