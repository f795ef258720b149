import Platform

/// Which PCI function a server drives. A fixed address suits one machine; a vendor:device pair or
/// a class code lets the same configuration run on the rig and on real hardware, where the address
/// differs. Matching against the machine's functions happens when servers start, not here.
public enum DeviceSelector: Hashable, Sendable, CustomStringConvertible {
    /// `0000:00:03.0` or `00:03.0`.
    case address(PCIAddress)
    /// `8086:10d3`: PCI vendor and device IDs, hexadecimal.
    case ids(vendor: UInt16, device: UInt16)
    /// `class=010802`: base class, subclass, programming interface (NVMe here).
    case classCode(UInt32)

    /// Parses the three written forms; nil when the text is none of them.
    public init?(_ text: String) {
        if text.hasPrefix("class=") {
            let code = text.dropFirst("class=".count)
            guard code.utf8.count == 6, let value = UInt32(code, radix: 16) else { return nil }
            self = .classCode(value)
            return
        }
        if let address = PCIAddress(text) {
            self = .address(address)
            return
        }
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, parts.allSatisfy({ $0.utf8.count == 4 }),
              let vendor = UInt16(parts[0], radix: 16), let device = UInt16(parts[1], radix: 16)
        else { return nil }
        self = .ids(vendor: vendor, device: device)
    }

    public var description: String {
        switch self {
        case .address(let address): return address.description
        case .ids(let vendor, let device): return hex(vendor, width: 4) + ":" + hex(device, width: 4)
        case .classCode(let code): return "class=" + hex(code, width: 6)
        }
    }
}
