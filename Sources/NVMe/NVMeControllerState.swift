/// The bring-up of an NVMe controller as named states, one per step of NVMe 2.0 section 3.5.1
/// ("Memory-based Controller Initialization"); `NVMeController.bringUp()` walks them in order
/// and records each transition.
public enum NVMeControllerState: Equatable, Sendable, CustomStringConvertible {
    /// Nothing done yet.
    case uninitialised
    /// Reading CAP and VS, checking the controller offers the NVM command set and 4 KiB pages
    /// (3.5.1 step 1 precondition).
    case checkingCapabilities
    /// CC.EN cleared, waiting for CSTS.RDY = 0 (3.5.1 step 1; timeout CAP.TO).
    case disabling
    /// Writing AQA, ASQ, ACQ (3.5.1 step 2).
    case configuringAdminQueue
    /// Writing CC: CSS NVM, MPS 4 KiB, AMS round robin, IOSQES 6, IOCQES 4, then EN = 1 (3.5.1
    /// steps 3-4), and waiting for CSTS.RDY = 1 (step 5; timeout CAP.TO).
    case enabling
    /// Identify Controller on the admin queue (3.5.1 step 6).
    case identifying
    /// Admin queue usable.
    case ready
    /// CC.SHN written, waiting for CSTS.SHST = complete (3.6.1 "Normal Shutdown").
    case shuttingDown
    /// Shutdown complete; CC.EN may be cleared or the device released.
    case shutDown
    /// A step failed; `bringUp()` may be called again (it starts by disabling).
    case failed

    public var description: String {
        switch self {
        case .uninitialised: "uninitialised"
        case .checkingCapabilities: "checking capabilities"
        case .disabling: "disabling (waiting for CSTS.RDY=0)"
        case .configuringAdminQueue: "configuring admin queue"
        case .enabling: "enabling (waiting for CSTS.RDY=1)"
        case .identifying: "identifying"
        case .ready: "ready"
        case .shuttingDown: "shutting down"
        case .shutDown: "shut down"
        case .failed: "failed"
        }
    }
}

/// One step of the bring-up as it happened: for logs and HIL reports.
public struct NVMeStateTransition: Equatable, Sendable, CustomStringConvertible {
    public var from: NVMeControllerState
    public var to: NVMeControllerState
    /// Time spent in `from`.
    public var elapsedNanoseconds: UInt64
    /// CLOCK_MONOTONIC (ns) when `to` was entered: lets a caller place the steps on a timeline
    /// shared with other processes (the supervisor's restart phases, HIL reports).
    public var enteredAtNanoseconds: UInt64

    public init(from: NVMeControllerState, to: NVMeControllerState, elapsedNanoseconds: UInt64, enteredAtNanoseconds: UInt64 = 0) {
        self.from = from
        self.to = to
        self.elapsedNanoseconds = elapsedNanoseconds
        self.enteredAtNanoseconds = enteredAtNanoseconds
    }

    public var description: String { "\(from) -> \(to) after \(elapsedNanoseconds / 1000) us" }
}
