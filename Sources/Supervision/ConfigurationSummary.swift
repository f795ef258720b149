/// The human-readable account `limitless-supervisor --check` prints: the order servers start in
/// and, per server, exactly what it is granted, so a reviewer sees the privileges at a glance.
public struct ConfigurationSummary: Sendable {
    public let text: String

    public init(_ configuration: SupervisorConfiguration) {
        var lines: [String] = []
        lines.append("start order: " + configuration.startOrder.joined(separator: ", "))
        lines.append("stop order:  " + configuration.stopOrder.joined(separator: ", "))
        for name in configuration.startOrder {
            guard let server = configuration[name] else { continue }
            lines.append("")
            lines.append("\(server.name): " + ([server.path] + server.arguments).map(ConfigurationSummary.quoted).joined(separator: " "))
            for device in server.devices { lines.append("  device        \(device)") }
            let grants = server.capabilities.sorted().map(\.description)
            lines.append("  capabilities  " + (grants.isEmpty ? "none" : grants.joined(separator: " ")))
            lines.append("  restart       \(server.restart)")
            lines.append("  user          \(server.user ?? "(supervisor default)")")
            lines.append("  group         \(server.group ?? "(supervisor default)")")
            if !server.dependencies.isEmpty { lines.append("  depends       " + server.dependencies.joined(separator: " ")) }
            lines.append("  checkpoint    " + (server.checkpointInterval.map { "every " + DurationText.format($0) } ?? "never"))
            lines.append("  watchdog      " + (server.watchdogInterval.map { "every " + DurationText.format($0) } ?? "none"))
            if server.standby { lines.append("  standby       yes (a pre-started instance takes over at a restart)") }
            if !server.listens { lines.append("  listen        no (the server binds its own socket)") }
            if server.capabilities.contains(.pageCache) {
                let size = server.pageCacheLogSize
                lines.append("  page_cache_log " + (size % (1 << 20) == 0 ? "\(size >> 20)M" : "\(size >> 10)K")
                    + " (CAP_PAGE_CACHE memory, kept across restarts)")
            }
        }
        text = lines.joined(separator: "\n") + "\n"
    }

    /// An argument as it would be written in the configuration.
    static func quoted(_ word: String) -> String {
        let plain = !word.isEmpty && word.utf8.allSatisfy {
            $0 > 0x20 && $0 != 0x7F && $0 != UInt8(ascii: "\"") && $0 != UInt8(ascii: "'") && $0 != UInt8(ascii: "\\")
                && $0 != UInt8(ascii: "#")
        }
        if plain { return word }
        var escaped = ""
        for character in word {
            switch character {
            case "\"": escaped += "\\\""
            case "\\": escaped += "\\\\"
            case "\n": escaped += "\\n"
            case "\t": escaped += "\\t"
            default: escaped.append(character)
            }
        }
        return "\"" + escaped + "\""
    }
}
