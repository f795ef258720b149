import Glibc
import IPC

/// How `serverctl` talks to the supervisor: ordinary IPC messages on the `supervisor` endpoint
/// (`RUNTIME_DIR/supervisor.sock`).
///
/// Request: type `ControlProtocol.messageType`; param1 = `ControlCommand` code; inline payload =
/// the server name (UTF-8; empty for list). `logs`: param2 = how many of the newest lines (0:
/// all kept), param3 = only lines at or after this time (nanoseconds since the epoch; 0: any).
///
/// Reply: status OK, or ENOENT (no such server), EACCES (the caller may not control servers),
/// EINVAL (bad request), ETIMEDOUT (a stop did not finish in time; it is still going on).
/// Payload, lines of text with tab-separated, escaped fields (`LogRecord` escaping):
/// - list, status, caps, start, stop, restart, grant, revoke: one `ServerStatus.encoded` line per
///   server. (grant and revoke carry `NAME\nCAP,CAP...` as their payload.)
/// - stats: `ServerStatistics.encoded` (the status line, then `key=value` lines).
/// - logs: one `LogRecord.fileLine` per line, oldest first; param2 = lines left out because the
///   reply is limited to one datagram (`Message.maxInlinePayload`).
/// On an error the payload is a message for the user.
///
/// Who asks is known from SO_PEERCRED (stamped by the IPC layer): anyone may list, status, caps,
/// stats and read logs; start, stop, restart, grant and revoke need root or membership of the admin group
/// (`ControlAuthorization`).
public enum ControlProtocol {
    /// MSG_SUPERVISOR_CONTROL: the command travels in param1.
    public static let messageType = MessageType.supervisorControl
    public static let endpointName = "supervisor"
}

public enum ControlCommand: UInt64, Sendable, CaseIterable {
    case list = 1
    case status = 2
    case start = 3
    case stop = 4
    case restart = 5
    case logs = 6
    case caps = 7
    /// Payload `NAME\nCAP,CAP...`: grant the capabilities now (descriptors passed to the running
    /// instance) and to every later instance.
    case grant = 8
    /// Payload `NAME\nCAP,CAP...`: withdraw them; a server that does not confirm within the
    /// revoke deadline is restarted without them.
    case revoke = 9
    /// The status line, then `key=value` lines: log counters and the process's CPU, memory,
    /// threads and descriptors from /proc (`ServerStatistics`).
    case stats = 10

    /// Whether the caller must be an administrator.
    public var changesState: Bool { self == .start || self == .stop || self == .restart || self == .grant || self == .revoke }
}

/// One server's state as `serverctl` shows it.
public struct ServerStatus: Hashable, Sendable {
    public var name: String
    public var path: String
    public var state: ServerState
    /// 0 when not running.
    public var pid: Int32
    /// 1 for the first start, then counting.
    public var instance: Int
    /// Nanoseconds since the epoch when the running instance started; 0 when not running.
    public var startedAt: Int64
    public var restarts: Int
    /// Empty if it never exited.
    public var lastExit: String
    public var registered: Bool
    /// Nanoseconds since the epoch of the last heartbeat (or registration); 0: none.
    public var lastHeartbeat: Int64
    /// 0: no checkpoint reported.
    public var checkpointSequence: UInt64
    public var checkpointSavedAt: Int64
    /// `LABEL selector`.
    public var devices: [String]
    /// `CAP_NAME=FD` (-1: granted without a descriptor).
    public var capabilities: [String]
    public var dependencies: [String]
    /// The standby instance's pid (`standby yes`), 0: none; whether it is waiting for activation.
    public var standbyPID: Int32
    public var standbyReady: Bool

    public init(name: String, path: String, state: ServerState, pid: Int32 = 0, instance: Int = 0, startedAt: Int64 = 0,
                restarts: Int = 0, lastExit: String = "", registered: Bool = false, lastHeartbeat: Int64 = 0,
                checkpointSequence: UInt64 = 0, checkpointSavedAt: Int64 = 0, devices: [String] = [],
                capabilities: [String] = [], dependencies: [String] = [], standbyPID: Int32 = 0, standbyReady: Bool = false) {
        self.name = name
        self.path = path
        self.state = state
        self.pid = pid
        self.instance = instance
        self.startedAt = startedAt
        self.restarts = restarts
        self.lastExit = lastExit
        self.registered = registered
        self.lastHeartbeat = lastHeartbeat
        self.checkpointSequence = checkpointSequence
        self.checkpointSavedAt = checkpointSavedAt
        self.devices = devices
        self.capabilities = capabilities
        self.dependencies = dependencies
        self.standbyPID = standbyPID
        self.standbyReady = standbyReady
    }

    /// One line: fields separated by tabs, lists by commas, each field escaped.
    public var encoded: String {
        let fields: [String] = [
            name, path, state.rawValue, String(pid), String(instance), String(startedAt), String(restarts), lastExit,
            registered ? "1" : "0", String(lastHeartbeat), String(checkpointSequence), String(checkpointSavedAt),
            devices.joined(separator: ","), capabilities.joined(separator: ","), dependencies.joined(separator: ","),
            String(standbyPID), standbyReady ? "1" : "0",
        ]
        return fields.map(LogRecord.escape).joined(separator: "\t")
    }

    public init?(encoded line: Substring) {
        let fields = line.split(separator: "\t", omittingEmptySubsequences: false).map { LogRecord.unescape($0) }
        // 17 fields since standby instances; 15 from a supervisor without them.
        guard fields.count == 15 || fields.count == 17, let state = ServerState(rawValue: fields[2]), let pid = Int32(fields[3]),
              let instance = Int(fields[4]), let startedAt = Int64(fields[5]), let restarts = Int(fields[6]),
              let heartbeat = Int64(fields[9]), let sequence = UInt64(fields[10]), let savedAt = Int64(fields[11])
        else { return nil }
        func list(_ text: String) -> [String] { text.isEmpty ? [] : text.split(separator: ",").map(String.init) }
        self.init(name: fields[0], path: fields[1], state: state, pid: pid, instance: instance, startedAt: startedAt,
                  restarts: restarts, lastExit: fields[7], registered: fields[8] == "1", lastHeartbeat: heartbeat,
                  checkpointSequence: sequence, checkpointSavedAt: savedAt, devices: list(fields[12]),
                  capabilities: list(fields[13]), dependencies: list(fields[14]),
                  standbyPID: fields.count == 17 ? Int32(fields[15]) ?? 0 : 0, standbyReady: fields.count == 17 && fields[16] == "1")
    }

    public static func decodeAll(_ text: String) -> [ServerStatus]? {
        var result: [ServerStatus] = []
        for line in text.split(separator: "\n") {
            guard let status = ServerStatus(encoded: line) else { return nil }
            result.append(status)
        }
        return result
    }
}

/// Who may change servers' states: root, and members of the admin group (primary or
/// supplementary).
public struct ControlAuthorization: Sendable {
    public static let defaultAdminGroup = "limitless-admin"
    /// nil when the group does not exist on this system: then only root may.
    public let adminGroupID: gid_t?

    public init(adminGroupID: gid_t?) { self.adminGroupID = adminGroupID }

    /// Resolves the group by name (or number).
    public init(adminGroup: String = ControlAuthorization.defaultAdminGroup) {
        if let entry = getgrnam(adminGroup) {
            adminGroupID = entry.pointee.gr_gid
        } else {
            adminGroupID = gid_t(adminGroup)
        }
    }

    /// The decision from the caller's numbers.
    public func mayControl(uid: uid_t, gid: gid_t, supplementaryGroups: [gid_t]) -> Bool {
        if uid == 0 { return true }
        guard let adminGroupID else { return false }
        return gid == adminGroupID || supplementaryGroups.contains(adminGroupID)
    }

    /// The decision for a connected peer: supplementary groups are read from /proc/PID/status.
    public func mayControl(_ credentials: PeerCredentials) -> Bool {
        mayControl(uid: credentials.uid, gid: credentials.gid,
                   supplementaryGroups: ControlAuthorization.supplementaryGroups(pid: credentials.pid))
    }

    /// The `Groups:` line of /proc/PID/status; empty if it cannot be read.
    public static func supplementaryGroups(pid: Int32) -> [gid_t] {
        guard let text = LogStore.readWhole("/proc/\(pid)/status") else { return [] }
        return parseGroups(statusFile: text)
    }

    public static func parseGroups(statusFile text: String) -> [gid_t] {
        for line in text.split(separator: "\n") where line.hasPrefix("Groups:") {
            return line.dropFirst("Groups:".count).split(whereSeparator: { $0 == " " || $0 == "\t" }).compactMap { gid_t($0) }
        }
        return []
    }
}

/// The client side, for `serverctl` and tests.
public struct ControlClient {
    public let directory: String
    private let client: IPCClient

    /// Connects to `DIR/supervisor.sock`.
    public init(directory: String) throws(ControlError) {
        self.directory = directory
        do {
            client = try IPCClient.connect(name: ControlProtocol.endpointName, directory: directory)
        } catch .serverNotFound {
            throw .noSupervisor(directory: directory)
        } catch {
            throw .transport("\(error)")
        }
    }

    public struct Response: Sendable {
        public var status: IPCStatus
        public var text: String
        /// logs: lines left out.
        public var omitted: UInt64
    }

    public func send(_ command: ControlCommand, name: String = "", last: Int? = nil, since: Int64? = nil,
                     timeout: Duration = .seconds(60)) throws(ControlError) -> Response {
        try send(command, name: name, capabilities: [], last: last, since: since, timeout: timeout)
    }

    /// As `send(_:name:last:since:timeout:)`, with the capability names of grant and revoke.
    public func send(_ command: ControlCommand, name: String, capabilities: [String], last: Int? = nil, since: Int64? = nil,
                     timeout: Duration = .seconds(60)) throws(ControlError) -> Response {
        let bytes = Array((capabilities.isEmpty ? name : name + "\n" + capabilities.joined(separator: ",")).utf8)
        var message = Message(type: ControlProtocol.messageType, param1: command.rawValue,
                              param2: UInt64(max(0, last ?? 0)), param3: UInt64(max(0, since ?? 0)))
        message.setInlineData(offset: 0, count: UInt32(bytes.count))
        let result = bytes.withUnsafeBytes { payload in
            Result { () throws(IPCError) -> IPCClient.Reply in try client.sendReceive(message, payload: payload, timeout: timeout) }
        }
        let reply: IPCClient.Reply
        do { reply = try result.get() } catch { throw .transport("\(error)") }
        return Response(status: reply.status, text: String(decoding: reply.payload, as: UTF8.self), omitted: reply.message.param2)
    }

    /// A command whose OK reply is status lines.
    public func statuses(_ command: ControlCommand, name: String = "") throws(ControlError) -> [ServerStatus] {
        try statuses(command, name: name, capabilities: [])
    }

    /// grant and revoke: the server's status afterwards.
    public func statuses(_ command: ControlCommand, name: String, capabilities: [String]) throws(ControlError) -> [ServerStatus] {
        let response = try send(command, name: name, capabilities: capabilities)
        guard response.status.isOK else { throw .refused(response.status, response.text) }
        guard let statuses = ServerStatus.decodeAll(response.text) else { throw .transport("the supervisor's reply could not be read") }
        return statuses
    }

    /// stats: the server's counters and its process's figures.
    public func statistics(name: String) throws(ControlError) -> ServerStatistics {
        let response = try send(.stats, name: name)
        guard response.status.isOK else { throw .refused(response.status, response.text) }
        guard let statistics = ServerStatistics(encoded: response.text) else { throw .transport("the supervisor's reply could not be read") }
        return statistics
    }

    /// logs: the records and how many older ones were left out.
    public func logs(name: String, last: Int?, since: Int64?) throws(ControlError) -> (records: [LogRecord], omitted: UInt64) {
        let response = try send(.logs, name: name, last: last, since: since)
        guard response.status.isOK else { throw .refused(response.status, response.text) }
        let records = response.text.split(separator: "\n").compactMap { LogRecord(fileLine: $0, server: name) }
        return (records, response.omitted)
    }
}

public enum ControlError: Error, Sendable, CustomStringConvertible {
    case noSupervisor(directory: String)
    case transport(String)
    case refused(IPCStatus, String)

    public var description: String {
        switch self {
        case .noSupervisor(let directory):
            let path = (directory.hasSuffix("/") ? String(directory.dropLast()) : directory) + "/supervisor.sock"
            return "no supervisor at \(path): start it with limitless-supervisor --config servers.conf"
                + " (or point --runtime-dir / LIMITLESS_RUNTIME_DIR at its runtime directory)"
        case .transport(let text):
            return "talking to the supervisor failed: \(text)"
        case .refused(let status, let text):
            return text.isEmpty ? "the supervisor refused: \(status)" : text
        }
    }
}
