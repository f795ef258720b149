import Testing
import E1000E
import Platform

@Suite("e1000e driver against a fake 82574")
struct E1000ETests {
    @Test("reset completes and the MAC address comes from RAL0/RAH0")
    func resetAndMAC() throws {
        let fake = FakeE1000E()
        let nic = E1000EController(registers: fake)
        try nic.reset()
        #expect(fake.resets == 1)
        #expect(nic.nvmAutoReadDone)
        #expect(try nic.macAddress().description == "52:54:00:4c:4d:01")
        #expect(try nic.macAddressFromEEPROM() == MACAddress(0x52, 0x54, 0x00, 0x4C, 0x4D, 0x01))
        #expect(nic.link.up && nic.link.megabitsPerSecond == 1000)
        #expect(fake.ims == 0)
    }

    @Test("a reset that never self-clears times out")
    func resetTimeout() throws {
        let fake = FakeE1000E()
        fake.resetReads = nil
        let nic = E1000EController(registers: fake)
        nic.resetTimeoutNanoseconds = 50_000_000
        do {
            try nic.reset()
            Issue.record("reset succeeded with CTRL.RST stuck")
        } catch {
            guard case .resetTimeout(let waited) = error else { Issue.record("got \(error)"); return }
            #expect(waited >= 50_000_000)
        }
    }

    @Test("ICS raises exactly the MSI-X vector IVAR routes the cause to, again after acknowledge")
    func interrupt() throws {
        let fake = FakeE1000E()
        let nic = E1000EController(registers: fake)
        try nic.reset()
        let line2 = InterruptLine(fd: fake.vectors[2].fd, kind: .msix, vector: 2)
        let causes = try nic.testInterrupt(vector: 2, line: line2, cause: .other, timeoutNanoseconds: 500_000_000)
        #expect(causes.contains(.other))
        #expect(fake.notified == [2])
        #expect((fake.ivar >> 16) & 0xF == 0b1010)  // valid | vector 2
        #expect(fake.icr == 0)
        // A second trigger fires again because the cause was acknowledged.
        try nic.testInterrupt(vector: 2, line: line2, timeoutNanoseconds: 500_000_000)
        #expect(fake.notified == [2, 2])
        // Another cause on another vector.
        let line0 = InterruptLine(fd: fake.vectors[0].fd, kind: .msix, vector: 0)
        try nic.testInterrupt(vector: 0, line: line0, cause: .rxQueue0, timeoutNanoseconds: 500_000_000)
        #expect(fake.notified == [2, 2, 0])
        #expect(fake.vectors[1].raised == 0)
    }

    @Test("a masked cause raises nothing and the wait times out")
    func maskedInterrupt() throws {
        let fake = FakeE1000E()
        let nic = E1000EController(registers: fake)
        try nic.reset()
        try nic.routeInterrupt(.txQueue0, toVector: 1)
        nic.disableInterrupts()
        let line = InterruptLine(fd: fake.vectors[1].fd, kind: .msix, vector: 1)
        fake.write32(E1000ERegister.ics, E1000EInterruptCause.txQueue0.rawValue)
        #expect(line.wait(timeoutNanoseconds: 50_000_000) == 0)
        #expect(throws: E1000EError.invalidInterruptRoute(cause: .linkStatusChange, vector: 0)) {
            try nic.routeInterrupt(.linkStatusChange, toVector: 0)
        }
        #expect(throws: E1000EError.invalidInterruptRoute(cause: .other, vector: 5)) {
            try nic.triggerTestInterrupt(vector: 5)
        }
    }
}
