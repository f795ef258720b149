/// Everything the NVMe driver can report, each saying what happened.
public enum NVMeError: Error, Equatable, CustomStringConvertible {
    /// A register read returned all ones: the device is not answering (removed, BAR unmapped).
    case deviceNotResponding(register: String)
    /// The controller does not offer what the driver needs.
    case unsupportedController(String)
    /// CSTS.RDY did not reach `expectedReady` within CAP.TO.
    case readyTimeout(state: NVMeControllerState, expectedReady: Bool, waitedNanoseconds: UInt64)
    /// CSTS.CFS is set: the controller hit a fatal error and needs a reset.
    case controllerFatalStatus(state: NVMeControllerState, csts: UInt32)
    /// CSTS.SHST did not report "shutdown complete" in time.
    case shutdownTimeout(waitedNanoseconds: UInt64, csts: UInt32)
    /// No completion arrived for a command within the timeout.
    case commandTimeout(opcode: UInt8, commandID: UInt16, waitedNanoseconds: UInt64)
    /// The controller completed a command with an error status.
    case commandFailed(opcode: UInt8, status: NVMeStatus)
    /// Every submission slot is in use.
    case submissionQueueFull(queue: UInt16, depth: Int)
    /// DMA memory for queues or data could not be had.
    case dmaAllocationFailed(what: String, reason: String)
    /// An operation was asked for in a state that does not allow it.
    case invalidState(NVMeControllerState, operation: String)
    /// An I/O aimed past the end of the namespace, caught before anything was submitted.
    case lbaOutOfRange(namespaceID: UInt32, lba: UInt64, blocks: Int, namespaceBlocks: UInt64)
    /// An I/O command the device completed with an error status; `status.isLBAOutOfRange` and
    /// `status.isMediaError` say which kind.
    case ioFailed(opcode: UInt8, namespaceID: UInt32, lba: UInt64, blocks: Int, status: NVMeStatus)
    /// A request the driver cannot turn into commands (buffer too small, zero blocks, ...).
    case invalidRequest(String)

    public var description: String {
        switch self {
        case .deviceNotResponding(let register):
            "NVMe controller not responding: \(register) reads as all ones (device removed, or BAR0 not mapped)"
        case .unsupportedController(let reason):
            "NVMe controller unsupported: \(reason)"
        case .readyTimeout(let state, let expected, let waited):
            "NVMe controller did not \(expected ? "become ready (CSTS.RDY=1)" : "stop (CSTS.RDY=0)") within \(waited / 1_000_000) ms (CAP.TO) in state \(state)"
        case .controllerFatalStatus(let state, let csts):
            "NVMe controller reported a fatal error (CSTS.CFS=1, CSTS=0x\(String(csts, radix: 16))) in state \(state); it needs a reset"
        case .shutdownTimeout(let waited, let csts):
            "NVMe controller did not finish shutdown within \(waited / 1_000_000) ms (CSTS=0x\(String(csts, radix: 16)))"
        case .commandTimeout(let opcode, let cid, let waited):
            "NVMe command opcode 0x\(String(opcode, radix: 16)) (CID \(cid)) got no completion within \(waited / 1_000_000) ms"
        case .commandFailed(let opcode, let status):
            "NVMe command opcode 0x\(String(opcode, radix: 16)) failed: \(status)"
        case .submissionQueueFull(let queue, let depth):
            "NVMe submission queue \(queue) is full (\(depth - 1) commands outstanding)"
        case .dmaAllocationFailed(let what, let reason):
            "could not allocate DMA memory for \(what): \(reason)"
        case .invalidState(let state, let operation):
            "cannot \(operation) while the NVMe controller is \(state)"
        case .lbaOutOfRange(let nsid, let lba, let blocks, let total):
            "LBA range \(lba)..<\(lba &+ UInt64(blocks)) is outside namespace \(nsid) (\(total) blocks); not submitted"
        case .ioFailed(let opcode, let nsid, let lba, let blocks, let status):
            (status.isMediaError ? "NVMe media error: " : status.isLBAOutOfRange ? "NVMe device reported LBA out of range: " : "NVMe I/O failed: ")
                + "opcode 0x\(String(opcode, radix: 16)) nsid \(nsid) LBA \(lba) +\(blocks): \(status)"
        case .invalidRequest(let reason):
            "invalid NVMe request: \(reason)"
        }
    }
}
