import Glibc
import IPC

/// The supervisor's control endpoint (`RUNTIME_DIR/supervisor.sock`), answering
/// `ControlProtocol` requests from `serverctl`. Serves on its own thread; stop, restart and start
/// wait there for the outcome, which keeps the supervisor's loop free.
public final class ControlServer: @unchecked Sendable {
    public let server: IPCServer

    public init(supervisor: Supervisor, directory: String,
                authorization: ControlAuthorization = ControlAuthorization()) throws(IPCError) {
        server = try IPCServer(name: ControlProtocol.endpointName, directory: directory) { request, payload, connection in
            ControlServer.answer(request, payload: payload, credentials: connection.credentials, supervisor: supervisor,
                                 authorization: authorization)
        }
        // The socket is for every local user (anyone may list and read logs); who may change
        // what is decided per request.
        chmod(server.endpoint.socketPath, 0o666)
    }

    public func start() { server.start() }
    public func stop() { server.stop() }

    /// One request's answer.
    public static func answer(_ request: Message, payload: IPCPayload, credentials: PeerCredentials, supervisor: Supervisor,
                              authorization: ControlAuthorization) -> IPCReply {
        guard request.type == ControlProtocol.messageType else {
            return IPCReply(status: .ENOSYS)
        }
        // grant and revoke: `NAME\nCAP,CAP...`; the others: `NAME`.
        let text = String(decoding: payload.data, as: UTF8.self)
        let parts = text.split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false)
        let capabilities = parts.count > 1 ? parts[1].split(separator: ",").map(String.init) : []
        let response = respond(command: request.param1, name: String(parts.first ?? ""), capabilities: capabilities,
                               last: request.param2, since: request.param3, credentials: credentials, supervisor: supervisor,
                               authorization: authorization, limit: payload.reply.count)
        let bytes = Array(response.text.utf8.prefix(payload.reply.count))
        bytes.withUnsafeBytes { payload.reply.copyMemory(from: $0) }
        return IPCReply(status: response.status, param2: response.omitted, payloadCount: bytes.count)
    }

    /// The answer as values: status, reply text, and (logs) lines left out. Free of sockets, so
    /// tests call it with made-up credentials.
    public static func respond(command code: UInt64, name: String, capabilities: [String] = [], last: UInt64 = 0, since: UInt64 = 0,
                               credentials: PeerCredentials, supervisor: Supervisor, authorization: ControlAuthorization,
                               limit: Int = Message.maxInlinePayload) -> (status: IPCStatus, text: String, omitted: UInt64) {
        guard let command = ControlCommand(rawValue: code) else {
            return (.EINVAL, "unknown control command \(code); is serverctl from the same release as the supervisor?", 0)
        }
        if command != .list && name.isEmpty { return (.EINVAL, "\(command) needs a server name", 0) }
        if command.changesState && !authorization.mayControl(credentials) {
            return (.EACCES, "permission denied: \(command) needs root or membership of the "
                + (authorization.adminGroupID.map { "admin group (gid \($0))" } ?? "admin group, which does not exist on this system"), 0)
        }
        do throws(Supervisor.ControlFailure) {
            switch command {
            case .list:
                return (.ok, supervisor.statuses().map(\.encoded).joined(separator: "\n"), 0)
            case .status, .caps:
                return (.ok, try supervisor.status(of: name).encoded, 0)
            case .start:
                try supervisor.start(name)
                return (.ok, try supervisor.status(of: name).encoded, 0)
            case .stop:
                try supervisor.stop(name)
                return (.ok, try supervisor.status(of: name).encoded, 0)
            case .restart:
                try supervisor.restart(name)
                return (.ok, try supervisor.status(of: name).encoded, 0)
            case .grant:
                try supervisor.grant(capabilities, to: name)
                return (.ok, try supervisor.status(of: name).encoded, 0)
            case .revoke:
                try supervisor.revoke(capabilities, from: name)
                return (.ok, try supervisor.status(of: name).encoded, 0)
            case .stats:
                let status = try supervisor.status(of: name)
                let process = status.pid > 0 ? ProcessSample.read(pid: status.pid) : nil
                return (.ok, ServerStatistics(status: status, process: process, logs: supervisor.logs.statistics(server: name)).encoded, 0)
            case .logs:
                _ = try supervisor.status(of: name)
                let records = supervisor.logs.records(server: name, last: last == 0 ? nil : Int(clamping: last),
                                                      since: since == 0 ? nil : Int64(clamping: since))
                // Newest first until the datagram is full, then back in order.
                var lines: [String] = []
                var bytes = 0
                for record in records.reversed() {
                    let line = record.fileLine
                    if bytes + line.utf8.count + 1 > limit { break }
                    bytes += line.utf8.count + 1
                    lines.append(line)
                }
                return (.ok, lines.reversed().joined(separator: "\n"), UInt64(records.count - lines.count))
            }
        } catch {
            switch error {
            case .unknownServer: return (.ENOENT, error.description, 0)
            case .timedOut: return (.ETIMEDOUT, error.description, 0)
            case .invalidCapability: return (.EINVAL, error.description, 0)
            }
        }
    }
}
