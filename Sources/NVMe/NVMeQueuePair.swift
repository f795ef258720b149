import CLimitless
import Platform

/// A submission queue and its completion queue in DMA memory, with their doorbells (NVMe 2.0
/// section 3.3.1 "Memory-based Transport Queue Model", 4.1 "Submission Queue & Completion Queue
/// Definition"). Entries are written and read in place; submitting and reaping allocate nothing.
///
/// Ownership: the host owns the SQ tail and the CQ head; the controller owns the SQ head (it
/// reports it in every completion, SQHD) and the CQ tail (it flips the phase tag each pass).
public struct NVMeQueuePair<R: RegisterIO> {
    public let id: UInt16
    public let depth: Int
    public let submissionQueue: DMABuffer
    public let completionQueue: DMABuffer
    let registers: R
    let submissionDoorbell: Int
    let completionDoorbell: Int

    public private(set) var submissionTail: Int = 0
    /// The controller's SQ head as of the latest completion (section 4.1.1: a queue is full
    /// when tail + 1 == head, modulo depth).
    public private(set) var submissionHead: Int = 0
    public private(set) var completionHead: Int = 0
    /// The phase tag that marks a new completion entry: 1 on the first pass (the queue memory
    /// starts zeroed), inverted every time the head wraps (section 4.6, "Phase Tag").
    public private(set) var expectedPhase: Bool = true
    private var nextCommandID: UInt16 = 0

    /// Queue memory must be page aligned and physically contiguous (section 4.2, 4.3: PRP1 of
    /// Create I/O Queue / ASQ / ACQ with PC=1). `depth` counts entries in each queue.
    public init(id: UInt16, depth: Int, registers: R, doorbellStride: Int, allocator: DMAAllocator) throws(NVMeError) {
        precondition(depth >= 2 && depth <= 65536, "an NVMe queue holds 2 to 65536 entries")
        self.id = id
        self.depth = depth
        self.registers = registers
        submissionDoorbell = NVMeRegister.submissionTailDoorbell(queue: id, stride: doorbellStride)
        completionDoorbell = NVMeRegister.completionHeadDoorbell(queue: id, stride: doorbellStride)
        do {
            submissionQueue = try allocator.allocate(size: depth * NVMeCommand.size, alignment: 4096)
            completionQueue = try allocator.allocate(size: depth * NVMeCompletion.size, alignment: 4096)
        } catch {
            throw .dmaAllocationFailed(what: "queue pair \(id) (\(depth) entries)", reason: "\(error)")
        }
    }

    /// Commands submitted and not yet consumed by the controller, as far as we know.
    public var outstandingInSubmissionQueue: Int { (submissionTail - submissionHead + depth) % depth }
    public var isFull: Bool { (submissionTail + 1) % depth == submissionHead }

    /// Copies `command` into the next SQ slot with a fresh command identifier, makes the entry
    /// visible, and rings the SQ tail doorbell (section 3.3.1.1 steps 1-2). Returns the CID.
    @discardableResult
    public mutating func submit(_ command: NVMeCommand) throws(NVMeError) -> UInt16 {
        guard !isFull else { throw .submissionQueueFull(queue: id, depth: depth) }
        var entry = command
        entry.commandID = nextCommandID
        nextCommandID &+= 1
        entry.write(to: submissionQueue.address + submissionTail * NVMeCommand.size)
        submissionTail = (submissionTail + 1) % depth
        // The entry must be globally visible before the controller hears of it.
        CL_memory_barrier()
        registers.write32(submissionDoorbell, UInt32(submissionTail))
        return entry.commandID
    }

    /// Like `submit(_:)` but with the caller's command identifier (an I/O queue uses its slot
    /// index, so a completion leads straight back to the slot).
    public mutating func submit(_ command: NVMeCommand, commandID: UInt16) throws(NVMeError) {
        try enqueue(command, commandID: commandID)
        ringSubmissionDoorbell()
    }

    /// Writes the entry into the next SQ slot without telling the controller. Section 3.3.1.1:
    /// the host may place several entries and then write the tail doorbell once for all of
    /// them; every doorbell write is an MMIO write (a VM exit under emulation), so a batch of
    /// N commands costs one instead of N. Call `ringSubmissionDoorbell()` after the batch.
    @inline(__always)
    public mutating func enqueue(_ command: NVMeCommand, commandID: UInt16) throws(NVMeError) {
        guard !isFull else { throw .submissionQueueFull(queue: id, depth: depth) }
        var entry = command
        entry.commandID = commandID
        entry.write(to: submissionQueue.address + submissionTail * NVMeCommand.size)
        submissionTail = (submissionTail + 1) % depth
    }

    /// Publishes every entry enqueued so far: a barrier (entries visible before the doorbell),
    /// then the SQ tail doorbell.
    @inline(__always)
    public func ringSubmissionDoorbell() {
        CL_memory_barrier()
        registers.write32(submissionDoorbell, UInt32(submissionTail))
    }

    /// Back to the state of a freshly created queue (after a controller reset deleted it):
    /// indices 0, phase 1, completion memory zeroed so no stale phase tag looks new.
    public mutating func resetForRecreation() {
        completionQueue.zero()
        submissionTail = 0
        submissionHead = 0
        completionHead = 0
        expectedPhase = true
    }

    /// The completion at the head if the controller has posted one (its phase tag equals the
    /// expected phase), consumed: the head advances, the phase flips on wrap, the SQ head is
    /// updated from SQHD. The CQ head doorbell is not rung; call `acknowledgeCompletions()`
    /// after a batch (section 3.3.1.1 steps 5-7).
    @inline(__always)
    public mutating func nextCompletion() -> NVMeCompletion? {
        let entry = completionQueue.address + completionHead * NVMeCompletion.size
        // DW3 first (it holds the phase tag); the rest only once the phase says it is new.
        let dw3 = CL_dma_read32(entry + 12)
        guard (dw3 & (1 << 16) != 0) == expectedPhase else { return nil }
        CL_memory_barrier()
        let completion = NVMeCompletion(dwords: CL_dma_read32(entry), CL_dma_read32(entry + 4), CL_dma_read32(entry + 8), dw3)
        completionHead += 1
        if completionHead == depth {
            completionHead = 0
            expectedPhase.toggle()
        }
        submissionHead = Int(completion.submissionQueueHead) % depth
        return completion
    }

    /// How many completions the controller has posted past the head, without consuming them
    /// (entries whose phase tag is new, following the wrap as `nextCompletion()` would).
    public func postedCompletions() -> Int {
        var index = completionHead, phase = expectedPhase, count = 0
        while count < depth {
            let dw3 = CL_dma_read32(completionQueue.address + index * NVMeCompletion.size + 12)
            guard (dw3 & (1 << 16) != 0) == phase else { break }
            count += 1
            index += 1
            if index == depth { index = 0; phase.toggle() }
        }
        return count
    }

    /// Tells the controller the CQ entries up to the head may be reused.
    @inline(__always)
    public func acknowledgeCompletions() {
        registers.write32(completionDoorbell, UInt32(completionHead))
    }
}
