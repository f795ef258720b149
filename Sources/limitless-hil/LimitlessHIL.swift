import ArgumentParser
import HILSuites
import Platform

@main
struct LimitlessHIL: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "limitless-hil",
        abstract: "Hardware-in-the-loop suites: our drivers against real or emulated devices through VFIO.",
        discussion: """
            In the rig: Scripts/rig.sh test smoke. On a real machine, after `sudo ./Scripts/bind.sh BDF`:
            limitless-hil smoke --device BDF. Each suite ends with one `N passed, N failed` line.
            """,
        subcommands: [Smoke.self])
}

extension PCIAddress: ExpressibleByArgument {
    public init?(argument: String) { self.init(argument) }
}

extension PCIBackend: ExpressibleByArgument {}

struct Smoke: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Config space, BAR0, DMA mapping and an MSI-X interrupt for each device; NVMe Identify; an IOMMU fault.")

    @Option(name: .customLong("device"), help: "A function to test (repeatable). Default: every function bound to vfio-pci or uio_pci_generic.")
    var devices: [PCIAddress] = []

    @Option(help: "Serial number the NVMe controller must report.")
    var nvmeSerial: String?

    @Option(help: "Expected NVMe namespace block sizes in nsid order, e.g. 512,4096.")
    var nvmeBlockSizes: String?

    @Option(help: "Kernel interface: vfio, uio, or auto (whatever the device is bound to).")
    var backend: PCIBackend = .auto

    @Option(help: "Milliseconds to wait for an interrupt or a completion.")
    var timeoutMs: UInt64 = 5000

    func validate() throws {
        if let nvmeBlockSizes, nvmeBlockSizes.split(separator: ",").contains(where: { Int($0) == nil }) {
            throw ValidationError("--nvme-block-sizes takes numbers separated by commas, e.g. 512,4096")
        }
    }

    func run() throws {
        var options = SmokeSuite.Options()
        options.devices = devices
        options.nvmeSerial = nvmeSerial
        options.nvmeBlockSizes = nvmeBlockSizes?.split(separator: ",").compactMap { Int($0) } ?? []
        options.backend = backend
        options.timeoutNanoseconds = timeoutMs * 1_000_000
        let report = SuiteReport()
        SmokeSuite(options: options).run(report: report)
        print(report.summary)
        if report.failed > 0 { throw ExitCode(1) }
    }
}
