import ArgumentParser
import NVMe
import Platform
import ServerKit
import Storage
#if canImport(Glibc)
import Glibc
#endif

extension PCIAddress: ExpressibleByArgument {
    public init?(argument: String) { self.init(argument) }
}

/// The entry point. A command line made only of the options below, each written `--option value`
/// (what servers.conf passes), is read directly: ArgumentParser's parse, which reflects over the
/// command type, cost 80-120 ms of every restart under the rig's emulated CPU (issue 4 measured
/// it: exec to main ~120 ms, then the parse ~95 ms). Anything else (`--help`, `--opt=value`, a
/// bad value, an unknown option) goes to ArgumentParser, so its messages and exit codes are
/// unchanged; a line both accept means the same to both.
@main
enum StorageServerEntry {
    static func main() {
        StartupPhases.entered = MonotonicClock().now()
        guard let settings = StorageServerSettings(quickArguments: Array(CommandLine.arguments.dropFirst())) else {
            StorageServerCommand.main()
            return
        }
        do {
            try settings.serve()
        } catch {
            StorageServerCommand.exit(withError: error)
        }
    }
}

/// What the command line chose, whichever parser read it.
struct StorageServerSettings {
    var device: PCIAddress?
    var runtimeDir: String?
    var name: String?
    var label: String?
    var allowUIDs: [UInt32] = []
    var poll = false
    var ringWait: StorageServerCommand.RingWait = .yield

    init(device: PCIAddress?, runtimeDir: String?, name: String?, label: String?, allowUIDs: [UInt32], poll: Bool,
         ringWait: StorageServerCommand.RingWait) {
        self.device = device
        self.runtimeDir = runtimeDir
        self.name = name
        self.label = label
        self.allowUIDs = allowUIDs
        self.poll = poll
        self.ringWait = ringWait
    }

    /// The plain `--option value` / `--poll` forms only; nil for anything else, or a value that
    /// does not parse, or an option given twice where only one counts (ArgumentParser decides).
    init?(quickArguments arguments: [String]) {
        var index = 0
        var seen: Set<String> = []
        while index < arguments.count {
            let option = arguments[index]
            index += 1
            if option == "--poll" {
                guard seen.insert(option).inserted else { return nil }
                poll = true
                continue
            }
            guard ["--device", "--runtime-dir", "--name", "--label", "--allow-uid", "--ring-wait"].contains(option),
                  index < arguments.count, !arguments[index].hasPrefix("-") else { return nil }
            let value = arguments[index]
            index += 1
            if option != "--allow-uid" { guard seen.insert(option).inserted else { return nil } }
            switch option {
            case "--device":
                guard let address = PCIAddress(value) else { return nil }
                device = address
            case "--runtime-dir": runtimeDir = value
            case "--name": name = value
            case "--label": label = value
            case "--allow-uid":
                guard let uid = UInt32(value) else { return nil }
                allowUIDs.append(uid)
            default:
                guard let wait = StorageServerCommand.RingWait(rawValue: value) else { return nil }
                ringWait = wait
            }
        }
    }
}

struct StorageServerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "storage_server",
        abstract: "Serves NVMe namespaces as block devices over Limitless IPC (MSG_BLOCK_*).",
        discussion: """
            Standalone (no LIMITLESS_SERVER_NAME): opens --device through VFIO (or UIO). Supervised: adopts \
            the VFIO device and container descriptors granted as CAP_MMIO_<LABEL> and CAP_DMA_ALLOC. Brings the \
            controller up, creates one I/O queue pair, registers with the supervisor and serves \
            RUNTIME_DIR/NAME.sock until SIGTERM (exit 0). Protocol: Sources/Storage/BlockProtocol.swift.
            """)

    @Option(help: "The NVMe function (standalone; with capabilities only for display).")
    var device: PCIAddress?

    @Option(help: "Where the socket goes (default: LIMITLESS_RUNTIME_DIR or /run/limitless).")
    var runtimeDir: String?

    @Option(help: "The socket's name: RUNTIME_DIR/NAME.sock (default: the server's name, standalone `storage`).")
    var name: String?

    @Option(help: "With several CAP_MMIO_<LABEL> grants, the label to serve.")
    var label: String?

    @Option(name: .customLong("allow-uid"), help: "Only these uids may use the server (repeatable; default: every uid).")
    var allowUIDs: [UInt32] = []

    @Flag(help: "Poll the I/O completion queue instead of sleeping on its MSI-X vector (lower latency, one core busy while requests are in flight).")
    var poll = false

    enum RingWait: String, ExpressibleByArgument { case spin, yield }

    @Option(help: "With rings attached, while only the device can make progress: yield the CPU (default: a client polling on the same CPU runs at once) or spin on it.")
    var ringWait: RingWait = .yield

    func run() throws {
        try StorageServerSettings(device: device, runtimeDir: runtimeDir, name: name, label: label, allowUIDs: allowUIDs,
                                  poll: poll, ringWait: ringWait).serve()
    }

    static func say(_ text: String) {
        var line = text + "\n"
        line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    }
}

extension StorageServerSettings {
    func serve() throws {
        // Start-up phases on CLOCK_MONOTONIC, logged once registered (the HIL suite places them
        // on the restart's timeline: issue 4, crash to serving).
        var phases = StartupPhases()
        let runtime: ServerRuntime
        do {
            runtime = try ServerRuntime(standaloneName: name ?? "storage")
        } catch {
            StorageServerCommand.say("storage_server: \(error)")
            throw ExitCode(78)
        }
        phases.mark("runtime")
        var capabilities: [String: Int32] = [:]
        for capability in runtime.capabilityNames {
            capabilities[capability] = (try? runtime.capability(capability)) ?? -1
        }
        let source: StorageDeviceSource
        switch StorageDeviceSource.choose(capabilities: capabilities, device: device, label: label) {
        case .success(let chosen): source = chosen
        case .failure(let problem):
            runtime.log(.critical, "\(problem)")
            throw ExitCode(78)
        }

        let opened: StorageBringUp.Result
        do {
            let pci = try StorageBringUp.open(source)
            phases.mark("adopted")
            opened = try StorageBringUp.bringUp(pci) { runtime.log(.warning, $0) }
            phases.controllerSteps(opened.blockDevice.controller.transitions)
            phases.mark("io-ready")
        } catch {
            runtime.log(.critical, "bring-up failed: \(error)")
            throw ExitCode(1)
        }
        if poll { opened.blockDevice.queue.polling = true }
        runtime.log(.info, "serving \(opened.summary)" + (poll ? " (completions polled)" : ""))

        let policy = allowUIDs.isEmpty ? BlockAccessPolicy.acceptAll
            : BlockAccessPolicy(readers: .uids(Set(allowUIDs)), writers: .uids(Set(allowUIDs)))
        let server = BlockServer(device: opened.blockDevice, policy: policy) { runtime.log(.error, $0) }
        let directory = runtimeDir ?? runtime.environment.runtimeDirectory
        let socketName = name ?? runtime.name
        let endpoint = try server.makeIPCServer(name: socketName, directory: directory)
        // Served on the loop's thread, which also unmaps the registered buffers of vanished
        // clients (zero copy).
        let loop = BlockServingLoop(server: server, endpoint: endpoint)
        loop.spinWhileAwaitingDevice = ringWait == .spin
        loop.start()
        phases.mark("listening")
        runtime.log(.info, "listening on \(endpoint.endpoint.socketPath)"
            + (allowUIDs.isEmpty ? " (every uid accepted)" : " (uids \(allowUIDs.map(String.init).joined(separator: ",")))"))

        do {
            try runtime.register()
        } catch {
            runtime.log(.critical, "registration failed: \(error)")
            loop.stop()
            throw ExitCode(1)
        }
        phases.mark("registered")
        runtime.log(.info, phases.description)
        let reason = try runtime.runUntilStopped()
        loop.stop()
        do {
            try opened.blockDevice.shutdown()
            runtime.log(.info, "stopped (\(reason)): \(server.requests) requests (\(server.zeroCopyTransfers) zero copy), \(server.deviceErrors) device errors; controller shut down")
        } catch {
            runtime.log(.error, "stopped (\(reason)); shutdown failed: \(error)")
        }
        try? opened.device.disableInterrupts()
        try? opened.device.setBusMaster(false)
        runtime.shutdown()
    }
}

/// When each start-up step finished, in microseconds after `run()` began; `description` is the
/// one log line the supervised HIL suite reads (`startup phases (us after main at realtime N):
/// name=us ...`). The controller's steps come from its recorded state transitions (NVMe 2.0
/// section 3.5.1: disable, admin queue, enable, Identify).
struct StartupPhases: CustomStringConvertible {
    /// CLOCK_MONOTONIC when the Swift entry point began (before argument parsing); 0 if unknown.
    /// Written once by the main thread before anything else runs.
    nonisolated(unsafe) static var entered: UInt64 = 0

    let clock = MonotonicClock()
    let start: UInt64
    let realtimeStart: Int64
    var marks: [(String, UInt64)] = []

    /// `start` is the entry point's time when known (then the first mark, "parsed", is the end of
    /// argument parsing), else now.
    init() {
        let now = clock.now()
        start = Self.entered != 0 && Self.entered <= now ? Self.entered : now
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        realtimeStart = Int64(time.tv_sec) * 1_000_000_000 + Int64(time.tv_nsec) - Int64(now - start)
        if start != now { marks.append(("parsed", (now - start) / 1000)) }
    }

    mutating func mark(_ name: String, at time: UInt64? = nil) {
        marks.append((name, ((time ?? clock.now()) &- start) / 1000))
    }

    /// The end of each bring-up step: device set-up (bus master, BAR, MSI-X, DMA allocator)
    /// ends where the controller starts checking CAP; then CC.EN=0 / RDY=0, the admin queue,
    /// CC.EN=1 / RDY=1, Identify Controller.
    mutating func controllerSteps(_ transitions: [NVMeStateTransition]) {
        let names: [(NVMeControllerState, String)] = [
            (.checkingCapabilities, "device-setup"), (.disabling, "cap-read"), (.configuringAdminQueue, "disabled"),
            (.enabling, "admin-queue"), (.identifying, "enabled"), (.ready, "identified"),
        ]
        for (state, name) in names {
            if let step = transitions.last(where: { $0.to == state }), step.enteredAtNanoseconds >= start {
                mark(name, at: step.enteredAtNanoseconds)
            }
        }
    }

    var description: String {
        "startup phases (us after main at realtime \(realtimeStart)): " + marks.map { "\($0.0)=\($0.1)" }.joined(separator: " ")
    }
}
