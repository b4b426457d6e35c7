import CloudheedDomain
import CloudheedRuntime
import Hummingbird

/// `/v1/databases`: what backups are of.
struct DatabaseController {
    let service: BackupService

    func addRoutes(to group: RouterGroup<AppRequestContext>) {
        group.post("databases", use: create)
        group.get("databases", use: list)
        group.get("databases/:id", use: show)
        group.patch("databases/:id", use: update)
        group.delete("databases/:id", use: delete)
    }

    func representation(_ database: ManagedDatabase) -> JSONValue {
        Representation.database(database, uri: service.connectionURI(for: database))
    }

    @Sendable func create(_ request: Request, context: AppRequestContext) async throws -> Response {
        let account = try context.requireAccount()
        let fields = try await request.fields(allowed: ["name", "tier", "engine", "backup_window", "restore_drills"])
        let name = try fields.requiredString("name")
        let tier = try Tier.parse(try fields.requiredString("tier"))
        let engine = try EngineKind.parse(try fields.string("engine") ?? EngineKind.sqlite.rawValue)
        let window = try fields.string("backup_window").map { text throws(DomainError) in try BackupWindow.parse(text) }
        let drills = try fields.string("restore_drills").map { raw throws(DomainError) in try RestoreDrills.parse(raw) } ?? .weekly
        let (database, uri) = try await service.createDatabase(
            accountID: account.id, name: name, tier: tier, engine: engine, backupWindow: window, restoreDrills: drills)
        context.logger.info("database created", metadata: ["database.id": "\(database.id)"])
        // The only response that carries the owner's password (PostgreSQL).
        return json(Representation.database(database, uri: uri), status: .created)
    }

    @Sendable func list(_ request: Request, context: AppRequestContext) async throws -> Response {
        let account = try context.requireAccount()
        let includeDeleted: Bool
        switch request.uri.queryParameters.get("include_deleted") {
        case nil, "false": includeDeleted = false
        case "true": includeDeleted = true
        case let other?: throw DomainError.invalidField("include_deleted", "include_deleted must be true or false, not '\(other)'")
        }
        let databases = try await service.databases(accountID: account.id, includeDeleted: includeDeleted)
        return json(.object([("databases", .array(databases.map(representation)))]))
    }

    @Sendable func show(_ request: Request, context: AppRequestContext) async throws -> Response {
        let account = try context.requireAccount()
        let database = try await service.database(accountID: account.id, id: try context.parameters.require("id"))
        return json(representation(database))
    }

    @Sendable func update(_ request: Request, context: AppRequestContext) async throws -> Response {
        let account = try context.requireAccount()
        let id = try context.parameters.require("id")
        let fields = try await request.fields(allowed: ["tier", "backup_window", "restore_drills"])
        let tier = try fields.string("tier").map { raw throws(DomainError) in try Tier.parse(raw) }
        let window = try fields.string("backup_window").map { text throws(DomainError) in try BackupWindow.parse(text) }
        let drills = try fields.string("restore_drills").map { raw throws(DomainError) in try RestoreDrills.parse(raw) }
        let database = try await service.updateDatabase(accountID: account.id, id: id, tier: tier, backupWindow: window, restoreDrills: drills)
        return json(representation(database))
    }

    @Sendable func delete(_ request: Request, context: AppRequestContext) async throws -> Response {
        let account = try context.requireAccount()
        let id = try context.parameters.require("id")
        try await service.deleteDatabase(accountID: account.id, id: id)
        context.logger.info("database deleted", metadata: ["database.id": "\(id)"])
        return json(representation(try await service.database(accountID: account.id, id: id)))
    }
}
