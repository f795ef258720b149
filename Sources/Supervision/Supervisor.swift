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
        /// How long a server has to confirm a revoke (closing the descriptor) before it is
        /// restarted without the capability.
        public var revokeTimeout: Duration = .seconds(5)
        /// Bind and listen on each server's `RUNTIME_DIR/NAME.sock` once and pass the socket to
        /// every instance (socket activation, `SupervisorListeners`); servers.conf `listen no`
        /// turns it off for one server. False: every server binds its own.
        public var holdsListeningSockets = true
        public init() {}
    }

    public let configuration: SupervisorConfiguration
    public let options: Options
    public let logs: LogStore

    let lock = Lock()
    /// CAP_BLOCK_READ / CAP_BLOCK_WRITE tokens (under the lock).
    let blockTokens = BlockTokenStore()
    var servers: [ServerProcess] = []
    var byName: [String: ServerProcess] = [:]
    let epollFD: Int32
    let wakeFD: Int32
    var shuttingDown = false
    var finished = false
    var thread: pthread_t?
    let receiveBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Message.maxDatagramSize, alignment: 16)
    let readBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 16)

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

    func wake(_ value: UInt64 = 1) {
        var one = value
        _ = write(wakeFD, &one, 8)
    }

    func loop() {
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
                maintainStandbys()
                releaseCapabilities()
                releaseListeners()
                if shuttingDown && servers.allSatisfy({ !$0.isAlive && $0.standby == nil }) {
                    finished = true
                    return true
                }
                return false
            }
            if done { break }
        }
        logs.flush()
    }

    func nextTimeout() -> Int32 {
        let now = ContinuousClock.now
        var nearest = options.pollInterval
        for server in servers {
            var deadlines: [ContinuousClock.Instant] = []
            if let deadline = server.deadline { deadlines.append(deadline) }
            deadlines += server.pendingRevokes.values
            if let standby = server.standby, !standby.ready { deadlines.append(standby.startedMonotonic + options.startTimeout) }
            if let retry = server.standbyRetryAt { deadlines.append(retry) }
            if server.state == .running, server.registered, let interval = server.configuration.watchdogInterval,
               let last = server.lastHeartbeat {
                deadlines.append(last + interval)
            }
            for deadline in deadlines { nearest = min(nearest, max(.zero, now.duration(to: deadline))) }
        }
        return Int32(clamping: (nearest.nanosecondsValue + 999_999) / 1_000_000)
    }

    // MARK: Events

    static let stdoutKind: UInt64 = 1
    static let stderrKind: UInt64 = 2
    static let channelKind: UInt64 = 3
    /// A pidfd (pidfd_open, Linux 5.3): readable exactly when the child can be reaped, so an exit
    /// is seen at once instead of at the next poll (the poll remains the fallback).
    static let exitKind: UInt64 = 4

    func token(_ server: ServerProcess, kind: UInt64) -> UInt64 {
        UInt64(UInt32(truncatingIfNeeded: server.instance)) << 32 | UInt64(server.index) << 4 | kind
    }

    /// Adds `fd` to the epoll set with `token`; `retoken`: it is there already, change its token.
    func watch(_ fd: Int32, token: UInt64, retoken: Bool = false) {
        var event = epoll_event()
        event.events = UInt32(EPOLLIN.rawValue | EPOLLRDHUP.rawValue)
        event.data.u64 = token
        _ = epoll_ctl(epollFD, retoken ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &event)
    }

    func unwatch(_ fd: inout Int32) {
        guard fd >= 0 else { return }
        _ = epoll_ctl(epollFD, EPOLL_CTL_DEL, fd, nil)
        close(fd)
        fd = -1
    }

    func handle(_ event: epoll_event) {
        let token = event.data.u64
        if token == 0 {
            var value: UInt64 = 0
            if read(wakeFD, &value, 8) == 8, value >= 2 { shuttingDown = true }  // from a signal handler
            return
        }
        let index = Int((token >> 4) & 0x0FFF_FFFF)
        guard index < servers.count else { return }
        let server = servers[index]
        if (Self.standbyStdoutKind...Self.standbyExitKind).contains(token & 0xF) {
            handleStandbyEvent(server, kind: token & 0xF, generation: UInt32(token >> 32))
            return
        }
        guard UInt32(truncatingIfNeeded: server.instance) == UInt32(token >> 32) else { return }
        switch token & 0xF {
        case Self.stdoutKind: drain(server, stream: .stdout)
        case Self.stderrKind: drain(server, stream: .stderr)
        case Self.channelKind: readChannel(server)
        case Self.exitKind: reap()
        case Self.seccompKind: answerSeccomp(server)
        default: break
        }
    }

    /// Reads what a server wrote to stdout or stderr and logs each complete line.
    /// Events are level-triggered, so a server that writes without pause is read `budget` times
    /// per wake-up and then waits its turn: it cannot starve the other servers or the control
    /// socket. After an exit everything left is read (`budget: .max`).
    static let readBudget = 64

    func drain(_ server: ServerProcess, stream: LogStream, budget: Int = readBudget) {
        if stream == .stdout {
            drainPipe(&server.stdout, buffer: &server.stdoutBuffer, server: server, stream: stream, budget: budget)
        } else {
            drainPipe(&server.stderr, buffer: &server.stderrBuffer, server: server, stream: stream, budget: budget)
        }
    }

    /// `drain` for one pipe of the server's instance or of its standby (both log as the server;
    /// a standby's lines carry `prefix`, `standby pid N: `).
    func drainPipe(_ fd: inout Int32, buffer: inout [UInt8], server: ServerProcess, stream: LogStream, budget: Int = readBudget,
                   prefix: String = "") {
        guard fd >= 0 else { return }
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
                logLine(server, stream: stream, bytes: buffer[start..<newline], prefix: prefix)
                start = newline + 1
            }
            buffer.removeFirst(start)
            if buffer.count >= logs.configuration.maximumLineLength {
                logLine(server, stream: stream, bytes: buffer[...], prefix: prefix)
                buffer.removeAll(keepingCapacity: true)
            }
        }
        if closed {
            if !buffer.isEmpty { logLine(server, stream: stream, bytes: buffer[...], prefix: prefix) }
            buffer.removeAll()
            unwatch(&fd)
        }
    }

    func logLine(_ server: ServerProcess, stream: LogStream, bytes: ArraySlice<UInt8>, prefix: String = "") {
        var text = prefix + String(decoding: bytes, as: UTF8.self)
        if text.hasSuffix("\r") { text.removeLast() }
        logs.append(server: server.name, stream: stream, level: stream == .stderr ? .warning : .info, text: text)
    }

    func note(_ server: ServerProcess, _ level: LogLevel, _ text: String) {
        logs.append(server: server.name, stream: .supervisor, level: level, text: text)
    }

    static let levels: [LogLevel] = [.debug, .debug, .info, .notice, .warning, .error, .critical]

    /// Messages from a server on its supervisor channel.
    func readChannel(_ server: ServerProcess, budget: Int = readBudget * 4) {
        var reads = 0
        while server.channel >= 0 && reads < budget {
            reads += 1
            guard let (count, received) = receiveDatagram(&server.channel, keepDescriptor: true) else { return }
            var descriptor = received
            defer { if descriptor >= 0 { close(descriptor) } }
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
                deferStandbyStart(server)
                var reply = Message(type: .supervisorRegister, flags: .reply, param1: UInt64(server.instance), sequence: message.sequence)
                reply.status = .ok
                let header = UnsafeMutableRawBufferPointer.allocate(byteCount: Message.headerSize, alignment: 8)
                defer { header.deallocate() }
                reply.encode(into: header)
                _ = CL_ipc_send(server.channel, header.baseAddress, Message.headerSize, nil, 0, nil, 0, CL_MSG_NOSIGNAL | CL_MSG_DONTWAIT)
                notifyDependents(of: server, .up)
            case .supervisorHeartbeat:
                server.lastHeartbeat = .now
            case .supervisorLog:
                let level = Self.levels[Int(min(message.param1, 6))]
                var text = ""
                if case .inline(let offset, let size) = message.data, offset + size <= payload.count {
                    text = String(decoding: UnsafeRawBufferPointer(rebasing: payload[offset..<(offset + size)]), as: UTF8.self)
                }
                logs.append(server: server.name, stream: .structured, level: level, text: text)
            case .supervisorCapabilityGrant where message.flags.contains(.reply),
                 .supervisorCapabilityRevoke where message.flags.contains(.reply):
                capabilityConfirmed(server, message, payload: payload)
            case .supervisorSeccompListener where descriptor >= 0:
                adoptSeccompListener(server, descriptor)
                descriptor = -1
            case .supervisorCheckpointSave:
                server.checkpointSequence = message.param1
                server.checkpointSavedAt = CheckpointStore.now()
            default:
                note(server, .warning, "ignored \(message.type) on the supervisor channel")
            }
        }
    }
}

extension Supervisor {
    /// One datagram from a server's (or a standby's) channel into `receiveBuffer`, without
    /// waiting: its length, or nil when none is there now or the channel closed (the process is
    /// exiting; the channel is then unwatched). A descriptor that came with it is closed, or with
    /// `keepDescriptor` returned (-1: none) for the caller to close or keep.
    func receiveDatagram(_ channel: inout Int32, keepDescriptor: Bool = false) -> (count: Int, descriptor: Int32)? {
        while true {
            var fds: (Int32, Int32) = (-1, -1)
            var fdCount: Int32 = 0, flags: Int32 = 0
            let count = withUnsafeMutableBytes(of: &fds) { raw in
                CL_ipc_recv(channel, receiveBuffer.baseAddress, receiveBuffer.count,
                            raw.baseAddress!.assumingMemoryBound(to: Int32.self), 2, &fdCount, &flags, CL_MSG_DONTWAIT)
            }
            if fdCount > 0 && (!keepDescriptor || count <= 0) { close(fds.0) }
            if fdCount > 1 { close(fds.1) }
            if count < 0 && errno == EINTR { continue }
            if count < 0 && errno == EAGAIN { return nil }
            if count <= 0 {
                unwatch(&channel)
                return nil
            }
            return (count, keepDescriptor && fdCount > 0 ? fds.0 : -1)
        }
    }
}

/// A pthread mutex, for state shared between the supervisor's loop and control calls.
final class Lock: @unchecked Sendable {
    let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
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
