import CloudheedDomain
import CloudheedRuntime
import Hummingbird

/// `/v1/databases/{id}/backups`: list, create, show, delete and restore, as on the documentation page.
struct BackupController {
    let service: BackupService
    let listCache: BackupListCache

    /// `group` is `v1/databases/:id/backups`, authenticated with the database's version read
    /// alongside (`AccountAuthMiddleware.databaseParameter`).
    func addDatabaseRoutes(to group: RouterGroup<AppRequestContext>) {
        group.get(use: list)
        group.post(use: create)
        group.get(":backupID", use: show)
        group.delete(":backupID", use: delete)
        group.post(":backupID/restore", use: restore)
        group.post(":backupID/verify", use: verify)
    }

    func addRoutes(to group: RouterGroup<AppRequestContext>) {
        group.get("restores/:id", use: showRestore)
    }

    /// Served from `listCache` while the database's version is the one it was rendered under.
    @Sendable func list(_ request: Request, context: AppRequestContext) async throws -> Response {
        let account = try context.requireAccount()
        let databaseID: String = try context.parameters.require("id")
        let query = request.uri.queryParameters
        let type = try query.get("type").map { raw throws(DomainError) in try BackupType.parse(String(raw)) }
        let status = try query.get("status").map { raw throws(DomainError) in try BackupStatus.parse(String(raw)) }
        guard let version = context.databaseVersion else { throw DomainError.databaseNotFound }
        let key = BackupListCache.Key(accountID: account.id, databaseID: databaseID, type: type, status: status)
        if let body = listCache.body(for: key, version: version) { return jsonResponse(body) }
        // The access check found the database; its version was read before this list.
        let backups = try await service.catalog.backups(databaseID: databaseID, accountID: account.id, type: type, status: status)
        let unique = try await service.uniqueBytes(of: backups)
        let body = ByteBuffer(bytes: JSONValue.object([("backups", .array(backups.map { Representation.backup($0, uniqueBytes: unique[$0.id]) }))]).serialized())
        listCache.store(body, for: key, version: version)
        return jsonResponse(body)
    }

    func representation(_ backup: Backup) async throws -> JSONValue {
        Representation.backup(backup, uniqueBytes: try await service.uniqueBytes(of: [backup])[backup.id])
    }

    @Sendable func verify(_ request: Request, context: AppRequestContext) async throws -> Response {
        let account = try context.requireAccount()
        _ = try await request.fields(allowed: [], optional: true)
        let backup = try await service.verifyBackup(
            accountID: account.id, databaseID: try context.parameters.require("id"), backupID: try context.parameters.require("backupID"))
        context.logger.info("verification requested", metadata: ["backup.id": "\(backup.id)"])
        return json(try await representation(backup), status: .accepted)
    }

    @Sendable func create(_ request: Request, context: AppRequestContext) async throws -> Response {
        let account = try context.requireAccount()
        let fields = try await request.fields(allowed: ["name"], optional: true)
        let backup = try await service.createManualBackup(
            accountID: account.id, databaseID: try context.parameters.require("id"), name: try fields.string("name"))
        context.logger.info("manual backup requested", metadata: ["backup.id": "\(backup.id)", "database.id": "\(backup.databaseID)"])
        return json(Representation.backup(backup), status: .accepted)
    }

    @Sendable func show(_ request: Request, context: AppRequestContext) async throws -> Response {
        let account = try context.requireAccount()
        let backup = try await service.backup(
            accountID: account.id, databaseID: try context.parameters.require("id"), backupID: try context.parameters.require("backupID"))
        return json(try await representation(backup))
    }

    @Sendable func delete(_ request: Request, context: AppRequestContext) async throws -> Response {
        let account = try context.requireAccount()
        let backupID = try context.parameters.require("backupID")
        try await service.deleteBackup(
            accountID: account.id, databaseID: try context.parameters.require("id"), backupID: backupID)
        context.logger.info("manual backup deleted", metadata: ["backup.id": "\(backupID)"])
        return Response(status: .noContent)
    }

    @Sendable func restore(_ request: Request, context: AppRequestContext) async throws -> Response {
        let account = try context.requireAccount()
        let fields = try await request.fields(allowed: ["target_database_name"], optional: true)
        let (restore, database, uri) = try await service.restore(
            accountID: account.id, databaseID: try context.parameters.require("id"),
            backupID: try context.parameters.require("backupID"), targetName: try fields.string("target_database_name"))
        context.logger.info("restore requested", metadata: ["restore.id": "\(restore.id)", "backup.id": "\(restore.backupID)"])
        return json(
            .object([
                ("restore", Representation.restore(restore)),
                // The only response that carries the new owner's password (PostgreSQL).
                ("database", Representation.database(database, uri: uri)),
            ]), status: .accepted)
    }

    @Sendable func showRestore(_ request: Request, context: AppRequestContext) async throws -> Response {
        let account = try context.requireAccount()
        let restore = try await service.restore(accountID: account.id, id: try context.parameters.require("id"))
        let database = try await service.database(accountID: account.id, id: restore.targetDatabaseID)
        return json(
            .object([
                ("restore", Representation.restore(restore)),
                ("database", Representation.database(database, uri: service.connectionURI(for: database))),
            ]))
    }
}
