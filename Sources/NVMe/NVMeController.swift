import Platform

/// An NVMe controller driven from user space: bring-up, the admin queue, Identify, I/O queue
/// creation and shutdown. Generic over the register access so the real path (`MMIORegion`)
/// specialises to plain volatile loads and stores and tests can use a fake device.
///
/// Single-threaded: one owner calls it. Set-up allocates DMA memory; issuing a command does not.
public final class NVMeController<R: RegisterIO> {
    /// How the driver learns a command completed.
    public enum CompletionMode: Sendable, Equatable {
        /// Poll the completion queue's phase tags.
        case polling
        /// Wait on the admin queue's interrupt (MSI-X vector 0: the admin completion queue
        /// always uses vector 0, NVMe 2.0 section 3.1.3.8), then reap the queue.
        case interrupt
    }

    public struct Configuration: Sendable {
        /// Admin queue entries (clamped to CAP.MQES + 1 and to 4096, section 3.1.3.8).
        public var adminQueueDepth: Int = 32
        public var completionMode: CompletionMode = .interrupt
        public var adminCommandTimeoutNanoseconds: UInt64 = 5_000_000_000
        /// In interrupt mode, how long an admin command's completion is first polled for before
        /// sleeping on the interrupt. Bring-up is a chain of admin commands that each complete in
        /// microseconds on a device; the wake-up after an interrupt (MSI-X, IOMMU interrupt
        /// remapping, eventfd, the scheduler) costs about a millisecond each under an emulated
        /// CPU, on a restart's critical path. 0 (the default): sleep at once.
        public var adminSpinNanoseconds: UInt64 = 0
        public init(adminQueueDepth: Int = 32, completionMode: CompletionMode = .interrupt,
                    adminCommandTimeoutNanoseconds: UInt64 = 5_000_000_000) {
            self.adminQueueDepth = adminQueueDepth
            self.completionMode = completionMode
            self.adminCommandTimeoutNanoseconds = adminCommandTimeoutNanoseconds
        }
    }

    public let registers: R
    public let allocator: DMAAllocator
    /// The admin queue's vector; nil means polling whatever the configuration says.
    public let adminInterrupt: InterruptLine?
    public var configuration: Configuration

    public private(set) var state: NVMeControllerState = .uninitialised
    public private(set) var transitions: [NVMeStateTransition] = []
    public private(set) var capabilities: NVMeCapabilities?
    public private(set) var version: NVMeVersion?
    public private(set) var identity: NVMeControllerIdentity?
    public private(set) var adminQueue: NVMeQueuePair<R>?
    /// Completions whose CID matched no waiting command (late answers to timed-out commands).
    public private(set) var strayCompletions = 0
    /// Interrupts taken on the admin queue's line while waiting (interrupt mode only).
    public private(set) var interruptsReceived: UInt64 = 0

    private var identifyPage: DMABuffer?
    private var stateEntered: UInt64
    private let clock = MonotonicClock()

    public init(registers: R, allocator: DMAAllocator, adminInterrupt: InterruptLine? = nil,
                configuration: Configuration = Configuration()) {
        self.registers = registers
        self.allocator = allocator
        self.adminInterrupt = adminInterrupt
        self.configuration = configuration
        stateEntered = clock.now()
    }

    deinit {
        if let adminQueue {
            allocator.free(adminQueue.submissionQueue)
            allocator.free(adminQueue.completionQueue)
        }
        if let identifyPage { allocator.free(identifyPage) }
    }

    public var usesInterrupts: Bool { configuration.completionMode == .interrupt && adminInterrupt != nil }
    public var doorbellStride: Int { capabilities?.doorbellStrideBytes ?? 4 }

    private func enter(_ next: NVMeControllerState) {
        let now = clock.now()
        transitions.append(NVMeStateTransition(from: state, to: next, elapsedNanoseconds: now &- stateEntered, enteredAtNanoseconds: now))
        state = next
        stateEntered = now
    }

    // MARK: - Bring-up (NVMe 2.0 section 3.5.1)

    /// Takes the controller from any state to `.ready`: disable, program the admin queue,
    /// enable, wait for ready, Identify Controller. Returns the controller's identity.
    @discardableResult
    public func bringUp() throws(NVMeError) -> NVMeControllerIdentity {
        transitions.removeAll(keepingCapacity: true)
        do {
            enter(.checkingCapabilities)
            let caps = try checkCapabilities()
            enter(.disabling)
            try disable(capabilities: caps)
            enter(.configuringAdminQueue)
            try configureAdminQueue(capabilities: caps)
            enter(.enabling)
            try enable(capabilities: caps)
            enter(.identifying)
            let identity = try identifyController()
            enter(.ready)
            return identity
        } catch {
            enter(.failed)
            throw error
        }
    }

    private func checkCapabilities() throws(NVMeError) -> NVMeCapabilities {
        let raw = registers.nvmeRead64(NVMeRegister.cap)
        guard raw != UInt64.max else { throw .deviceNotResponding(register: "CAP") }
        let caps = NVMeCapabilities(raw: raw)
        let vs = NVMeVersion(raw: registers.read32(NVMeRegister.vs))
        capabilities = caps
        version = vs
        guard vs >= NVMeVersion(major: 1, minor: 0) else { throw .unsupportedController("VS reports \(vs)") }
        guard caps.supportsNVMCommandSet else {
            throw .unsupportedController("CAP.CSS 0x\(String(caps.commandSetsSupported, radix: 16)) lacks the NVM command set")
        }
        guard caps.minimumPageSize <= 4096, caps.maximumPageSize >= 4096 else {
            throw .unsupportedController("4 KiB pages outside CAP.MPSMIN..MPSMAX (\(caps.minimumPageSize)...\(caps.maximumPageSize))")
        }
        return caps
    }

    /// Clears CC.EN and waits for CSTS.RDY = 0 (section 3.5.1 step 1; 3.5.2 "Reset"). A
    /// controller caught mid-enable (EN = 1, RDY = 0) is first allowed to finish, as 3.1.3.5 asks.
    private func disable(capabilities caps: NVMeCapabilities) throws(NVMeError) {
        let cc = registers.read32(NVMeRegister.cc)
        if cc & NVMeCC.enable != 0, registers.read32(NVMeRegister.csts) & (NVMeCSTS.ready | NVMeCSTS.fatal) == 0 {
            _ = try waitForReady(true, timeout: caps.readyTimeoutNanoseconds, failOnFatal: false)
        }
        registers.write32(NVMeRegister.cc, cc & ~NVMeCC.enable)
        _ = try waitForReady(false, timeout: caps.readyTimeoutNanoseconds, failOnFatal: false)
    }

    private func configureAdminQueue(capabilities caps: NVMeCapabilities) throws(NVMeError) {
        let depth = max(2, min(configuration.adminQueueDepth, caps.maximumQueueEntries, 4096))
        if let old = adminQueue {
            allocator.free(old.submissionQueue)
            allocator.free(old.completionQueue)
            adminQueue = nil
        }
        let queue = try NVMeQueuePair(id: 0, depth: depth, registers: registers,
                                      doorbellStride: caps.doorbellStrideBytes, allocator: allocator)
        if identifyPage == nil {
            do {
                identifyPage = try allocator.allocate(size: 4096, alignment: 4096)
            } catch {
                throw .dmaAllocationFailed(what: "Identify data page", reason: "\(error)")
            }
        }
        registers.write32(NVMeRegister.aqa, NVMeAQA.value(submissionEntries: depth, completionEntries: depth))
        registers.nvmeWrite64(NVMeRegister.asq, queue.submissionQueue.deviceAddress)
        registers.nvmeWrite64(NVMeRegister.acq, queue.completionQueue.deviceAddress)
        adminQueue = queue
    }

    /// Writes CC (section 3.5.1 steps 3-4) and waits for CSTS.RDY = 1 (step 5).
    private func enable(capabilities caps: NVMeCapabilities) throws(NVMeError) {
        let cc = NVMeCC.commandSetNVM | NVMeCC.memoryPageSize(log2Bytes: 12) | NVMeCC.arbitrationRoundRobin
            | NVMeCC.ioSubmissionEntrySize(log2Bytes: 6) | NVMeCC.ioCompletionEntrySize(log2Bytes: 4)
        registers.write32(NVMeRegister.cc, cc)
        registers.write32(NVMeRegister.cc, cc | NVMeCC.enable)
        _ = try waitForReady(true, timeout: caps.readyTimeoutNanoseconds, failOnFatal: true)
    }

    /// Polls CSTS until RDY equals `ready`. CFS set while waiting for RDY = 1 is fatal (section
    /// 3.1.3.6); while disabling it is expected to clear with the reset.
    private func waitForReady(_ ready: Bool, timeout: UInt64, failOnFatal: Bool) throws(NVMeError) -> UInt32 {
        let start = clock.now()
        while true {
            let csts = registers.read32(NVMeRegister.csts)
            if csts == NVMeCSTS.deviceGone { throw .deviceNotResponding(register: "CSTS") }
            if failOnFatal, csts & NVMeCSTS.fatal != 0 { throw .controllerFatalStatus(state: state, csts: csts) }
            if (csts & NVMeCSTS.ready != 0) == ready { return csts }
            let waited = clock.now() &- start
            if waited >= timeout { throw .readyTimeout(state: state, expectedReady: ready, waitedNanoseconds: waited) }
            clock.pause()
        }
    }

    // MARK: - Admin commands

    /// Submits `command` on the admin queue and waits for its completion, whatever its status:
    /// the raw path for callers that judge the status themselves (e.g. a command aimed at an
    /// unmapped IOVA). Throws only if no completion arrives, or the controller fails.
    public func submitAdmin(_ command: NVMeCommand, timeoutNanoseconds: UInt64? = nil) throws(NVMeError) -> NVMeCompletion {
        guard adminQueue != nil else { throw .invalidState(state, operation: "submit an admin command") }
        let timeout = timeoutNanoseconds ?? configuration.adminCommandTimeoutNanoseconds
        let commandID = try adminQueue!.submit(command)
        let start = clock.now()
        while true {
            while let completion = adminQueue!.nextCompletion() {
                adminQueue!.acknowledgeCompletions()
                if completion.commandID == commandID { return completion }
                strayCompletions += 1
            }
            let waited = clock.now() &- start
            if waited >= timeout {
                let csts = registers.read32(NVMeRegister.csts)
                if csts != NVMeCSTS.deviceGone, csts & NVMeCSTS.fatal != 0 {
                    throw .controllerFatalStatus(state: state, csts: csts)
                }
                throw .commandTimeout(opcode: command.opcode, commandID: commandID, waitedNanoseconds: waited)
            }
            if usesInterrupts, waited < configuration.adminSpinNanoseconds {
                continue
            } else if usesInterrupts, let line = adminInterrupt {
                // Bounded, so a lost interrupt costs 100 ms rather than the whole timeout.
                interruptsReceived &+= line.wait(timeoutNanoseconds: Int64(min(timeout - waited, 100_000_000)))
            } else {
                clock.pause()
            }
        }
    }

    /// Submits `command` and throws `.commandFailed` unless it completes successfully.
    @discardableResult
    public func adminCommand(_ command: NVMeCommand) throws(NVMeError) -> NVMeCompletion {
        let completion = try submitAdmin(command)
        guard completion.status.isSuccess else { throw .commandFailed(opcode: command.opcode, status: completion.status) }
        return completion
    }

    private func requireIdentifyPage(_ operation: String) throws(NVMeError) -> DMABuffer {
        guard let page = identifyPage, state == .identifying || state == .ready else {
            throw .invalidState(state, operation: operation)
        }
        return page
    }

    /// Identify Controller (section 5.17.2.1).
    public func identifyController() throws(NVMeError) -> NVMeControllerIdentity {
        let page = try requireIdentifyPage("identify the controller")
        page.zero()
        try adminCommand(.identifyController(prp1: page.deviceAddress))
        let parsed = NVMeControllerIdentity(page: page.address)
        identity = parsed
        return parsed
    }

    /// Identify Namespace (NVM Command Set Specification section 4.1.5.1).
    public func identifyNamespace(_ namespaceID: UInt32) throws(NVMeError) -> NVMeNamespaceIdentity {
        let page = try requireIdentifyPage("identify a namespace")
        page.zero()
        try adminCommand(.identifyNamespace(namespaceID, prp1: page.deviceAddress))
        return NVMeNamespaceIdentity(namespaceID: namespaceID, page: page.address)
    }

    /// Active namespace IDs, ascending (Identify CNS 02h; first 1024).
    public func activeNamespaceIDs() throws(NVMeError) -> [UInt32] {
        let page = try requireIdentifyPage("list namespaces")
        page.zero()
        try adminCommand(.identifyActiveNamespaces(prp1: page.deviceAddress))
        var ids: [UInt32] = []
        for index in 0..<1024 {
            let id = UInt32(littleEndian: page.address.loadUnaligned(fromByteOffset: index * 4, as: UInt32.self))
            if id == 0 { break }
            ids.append(id)
        }
        return ids
    }

    /// Set Features, Number of Queues (section 5.27.1.5). Returns the counts allocated.
    public func setNumberOfQueues(submission: Int, completion: Int) throws(NVMeError) -> (submission: Int, completion: Int) {
        let result = try adminCommand(.setNumberOfQueues(submission: submission, completion: completion)).result
        return (Int(result & 0xFFFF) + 1, Int(result >> 16) + 1)
    }

    /// Creates I/O completion queue `id` then I/O submission queue `id` bound to it (section
    /// 3.3.1.2 order: CQ first). `interruptVector` nil creates the CQ with interrupts off.
    public func createIOQueuePair(id: UInt16, depth: Int, interruptVector: UInt16?) throws(NVMeError) -> NVMeQueuePair<R> {
        guard state == .ready, let caps = capabilities else { throw .invalidState(state, operation: "create I/O queues") }
        let entries = min(depth, caps.maximumQueueEntries)
        let queue = try NVMeQueuePair(id: id, depth: entries, registers: registers,
                                      doorbellStride: caps.doorbellStrideBytes, allocator: allocator)
        do {
            try adminCommand(.createIOCompletionQueue(id: id, entries: entries, prp1: queue.completionQueue.deviceAddress,
                                                      interruptVector: interruptVector ?? 0,
                                                      interruptsEnabled: interruptVector != nil))
            try adminCommand(.createIOSubmissionQueue(id: id, entries: entries, prp1: queue.submissionQueue.deviceAddress,
                                                      completionQueueID: id))
        } catch {
            allocator.free(queue.submissionQueue)
            allocator.free(queue.completionQueue)
            throw error
        }
        return queue
    }

    // MARK: - I/O queues and namespaces

    /// The largest data transfer of one command: MDTS (units of CAP.MPSMIN) or, when the
    /// controller sets no limit, `fallback`.
    public func maximumTransferBytes(fallback: Int = 2 << 20) -> Int {
        guard let caps = capabilities, let identity,
              let mdts = identity.maximumDataTransferSize(minimumPageSize: caps.minimumPageSize) else { return fallback }
        return min(mdts, 32 << 20)
    }

    /// An active namespace, from Identify Namespace. Throws for an inactive one or one with
    /// metadata (which this driver does not lay out).
    public func namespace(_ namespaceID: UInt32) throws(NVMeError) -> NVMeNamespace {
        let identity = try identifyNamespace(namespaceID)
        guard let namespace = NVMeNamespace(identity: identity) else {
            throw .unsupportedController("namespace \(namespaceID) is inactive or uses metadata (block size \(identity.blockSize), metadata \(identity.format.metadataSize) B)")
        }
        return namespace
    }

    /// Creates I/O queue pair `id` (completion queue first, then submission queue: section
    /// 3.3.1.2) with per-command PRP list memory. `interrupt` nil creates the completion queue
    /// with interrupts off and the queue polls; otherwise `vector` is its MSI-X vector (the
    /// vector `interrupt` waits on). Ask `setNumberOfQueues` first.
    public func createIOQueue(id: UInt16, depth: Int, interrupt: InterruptLine? = nil, vector: UInt16? = nil) throws(NVMeError) -> NVMeIOQueue<R> {
        let interruptVector = interrupt == nil ? nil : (vector ?? UInt16(interrupt!.vector))
        let pair = try createIOQueuePair(id: id, depth: depth, interruptVector: interruptVector)
        do {
            return try NVMeIOQueue(pair: pair, registers: registers, allocator: allocator,
                                   maximumTransferBytes: maximumTransferBytes(), interrupt: interrupt, interruptVector: interruptVector)
        } catch {
            try? deleteQueuesOnDevice(id: id)
            allocator.free(pair.submissionQueue)
            allocator.free(pair.completionQueue)
            throw error
        }
    }

    private func deleteQueuesOnDevice(id: UInt16) throws(NVMeError) {
        try adminCommand(.deleteIOSubmissionQueue(id: id))
        try adminCommand(.deleteIOCompletionQueue(id: id))
    }

    /// Deletes the queue on the device (submission queue first, section 3.3.1.3) and frees its
    /// memory. Commands still in flight are aborted by the controller and forgotten here.
    public func deleteIOQueue(_ queue: NVMeIOQueue<R>) throws(NVMeError) {
        try deleteQueuesOnDevice(id: queue.id)
        queue.abandonOutstanding()
        allocator.free(queue.pair.submissionQueue)
        allocator.free(queue.pair.completionQueue)
        allocator.free(queue.listRegion)
    }

    /// CSTS.CFS (or a device that stopped answering): the controller needs `reset`.
    public var hasFatalStatus: Bool {
        let csts = registers.read32(NVMeRegister.csts)
        return csts == NVMeCSTS.deviceGone || csts & NVMeCSTS.fatal != 0
    }

    /// Controller reset and recovery (section 3.7.2 "Controller Reset"): CC.EN = 0 (which
    /// deletes every I/O queue), the whole bring-up again, the queue count again, then each of
    /// `ioQueues` is created anew in its old memory and, if `reissue`, the commands that were
    /// in flight are written to it again (same slots, same PRPs, same data buffers); otherwise
    /// they are forgotten. Returns how many commands were re-issued.
    @discardableResult
    public func reset(ioQueues: [NVMeIOQueue<R>], reissue: Bool = true) throws(NVMeError) -> Int {
        try bringUp()
        if !ioQueues.isEmpty {
            let count = ioQueues.count
            _ = try setNumberOfQueues(submission: count, completion: count)
        }
        var reissued = 0
        for queue in ioQueues {
            queue.pair.resetForRecreation()
            try adminCommand(.createIOCompletionQueue(id: queue.id, entries: queue.depth, prp1: queue.pair.completionQueue.deviceAddress,
                                                      interruptVector: queue.interruptVector ?? 0,
                                                      interruptsEnabled: queue.interruptVector != nil))
            try adminCommand(.createIOSubmissionQueue(id: queue.id, entries: queue.depth, prp1: queue.pair.submissionQueue.deviceAddress,
                                                      completionQueueID: queue.id))
            if reissue {
                reissued += try queue.reissueOutstanding()
            } else {
                queue.abandonOutstanding()
            }
        }
        return reissued
    }

    // MARK: - Shutdown (section 3.6.1)

    /// Normal shutdown: CC.SHN = 01b, then wait for CSTS.SHST = 10b. The timeout is the larger
    /// of RTD3E (Identify) and CAP.TO. Leaves CC.EN set; a later `bringUp()` resets.
    public func shutdown() throws(NVMeError) {
        guard let caps = capabilities, adminQueue != nil else { throw .invalidState(state, operation: "shut down") }
        enter(.shuttingDown)
        let cc = registers.read32(NVMeRegister.cc)
        registers.write32(NVMeRegister.cc, (cc & ~NVMeCC.shutdownMask) | NVMeCC.shutdownNormal)
        let rtd3 = UInt64(identity?.rtd3EntryLatencyMicroseconds ?? 0) * 1000
        let timeout = min(max(rtd3, caps.readyTimeoutNanoseconds), 60_000_000_000)
        let start = clock.now()
        while true {
            let csts = registers.read32(NVMeRegister.csts)
            if csts & NVMeCSTS.shutdownStatusMask == NVMeCSTS.shutdownComplete { break }
            let waited = clock.now() &- start
            if waited >= timeout || csts == NVMeCSTS.deviceGone {
                enter(.failed)
                throw .shutdownTimeout(waitedNanoseconds: waited, csts: csts)
            }
            clock.pause()
        }
        enter(.shutDown)
    }
}
