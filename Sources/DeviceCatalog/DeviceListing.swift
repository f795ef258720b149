import Platform

/// One line of `serverctl devices`: a function, the server that would drive it, and what to do
/// next if it is not ready.
public struct DeviceRow: Sendable {
    public var function: PCIFunctionInfo
    public var entry: DeviceCatalog.Entry?

    public init(function: PCIFunctionInfo, entry: DeviceCatalog.Entry?) {
        self.function = function
        self.entry = entry
    }

    public var state: BindingState { BindingState(driver: function.driver) }

    var serverColumn: String {
        guard let entry else { return "-" }
        return entry.available ? entry.server : entry.server + " (planned)"
    }

    /// What the user should do next for a supported device.
    public var hint: String? {
        guard let entry, entry.available else { return nil }
        switch state {
        case .vfio, .uio: return nil
        case .kernel, .unbound: return "sudo ./Scripts/bind.sh \(function.address)"
        }
    }

    var name: String {
        [function.vendorName, function.deviceName].compactMap { $0 }.joined(separator: " ")
    }

    public static func table(_ rows: [DeviceRow], iommuEnabled: Bool) -> String {
        let header = ["ADDRESS", "ID", "CLASS", "DRIVER", "GROUP", "NUMA", "SERVER", "NAME"]
        let cells = rows.map { row -> [String] in
            [row.function.address.description, row.function.idPair, hex(row.function.classCode, width: 6),
             row.state.summary, row.function.iommuGroup.map(String.init) ?? "-",
             row.function.numaNode.map(String.init) ?? "-", row.serverColumn,
             row.name.isEmpty ? (row.function.className ?? "") : row.name]
        }
        let widths = header.indices.map { column in
            ([header] + cells).map { $0[column].count }.max() ?? 0
        }
        func line(_ values: [String]) -> String {
            values.enumerated().map { column, value in
                column == values.count - 1 ? value : value + String(repeating: " ", count: widths[column] - value.count)
            }.joined(separator: "  ")
        }
        var lines = [line(header)] + cells.map(line)
        lines.append("")
        lines.append("\(rows.count) function(s); IOMMU \(iommuEnabled ? "on" : "off (VFIO unavailable; UIO only)").")
        for row in rows { if let hint = row.hint { lines.append("\(row.function.address): to drive it, \(hint)") } }
        return lines.joined(separator: "\n")
    }

    public static func json(_ rows: [DeviceRow]) -> String {
        let objects = rows.map { row -> String in
            let fields: [(String, String)] = [
                ("address", quote(row.function.address.description)),
                ("vendor_id", quote(hex(row.function.vendorID, width: 4))),
                ("device_id", quote(hex(row.function.deviceID, width: 4))),
                ("class", quote(hex(row.function.classCode, width: 6))),
                ("driver", row.function.driver.map(quote) ?? "null"),
                ("iommu_group", row.function.iommuGroup.map(String.init) ?? "null"),
                ("numa_node", row.function.numaNode.map(String.init) ?? "null"),
                ("server", row.entry.map { quote($0.server) } ?? "null"),
                ("server_available", row.entry.map { $0.available ? "true" : "false" } ?? "null"),
                ("vendor_name", row.function.vendorName.map(quote) ?? "null"),
                ("device_name", row.function.deviceName.map(quote) ?? "null"),
            ]
            return "  {" + fields.map { "\"\($0.0)\": \($0.1)" }.joined(separator: ", ") + "}"
        }
        return "[\n" + objects.joined(separator: ",\n") + "\n]"
    }

    /// A JSON string literal (RFC 8259 section 7).
    public static func quote(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            default:
                if scalar.value < 0x20 { out += "\\u" + hex(scalar.value, width: 4) } else { out.unicodeScalars.append(scalar) }
            }
        }
        return out + "\""
    }
}
