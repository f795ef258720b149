import CLimitless
import Glibc
import IPC

/// Runs the configured servers: starts them in dependency order (each dependent only once what it
/// depends on has registered), watches them (exit, start timeout, watchdog), restarts them by
/// their `RestartPolicy`, gives up on one that fails too often (stopping what depends on it), and
/// stops them in reverse order (SIGTERM, grace period, SIGKILL).
///
/// One thread runs the loop (`run()` or `start()`): epoll over every server's stdout, stderr and
/// supervisor channel plus a wake eventfd, with a timeout set by the nearest deadline (and at most
/// `Options.pollInterval`, at which exits are also checked with waitpid(pid, WNOHANG); a dying
/// server usually wakes the loop sooner by closing its pipes). Only this supervisor's own children
/// are waited for, never waitpid(-1): the supervisor can live inside another program (a test).
/// Control calls (`start`, `stop`, `restart`, `status`) come from other threads, take the lock,
/// change intent, and wake the loop.
public final class Supervisor: @unchecked Sendable {
    public struct Options: Sendable {
        /// Where servers' sockets live; passed to servers as LIMITLESS_RUNTIME_DIR.
        public var runtimeDirectory: String = IPCRuntime.defaultDirectory
        /// How long a started server has to send MSG_SUPERVISOR_REGISTER.
        public var startTimeout: Duration = .seconds(10)
        /// Between SIGTERM and SIGKILL.
        public var stopGracePeriod: Duration = .seconds(5)
        /// False: a server counts as running once spawned (programs that do not speak the
        /// supervisor channel).
        public var requireRegistration = true
        public var checkpointCapacity = CheckpointStore.defaultCapacity
        /// The longest the loop sleeps before checking for exits.
        public var pollInterval: Duration = .milliseconds(100)
        /// Descriptors standing for a server's capabilities, by capability name; a granted
        /// capability missing here is passed as `CAP_NAME=-1`. The supervisor does not own them.
        public var capabilityDescriptors: @Sendable (ServerConfiguration) -> [String: Int32] = { _ in [:] }
        /// Opens (and keeps across instances) the descriptors of device capabilities: VFIO
        /// containers and devices (`DeviceCapabilities`). Its descriptors are added to those of
        /// `capabilityDescriptors`; a server it cannot open devices for does not start. It is
        /// told of every exit (to quiesce the devices before a restart) and releases a server's
        /// descriptors once the server is neither running nor wanted. nil: no device capabilities.
        public var capabilityProvider: (any CapabilityProvider)? = DeviceCapabilities()
        public init() {}
    }

    public let configuration: SupervisorConfiguration
    public let options: Options
    public let logs: LogStore

    private let lock = Lock()
    private var servers: [ServerProcess] = []
    private var byName: [String: ServerProcess] = [:]
    private let epollFD: Int32
    private let wakeFD: Int32
    private var shuttingDown = false
    private var finished = false
    private var thread: pthread_t?
    private let receiveBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Message.maxDatagramSize, alignment: 16)
    private let readBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 16)

    /// The name the supervisor's own records carry in the log store.
    public static let logName = "supervisor"

    public init(configuration: SupervisorConfiguration, options: Options = Options(), logs: LogStore) throws(LaunchError) {
        self.configuration = configuration
        self.options = options
        self.logs = logs
        epollFD = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard epollFD >= 0 else { throw .systemCall("epoll_create1", errno) }
        wakeFD = CL_eventfd(0, CL_EFD_CLOEXEC | CL_EFD_NONBLOCK)
        guard wakeFD >= 0 else {
            close(epollFD)
            throw .systemCall("eventfd", errno)
        }
        var event = epoll_event()
        event.events = UInt32(EPOLLIN.rawValue)
        event.data.u64 = 0
        _ = epoll_ctl(epollFD, EPOLL_CTL_ADD, wakeFD, &event)
        for (index, server) in configuration.servers.enumerated() {
            let process = ServerProcess(configuration: server, index: index)
            servers.append(process)
            byName[server.name] = process
        }
    }

    deinit {
        close(wakeFD)
        close(epollFD)
        receiveBuffer.deallocate()
        readBuffer.deallocate()
    }

    // MARK: Running

    /// Wants every server and runs the loop on the calling thread until `shutdown()` has stopped
    /// them all.
    public func run() {
        lock.locked {
            for server in servers { server.wanted = true }
        }
        loop()
    }

    /// `run()` on a new thread.
    public func start() {
        precondition(thread == nil, "Supervisor.start called twice")
        let context = Unmanaged.passRetained(self).toOpaque()
        var handle = pthread_t()
        let result = pthread_create(&handle, nil, { context in
            Unmanaged<Supervisor>.fromOpaque(context!).takeRetainedValue().run()
            return nil
        }, context)
        precondition(result == 0, "pthread_create failed: \(result)")
        thread = handle
    }

    /// Asks the loop to stop every server in stop order and return. Async-signal-safe (one write
    /// to an eventfd), so a SIGTERM handler may call `requestShutdown(fd:)` with `wakeDescriptor`.
    public func requestShutdown() {
        lock.locked { shuttingDown = true }
        wake()
    }

    /// For signal handlers: writing 2 to it asks for shutdown.
    public var wakeDescriptor: Int32 { wakeFD }

    /// `requestShutdown()`, then waits for the loop started by `start()` to finish.
    public func shutdown() {
        requestShutdown()
        if let thread {
            pthread_join(thread, nil)
            self.thread = nil
        }
    }

    private func wake(_ value: UInt64 = 1) {
        var one = value
        _ = write(wakeFD, &one, 8)
    }

    private func loop() {
        var events = [epoll_event](repeating: epoll_event(), count: 64)
        while true {
            let timeout = lock.locked { nextTimeout() }
            let count = events.withUnsafeMutableBufferPointer { epoll_wait(epollFD, $0.baseAddress, 64, timeout) }
            let done: Bool = lock.locked {
                for index in 0..<max(0, Int(count)) { handle(events[index]) }
                reap()
                checkDeadlines()
                if shuttingDown { for server in servers { server.wanted = false } }
                stopUnwanted()
                startEligible()
                releaseCapabilities()
                if shuttingDown && servers.allSatisfy({ !$0.isAlive }) {
                    finished = true
                    return true
                }
                return false
            }
            if done { break }
        }
        logs.flush()
    }

    private func nextTimeout() -> Int32 {
        let now = ContinuousClock.now
        var nearest = options.pollInterval
        for server in servers {
            var deadlines: [ContinuousClock.Instant] = []
            if let deadline = server.deadline { deadlines.append(deadline) }
            if server.state == .running, server.registered, let interval = server.configuration.watchdogInterval,
               let last = server.lastHeartbeat {
                deadlines.append(last + interval)
            }
            for deadline in deadlines { nearest = min(nearest, max(.zero, now.duration(to: deadline))) }
        }
        return Int32(clamping: (nearest.nanosecondsValue + 999_999) / 1_000_000)
    }

    // MARK: Events

    private static let stdoutKind: UInt64 = 1
    private static let stderrKind: UInt64 = 2
    private static let channelKind: UInt64 = 3
    /// A pidfd (pidfd_open, Linux 5.3): readable exactly when the child can be reaped, so an exit
    /// is seen at once instead of at the next poll (the poll remains the fallback).
    private static let exitKind: UInt64 = 4

    private func token(_ server: ServerProcess, kind: UInt64) -> UInt64 {
        UInt64(UInt32(truncatingIfNeeded: server.instance)) << 32 | UInt64(server.index) << 4 | kind
    }

    private func watch(_ fd: Int32, token: UInt64) {
        var event = epoll_event()
        event.events = UInt32(EPOLLIN.rawValue | EPOLLRDHUP.rawValue)
        event.data.u64 = token
        _ = epoll_ctl(epollFD, EPOLL_CTL_ADD, fd, &event)
    }

    private func unwatch(_ fd: inout Int32) {
        guard fd >= 0 else { return }
        _ = epoll_ctl(epollFD, EPOLL_CTL_DEL, fd, nil)
        close(fd)
        fd = -1
    }

    private func handle(_ event: epoll_event) {
        let token = event.data.u64
        if token == 0 {
            var value: UInt64 = 0
            if read(wakeFD, &value, 8) == 8, value >= 2 { shuttingDown = true }  // from a signal handler
            return
        }
        let index = Int((token >> 4) & 0x0FFF_FFFF)
        guard index < servers.count else { return }
        let server = servers[index]
        guard UInt32(truncatingIfNeeded: server.instance) == UInt32(token >> 32) else { return }
        switch token & 0xF {
        case Self.stdoutKind: drain(server, stream: .stdout)
        case Self.stderrKind: drain(server, stream: .stderr)
        case Self.channelKind: readChannel(server)
        case Self.exitKind: reap()
        default: break
        }
    }

    /// Reads what a server wrote to stdout or stderr and logs each complete line.
    /// Events are level-triggered, so a server that writes without pause is read `budget` times
    /// per wake-up and then waits its turn: it cannot starve the other servers or the control
    /// socket. After an exit everything left is read (`budget: .max`).
    private static let readBudget = 64

    private func drain(_ server: ServerProcess, stream: LogStream, budget: Int = readBudget) {
        let isOut = stream == .stdout
        let fd = isOut ? server.stdout : server.stderr
        guard fd >= 0 else { return }
        var buffer = isOut ? server.stdoutBuffer : server.stderrBuffer
        var closed = false
        var reads = 0
        while reads < budget {
            reads += 1
            let count = read(fd, readBuffer.baseAddress, readBuffer.count)
            if count < 0 {
                if errno == EINTR { continue }
                if errno != EAGAIN { closed = true }
                break
            }
            if count == 0 {
                closed = true
                break
            }
            buffer.append(contentsOf: UnsafeRawBufferPointer(rebasing: readBuffer[..<count]))
            var start = 0
            while let newline = buffer[start...].firstIndex(of: 0x0A) {
                logLine(server, stream: stream, bytes: buffer[start..<newline])
                start = newline + 1
            }
            buffer.removeFirst(start)
            if buffer.count >= logs.configuration.maximumLineLength {
                logLine(server, stream: stream, bytes: buffer[...])
                buffer.removeAll(keepingCapacity: true)
            }
        }
        if closed {
            if !buffer.isEmpty { logLine(server, stream: stream, bytes: buffer[...]) }
            buffer.removeAll()
            if isOut { unwatch(&server.stdout) } else { unwatch(&server.stderr) }
        }
        if isOut { server.stdoutBuffer = buffer } else { server.stderrBuffer = buffer }
    }

    private func logLine(_ server: ServerProcess, stream: LogStream, bytes: ArraySlice<UInt8>) {
        var text = String(decoding: bytes, as: UTF8.self)
        if text.hasSuffix("\r") { text.removeLast() }
        logs.append(server: server.name, stream: stream, level: stream == .stderr ? .warning : .info, text: text)
    }

    private func note(_ server: ServerProcess, _ level: LogLevel, _ text: String) {
        logs.append(server: server.name, stream: .supervisor, level: level, text: text)
    }

    private static let levels: [LogLevel] = [.debug, .debug, .info, .notice, .warning, .error, .critical]

    /// Messages from a server on its supervisor channel.
    private func readChannel(_ server: ServerProcess, budget: Int = readBudget * 4) {
        var reads = 0
        while server.channel >= 0 && reads < budget {
            reads += 1
            var fds: (Int32, Int32) = (-1, -1)
            var fdCount: Int32 = 0, flags: Int32 = 0
            let count = withUnsafeMutableBytes(of: &fds) { raw in
                CL_ipc_recv(server.channel, receiveBuffer.baseAddress, receiveBuffer.count,
                            raw.baseAddress!.assumingMemoryBound(to: Int32.self), 2, &fdCount, &flags, CL_MSG_DONTWAIT)
            }
            if fdCount > 0 { close(fds.0) }  // servers send no descriptors
            if fdCount > 1 { close(fds.1) }
            if count < 0 {
                if errno == EINTR { continue }
                if errno != EAGAIN { unwatch(&server.channel) }
                return
            }
            if count == 0 {
                unwatch(&server.channel)  // the server closed its end: it is exiting
                return
            }
            guard let message = try? Message.decode(UnsafeRawBufferPointer(rebasing: receiveBuffer[..<count])) else {
                note(server, .warning, "ignored a malformed message on the supervisor channel")
                continue
            }
            let payload = UnsafeRawBufferPointer(start: receiveBuffer.baseAddress! + Message.headerSize, count: count - Message.headerSize)
            switch message.type {
            case .supervisorRegister:
                server.registered = true
                server.lastHeartbeat = .now
                if server.state == .starting {
                    server.state = .running
                    server.deadline = nil
                }
                note(server, .info, "instance \(server.instance) registered (pid \(server.pid))")
                var reply = Message(type: .supervisorRegister, flags: .reply, param1: UInt64(server.instance), sequence: message.sequence)
                reply.status = .ok
                let header = UnsafeMutableRawBufferPointer.allocate(byteCount: Message.headerSize, alignment: 8)
                defer { header.deallocate() }
                reply.encode(into: header)
                _ = CL_ipc_send(server.channel, header.baseAddress, Message.headerSize, nil, 0, nil, 0, CL_MSG_NOSIGNAL | CL_MSG_DONTWAIT)
            case .supervisorHeartbeat:
                server.lastHeartbeat = .now
            case .supervisorLog:
                let level = Self.levels[Int(min(message.param1, 6))]
                var text = ""
                if case .inline(let offset, let size) = message.data, offset + size <= payload.count {
                    text = String(decoding: UnsafeRawBufferPointer(rebasing: payload[offset..<(offset + size)]), as: UTF8.self)
                }
                logs.append(server: server.name, stream: .structured, level: level, text: text)
            case .supervisorCheckpointSave:
                server.checkpointSequence = message.param1
                server.checkpointSavedAt = CheckpointStore.now()
            default:
                note(server, .warning, "ignored \(message.type) on the supervisor channel")
            }
        }
    }

    // MARK: Exits and deadlines

    private func reap() {
        for server in servers where server.isAlive {
            var status: Int32 = 0
            let result = waitpid(server.pid, &status, WNOHANG)
            if result == server.pid || (result < 0 && errno == ECHILD) { exited(server, status: result < 0 ? nil : status) }
        }
    }

    private func exited(_ server: ServerProcess, status: Int32?) {
        drain(server, stream: .stdout, budget: .max)
        drain(server, stream: .stderr, budget: .max)
        if server.channel >= 0 { readChannel(server, budget: .max) }
        unwatch(&server.stdout)
        unwatch(&server.stderr)
        unwatch(&server.channel)
        unwatch(&server.exitNotifier)
        server.stdoutBuffer = []
        server.stderrBuffer = []
        // Anything it forked is stopped with it.
        _ = kill(-server.pid, SIGKILL)
        server.pid = 0
        // Its devices are quiesced (bus mastering off, DMA unmapped) before anything restarts it.
        if let provider = options.capabilityProvider {
            for problem in provider.instanceExited(server.configuration) { note(server, .warning, problem) }
        }
        server.registered = false
        server.deadline = nil
        server.killSent = false

        var exit: ServerExit
        var text: String
        if let status {
            let signal = status & 0x7F
            exit = signal == 0 ? .exited(status: (status >> 8) & 0xFF) : .killed(signal: signal)
            text = signal == 0 ? exit.description : "killed by signal \(signal) (\(Self.signalName(signal)))"
        } else {
            exit = .exited(status: -1)
            text = "exit status unknown (already reaped)"
        }
        if let override = server.exitOverride {
            exit = override.exit
            text = override.text
        }
        server.exitOverride = nil
        let requested = server.stopRequested
        server.stopRequested = false
        server.lastExit = requested ? "stopped on request (\(text))" : text
        note(server, requested || !exit.isFailure ? .info : .error, "instance \(server.instance) \(server.lastExit!)")

        if server.restartRequested {
            server.restartRequested = false
            server.wanted = true
            server.state = .inactive
            return
        }
        if requested || !server.wanted {
            server.state = .inactive
            return
        }
        switch server.tracker.serverExited(exit) {
        case .restart(let pause):
            server.restarts += 1
            server.state = .backoff
            server.deadline = .now + pause
            note(server, .notice, "restarting in \(DurationText.format(pause))")
        case .stay(let reason):
            server.wanted = false
            server.state = .inactive
            note(server, .info, "not restarted: \(reason)")
        case .failed(let count, let period):
            server.wanted = false
            server.state = .failed
            let dependents = configuration.dependencies.dependents(of: server.name)
            note(server, .critical, "failed: \(count) restarts in \(DurationText.format(period)); not restarting"
                + (dependents.isEmpty ? "" : "; stopping \(dependents.joined(separator: ", "))"))
            for name in dependents {
                guard let dependent = byName[name] else { continue }
                dependent.wanted = false
                if dependent.state == .backoff || dependent.state == .waiting { dependent.state = .inactive; dependent.deadline = nil }
                if dependent.isAlive { dependent.lastExit = "stopped: \(server.name) failed" }
            }
        }
    }

    private func checkDeadlines() {
        let now = ContinuousClock.now
        for server in servers {
            switch server.state {
            case .starting where server.isAlive:
                if let deadline = server.deadline, now >= deadline, server.exitOverride == nil {
                    server.exitOverride = (.watchdogExpired, "did not register within \(DurationText.format(options.startTimeout))")
                    signal(server, SIGKILL)
                }
            case .running where server.isAlive && server.registered:
                if let interval = server.configuration.watchdogInterval, let last = server.lastHeartbeat,
                   now >= last + interval, server.exitOverride == nil {
                    server.exitOverride = (.watchdogExpired, "no heartbeat within \(DurationText.format(interval)) (watchdog)")
                    signal(server, SIGKILL)
                }
            case .stopping where server.isAlive:
                if let deadline = server.deadline, now >= deadline, !server.killSent {
                    server.killSent = true
                    note(server, .warning, "did not stop within \(DurationText.format(options.stopGracePeriod)) of SIGTERM; sending SIGKILL")
                    signal(server, SIGKILL)
                }
            default:
                break
            }
        }
    }

    private func signal(_ server: ServerProcess, _ number: Int32) {
        guard server.isAlive else { return }
        _ = kill(-server.pid, number)  // its process group: anything it forked too
        _ = kill(server.pid, number)
    }

    // MARK: Starting and stopping

    /// Sends SIGTERM to unwanted servers whose dependents have all stopped (stop order).
    private func stopUnwanted() {
        for server in servers where !server.wanted {
            if server.state == .backoff || server.state == .waiting {
                server.state = .inactive
                server.deadline = nil
            }
            guard server.isAlive, server.state != .stopping else { continue }
            let dependentsAlive = servers.contains { $0.isAlive && $0.configuration.dependencies.contains(server.name) }
            if dependentsAlive { continue }
            server.stopRequested = true
            server.state = .stopping
            server.deadline = .now + options.stopGracePeriod
            signal(server, SIGTERM)
        }
        for server in servers where server.restartRequested && server.isAlive && server.state != .stopping {
            server.stopRequested = true
            server.state = .stopping
            server.deadline = .now + options.stopGracePeriod
            signal(server, SIGTERM)
        }
    }

    /// Starts wanted servers whose dependencies are running, in start order.
    private func startEligible() {
        guard !shuttingDown else { return }
        let now = ContinuousClock.now
        for name in configuration.startOrder {
            guard let server = byName[name], server.wanted, !server.isAlive else { continue }
            switch server.state {
            case .inactive, .waiting: break
            case .backoff where server.deadline.map({ now >= $0 }) ?? true: break
            default: continue
            }
            let ready = server.configuration.dependencies.allSatisfy { byName[$0]?.state == .running }
            if !ready {
                if server.state == .inactive { server.state = .waiting }
                continue
            }
            launch(server)
        }
    }

    /// Gives back the capability descriptors of servers that are neither running nor wanted
    /// (stopped, failed, not restarted, shut down). The provider ignores servers it holds nothing
    /// for.
    private func releaseCapabilities() {
        guard let provider = options.capabilityProvider else { return }
        for server in servers where !server.wanted && !server.isAlive {
            for problem in provider.release(server.configuration) { note(server, .warning, problem) }
        }
    }

    private func launch(_ server: ServerProcess) {
        let config = server.configuration
        // Device capabilities first: a server whose devices cannot be opened does not start.
        var provided = options.capabilityDescriptors(config)
        if let provider = options.capabilityProvider {
            do {
                provided.merge(try provider.descriptors(for: config)) { _, device in device }
            } catch {
                note(server, .error, "cannot open its devices: \(error)")
                server.instance += 1
                server.exitOverride = (.exited(status: 127), "could not start: \(error)")
                startFailed(server)
                return
            }
        }
        do throws(LaunchError) {
            if server.checkpoint == nil {
                do {
                    server.checkpoint = try CheckpointStore(name: config.name, capacity: options.checkpointCapacity)
                } catch {
                    throw .systemCall("creating the checkpoint memfd (\(error))", ENOMEM)
                }
            }
            var identity: ProcessLauncher.Identity?
            if config.user != nil || config.group != nil {
                if geteuid() == 0 {
                    identity = try ProcessLauncher.resolveIdentity(user: config.user, group: config.group)
                } else if server.instance == 0 {
                    note(server, .warning, "not running as root: starting it as uid \(geteuid()), not as "
                        + [config.user.map { "user \($0)" }, config.group.map { "group \($0)" }].compactMap { $0 }.joined(separator: ", "))
                }
            }
            var pair: [Int32] = [-1, -1]
            guard socketpair(AF_UNIX, CL_SOCK_SEQPACKET | CL_SOCK_CLOEXEC, 0, &pair) == 0 else {
                throw .systemCall("socketpair", errno)
            }
            defer { close(pair[1]) }
            // Capabilities: descriptors from 5 up, in the order of the sorted grant list.
            var descriptors: [Int32] = [pair[1], server.checkpoint!.fileDescriptor.rawValue]
            var capabilities: [(name: String, fd: Int32)] = []
            for capability in config.capabilities.sorted() {
                if let fd = provided[capability.description] {
                    capabilities.append((capability.description, SupervisorChannel.firstCapabilityFD + Int32(descriptors.count - 2)))
                    descriptors.append(fd)
                } else {
                    capabilities.append((capability.description, -1))
                }
            }
            let instance = server.instance + 1
            var environment = [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "\(SupervisorChannel.serverNameVariable)=\(config.name)",
                "\(SupervisorChannel.capabilitiesVariable)=\(SupervisorChannel.formatCapabilities(capabilities))",
                "\(SupervisorChannel.runtimeDirectoryVariable)=\(options.runtimeDirectory)",
                "\(SupervisorChannel.instanceVariable)=\(instance)",
            ]
            if let watchdog = config.watchdogInterval {
                environment.append("\(SupervisorChannel.watchdogVariable)=\(max(1, watchdog.nanosecondsValue / 1_000_000))")
            }
            let process = try ProcessLauncher.launch(ProcessLauncher.Request(
                path: config.path, arguments: config.arguments, environment: environment,
                inheritedDescriptors: descriptors, identity: identity))
            _ = CL_fcntl_int(pair[0], F_SETFL, O_NONBLOCK)
            server.instance = instance
            server.pid = process.pid
            server.stdout = process.stdout
            server.stderr = process.stderr
            server.channel = pair[0]
            server.capabilities = capabilities
            server.startedAt = CheckpointStore.now()
            server.startedMonotonic = .now
            server.registered = false
            server.lastHeartbeat = nil
            server.killSent = false
            server.exitOverride = nil
            server.stopRequested = false
            watch(process.stdout, token: token(server, kind: Self.stdoutKind))
            watch(process.stderr, token: token(server, kind: Self.stderrKind))
            watch(pair[0], token: token(server, kind: Self.channelKind))
            let pidfd = CL_pidfd_open(process.pid)
            if pidfd >= 0 {
                _ = fcntl(pidfd, F_SETFD, FD_CLOEXEC)
                server.exitNotifier = pidfd
                watch(pidfd, token: token(server, kind: Self.exitKind))
            }
            if options.requireRegistration {
                server.state = .starting
                server.deadline = .now + options.startTimeout
            } else {
                server.state = .running
                server.deadline = nil
            }
            note(server, .info, "instance \(instance) started as pid \(process.pid)")
        } catch {
            // As good as an immediate exit: the restart policy decides (a wrong path ends failed).
            note(server, .error, "\(error)")
            server.instance += 1
            server.exitOverride = (.exited(status: 127), "could not start: \(error)")
            startFailed(server)
        }
    }

    private func startFailed(_ server: ServerProcess) {
        let text = server.exitOverride?.text ?? "could not start"
        server.exitOverride = nil
        server.lastExit = text
        switch server.tracker.serverExited(.exited(status: 127)) {
        case .restart(let pause):
            server.restarts += 1
            server.state = .backoff
            server.deadline = .now + pause
        case .stay:
            server.wanted = false
            server.state = .inactive
        case .failed:
            server.wanted = false
            server.state = .failed
            for name in configuration.dependencies.dependents(of: server.name) { byName[name]?.wanted = false }
        }
    }

    // MARK: Control (any thread)

    public enum ControlFailure: Error, Equatable, Sendable, CustomStringConvertible {
        case unknownServer(String, suggestion: String?)
        case timedOut(String)

        public var description: String {
            switch self {
            case .unknownServer(let name, let suggestion):
                return "no server named \(name) in the configuration" + (suggestion.map { "; did you mean \($0)?" } ?? "")
            case .timedOut(let text): return text
            }
        }
    }

    private func lookup(_ name: String) throws(ControlFailure) -> ServerProcess {
        guard let server = byName[name] else {
            throw .unknownServer(name, suggestion: Suggestion.closest(to: name, among: configuration.servers.map(\.name)))
        }
        return server
    }

    public func statuses() -> [ServerStatus] {
        lock.locked {
            let now = CheckpointStore.now()
            return servers.map { $0.status(now: now) }
        }
    }

    public func status(of name: String) throws(ControlFailure) -> ServerStatus {
        let server = try lookup(name)
        return lock.locked { server.status(now: CheckpointStore.now()) }
    }

    /// Wants `name` and everything it depends on; clears a failed state and its restart history.
    public func start(_ name: String) throws(ControlFailure) {
        _ = try lookup(name)
        lock.locked {
            var pending = [name]
            while let next = pending.popLast() {
                guard let server = byName[next], !server.wanted || server.state == .failed else { continue }
                server.wanted = true
                if server.state == .failed {
                    server.state = .inactive
                    server.tracker = RestartTracker(policy: server.configuration.restart, clock: ContinuousClock())
                }
                pending += server.configuration.dependencies
            }
        }
        wake()
    }

    /// Stops `name` and what depends on it (dependents first), and waits up to `timeout` for them
    /// to exit.
    public func stop(_ name: String, timeout: Duration? = nil) throws(ControlFailure) {
        _ = try lookup(name)
        let affected = lock.locked {
            let affected = [name] + configuration.dependencies.dependents(of: name)
            for other in affected { byName[other]?.wanted = false }
            return affected
        }
        wake()
        let limit = timeout ?? options.stopGracePeriod * (affected.count + 1) + .seconds(2)
        let stopped = waitUntil(limit) { affected.allSatisfy { !(self.byName[$0]?.isAlive ?? false) } }
        if !stopped { throw .timedOut("\(name) has not stopped yet; it is still being stopped (see serverctl status \(name))") }
    }

    /// Stops `name` (not its dependents) and starts it again at once; waits up to `timeout` for
    /// the new instance to be running.
    public func restart(_ name: String, timeout: Duration? = nil) throws(ControlFailure) {
        let server = try lookup(name)
        let before = lock.locked {
            if server.isAlive {
                server.restartRequested = true
            } else {
                server.wanted = true
                if server.state == .failed {
                    server.state = .inactive
                    server.tracker = RestartTracker(policy: server.configuration.restart, clock: ContinuousClock())
                }
            }
            return server.instance
        }
        wake()
        let limit = timeout ?? options.stopGracePeriod + options.startTimeout + .seconds(2)
        let running = waitUntil(limit) { server.instance > before && server.state == .running }
        if !running { throw .timedOut("\(name) was restarted but is not running yet (see serverctl status \(name))") }
    }

    /// Polls `condition` under the lock every 10 ms until it holds or `timeout` passes.
    private func waitUntil(_ timeout: Duration, _ condition: () -> Bool) -> Bool {
        let deadline = ContinuousClock.now + timeout
        while true {
            if lock.locked(condition) { return true }
            if ContinuousClock.now >= deadline || lock.locked({ finished }) { return false }
            usleep(10_000)
        }
    }

    static func signalName(_ signal: Int32) -> String {
        switch signal {
        case SIGHUP: "SIGHUP"
        case SIGINT: "SIGINT"
        case SIGQUIT: "SIGQUIT"
        case SIGILL: "SIGILL"
        case SIGABRT: "SIGABRT"
        case SIGBUS: "SIGBUS"
        case SIGFPE: "SIGFPE"
        case SIGKILL: "SIGKILL"
        case SIGSEGV: "SIGSEGV"
        case SIGPIPE: "SIGPIPE"
        case SIGTERM: "SIGTERM"
        case SIGTRAP: "SIGTRAP"
        default: "signal \(signal)"
        }
    }
}

/// A pthread mutex, for state shared between the supervisor's loop and control calls.
final class Lock: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    init() { pthread_mutex_init(mutex, nil) }
    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }
    func locked<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }
}
