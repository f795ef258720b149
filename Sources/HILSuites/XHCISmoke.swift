import Platform
import XHCI

/// xHCI: reset and start the controller, a No Op command whose completion event arrives with an
/// MSI-X interrupt, and the root hub's connected ports.
struct XHCISmoke {
    var context: DeviceSmokeContext

    func run(report: SuiteReport) {
        let label = context.label
        var controller: XHCIController<MMIORegion>?
        var line: InterruptLine?

        report.check("\(label): controller reset and start") {
            try context.device.setBusMaster(true)
            let interrupt = try context.interruptLine()
            line = interrupt
            var configuration = XHCIController<MMIORegion>.Configuration()
            configuration.completionMode = .interrupt
            configuration.commandTimeoutNanoseconds = context.options.timeoutNanoseconds
            let xhci = try XHCIController(registers: context.registers, allocator: context.allocator,
                                          interrupt: interrupt, configuration: configuration)
            controller = xhci
            try xhci.start()
            return "\(xhci.capabilities)"
        }
        guard let xhci = controller, let interrupt = line else { return }

        report.check("\(label): No Op command completes with an \(interrupt.kind.rawValue) interrupt") {
            let (event, fired) = try context.expectInterrupt(on: interrupt, driverCount: { xhci.interruptsReceived }) {
                try xhci.noOp()
            }
            try expect(event.completionCode == .success, "completion code \(event.completionCode)")
            return "completion \(event.completionCode), \(fired) interrupt(s)"
        }

        report.check("\(label): root hub ports") {
            let ports = xhci.ports()
            try expect(!ports.isEmpty, "the controller reports no root hub ports")
            let connected = ports.filter(\.connected)
            return "\(ports.count) ports, connected: " + (connected.isEmpty ? "none" : connected.map(\.description).joined(separator: "; "))
        }

        report.check("\(label): halt") {
            try xhci.halt()
            return nil
        }
    }
}
