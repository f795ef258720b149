import Platform

extension XHCIController {
    /// Places `trb` on the command ring, rings the host controller doorbell (DB 0, target 0;
    /// 5.6, 4.6.1) and waits for the Command Completion Event that points back at it (6.4.2.2).
    /// Returns the event whatever its completion code.
    public func submitCommand(_ trb: XHCITRB, timeoutNanoseconds: UInt64? = nil) throws(XHCIError) -> XHCITRB {
        guard state == .running, commandRing != nil else { throw .invalidState(state, operation: "issue a command") }
        let timeout = timeoutNanoseconds ?? configuration.commandTimeoutNanoseconds
        let address = commandRing!.enqueue(trb)
        registers.write32(doorbell(0), 0)
        let start = clock.now()
        while true {
            if let event = reapEvents(lookingFor: address) { return event }
            try checkHealth()
            let waited = clock.now() &- start
            if waited >= timeout {
                throw .commandTimeout(type: trb.type ?? .noOpCommand, trb: address, waitedNanoseconds: waited)
            }
            if usesInterrupts, let line = interrupt {
                interruptsReceived &+= line.wait(timeoutNanoseconds: Int64(min(timeout - waited, 100_000_000)))
            } else {
                clock.pause()
            }
        }
    }

    /// Submits `trb` and throws unless it completes with Success.
    @discardableResult
    public func command(_ trb: XHCITRB) throws(XHCIError) -> XHCITRB {
        let event = try submitCommand(trb)
        guard event.completionCode == .success else {
            throw .commandFailed(type: trb.type ?? .noOpCommand, code: event.completionCode)
        }
        return event
    }

    /// No Op Command (4.6.2, 6.4.3.1): exercises the command ring, doorbell, event ring and
    /// interrupt path end to end.
    @discardableResult
    public func noOp() throws(XHCIError) -> XHCITRB {
        try command(.noOpCommand())
    }

    /// Interrupt handling for interrupter 0 (4.17.5): clear USBSTS.EINT and IMAN.IP (both
    /// RW1C), consume every event whose cycle bit is ours, then write ERDP with the new dequeue
    /// pointer and EHB = 1 (RW1C) so the controller may interrupt again. Returns the Command
    /// Completion Event for the command TRB at `commandTRB`, if it was among them.
    func reapEvents(lookingFor commandTRB: UInt64) -> XHCITRB? {
        registers.write32(op(XHCIOperationalRegister.usbSts), XHCIUSBSTS.eventInterrupt)
        registers.write32(interrupter0(XHCIInterrupterRegister.iman),
                          XHCIInterrupterRegister.imanPending | (usesInterrupts ? XHCIInterrupterRegister.imanEnable : 0))
        var found: XHCITRB?
        var consumed = false
        while let event = eventRing!.nextEvent() {
            consumed = true
            switch event.type {
            case .commandCompletionEvent where event.parameter == commandTRB:
                found = event
            case .portStatusChangeEvent where event.portID < portChangeEvents.count:
                portChangeEvents[event.portID] += 1
            default:
                otherEvents += 1
            }
        }
        if consumed { acknowledgeEvents() }
        return found
    }

    /// Writes ERDP = dequeue pointer | EHB (5.5.2.3.3).
    func acknowledgeEvents() {
        registers.xhciWrite64(interrupter0(XHCIInterrupterRegister.erdp),
                              eventRing!.dequeueDeviceAddress | XHCIInterrupterRegister.erdpEventHandlerBusy)
    }

    /// Drains pending events (e.g. Port Status Change Events after start) without a command.
    public func pollEvents() {
        guard state == .running, eventRing != nil else { return }
        _ = reapEvents(lookingFor: 0)
    }

    /// The ports whose Port Status Change Events arrived since the last call.
    public func takePortChanges() -> [Int] {
        let ports = portChangeEvents.indices.filter { portChangeEvents[$0] > 0 }
        for port in ports { portChangeEvents[port] = 0 }
        return ports
    }

    // MARK: - Ports (5.4.8)

    public func portStatus(_ port: Int) -> XHCIPortStatus {
        precondition(port >= 1 && port <= capabilities.maxPorts, "xHCI ports are numbered 1...MaxPorts")
        return XHCIPortStatus(port: port, raw: registers.read32(op(XHCIOperationalRegister.portSC(port))),
                              protocolMajor: extendedCapabilities.protocolMajor(ofPort: port))
    }

    /// Every root hub port's status.
    public func ports() -> [XHCIPortStatus] {
        (1...max(capabilities.maxPorts, 1)).prefix(capabilities.maxPorts).map(portStatus)
    }

    /// Ports with a device attached (PORTSC.CCS = 1).
    public func connectedPorts() -> [XHCIPortStatus] { ports().filter(\.connected) }

    /// Clears a port's change bits (RW1C) without disturbing PED or starting a reset.
    public func clearPortChanges(_ port: Int) {
        let offset = op(XHCIOperationalRegister.portSC(port))
        let value = registers.read32(offset)
        registers.write32(offset, (value & XHCIPortStatus.preserveMask) | (value & XHCIPortStatus.changeMask))
    }
}
