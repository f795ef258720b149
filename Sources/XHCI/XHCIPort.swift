/// PORTSC decoded (xHCI 1.2 section 5.4.8, table 5-27).
public struct XHCIPortStatus: Equatable, Sendable, CustomStringConvertible {
    /// 1-based port number.
    public var port: Int
    public var raw: UInt32
    /// USB major revision of the port from the Supported Protocol capability (2 or 3), if known.
    public var protocolMajor: Int?

    public init(port: Int, raw: UInt32, protocolMajor: Int? = nil) {
        self.port = port
        self.raw = raw
        self.protocolMajor = protocolMajor
    }

    /// Current Connect Status, bit 0.
    public var connected: Bool { raw & (1 << 0) != 0 }
    /// Port Enabled/Disabled, bit 1 (RW1C: writing 1 disables the port).
    public var enabled: Bool { raw & (1 << 1) != 0 }
    public var overCurrent: Bool { raw & (1 << 3) != 0 }
    public var reset: Bool { raw & (1 << 4) != 0 }
    /// Port Link State, bits 8:5 (0 U0, 3 U3, 5 RxDetect, 7 Polling ...).
    public var linkState: Int { Int((raw >> 5) & 0xF) }
    public var powered: Bool { raw & (1 << 9) != 0 }
    /// Port Speed, bits 13:10: a Protocol Speed ID; the defaults are in `XHCIPortSpeed`.
    public var speedID: Int { Int((raw >> 10) & 0xF) }
    public var speed: XHCIPortSpeed { XHCIPortSpeed(rawValue: speedID) ?? .unknown }
    /// Connect Status Change bit 17 ... Port Config Error Change bit 23, all RW1C.
    public var changeBits: UInt32 { raw & XHCIPortStatus.changeMask }

    public static let changeMask: UInt32 = 0x7F << 17
    /// Bits that are write-1-to-clear or write-1-to-act; a read-modify-write must zero them
    /// unless it means to set them (PED bit 1, PR bit 4, change bits 23:17, WPR bit 31).
    public static let preserveMask: UInt32 = ~(UInt32(1 << 1) | 1 << 4 | changeMask | 1 << 31)

    public var description: String {
        guard connected else { return "port \(port): not connected" }
        let proto = protocolMajor.map { " USB\($0)" } ?? ""
        return "port \(port)\(proto): \(speed) speed, \(enabled ? "enabled" : "disabled"), link state \(linkState)"
    }
}

/// Default Protocol Speed IDs (xHCI 1.2 section 7.2.2.1.1, table 7-13).
public enum XHCIPortSpeed: Int, Sendable, CustomStringConvertible {
    case unknown = 0
    case full = 1
    case low = 2
    case high = 3
    case superSpeed = 4
    case superSpeedPlus = 5

    public var description: String {
        switch self {
        case .unknown: "unknown"
        case .full: "full (12 Mb/s)"
        case .low: "low (1.5 Mb/s)"
        case .high: "high (480 Mb/s)"
        case .superSpeed: "SuperSpeed (5 Gb/s)"
        case .superSpeedPlus: "SuperSpeedPlus (10 Gb/s)"
        }
    }
}
