import Foundation
import CloudheedDomain
import CloudheedEngines
import Hummingbird
import Logging

/// Turns every error into `{"error": {"code", "message"}}` with its status, in one place.
/// Errors the client did not cause are logged and answered with a generic 500 that reveals nothing.
struct ErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as DomainError {
            return Self.response(status: Self.status(error.kind), code: error.code, message: error.message, unauthorized: error.kind == .unauthorized)
        } catch let error as EngineError {
            // The database server failed (unreachable, refused our role): not the caller's fault,
            // and worth retrying.
            context.logger.warning("database engine failed", metadata: ["error.code": "\(error.code)"])
            return Self.response(status: .serviceUnavailable, code: error.code, message: error.message)
        } catch let error as any HTTPResponseError {
            // Hummingbird's own errors (no route, body too large) and NIO's NIOTooManyBytesError.
            let (code, message) = Self.describe(status: error.status, detail: (error as? HTTPError)?.body)
            return Self.response(status: error.status, code: code, message: message)
        } catch {
            context.logger.error("request failed", metadata: ["error": "\(error)"])
            return Self.response(status: .internalServerError, code: "internal_error", message: "the service failed to handle the request")
        }
    }

    static func status(_ kind: DomainError.Kind) -> HTTPResponse.Status {
        switch kind {
        case .badRequest: .badRequest
        case .unauthorized: .unauthorized
        case .forbidden: .forbidden
        case .notFound: .notFound
        case .conflict: .conflict
        case .payloadTooLarge: .contentTooLarge
        case .unprocessable: .unprocessableContent
        case .unavailable: .serviceUnavailable
        case .internalError: .internalServerError
        }
    }

    static func describe(status: HTTPResponse.Status, detail: String?) -> (String, String) {
        switch status {
        case .notFound: ("not_found", "no such route")
        case .contentTooLarge: ("payload_too_large", "the request body exceeds \(HTTPLimits.maxBodyBytes) bytes")
        case .methodNotAllowed: ("method_not_allowed", "method not allowed on this route")
        case .badRequest: ("bad_request", detail ?? "bad request")
        default: (status.reasonPhrase.lowercased().replacingOccurrences(of: " ", with: "_"), detail ?? status.reasonPhrase)
        }
    }

    static func response(status: HTTPResponse.Status, code: String, message: String, unauthorized: Bool = false) -> Response {
        var headers: HTTPFields = [.contentType: "application/json"]
        if unauthorized { headers[.wwwAuthenticate] = "Bearer" }
        let body = JSONValue.object([("error", .object([("code", .string(code)), ("message", .string(message))]))])
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: body.serialized())))
    }
}

/// A JSON response.
func json(_ value: JSONValue, status: HTTPResponse.Status = .ok) -> Response {
    jsonResponse(ByteBuffer(bytes: value.serialized()), status: status)
}

/// A response with an already serialized JSON body.
func jsonResponse(_ body: ByteBuffer, status: HTTPResponse.Status = .ok) -> Response {
    Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: body))
}

extension Request {
    /// The body as JSON fields, bounded by the body limit. An empty body is `nil` when `optional`.
    func fields(allowed: Set<String>, optional: Bool = false) async throws -> RequestFields {
        let buffer = try await body.collect(upTo: HTTPLimits.maxBodyBytes)
        if buffer.readableBytes == 0 {
            if optional { return RequestFields() }
            throw DomainError(.badRequest, code: "missing_body", message: "a JSON request body is required")
        }
        return try RequestFields(JSONValue.parse(Array(buffer.readableBytesView)), allowed: allowed)
    }
}
