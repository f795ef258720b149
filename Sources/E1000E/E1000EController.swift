import Platform

/// An Intel 82574 (QEMU's e1000e) driven from user space, smoke level: reset, MAC address,
/// and MSI-X interrupts raised on demand through ICS. Generic over the register access so the
/// real path (`MMIORegion`) specialises and tests can use a fake.
public final class E1000EController<R: RegisterIO> {
    public let registers: R
    public var resetTimeoutNanoseconds: UInt64 = 1_000_000_000
    /// Whether the NVM auto-read (EECD.AUTO_RD) finished after the last reset.
    public private(set) var nvmAutoReadDone = false
    private let clock = MonotonicClock()

    public init(registers: R) {
        self.registers = registers
    }

    // MARK: - Reset (CTRL.RST, 10.2.2.1; steps in the order of Linux e1000e_reset_hw_82571)

    /// Masks interrupts, stops DMA (GIO master disable), stops RX/TX, sets CTRL.RST and waits
    /// for it to self-clear, waits for the NVM auto-read, then masks and clears interrupts again.
    public func reset() throws(E1000EError) {
        guard registers.read32(E1000ERegister.status) != 0xFFFF_FFFF else { throw .deviceNotResponding(register: "STATUS") }
        registers.write32(E1000ERegister.imc, 0xFFFF_FFFF)
        registers.write32(E1000ERegister.rctl, 0)
        registers.write32(E1000ERegister.tctl, 0)
        // 5.2.3.3 "GIO master disable": let outstanding DMA drain first (best effort, as Linux).
        registers.setBits32(E1000ERegister.ctrl, E1000ECTRL.gioMasterDisable)
        _ = registers.waitFor32(E1000ERegister.status, mask: E1000ESTATUS.gioMasterEnable, equals: 0,
                                timeoutNanoseconds: 10_000_000, clock: clock)
        let start = clock.now()
        registers.write32(E1000ERegister.ctrl, registers.read32(E1000ERegister.ctrl) | E1000ECTRL.reset)
        // The datasheet asks for a wait of at least 1 us before touching registers again.
        clock.pause()
        guard registers.waitFor32(E1000ERegister.ctrl, mask: E1000ECTRL.reset, equals: 0,
                                  timeoutNanoseconds: resetTimeoutNanoseconds, clock: clock) else {
            throw .resetTimeout(waitedNanoseconds: clock.now() &- start)
        }
        nvmAutoReadDone = registers.waitFor32(E1000ERegister.eecd, mask: E1000EEECD.autoReadDone, equals: E1000EEECD.autoReadDone,
                                              timeoutNanoseconds: 10_000_000, clock: clock)
        registers.write32(E1000ERegister.imc, 0xFFFF_FFFF)
        _ = registers.read32(E1000ERegister.icr)
    }

    // MARK: - MAC address

    /// The MAC address from Receive Address entry 0, which the hardware loads from the NVM at
    /// reset (10.2.5.16-17); falls back to the EEPROM (words 0-2, 10.2.2.4) if RAH0.AV is clear.
    public func macAddress() throws(E1000EError) -> MACAddress {
        let rah = registers.read32(E1000ERegister.rah(0))
        if rah & E1000ERAH.addressValid != 0 {
            let address = MACAddress(ral: registers.read32(E1000ERegister.ral(0)), rah: rah)
            if !address.isZero { return address }
        }
        return try macAddressFromEEPROM()
    }

    /// Words 0, 1, 2 of the NVM hold the Ethernet address, low byte first (datasheet 6.1.1.1).
    public func macAddressFromEEPROM() throws(E1000EError) -> MACAddress {
        let w0 = try readEEPROM(word: 0), w1 = try readEEPROM(word: 1), w2 = try readEEPROM(word: 2)
        let address = MACAddress(UInt8(truncatingIfNeeded: w0), UInt8(w0 >> 8), UInt8(truncatingIfNeeded: w1),
                                 UInt8(w1 >> 8), UInt8(truncatingIfNeeded: w2), UInt8(w2 >> 8))
        guard !address.isZero, !address.isMulticast else { throw .noMACAddress }
        return address
    }

    /// One 16-bit NVM word through EERD (10.2.2.4): write address and Start, poll Done.
    public func readEEPROM(word: Int) throws(E1000EError) -> UInt16 {
        registers.write32(E1000ERegister.eerd, E1000EEERD.read(word: word))
        guard registers.waitFor32(E1000ERegister.eerd, mask: E1000EEERD.done, equals: E1000EEERD.done,
                                  timeoutNanoseconds: 10_000_000, clock: clock) else {
            throw .eepromReadTimeout(word: word)
        }
        return E1000EEERD.data(registers.read32(E1000ERegister.eerd))
    }

    /// STATUS decoded: link up and speed in Mb/s.
    public var link: (up: Bool, megabitsPerSecond: Int) {
        let status = registers.read32(E1000ERegister.status)
        let speed = switch (status >> E1000ESTATUS.speedShift) & 0b11 { case 0: 10; case 1: 100; default: 1000 }
        return (status & E1000ESTATUS.linkUp != 0, speed)
    }

    // MARK: - Interrupts (10.2.4, 7.4 "Interrupts", 7.4.2 MSI-X)

    /// Routes an MSI-X cause (RxQ0/1, TxQ0/1, Other) to `vector` in IVAR and unmasks it in IMS.
    /// Also sets CTRL_EXT.PBA_support, as for MSI-X operation. EIAC stays 0: causes are cleared
    /// by `acknowledge`, not automatically.
    public func routeInterrupt(_ cause: E1000EInterruptCause, toVector vector: Int) throws(E1000EError) {
        guard let shift = cause.ivarShift, (0..<E1000EIVAR.vectorCount).contains(vector) else {
            throw .invalidInterruptRoute(cause: cause, vector: vector)
        }
        var ivar = registers.read32(E1000ERegister.ivar)
        ivar = (ivar & ~(0xF << UInt32(shift))) | E1000EIVAR.entry(vector: vector) << UInt32(shift)
        registers.write32(E1000ERegister.ivar, ivar)
        registers.setBits32(E1000ERegister.ctrlExt, E1000ECTRLEXT.pbaSupport)
        registers.write32(E1000ERegister.ims, cause.rawValue)
    }

    /// Turns interrupt moderation off: ITR (INTx and MSI, 10.2.4.4) and every EITR (MSI-X,
    /// 10.2.4.10) to 0, so each cause interrupts at once. A throttled interrupt is re-sent
    /// from a timer, and QEMU 7.2's model asserts if that timer fires after the interrupt mode
    /// changed; the network server will set its own moderation.
    public func disableInterruptThrottling() {
        registers.write32(E1000ERegister.itr, 0)
        for vector in 0..<E1000EIVAR.vectorCount { registers.write32(E1000ERegister.eitr(vector), 0) }
    }

    /// Makes the device raise MSI-X `vector` with no traffic: route `cause` to it, then set the
    /// cause through ICS (10.2.4.3), which acts as if the event had occurred.
    public func triggerTestInterrupt(vector: Int, cause: E1000EInterruptCause = .other) throws(E1000EError) {
        try routeInterrupt(cause, toVector: vector)
        registers.write32(E1000ERegister.ics, cause.rawValue)
    }

    /// The pending causes. Reading ICR has side effects (read-to-clear when IMS is 0 or
    /// CTRL_EXT.IAME is set, 10.2.4.1); in MSI-X mode with causes unmasked it does not clear.
    public func interruptCauses() -> E1000EInterruptCause {
        E1000EInterruptCause(rawValue: registers.read32(E1000ERegister.icr))
    }

    /// Clears causes (ICR is write-1-to-clear) so the same cause can fire again.
    public func acknowledge(_ causes: E1000EInterruptCause) {
        registers.write32(E1000ERegister.icr, causes.rawValue)
    }

    /// Masks every cause (IMC).
    public func disableInterrupts() {
        registers.write32(E1000ERegister.imc, 0xFFFF_FFFF)
    }

    /// End to end: trigger `cause` on `vector`, wait for `line` (that vector's eventfd), read
    /// and acknowledge the causes. Returns the causes that were pending.
    @discardableResult
    public func testInterrupt(vector: Int, line: InterruptLine, cause: E1000EInterruptCause = .other,
                              timeoutNanoseconds: UInt64 = 1_000_000_000) throws(E1000EError) -> E1000EInterruptCause {
        _ = line.consume()
        let start = clock.now()
        try triggerTestInterrupt(vector: vector, cause: cause)
        guard line.wait(timeoutNanoseconds: Int64(timeoutNanoseconds)) > 0 else {
            throw .interruptTimeout(vector: vector, cause: cause, waitedNanoseconds: clock.now() &- start)
        }
        let causes = interruptCauses()
        acknowledge(causes.subtracting(.asserted).union(cause))
        return causes
    }
}
