import Platform

/// An xHCI host controller driven from user space: reset, start with a command ring and one
/// event ring on interrupter 0, commands with completion events, and port status. Generic over
/// the register access so the real path (`MMIORegion`) specialises and tests can use a fake.
///
/// Single-threaded: one owner calls it. Set-up allocates DMA memory; issuing a command does not.
public final class XHCIController<R: RegisterIO> {
    public enum CompletionMode: Sendable, Equatable {
        case polling
        /// Wait on interrupter 0's vector (MSI-X vector 0), then reap the event ring.
        case interrupt
    }

    public struct Configuration: Sendable {
        public var commandRingTRBs = 64
        public var eventRingTRBs = 256
        /// Device slots to enable (clamped to HCSPARAMS1.MaxSlots).
        public var maxSlotsEnabled = 32
        public var completionMode: CompletionMode = .interrupt
        /// IMOD interval in 250 ns units (5.5.2.2); 0 = no moderation.
        public var interruptModeration: UInt16 = 0
        public var commandTimeoutNanoseconds: UInt64 = 2_000_000_000
        /// Halt and reset waits (5.4.1 allows 16 ms to halt; emulators under TCG are slower).
        public var resetTimeoutNanoseconds: UInt64 = 1_000_000_000
        public init() {}
    }

    public let registers: R
    public let allocator: DMAAllocator
    public let interrupt: InterruptLine?
    public var configuration: Configuration
    public let capabilities: XHCICapabilities
    public let extendedCapabilities: XHCIExtendedCapabilities

    public private(set) var state: XHCIControllerState = .uninitialised
    public private(set) var stateHistory: [XHCIControllerState] = []
    public internal(set) var commandRing: XHCIProducerRing?
    public internal(set) var eventRing: XHCIEventRing?
    public private(set) var slotsEnabled = 0
    /// Port Status Change Events seen, per port (index = port number); cleared by `takePortChanges`.
    public internal(set) var portChangeEvents: [Int]
    /// Events that were neither our command's completion nor port changes.
    public internal(set) var otherEvents = 0
    /// Interrupts taken on interrupter 0's line while waiting (interrupt mode only).
    public internal(set) var interruptsReceived: UInt64 = 0

    private var deviceContextArray: DMABuffer?
    private var scratchpadArray: DMABuffer?
    private var scratchpadPages: [DMABuffer] = []
    let clock = MonotonicClock()

    /// Reads the capability registers; touches nothing else.
    public init(registers: R, allocator: DMAAllocator, interrupt: InterruptLine? = nil,
                configuration: Configuration = Configuration()) throws(XHCIError) {
        guard registers.read32(XHCICapabilityRegister.capLengthAndVersion) != 0xFFFF_FFFF else {
            throw .deviceNotResponding(register: "CAPLENGTH/HCIVERSION")
        }
        let caps = XHCICapabilities(reading: registers)
        guard caps.capLength >= 0x20, caps.runtimeOffset > 0, caps.doorbellOffset > 0 else {
            throw .unsupportedController("implausible capability registers: \(caps)")
        }
        self.registers = registers
        self.allocator = allocator
        self.interrupt = interrupt
        self.configuration = configuration
        capabilities = caps
        extendedCapabilities = XHCIExtendedCapabilities(reading: registers, capabilities: caps)
        portChangeEvents = Array(repeating: 0, count: caps.maxPorts + 1)
    }

    deinit { releaseMemory() }

    public var usesInterrupts: Bool { configuration.completionMode == .interrupt && interrupt != nil }

    // Register offsets.
    @inline(__always) func op(_ register: Int) -> Int { capabilities.capLength + register }
    @inline(__always) func interrupter0(_ register: Int) -> Int {
        capabilities.runtimeOffset + XHCIInterrupterRegister.base(0) + register
    }
    /// Doorbell register `slot` (5.6): 0 is the host controller (command ring).
    @inline(__always) func doorbell(_ slot: Int) -> Int { capabilities.doorbellOffset + 4 * slot }

    private func enter(_ next: XHCIControllerState) {
        state = next
        stateHistory.append(next)
    }

    private func wait(_ offset: Int, mask: UInt32, equals value: UInt32, timeout: UInt64) -> (Bool, UInt64) {
        let start = clock.now()
        let met = registers.waitFor32(offset, mask: mask, equals: value, timeoutNanoseconds: timeout, clock: clock)
        return (met, clock.now() &- start)
    }

    // MARK: - Reset and start (xHCI 1.2 section 4.2)

    /// Halts the controller if it runs, then resets it (USBCMD.HCRST) and waits for HCRST and
    /// USBSTS.CNR to clear.
    public func reset() throws(XHCIError) {
        do throws(XHCIError) {
            enter(.halting)
            try halt()
            enter(.resetting)
            registers.write32(op(XHCIOperationalRegister.usbCmd), XHCIUSBCMD.hostControllerReset)
            let (cleared, waited) = wait(op(XHCIOperationalRegister.usbCmd), mask: XHCIUSBCMD.hostControllerReset,
                                         equals: 0, timeout: configuration.resetTimeoutNanoseconds)
            let (ready, waitedReady) = wait(op(XHCIOperationalRegister.usbSts), mask: XHCIUSBSTS.controllerNotReady,
                                            equals: 0, timeout: configuration.resetTimeoutNanoseconds)
            guard cleared, ready else {
                throw XHCIError.resetTimeout(usbsts: registers.read32(op(XHCIOperationalRegister.usbSts)),
                                             waitedNanoseconds: waited + waitedReady)
            }
            enter(.halted)
        } catch {
            enter(.failed)
            throw error
        }
    }

    /// Clears USBCMD.RS and waits for USBSTS.HCH = 1 (5.4.1).
    public func halt() throws(XHCIError) {
        let usbsts = registers.read32(op(XHCIOperationalRegister.usbSts))
        guard usbsts != 0xFFFF_FFFF else { throw .deviceNotResponding(register: "USBSTS") }
        guard usbsts & XHCIUSBSTS.hcHalted == 0 else { return }
        registers.clearBits32(op(XHCIOperationalRegister.usbCmd), XHCIUSBCMD.runStop)
        let (met, waited) = wait(op(XHCIOperationalRegister.usbSts), mask: XHCIUSBSTS.hcHalted,
                                 equals: XHCIUSBSTS.hcHalted, timeout: configuration.resetTimeoutNanoseconds)
        guard met else { throw .haltTimeout(waitedNanoseconds: waited) }
        if state == .running { enter(.halted) }
    }

    /// Resets the controller, programs MaxSlotsEn, DCBAAP, the command ring and interrupter 0's
    /// event ring, and sets Run/Stop (4.2 steps in order).
    public func start() throws(XHCIError) {
        try reset()
        do throws(XHCIError) {
            enter(.configuring)
            try configure()
            enter(.starting)
            let interrupts = usesInterrupts ? XHCIUSBCMD.interrupterEnable : 0
            registers.write32(op(XHCIOperationalRegister.usbCmd), XHCIUSBCMD.runStop | interrupts)
            let (running, waited) = wait(op(XHCIOperationalRegister.usbSts), mask: XHCIUSBSTS.hcHalted,
                                         equals: 0, timeout: configuration.resetTimeoutNanoseconds)
            guard running else {
                throw XHCIError.startTimeout(usbsts: registers.read32(op(XHCIOperationalRegister.usbSts)),
                                             waitedNanoseconds: waited)
            }
            try checkHealth()
            enter(.running)
        } catch {
            enter(.failed)
            throw error
        }
    }

    private func configure() throws(XHCIError) {
        releaseMemory()
        // CONFIG.MaxSlotsEn (5.4.7).
        slotsEnabled = max(1, min(configuration.maxSlotsEnabled, capabilities.maxSlots))
        registers.write32(op(XHCIOperationalRegister.config), UInt32(slotsEnabled))

        // Device Context Base Address Array (6.1): MaxSlotsEn + 1 pointers, 64-byte aligned;
        // entry 0 points at the Scratchpad Buffer Array when the controller asks for scratchpads (4.20).
        let dcbaa = try allocate((slotsEnabled + 1) * 8, alignment: 64, what: "device context base address array")
        deviceContextArray = dcbaa
        let scratchpads = capabilities.maxScratchpadBuffers
        if scratchpads > 0 {
            let pageSize = 4096 << (registers.read32(op(XHCIOperationalRegister.pageSize)) & 0xFFFF).trailingZeroBitCount
            let array = try allocate(scratchpads * 8, alignment: 64, what: "scratchpad buffer array")
            scratchpadArray = array
            for index in 0..<scratchpads {
                let page = try allocate(pageSize, alignment: pageSize, what: "scratchpad buffer \(index)")
                scratchpadPages.append(page)
                array.address.storeBytes(of: page.deviceAddress.littleEndian, toByteOffset: index * 8, as: UInt64.self)
            }
            dcbaa.address.storeBytes(of: array.deviceAddress.littleEndian, as: UInt64.self)
        }
        try checkReachable(dcbaa.deviceAddress)
        registers.xhciWrite64(op(XHCIOperationalRegister.dcbaap), dcbaa.deviceAddress)

        // Command ring (4.9.3, 5.4.5): CRCR = ring base | RCS (= the producer cycle state, 1).
        let ring = try XHCIProducerRing(capacity: configuration.commandRingTRBs, allocator: allocator)
        commandRing = ring
        try checkReachable(ring.segment.deviceAddress)
        registers.xhciWrite64(op(XHCIOperationalRegister.crcr), ring.segment.deviceAddress | XHCICRCR.ringCycleState)

        // Interrupter 0's event ring (4.9.4, 5.5.2.3): ERSTSZ, then ERDP, then ERSTBA last,
        // since writing ERSTBA makes the controller read the segment table.
        let events = try XHCIEventRing(capacity: configuration.eventRingTRBs, allocator: allocator)
        eventRing = events
        try checkReachable(events.segment.deviceAddress)
        try checkReachable(events.segmentTable.deviceAddress)
        registers.write32(interrupter0(XHCIInterrupterRegister.erstsz), 1)
        registers.xhciWrite64(interrupter0(XHCIInterrupterRegister.erdp), events.dequeueDeviceAddress)
        registers.xhciWrite64(interrupter0(XHCIInterrupterRegister.erstba), events.segmentTable.deviceAddress)
        registers.write32(interrupter0(XHCIInterrupterRegister.imod), UInt32(configuration.interruptModeration))
        // IMAN: clear a stale IP (RW1C) and set IE when interrupts are used (5.5.2.1).
        registers.write32(interrupter0(XHCIInterrupterRegister.iman),
                          XHCIInterrupterRegister.imanPending | (usesInterrupts ? XHCIInterrupterRegister.imanEnable : 0))
    }

    private func allocate(_ size: Int, alignment: Int, what: String) throws(XHCIError) -> DMABuffer {
        do {
            return try allocator.allocate(size: size, alignment: alignment)
        } catch {
            throw .dmaAllocationFailed(what: what, reason: "\(error)")
        }
    }

    /// A controller without 64-bit addressing (HCCPARAMS1.AC64 = 0) sees only 32-bit addresses.
    private func checkReachable(_ deviceAddress: UInt64) throws(XHCIError) {
        if !capabilities.addressing64, deviceAddress >> 32 != 0 {
            throw .unsupportedController("32-bit addressing only (AC64=0) but DMA memory is at 0x\(String(deviceAddress, radix: 16))")
        }
    }

    private func releaseMemory() {
        if let ring = commandRing { allocator.free(ring.segment) }
        if let events = eventRing {
            allocator.free(events.segment)
            allocator.free(events.segmentTable)
        }
        if let dcbaa = deviceContextArray { allocator.free(dcbaa) }
        if let array = scratchpadArray { allocator.free(array) }
        scratchpadPages.forEach(allocator.free)
        commandRing = nil
        eventRing = nil
        deviceContextArray = nil
        scratchpadArray = nil
        scratchpadPages.removeAll()
    }

    /// Throws if USBSTS reports Host System Error or Host Controller Error.
    public func checkHealth() throws(XHCIError) {
        let usbsts = registers.read32(op(XHCIOperationalRegister.usbSts))
        if usbsts == 0xFFFF_FFFF { throw .deviceNotResponding(register: "USBSTS") }
        if usbsts & (XHCIUSBSTS.hostSystemError | XHCIUSBSTS.hostControllerError) != 0 {
            throw .hostControllerError(usbsts: usbsts)
        }
    }
}
