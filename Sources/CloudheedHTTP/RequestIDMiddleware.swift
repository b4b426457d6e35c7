import HTTPTypes
import Hummingbird

/// Echoes the request's id (the `hb.request.id` every log line of the request carries) as
/// `X-Request-Id`, so a client reporting a problem can name the log lines that go with it.
struct RequestIDMiddleware<Context: RequestContext>: RouterMiddleware {
    static var header: HTTPField.Name { HTTPField.Name("X-Request-Id")! }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var response = try await next(request, context)
        response.headers[Self.header] = context.id
        return response
    }
}
