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
        subcommands: [Smoke.self, NVMeIO.self, Storage.self, SupervisedStorage.self, NVMeBench.self])
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

    @Flag(help: "Run storage_server with `standby yes`: every restart must be its standby taking over.")
    var standby = false

    @Flag(help: "Run storage_server with `listen no`: it binds its own socket (no socket activation), for comparison.")
    var serverBindsSocket = false

    func run() throws {
        var options = SupervisedStorageSuite.Options()
        options.standby = standby
        options.listen = !serverBindsSocket
        options.device = device
        options.binaryDirectory = binDir
        options.startTimeoutMilliseconds = startTimeoutMs
        options.restartTimeoutMilliseconds = restartTimeoutMs
        try runSuite { SupervisedStorageSuite(options: options).run(report: $0) }
    }
}

struct NVMeBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nvme-bench",
        abstract: "The NVMe driver in-process (no IPC): random 4 KiB reads or writes at a queue depth for a fixed time; prints IOPS, p50, p99.",
        discussion: """
            Figures only. Writes overwrite the namespace's region: use a scratch disk. The last line is \
            machine-readable: `bench engine=driver rw=… qd=… ops=… seconds=… iops=… p50_us=… p99_us=…` \
            (Scripts/storage-bench.sh reads it).
            """)

    @Option(help: "The NVMe function, bound to vfio-pci.")
    var device: PCIAddress = PCIAddress("0000:00:03.0")!

    @Option(help: "Namespace.")
    var nsid: UInt32 = 1

    @Option(help: "Seconds of I/O.")
    var seconds: Double = 5

    @Option(help: "Commands in flight.")
    var queueDepth: Int = 1

    @Option(help: "randread or randwrite.")
    var rw: String = "randread"

    @Option(help: "Bytes per I/O.")
    var ioSize: Int = 4096

    @Option(help: "Random offsets fall in the first this many MiB of the namespace (0: all of it).")
    var regionMiB: UInt64 = 0

    @Flag(help: "Sleep on the queue's MSI-X vector instead of polling the completion queue.")
    var interrupts = false

    @Flag(help: "Poll, but create the queue with its MSI-X vector enabled (each completion also raises an unused interrupt; for comparison with the default polled queue, created with interrupts off).")
    var interruptsWhilePolling = false

    func validate() throws {
        guard !(interrupts && interruptsWhilePolling) else { throw ValidationError("--interrupts and --interrupts-while-polling exclude each other") }
        guard rw == "randread" || rw == "randwrite" else { throw ValidationError("--rw takes randread or randwrite") }
        guard (1...1023).contains(queueDepth) else { throw ValidationError("--queue-depth takes 1 to 1023") }
        guard seconds > 0 && seconds <= 600 else { throw ValidationError("--seconds takes 0 to 600") }
    }

    func run() throws {
        var options = NVMeDriverBench.Options()
        options.device = device
        options.nsid = nsid
        options.seconds = seconds
        options.queueDepth = queueDepth
        options.ioSize = ioSize
        options.write = rw == "randwrite"
        options.polling = !interrupts
        options.interruptsWhilePolling = interruptsWhilePolling
        options.regionBytes = regionMiB << 20
        let result = try NVMeDriverBench(options: options).run { print("     \($0)") }
        func micro(_ ns: UInt64) -> String { String(Double(ns / 100) / 10) }
        print("driver in-process, \(rw) \(ioSize) B, queue depth \(queueDepth), \(interrupts ? "interrupts" : interruptsWhilePolling ? "polled, MSI-X on" : "polled, interrupts off"): "
            + "\(result.operations) I/Os in \(Double(result.elapsedNanoseconds / 1_000_000) / 1000) s, "
            + "\(Int(result.iops.rounded())) IOPS, p50 \(micro(result.p50Nanoseconds)) us, p99 \(micro(result.p99Nanoseconds)) us")
        print("bench engine=driver rw=\(rw) qd=\(queueDepth) ops=\(result.operations) "
            + "seconds=\(Double(result.elapsedNanoseconds / 1_000_000) / 1000) iops=\(Int(result.iops.rounded())) "
            + "p50_us=\(micro(result.p50Nanoseconds)) p99_us=\(micro(result.p99Nanoseconds))")
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
