/// What `serverctl` prints, as pure functions of the supervisor's answers and the time, in the
/// manner of systemctl (list, status) and journalctl (logs); `--json` variants for scripts.
public enum ControlFormatting {
    // MARK: Text

    /// `serverctl list`: one row per server.
    public static func list(_ statuses: [ServerStatus], now: Int64) -> String {
        let header = ["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "LAST EXIT"]
        let rows = statuses.map { status in
            [status.name, stateText(status), status.pid > 0 ? String(status.pid) : "-",
             status.startedAt > 0 ? duration(now - status.startedAt) : "-", String(status.restarts),
             status.lastExit.isEmpty ? "-" : status.lastExit]
        }
        let widths = header.indices.map { column in ([header] + rows).map { $0[column].count }.max() ?? 0 }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { index, cell in
                index == cells.count - 1 ? cell : cell + String(repeating: " ", count: widths[index] - cell.count)
            }.joined(separator: "  ")
        }
        let running = statuses.filter { $0.state == .running }.count
        return ([line(header)] + rows.map(line)).joined(separator: "\n")
            + "\n\n\(statuses.count) server\(statuses.count == 1 ? "" : "s"), \(running) running.\n"
    }

    /// `serverctl status NAME`.
    public static func status(_ status: ServerStatus, now: Int64) -> String {
        let bullet = status.state == .running ? "●" : status.state == .failed ? "×" : "○"
        var lines = ["\(bullet) \(status.name) - \(status.path)"]
        var state = "    State: \(stateText(status))"
        if status.startedAt > 0 { state += " since \(LogTimestamp.format(status.startedAt).prefix(19))Z; \(duration(now - status.startedAt)) ago" }
        lines.append(state)
        if status.pid > 0 { lines.append("      PID: \(status.pid) (instance \(status.instance))") }
        lines.append(" Restarts: \(status.restarts)" + (status.lastExit.isEmpty ? "" : " (last exit: \(status.lastExit))"))
        if status.lastHeartbeat > 0 && status.pid > 0 { lines.append("Heartbeat: \(duration(now - status.lastHeartbeat)) ago") }
        lines.append("   Device: " + (status.devices.isEmpty ? "none" : status.devices.joined(separator: ", ")))
        lines.append("     Caps: " + (status.capabilities.isEmpty ? "none" : status.capabilities.map(capabilityText).joined(separator: ", ")))
        if !status.dependencies.isEmpty { lines.append("  Depends: " + status.dependencies.joined(separator: ", ")) }
        lines.append("Checkpoint: " + (status.checkpointSequence == 0 ? "none saved"
            : "#\(status.checkpointSequence), \(duration(now - status.checkpointSavedAt)) ago"))
        return lines.joined(separator: "\n") + "\n"
    }

    /// `serverctl caps NAME`: one capability per line with its descriptor.
    public static func capabilities(_ status: ServerStatus) -> String {
        if status.capabilities.isEmpty { return "\(status.name) is granted no capabilities.\n" }
        return status.capabilities.map { entry in
            let parts = entry.split(separator: "=", maxSplits: 1)
            let name = String(parts.first ?? "")
            let fd = parts.count > 1 ? String(parts[1]) : "-1"
            return name.padding(20) + (fd == "-1" ? "granted (no descriptor)" : "fd \(fd)")
        }.joined(separator: "\n") + "\n"
    }

    /// `serverctl logs NAME`: `2026-11-27 14:40:51.123 NAME[stream] level: text`.
    public static func logs(_ records: [LogRecord], omitted: UInt64 = 0) -> String {
        var text = omitted > 0 ? "-- \(omitted) older line\(omitted == 1 ? "" : "s") not shown; ask for fewer with -n --\n" : ""
        for record in records {
            let stamp = LogTimestamp.format(record.timestamp)
            let time = stamp.prefix(10) + " " + stamp.dropFirst(11).prefix(12)
            let level = record.level == .info ? "" : " \(record.level.rawValue)"
            text += "\(time) \(record.server)[\(record.stream.rawValue)]\(level): \(record.text)\n"
        }
        return text.isEmpty ? "-- no log lines --\n" : text
    }

    /// `1h 2m`, `3m 4s`, `5.2s`, `12ms`.
    public static func duration(_ nanoseconds: Int64) -> String {
        let value = max(0, nanoseconds)
        if value < 1_000_000_000 { return "\(value / 1_000_000)ms" }
        let seconds = value / 1_000_000_000
        if seconds < 60 { return "\(seconds).\(value / 100_000_000 % 10)s" }
        if seconds < 3600 { return "\(seconds / 60)m \(seconds % 60)s" }
        if seconds < 86_400 { return "\(seconds / 3600)h \(seconds / 60 % 60)m" }
        return "\(seconds / 86_400)d \(seconds / 3600 % 24)h"
    }

    static func stateText(_ status: ServerStatus) -> String {
        status.state == .starting ? "starting (not registered yet)" : status.state.rawValue
    }

    static func capabilityText(_ entry: String) -> String {
        entry.hasSuffix("=-1") ? String(entry.dropLast(3)) : entry.replacingFirst("=", with: " fd ")
    }

    // MARK: JSON

    public static func json(_ status: ServerStatus) -> String {
        let fields: [(String, String)] = [
            ("name", string(status.name)), ("path", string(status.path)), ("state", string(status.state.rawValue)),
            ("pid", status.pid > 0 ? String(status.pid) : "null"), ("instance", String(status.instance)),
            ("started_at", status.startedAt > 0 ? string(LogTimestamp.format(status.startedAt)) : "null"),
            ("restarts", String(status.restarts)), ("last_exit", status.lastExit.isEmpty ? "null" : string(status.lastExit)),
            ("registered", status.registered ? "true" : "false"),
            ("last_heartbeat", status.lastHeartbeat > 0 ? string(LogTimestamp.format(status.lastHeartbeat)) : "null"),
            ("checkpoint_sequence", status.checkpointSequence > 0 ? String(status.checkpointSequence) : "null"),
            ("checkpoint_saved_at", status.checkpointSavedAt > 0 ? string(LogTimestamp.format(status.checkpointSavedAt)) : "null"),
            ("devices", "[" + status.devices.map(string).joined(separator: ",") + "]"),
            ("capabilities", "{" + status.capabilities.map { entry in
                let parts = entry.split(separator: "=", maxSplits: 1)
                return string(String(parts.first ?? "")) + ":" + (parts.count > 1 && parts[1] != "-1" ? String(parts[1]) : "null")
            }.joined(separator: ",") + "}"),
            ("depends", "[" + status.dependencies.map(string).joined(separator: ",") + "]"),
        ]
        return "{" + fields.map { "\(string($0.0)):\($0.1)" }.joined(separator: ",") + "}"
    }

    public static func json(_ statuses: [ServerStatus]) -> String {
        "[" + statuses.map { json($0) }.joined(separator: ",\n") + "]"
    }

    public static func json(_ records: [LogRecord]) -> String {
        "[" + records.map { record in
            "{\"time\":\(string(LogTimestamp.format(record.timestamp))),\"server\":\(string(record.server)),"
                + "\"stream\":\(string(record.stream.rawValue)),\"level\":\(string(record.level.rawValue)),\"text\":\(string(record.text))}"
        }.joined(separator: ",\n") + "]"
    }

    /// A JSON string literal.
    public static func string(_ text: String) -> String {
        var result = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": result += "\\\""
            case "\\": result += "\\\\"
            case "\n": result += "\\n"
            case "\r": result += "\\r"
            case "\t": result += "\\t"
            case _ where scalar.value < 0x20:
                let digits = String(scalar.value, radix: 16)
                result += "\\u" + String(repeating: "0", count: 4 - digits.count) + digits
            default: result.unicodeScalars.append(scalar)
            }
        }
        return result + "\""
    }
}

extension String {
    fileprivate func padding(_ width: Int) -> String { self + String(repeating: " ", count: Swift.max(1, width - count)) }

    fileprivate func replacingFirst(_ target: Character, with replacement: String) -> String {
        guard let index = firstIndex(of: target) else { return self }
        return String(self[..<index]) + replacement + String(self[self.index(after: index)...])
    }
}
