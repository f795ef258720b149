/// What `serverctl` prints, as pure functions of the supervisor's answers and the time, in the
/// manner of systemctl (list, status) and journalctl (logs); `--json` variants for scripts.
public enum ControlFormatting {
    // MARK: Text

    /// `serverctl list`: one row per server.
    public static func list(_ statuses: [ServerStatus], now: Int64) -> String {
        let header = ["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "LAST EXIT"]
        let rows = statuses.map { status in
            [status.name, stateText(status), status.pid > 0 ? String(status.pid) + (status.standbyPID > 0 ? " (standby \(status.standbyPID))" : "") : "-",
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
        if status.standbyPID > 0 {
            lines.append("  Standby: pid \(status.standbyPID) " + (status.standbyReady ? "(ready to take over)" : "(starting)"))
        }
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

    /// `serverctl stats NAME`: systemd-style "Memory:", "CPU:" lines plus what a driver's
    /// author looks at (locked DMA memory, descriptors, major faults, context switches).
    public static func statistics(_ statistics: ServerStatistics, now: Int64) -> String {
        let status = statistics.status
        var lines = ["\(status.state == .running ? "●" : status.state == .failed ? "×" : "○") \(status.name) - \(stateText(status))"
            + (status.pid > 0 ? ", pid \(status.pid)" : "")
            + (status.startedAt > 0 ? ", up \(duration(now - status.startedAt))" : "")]
        lines.append("   Restarts: \(status.restarts) (instance \(status.instance))")
        if let process = statistics.process {
            lines.append("        CPU: \(milliseconds(process.userCPU + process.systemCPU)) (user \(milliseconds(process.userCPU)), "
                + "system \(milliseconds(process.systemCPU)))")
            lines.append("     Memory: \(bytes(process.residentBytes)) (peak \(bytes(process.peakResidentBytes)), "
                + "locked \(bytes(process.lockedBytes)))")
            lines.append("    Threads: \(process.threads)")
            lines.append("Descriptors: \(process.openDescriptors)")
            lines.append("     Faults: \(process.majorFaults) major")
            lines.append("   Switches: \(process.voluntarySwitches) voluntary, \(process.involuntarySwitches) involuntary")
        } else {
            lines.append("    Process: not running")
        }
        lines.append("        Log: \(statistics.logRecords) lines in memory (\(bytes(Int64(statistics.logBytes)))), "
            + "\(statistics.logEvicted) rotated out, \(statistics.logDropped) dropped by the rate limit")
        lines.append(" Checkpoint: " + (status.checkpointSequence == 0 ? "none saved"
            : "#\(status.checkpointSequence), \(duration(now - status.checkpointSavedAt)) ago"))
        return lines.joined(separator: "\n") + "\n"
    }

    static func milliseconds(_ nanoseconds: Int64) -> String {
        let tenths = nanoseconds / 100_000
        return "\(tenths / 10).\(tenths % 10) ms"
    }

    static func bytes(_ count: Int64) -> String {
        let units = ["B", "K", "M", "G", "T"]
        var value = Double(count)
        var unit = 0
        while value >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        if unit == 0 { return "\(count)B" }
        let tenths = Int((value * 10).rounded())
        return "\(tenths / 10).\(tenths % 10)\(units[unit])"
    }

    // MARK: JSON

    public static func json(_ statistics: ServerStatistics) -> String {
        var fields: [(String, String)] = [("status", json(statistics.status)),
            ("log_records", String(statistics.logRecords)), ("log_bytes", String(statistics.logBytes)),
            ("log_evicted", String(statistics.logEvicted)), ("log_dropped", String(statistics.logDropped))]
        if let process = statistics.process {
            fields += [("cpu_user_ns", String(process.userCPU)), ("cpu_system_ns", String(process.systemCPU)),
                       ("threads", String(process.threads)), ("memory_resident", String(process.residentBytes)),
                       ("memory_peak", String(process.peakResidentBytes)), ("memory_locked", String(process.lockedBytes)),
                       ("fds", String(process.openDescriptors)), ("faults_major", String(process.majorFaults)),
                       ("switches_voluntary", String(process.voluntarySwitches)),
                       ("switches_involuntary", String(process.involuntarySwitches))]
        } else {
            fields.append(("process", "null"))
        }
        return "{" + fields.map { "\(string($0.0)):\($0.1)" }.joined(separator: ",") + "}"
    }

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
            ("standby_pid", status.standbyPID > 0 ? String(status.standbyPID) : "null"),
            ("standby_ready", status.standbyReady ? "true" : "false"),
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
