/// Everything the xHCI driver can report, each saying what happened.
public enum XHCIError: Error, Equatable, CustomStringConvertible {
    case deviceNotResponding(register: String)
    case unsupportedController(String)
    /// The controller did not halt (USBSTS.HCH = 1) after RS was cleared (5.4.1: within 16 ms).
    case haltTimeout(waitedNanoseconds: UInt64)
    /// USBCMD.HCRST or USBSTS.CNR did not clear after a reset.
    case resetTimeout(usbsts: UInt32, waitedNanoseconds: UInt64)
    /// USBSTS.HCH did not clear after RS was set.
    case startTimeout(usbsts: UInt32, waitedNanoseconds: UInt64)
    /// USBSTS.HSE or HCE: the controller hit a fatal error and needs a reset.
    case hostControllerError(usbsts: UInt32)
    /// No Command Completion Event arrived for the command at `trb` in time.
    case commandTimeout(type: XHCITRBType, trb: UInt64, waitedNanoseconds: UInt64)
    /// A command completed with a code other than Success.
    case commandFailed(type: XHCITRBType, code: XHCICompletionCode)
    case dmaAllocationFailed(what: String, reason: String)
    case invalidState(XHCIControllerState, operation: String)

    public var description: String {
        switch self {
        case .deviceNotResponding(let register):
            "xHCI controller not responding: \(register) reads as all ones (device removed, or BAR0 not mapped)"
        case .unsupportedController(let reason):
            "xHCI controller unsupported: \(reason)"
        case .haltTimeout(let waited):
            "xHCI controller did not halt (USBSTS.HCH=1) within \(waited / 1_000_000) ms of clearing USBCMD.RS"
        case .resetTimeout(let usbsts, let waited):
            "xHCI controller reset did not finish (HCRST or USBSTS.CNR still set, USBSTS=0x\(String(usbsts, radix: 16))) within \(waited / 1_000_000) ms"
        case .startTimeout(let usbsts, let waited):
            "xHCI controller did not start running (USBSTS.HCH still 1, USBSTS=0x\(String(usbsts, radix: 16))) within \(waited / 1_000_000) ms"
        case .hostControllerError(let usbsts):
            "xHCI controller reported a fatal error (USBSTS=0x\(String(usbsts, radix: 16)): HSE bit 2 / HCE bit 12); it needs a reset"
        case .commandTimeout(let type, let trb, let waited):
            "xHCI \(type) command at 0x\(String(trb, radix: 16)) got no Command Completion Event within \(waited / 1_000_000) ms"
        case .commandFailed(let type, let code):
            "xHCI \(type) command failed: \(code)"
        case .dmaAllocationFailed(let what, let reason):
            "could not allocate DMA memory for \(what): \(reason)"
        case .invalidState(let state, let operation):
            "cannot \(operation) while the xHCI controller is \(state)"
        }
    }
}

/// The bring-up of an xHCI controller as named states (xHCI 1.2 section 4.2 "Host Controller
/// Initialization", 4.22.1 reset).
public enum XHCIControllerState: Equatable, Sendable, CustomStringConvertible {
    case uninitialised
    /// Clearing USBCMD.RS and waiting for USBSTS.HCH = 1 (5.4.1; timeout 16 ms, we allow more).
    case halting
    /// USBCMD.HCRST set; waiting for HCRST = 0 and USBSTS.CNR = 0 (5.4.1, 4.2).
    case resetting
    /// Programming CONFIG.MaxSlotsEn, DCBAAP (+ scratchpads), CRCR, interrupter 0 (4.2).
    case configuring
    /// USBCMD.RS = 1 (with INTE); waiting for USBSTS.HCH = 0.
    case starting
    case running
    case halted
    case failed

    public var description: String {
        switch self {
        case .uninitialised: "uninitialised"
        case .halting: "halting (waiting for USBSTS.HCH=1)"
        case .resetting: "resetting (waiting for HCRST=0, CNR=0)"
        case .configuring: "configuring"
        case .starting: "starting (waiting for USBSTS.HCH=0)"
        case .running: "running"
        case .halted: "halted"
        case .failed: "failed"
        }
    }
}
