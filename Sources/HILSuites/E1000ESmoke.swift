import E1000E
import Platform
#if canImport(Glibc)
import Glibc
#endif

/// e1000e: reset, the MAC address, and an MSI-X interrupt raised through Interrupt Cause Set.
struct E1000ESmoke {
    var context: DeviceSmokeContext

    /// Every interrupt arms the device's throttling timer (QEMU 7.2 clamps ITR/EITR to at least
    /// 500 x 256 ns, so writing 0 does not disable it), and QEMU 7.2's model asserts if that timer
    /// fires after the interrupt mode changed (fixed upstream later). So the interrupt mode is
    /// changed, and interrupts are torn down, only after the longest interval (EITR's 65535 x
    /// 256 ns, about 17 ms) has passed.
    private func letThrottlingTimersExpire() {
        var pause = timespec(tv_sec: 0, tv_nsec: 20_000_000)
        nanosleep(&pause, nil)
    }

    func run(report: SuiteReport) {
        let label = context.label
        let nic = E1000EController(registers: context.registers)

        report.check("\(label): reset and MAC address") {
            // An MSI-X message is a memory write by the device: without bus mastering it is dropped.
            try context.device.setBusMaster(true)
            try nic.reset()
            let mac = try nic.macAddress()
            try expect(!mac.isZero && !mac.isMulticast, "MAC address \(mac) is not a unicast address")
            return "MAC \(mac)"
        }

        report.check("\(label): MSI-X interrupt raised through ICS arrives") {
            nic.disableInterruptThrottling()
            let vectors = try context.device.interruptVectors(.msix)
            guard vectors > 0 else { throw SuiteReport.Skip("\(context.device.backendName) offers no MSI-X") }
            let lines = try context.device.enableInterrupts(.msix, count: vectors)
            // The last vector, so routing (IVAR) is exercised rather than a default of vector 0.
            let vector = vectors - 1
            let causes = try nic.testInterrupt(vector: vector, line: lines[vector], timeoutNanoseconds: context.options.timeoutNanoseconds)
            return "vector \(vector) of \(vectors), causes \(causes)"
        }
        letThrottlingTimersExpire()

        // MSI and INTx: IVAR does not apply; any unmasked cause raises the one interrupt.
        for kind in [InterruptLine.Kind.msi, .intx] {
            report.check("\(label): \(kind.rawValue) interrupt raised through ICS arrives") {
                guard try context.device.interruptVectors(kind) > 0 else {
                    throw SuiteReport.Skip("\(context.device.backendName) offers no \(kind.rawValue)")
                }
                let line = try context.device.enableInterrupts(kind, count: 1)[0]
                nic.disableInterruptThrottling()
                let causes = try nic.testInterrupt(vector: 0, line: line, timeoutNanoseconds: context.options.timeoutNanoseconds)
                // INTx is level-triggered: the kernel masked it when it fired; with the cause
                // acknowledged, unmasking must not bring it straight back.
                if kind == .intx {
                    try context.device.unmaskINTx()
                    try expect(line.wait(timeoutNanoseconds: 50_000_000) == 0, "INTx fired again after the cause was cleared")
                }
                return "causes \(causes)"
            }
            letThrottlingTimersExpire()
        }
        nic.disableInterrupts()
        letThrottlingTimersExpire()
    }
}
