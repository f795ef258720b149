import E1000E
import Platform
#if canImport(Glibc)
import Glibc
#endif

/// e1000e: reset, the MAC address, and an MSI-X interrupt raised through Interrupt Cause Set.
struct E1000ESmoke {
    var context: DeviceSmokeContext

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

        report.check("\(label): interrupt raised through ICS arrives") {
            let vectors = try context.device.interruptVectors(.msix)
            guard vectors > 0 else {
                let line = try context.interruptLine()
                let causes = try nic.testInterrupt(vector: 0, line: line, timeoutNanoseconds: context.options.timeoutNanoseconds)
                return "\(line.kind.rawValue), causes \(causes)"
            }
            let lines = try context.device.enableInterrupts(.msix, count: vectors)
            // The last vector, so routing (IVAR) is exercised rather than a default of vector 0.
            let vector = vectors - 1
            let causes = try nic.testInterrupt(vector: vector, line: lines[vector], timeoutNanoseconds: context.options.timeoutNanoseconds)
            return "MSI-X vector \(vector) of \(vectors), causes \(causes)"
        }
        nic.disableInterrupts()
        // Let any interrupt-throttling timer in the device run out before MSI-X is turned off
        // (EITR's longest interval is 65535 × 256 ns, about 17 ms).
        var pause = timespec(tv_sec: 0, tv_nsec: 20_000_000)
        nanosleep(&pause, nil)
    }
}
