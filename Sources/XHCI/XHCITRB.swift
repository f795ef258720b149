/// A Transfer Request Block: 16 bytes of parameter (64), status (32) and control (32) (xHCI
/// 1.2 section 4.11.1, 6.4). The cycle bit is control bit 0 and the type is control 15:10.
public struct XHCITRB: Equatable, Sendable {
    public var parameter: UInt64
    public var status: UInt32
    public var control: UInt32

    public static let size = 16

    public init(parameter: UInt64 = 0, status: UInt32 = 0, control: UInt32 = 0) {
        self.parameter = parameter
        self.status = status
        self.control = control
    }

    public init(type: XHCITRBType, parameter: UInt64 = 0, status: UInt32 = 0, flags: UInt32 = 0) {
        self.init(parameter: parameter, status: status, control: UInt32(type.rawValue) << 10 | flags)
    }

    public var cycle: Bool { control & 1 != 0 }
    public var typeValue: UInt8 { UInt8((control >> 10) & 0x3F) }
    public var type: XHCITRBType? { XHCITRBType(rawValue: typeValue) }

    // Event TRB fields (6.4.2): completion code status 31:24, slot ID control 31:24.
    public var completionCode: XHCICompletionCode { XHCICompletionCode(raw: UInt8(status >> 24)) }
    public var completionParameter: UInt32 { status & 0xFF_FFFF }
    public var slotID: UInt8 { UInt8(control >> 24) }
    /// Port Status Change Event (6.4.2.3): Port ID in parameter 31:24.
    public var portID: Int { Int((parameter >> 24) & 0xFF) }

    /// Control bit 1 of a Link TRB: Toggle Cycle (6.4.4.1).
    public static let toggleCycle: UInt32 = 1 << 1
    /// Interrupt On Completion (transfer TRBs).
    public static let interruptOnCompletion: UInt32 = 1 << 5

    // MARK: Command TRB builders (6.4.3)

    /// No Op Command (6.4.3.1): tests the command ring; completes with Success.
    public static func noOpCommand() -> XHCITRB { XHCITRB(type: .noOpCommand) }
    /// Enable Slot Command (6.4.3.2): slot type 20:16 of control.
    public static func enableSlot(slotType: UInt8 = 0) -> XHCITRB {
        XHCITRB(type: .enableSlot, flags: UInt32(slotType & 0x1F) << 16)
    }
    /// Disable Slot Command (6.4.3.3).
    public static func disableSlot(_ slot: UInt8) -> XHCITRB { XHCITRB(type: .disableSlot, flags: UInt32(slot) << 24) }
    /// Link TRB (6.4.4.1) pointing at `segment`, toggling the cycle state when followed.
    public static func link(to segment: UInt64, toggleCycle: Bool) -> XHCITRB {
        XHCITRB(type: .link, parameter: segment, flags: toggleCycle ? Self.toggleCycle : 0)
    }

    /// Writes parameter and status, then (after a barrier, by the caller) control.
    @inline(__always)
    func writeBody(to entry: UnsafeMutableRawPointer) {
        entry.storeBytes(of: parameter.littleEndian, toByteOffset: 0, as: UInt64.self)
        entry.storeBytes(of: status.littleEndian, toByteOffset: 8, as: UInt32.self)
    }
}

/// TRB Type IDs (xHCI 1.2 section 6.4.6, table 6-91).
public enum XHCITRBType: UInt8, Sendable {
    case normal = 1, setupStage, dataStage, statusStage, isoch, link, eventData, noOpTransfer
    case enableSlot = 9, disableSlot, addressDevice, configureEndpoint, evaluateContext, resetEndpoint
    case stopEndpoint = 15, setTRDequeuePointer, resetDevice, forceEvent, negotiateBandwidth
    case setLatencyToleranceValue = 20, getPortBandwidth, forceHeader, noOpCommand
    case transferEvent = 32, commandCompletionEvent, portStatusChangeEvent, bandwidthRequestEvent
    case doorbellEvent = 36, hostControllerEvent, deviceNotificationEvent, mfindexWrapEvent
}

/// Completion Codes (xHCI 1.2 section 6.4.5, table 6-90).
public struct XHCICompletionCode: Equatable, Hashable, Sendable, CustomStringConvertible {
    public let raw: UInt8
    public init(raw: UInt8) { self.raw = raw }

    public static let invalid = XHCICompletionCode(raw: 0)
    public static let success = XHCICompletionCode(raw: 1)
    public static let trbError = XHCICompletionCode(raw: 5)
    public static let shortPacket = XHCICompletionCode(raw: 13)
    public static let eventRingFull = XHCICompletionCode(raw: 21)
    public static let commandRingStopped = XHCICompletionCode(raw: 24)
    public static let commandAborted = XHCICompletionCode(raw: 25)

    public var name: String? {
        switch raw {
        case 0: "Invalid"
        case 1: "Success"
        case 2: "Data Buffer Error"
        case 3: "Babble Detected Error"
        case 4: "USB Transaction Error"
        case 5: "TRB Error"
        case 6: "Stall Error"
        case 7: "Resource Error"
        case 8: "Bandwidth Error"
        case 9: "No Slots Available Error"
        case 10: "Invalid Stream Type Error"
        case 11: "Slot Not Enabled Error"
        case 12: "Endpoint Not Enabled Error"
        case 13: "Short Packet"
        case 14: "Ring Underrun"
        case 15: "Ring Overrun"
        case 16: "VF Event Ring Full Error"
        case 17: "Parameter Error"
        case 18: "Bandwidth Overrun Error"
        case 19: "Context State Error"
        case 20: "No Ping Response Error"
        case 21: "Event Ring Full Error"
        case 22: "Incompatible Device Error"
        case 23: "Missed Service Error"
        case 24: "Command Ring Stopped"
        case 25: "Command Aborted"
        case 26: "Stopped"
        case 27: "Stopped - Length Invalid"
        case 29: "Max Exit Latency Too Large Error"
        case 31: "Isoch Buffer Overrun"
        case 32: "Event Lost Error"
        case 33: "Undefined Error"
        case 34: "Invalid Stream ID Error"
        case 35: "Secondary Bandwidth Error"
        case 36: "Split Transaction Error"
        default: nil
        }
    }

    public var description: String { "\(name ?? "code") (\(raw))" }
}
