import Testing
import Platform
import XHCI

@Suite("xHCI driver against a fake controller")
struct XHCITests {
    @Test("reset waits for CNR, start programs the rings and reaches running")
    func start() throws {
        let (allocator, mapper) = makeTestAllocator()
        let fake = FakeXHCIController(mapper: mapper)
        let controller = try XHCIController(registers: fake, allocator: allocator)
        #expect(controller.capabilities.maxPorts == 8 && controller.capabilities.maxSlots == 64)
        #expect(controller.capabilities.versionString == "1.0.0")
        #expect(controller.extendedCapabilities.protocols.map(\.major) == [2, 3])
        try controller.start()
        #expect(controller.state == .running)
        #expect(controller.stateHistory == [.halting, .resetting, .halted, .configuring, .starting, .running])
        #expect(fake.running)
        #expect(fake.config == 32)
        #expect(mapper.isMapped(fake.dcbaap, size: 33 * 8))
        #expect(fake.usbsts & XHCIUSBSTS.controllerNotReady == 0)
    }

    @Test("No-Op completes by interrupt; IMAN.IP cleared, ERDP advanced with EHB cleared")
    func noOpInterrupt() throws {
        let (allocator, mapper) = makeTestAllocator()
        let irq = TestInterrupt()
        let fake = FakeXHCIController(mapper: mapper, interrupt: irq)
        let controller = try XHCIController(registers: fake, allocator: allocator, interrupt: irq.line)
        try controller.start()
        let event = try controller.noOp()
        #expect(event.type == .commandCompletionEvent && event.completionCode == .success)
        #expect(event.parameter == controller.commandRing!.segment.deviceAddress)
        // Three Port Status Change Events came first (the attached devices), then the completion.
        let ring = try #require(controller.eventRing)
        #expect(ring.dequeueIndex == 4)
        #expect(fake.erdp & ~0xF == ring.segment.deviceAddress + 4 * 16)
        #expect(fake.erdp & XHCIInterrupterRegister.erdpEventHandlerBusy == 0)
        #expect(fake.iman & XHCIInterrupterRegister.imanPending == 0)
        #expect(fake.iman & XHCIInterrupterRegister.imanEnable != 0)
        #expect(fake.usbsts & XHCIUSBSTS.eventInterrupt == 0)
        #expect(irq.raised == 4)
        #expect(controller.takePortChanges() == [1, 2, 3])
        #expect(controller.takePortChanges() == [])
    }

    @Test("command ring wraps through its Link TRB toggling the cycle bit; event ring wraps too")
    func ringWrap() throws {
        let (allocator, mapper) = makeTestAllocator()
        let fake = FakeXHCIController(mapper: mapper)
        var configuration = XHCIController<FakeXHCIController>.Configuration()
        configuration.commandRingTRBs = 8   // 7 usable slots + Link TRB
        configuration.eventRingTRBs = 16
        configuration.completionMode = .polling
        let controller = try XHCIController(registers: fake, allocator: allocator, configuration: configuration)
        try controller.start()
        for _ in 0..<40 { try controller.noOp() }
        #expect(fake.commandsCompleted == 40)
        #expect(fake.linkTRBsFollowed == 5)        // 40 / 7
        let ring = try #require(controller.commandRing)
        #expect(ring.wraps == 5 && ring.producerCycle == false && ring.enqueueIndex == 5)
        let events = try #require(controller.eventRing)
        #expect(events.wraps == 2 && events.dequeueIndex == 43 % 16)  // 3 port events + 40 completions
        #expect(events.consumerCycle == true)
        #expect(fake.eventRingOverflows == 0)
    }

    @Test("port listing shows the connected ports and their speeds")
    func ports() throws {
        let (allocator, mapper) = makeTestAllocator()
        let fake = FakeXHCIController(mapper: mapper)
        let controller = try XHCIController(registers: fake, allocator: allocator)
        try controller.start()
        let connected = controller.connectedPorts()
        #expect(connected.map(\.port) == [1, 2, 3])
        #expect(connected.map(\.speed) == [.full, .full, .high])
        #expect(connected.allSatisfy { $0.enabled && $0.powered && $0.protocolMajor == 2 })
        #expect(controller.ports().count == 8)
        #expect(controller.portStatus(6).protocolMajor == 3 && !controller.portStatus(6).connected)
        #expect(controller.portStatus(1).changeBits != 0)
        controller.clearPortChanges(1)
        #expect(controller.portStatus(1).changeBits == 0 && controller.portStatus(1).enabled)
    }

    @Test("a command with no completion event times out")
    func commandTimeout() throws {
        let (allocator, mapper) = makeTestAllocator()
        let fake = FakeXHCIController(mode: .silent, mapper: mapper)
        var configuration = XHCIController<FakeXHCIController>.Configuration()
        configuration.commandTimeoutNanoseconds = 150_000_000
        configuration.completionMode = .polling
        let controller = try XHCIController(registers: fake, allocator: allocator, configuration: configuration)
        try controller.start()
        do {
            try controller.noOp()
            Issue.record("a silent controller completed a No-Op")
        } catch {
            guard case .commandTimeout(let type, _, let waited) = error else { Issue.record("got \(error)"); return }
            #expect(type == .noOpCommand && waited >= 150_000_000)
        }
    }

    @Test("a controller stuck in Controller Not Ready fails the reset")
    func resetTimeout() throws {
        let (allocator, mapper) = makeTestAllocator()
        let fake = FakeXHCIController(mode: .stuckNotReady, mapper: mapper)
        var configuration = XHCIController<FakeXHCIController>.Configuration()
        configuration.resetTimeoutNanoseconds = 100_000_000
        let controller = try XHCIController(registers: fake, allocator: allocator, configuration: configuration)
        do {
            try controller.start()
            Issue.record("start succeeded with CNR stuck")
        } catch {
            guard case .resetTimeout(let usbsts, _) = error else { Issue.record("got \(error)"); return }
            #expect(usbsts & XHCIUSBSTS.controllerNotReady != 0)
        }
        #expect(controller.state == .failed)
    }

    @Test("scratchpad buffers requested by HCSPARAMS2 hang off DCBAA entry 0")
    func scratchpads() throws {
        let (allocator, mapper) = makeTestAllocator()
        let fake = FakeXHCIController(mapper: mapper)
        fake.scratchpads = 34  // exercises both the Hi and Lo fields
        let controller = try XHCIController(registers: fake, allocator: allocator)
        #expect(controller.capabilities.maxScratchpadBuffers == 34)
        try controller.start()
        let array = hostPointer(fake.dcbaap).load(as: UInt64.self)
        #expect(mapper.isMapped(array, size: 34 * 8))
        for index in 0..<34 {
            let page = hostPointer(array).load(fromByteOffset: index * 8, as: UInt64.self)
            #expect(page & 0xFFF == 0 && mapper.isMapped(page, size: 4096))
        }
    }

    @Test("TRB encoding and completion code names")
    func encoding() {
        let noOp = XHCITRB.noOpCommand()
        #expect(noOp.control == 23 << 10 && noOp.type == .noOpCommand)
        let link = XHCITRB.link(to: 0x1000, toggleCycle: true)
        #expect(link.type == .link && link.control & XHCITRB.toggleCycle != 0 && link.parameter == 0x1000)
        #expect(XHCITRB.enableSlot(slotType: 0).type == .enableSlot)
        let event = XHCITRB(parameter: 0xABC0, status: 1 << 24 | 5, control: 33 << 10 | 7 << 24 | 1)
        #expect(event.type == .commandCompletionEvent && event.cycle && event.slotID == 7)
        #expect(event.completionCode == .success && event.completionParameter == 5)
        #expect(XHCICompletionCode(raw: 5).description == "TRB Error (5)")
        let port = XHCIPortStatus(port: 2, raw: 1 | 1 << 1 | 1 << 9 | 3 << 10)
        #expect(port.connected && port.enabled && port.speed == .high)
    }
}
