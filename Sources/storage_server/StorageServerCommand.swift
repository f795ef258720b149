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

@main
struct StorageServerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "storage_server",
        abstract: "Serves NVMe namespaces as block devices over Limitless IPC (MSG_BLOCK_*).",
        discussion: """
            Standalone (no LIMITLESS_SERVER_NAME): opens --device through VFIO (or UIO). Supervised: adopts \
            the VFIO device and container descriptors granted as CAP_MMIO_<LABEL> and CAP_DMA_ALLOC. Brings the \
            controller up, creates --queues I/O queue pairs (one per serving thread), registers with the supervisor and serves \
            RUNTIME_DIR/NAME.sock until SIGTERM (exit 0). Protocol: Sources/Storage/BlockProtocol.swift.

            Access: a client that presents CAP_BLOCK_READ / CAP_BLOCK_WRITE tokens (descriptors the \
            supervisor granted it; MSG_BLOCK_PRESENT_CAPABILITY) gets exactly those rights. A client that \
            presents nothing is judged by its uid: root (uid 0) only, unless --allow-uid names others \
            (an administrator's limitless-storage runs as root). Once listening it installs a seccomp \
            filter (no open, no exec, no socket but AF_UNIX; --no-seccomp to debug).
            """)

    @Option(help: "The NVMe function (standalone; with capabilities only for display).")
    var device: PCIAddress?

    @Option(help: "Where the socket goes (default: LIMITLESS_RUNTIME_DIR or /run/limitless).")
    var runtimeDir: String?

    @Option(help: "The socket's name: RUNTIME_DIR/NAME.sock (default: the server's name, standalone `storage`).")
    var name: String?

    @Option(help: "With several CAP_MMIO_<LABEL> grants, the label to serve.")
    var label: String?

    @Option(name: .customLong("allow-uid"), help: "Uids that may read and write without presenting capability tokens (repeatable; default: 0, root only).")
    var allowUIDs: [UInt32] = []

    @Flag(help: "Do not install the seccomp filter (debugging).")
    var noSeccomp = false

    @Flag(help: "Poll the I/O completion queues instead of sleeping on MSI-X vectors; they are created with interrupts off (lower latency, one core busy while requests are in flight).")
    var poll = false

    @Flag(help: "Serve message-path reads and writes one at a time, each waited for before the next is read (no deferred answers; for comparison in benchmarks).")
    var oneAtATime = false

    @Option(help: "I/O queue pairs, one per serving thread: the first thread serves messages and rings on queue 1, the others rings only (dealt round-robin). Capped by the controller's Number of Queues grant and the MSI-X vectors (logged).")
    var queues: Int = 1

    enum RingWait: String, ExpressibleByArgument { case spin, yield }

    @Option(help: "With rings attached, while only the device can make progress: yield the CPU (default: a client polling on the same CPU runs at once) or spin on it.")
    var ringWait: RingWait = .yield

    func validate() throws {
        guard queues >= 1, queues <= 64 else { throw ValidationError("--queues: 1 to 64") }
    }

    func run() throws {
        // Start-up phases on CLOCK_MONOTONIC, logged once registered (the HIL suite places them
        // on the restart's timeline: issue 4, crash to serving).
        var phases = StartupPhases()
        // Everything before ServerRuntime needs no capability, so a standby instance (servers.conf
        // `standby yes`) has done it before it is activated: the arguments are parsed (above),
        // the access policy built. Nothing may open a descriptor here (it would sit where the
        // activation puts the capabilities; StandbyActivation refuses that).
        let policy = allowUIDs.isEmpty ? BlockAccessPolicy.rootOnly
            : BlockAccessPolicy(readers: .uids(Set(allowUIDs)), writers: .uids(Set(allowUIDs)))
        // A standby also builds its seccomp filter for the capabilities it expects, and backs the
        // memory of its first two DMA slabs (queues and Identify page; the bounce buffer), so
        // that after its activation the filter is only installed and the slabs only pinned.
        if let expected = StandbyActivation.expectedCapabilities {
            if !noSeccomp {
                ServerRuntime.prepareSeccompFilter(capabilities: StorageSandbox.capabilities(granted: expected),
                                                   extraSyscalls: StorageSandbox.extraSyscalls)
            }
            DMAMemoryReserve.prepare(slabs: 2)
            BlockServingWarmUp.run()
        }
        let runtime: ServerRuntime
        do {
            runtime = try ServerRuntime(standaloneName: name ?? "storage")
        } catch {
            Self.say("storage_server: \(error)")
            throw ExitCode(78)
        }
        // A standby's steps count from its activation, where its restart work began.
        if let activated = StandbyActivation.activatedAt { phases = StartupPhases(origin: activated, named: "activation") }
        for step in StartupSteps.all where step.at >= phases.start { phases.mark(step.name, at: step.at) }
        phases.mark("runtime")
        // The supervisor queued the CAP_BLOCK_* tokens of our clients before starting us: take
        // them all before listening, so no client presents a token we have not heard of yet.
        let tokens = BlockCapabilityTokens()
        runtime.onBlockToken { notice in
            let rights = BlockRights(rawValue: notice.rights)
            if tokens.update(descriptor: notice.descriptor, rights: rights, holder: notice.holder) {
                runtime.log(.info, rights.isEmpty ? "\(notice.holder)'s block token withdrawn" : "\(notice.holder) holds \(rights) (token)")
            } else {
                runtime.log(.warning, "could not record \(notice.holder)'s block token (rights \(notice.rights))")
            }
        }
        // An activated standby also waits for the tokens its activation announced (queued right
        // behind it).
        do { try runtime.receiveQueuedBlockTokens() } catch { runtime.log(.warning, "block tokens: \(error)") }
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
            opened = try StorageBringUp.bringUp(pci, queues: queues, pollIOQueues: poll, log: { runtime.log(.warning, $0) },
                                                step: { phases.mark($0) })
            phases.controllerSteps(opened.blockDevice.controller.transitions)
            phases.mark("io-ready")
        } catch {
            runtime.log(.critical, "bring-up failed: \(error)")
            throw ExitCode(1)
        }
        if poll { for queue in opened.ioQueues { queue.polling = true } }

        let server = BlockServer(device: opened.blockDevice, policy: policy, tokens: tokens) { runtime.log(.error, $0) }
        server.info = { runtime.log(.info, $0) }
        server.defersAnswers = !oneAtATime
        let directory = runtimeDir ?? runtime.environment.runtimeDirectory
        let socketName = name ?? runtime.name
        phases.mark("block-server")
        let endpoint = try server.makeIPCServer(name: socketName, directory: directory)
        // Adopting the supervisor's socket instead of binding one shows here (issue 4's phases).
        phases.mark(endpoint.adoptedListener ? "socket-adopted" : "socket-bound")
        var dropped: DroppedPrivileges?
        if !noSeccomp {
            do {
                dropped = try runtime.dropPrivileges(capabilities: StorageSandbox.capabilities(granted: runtime.capabilityNames),
                                                     extraSyscalls: StorageSandbox.extraSyscalls, logNow: false)
            } catch {
                runtime.log(.critical, "\(error)")
                endpoint.stop()
                throw ExitCode(1)
            }
            phases.mark("sandboxed")
        }
        // Served on the loop's thread, which also unmaps the registered buffers of vanished
        // clients (zero copy).
        // Threads 2...N: one ring server each on its own queue (started after the seccomp
        // filter, which they inherit).
        let workers = opened.ringDevices.enumerated().map { index, device in
            let ringServer = BlockServer(device: device, policy: policy, tokens: tokens) { runtime.log(.error, $0) }
            let worker = BlockRingWorker(server: ringServer, label: "thread \(index + 2) (I/O queue \(device.queue.id))")
            worker.spinWhileAwaitingDevice = ringWait == .spin
            return worker
        }
        server.ringWorkers = workers
        let loop = BlockServingLoop(server: server, endpoint: endpoint)
        loop.spinWhileAwaitingDevice = ringWait == .spin
        // CSTS.CFS: every thread parks, the controller is reset, every queue re-created and
        // its commands re-issued, then the threads go on (NVMe 2.0 section 3.7.2).
        loop.everySecond = { [opened] in
            if let news = opened.recoverIfFailed(pausing: workers) { runtime.log(.error, news) }
        }
        phases.mark("servers-built")
        for worker in workers { worker.start() }
        loop.start()
        phases.mark("listening")

        do {
            try runtime.register()
        } catch {
            runtime.log(.critical, "registration failed: \(error)")
            loop.stop()
            throw ExitCode(1)
        }
        phases.mark("registered")
        // Logged once registered: building and sending the lines (each wakes the supervisor)
        // would otherwise take the CPU from the serving thread's first answers.
        if let dropped { runtime.log(.info, dropped.description) }
        runtime.log(.info, "serving \(opened.summary)" + (poll ? " (completions polled)" : ""))
        if opened.grant.created < queues {
            runtime.log(.warning, "--queues \(queues): serving with \(opened.grant)")
        }
        runtime.log(.info, "listening on \(endpoint.endpoint.socketPath)"
            + " (\(tokens.count) capability tokens; without a token: uids \((allowUIDs.isEmpty ? [0] : allowUIDs).map(String.init).joined(separator: ",")))")
        runtime.log(.info, phases.description)
        let reason = try runtime.runUntilStopped()
        loop.stop()
        for worker in workers { worker.stop() }
        do {
            try opened.shutdown()
            runtime.log(.info, "stopped (\(reason)): \(server.requests) requests (\(server.zeroCopyTransfers) zero copy), \(server.deviceErrors) device errors; controller shut down")
        } catch {
            runtime.log(.error, "stopped (\(reason)); shutdown failed: \(error)")
        }
        try? opened.device.disableInterrupts()
        try? opened.device.setBusMaster(false)
        runtime.shutdown()
    }

    static func say(_ text: String) {
        var line = text + "\n"
        line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    }
}

/// When each start-up step finished, in microseconds after `run()` began (a standby: after its
/// activation); `description` is the one log line the supervised HIL suite reads (`startup phases
/// (us after main at realtime N): name=us ...`, `after activation` for a standby). The controller's steps come from its recorded state transitions (NVMe 2.0
/// section 3.5.1: disable, admin queue, enable, Identify).
struct StartupPhases: CustomStringConvertible {
    let clock = MonotonicClock()
    let start: UInt64
    let realtimeStart: Int64
    let origin: String
    var marks: [(String, UInt64)] = []

    /// `origin`: a CLOCK_MONOTONIC time in the past (default now), named in the line.
    init(origin: UInt64? = nil, named name: String = "main") {
        let now = clock.now()
        start = origin ?? now
        self.origin = name
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        realtimeStart = Int64(time.tv_sec) * 1_000_000_000 + Int64(time.tv_nsec) - Int64(now &- start)
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
        "startup phases (us after \(origin) at realtime \(realtimeStart)): " + marks.map { "\($0.0)=\($0.1)" }.joined(separator: " ")
    }
}
