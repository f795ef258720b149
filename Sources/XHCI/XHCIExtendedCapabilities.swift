import Platform

/// The xHCI Extended Capabilities list (xHCI 1.2 section 7): a chain of dword-aligned
/// structures starting at HCCPARAMS1.xECP, each with ID 7:0 and Next (in dwords) 15:8.
public struct XHCIExtendedCapabilities: Sendable {
    /// A Supported Protocol capability (ID 2, section 7.2): which ports speak which USB revision.
    public struct SupportedProtocol: Equatable, Sendable {
        public var major: Int
        public var minor: Int
        /// 1-based first port and count.
        public var firstPort: Int
        public var portCount: Int
        public var ports: ClosedRange<Int> { firstPort...(firstPort + max(portCount, 1) - 1) }
    }

    public static let legacySupportID: UInt8 = 1
    public static let supportedProtocolID: UInt8 = 2

    public private(set) var protocols: [SupportedProtocol] = []
    /// Offset of the USB Legacy Support capability (ID 1, section 7.1), if present.
    public private(set) var legacySupportOffset: Int?

    public init<R: RegisterIO>(reading registers: R, capabilities: XHCICapabilities) {
        var offset = capabilities.extendedCapabilitiesOffset
        var visited = 0
        while offset != 0, offset + 16 <= registers.length, visited < 64 {
            let header = registers.read32(offset)
            if header == 0xFFFF_FFFF { break }
            switch UInt8(header & 0xFF) {
            case Self.legacySupportID:
                legacySupportOffset = offset
            case Self.supportedProtocolID:
                let ports = registers.read32(offset + 8)
                protocols.append(SupportedProtocol(major: Int(header >> 24), minor: Int((header >> 16) & 0xFF),
                                                   firstPort: Int(ports & 0xFF), portCount: Int((ports >> 8) & 0xFF)))
            default:
                break
            }
            let next = Int((header >> 8) & 0xFF)
            offset = next == 0 ? 0 : offset + next * 4
            visited += 1
        }
    }

    /// The USB major revision port `port` (1-based) belongs to.
    public func protocolMajor(ofPort port: Int) -> Int? {
        protocols.first { $0.portCount > 0 && $0.ports.contains(port) }?.major
    }
}

/// USBLEGSUP bits (7.1.1): HC BIOS Owned Semaphore bit 16, HC OS Owned Semaphore bit 24.
public enum XHCILegacySupport {
    public static let biosOwned: UInt32 = 1 << 16
    public static let osOwned: UInt32 = 1 << 24
}
