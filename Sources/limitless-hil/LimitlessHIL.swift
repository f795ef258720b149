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
        subcommands: [Smoke.self, NVMeIO.self, Storage.self, SupervisedStorage.self])
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

struct NVMeIO: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nvme-io",
        abstract: "NVMe block I/O: I/O queue pair on MSI-X, patterns over each namespace, PRP edge cases, flush, write zeroes, deallocate, range errors, queue depth, latency.")

    @Option(help: "The NVMe function (default: the first NVMe controller bound to vfio-pci or uio_pci_generic).")
    var device: PCIAddress?

    @Option(help: "Commands in flight for the queue-depth check.")
    var queueDepth: Int = 32

    @Flag(help: "Everything: each namespace written whole twice (two seeds), longer latency runs.")
    var full = false

    @Flag(help: "Sample namespaces with blocks under 4 KiB (first and last 8 MiB) instead of writing them whole.")
    var sample = false

    @Option(help: "Pattern seed.")
    var seed: UInt64 = 0x4C49_4D49_544C_4553

    @Option(help: "Kernel interface: vfio, uio, or auto.")
    var backend: PCIBackend = .auto

    @Option(help: "Milliseconds before a command counts as stalled.")
    var timeoutMs: UInt64 = 10000

    func validate() throws {
        guard queueDepth >= 1 && queueDepth <= 4095 else { throw ValidationError("--queue-depth takes 1 to 4095") }
    }

    func run() throws {
        var options = NVMeIOSuite.Options()
        options.device = device
        options.queueDepth = queueDepth
        options.full = full
        options.sampleSmallBlocks = sample && !full
        options.seed = seed
        options.backend = backend
        options.timeoutNanoseconds = timeoutMs * 1_000_000
        try runSuite { NVMeIOSuite(options: options).run(report: $0) }
    }
}

struct Storage: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "storage",
        abstract: "storage_server end to end: start it, geometry, inline and shared-memory writes read back, range errors, SIGKILL and restart with every acknowledged write verified, SIGTERM.")

    @Option(help: "The NVMe function storage_server serves.")
    var device: PCIAddress = PCIAddress("0000:00:03.0")!

    @Option(help: "The storage_server executable (default: next to limitless-hil).")
    var server: String?

    @Option(help: "Expected block sizes of nsid 1 and 2.")
    var blockSizes: String = "512,4096"

    @Option(help: "Expected size of each namespace in MiB.")
    var namespaceMiB: UInt64 = 64

    @Option(help: "Milliseconds to wait for the server's socket to answer.")
    var startTimeoutMs: Int = 60000

    func run() throws {
        var options = StorageServerSuite.Options()
        options.device = device
        options.serverPath = server
        options.expectedBlockSizes = blockSizes.split(separator: ",").compactMap { Int($0) }
        options.expectedBytes = namespaceMiB << 20
        options.startTimeoutMilliseconds = startTimeoutMs
        try runSuite { StorageServerSuite(options: options).run(report: $0) }
    }
}

struct SupervisedStorage: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "supervised-storage",
        abstract: "storage_server under limitless-supervisor: writes read back, SIGKILL and the supervisor's restart (timed), every acknowledged write verified, serverctl status, SIGTERM to the supervisor.")

    @Option(help: "The NVMe function the supervisor hands to storage_server.")
    var device: PCIAddress = PCIAddress("0000:00:03.0")!

    @Option(help: "Directory with limitless-supervisor, storage_server and serverctl (default: limitless-hil's).")
    var binDir: String?

    @Option(help: "Milliseconds to wait for the server to answer after the supervisor starts.")
    var startTimeoutMs: Int = 60000

    @Option(help: "Milliseconds to wait for the server to answer again after SIGKILL.")
    var restartTimeoutMs: Int = 30000

    func run() throws {
        var options = SupervisedStorageSuite.Options()
        options.device = device
        options.binaryDirectory = binDir
        options.startTimeoutMilliseconds = startTimeoutMs
        options.restartTimeoutMilliseconds = restartTimeoutMs
        try runSuite { SupervisedStorageSuite(options: options).run(report: $0) }
    }
}

/// Runs a suite, notes how long it took, prints the closing `N passed, N failed` line, and exits
/// 1 on any failure.
func runSuite(_ body: (SuiteReport) -> Void) throws {
    let report = SuiteReport()
    let clock = MonotonicClock()
    let start = clock.now()
    body(report)
    report.note("suite time \((clock.now() - start) / 1_000_000) ms")
    print(report.summary)
    if report.failed > 0 { throw ExitCode(1) }
}
