import CLimitless
import IPC
import Supervision
import Synchronization
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// What every server links: created at startup from the environment and inherited descriptors
/// (`ServerEnvironment`), it gives the server its capabilities, logging to the supervisor, the
/// watchdog heartbeat, checkpoint save and restore, and an orderly stop.
///
/// A typical server:
/// ```
/// let runtime = try ServerRuntime(standaloneName: "storage_server")
/// let state = runtime.restoreCheckpoint()
/// let device = try runtime.capability("CAP_MMIO_NVME0")
/// ... set up endpoints ...
/// try runtime.dropPrivileges()
/// try runtime.register()            // tells the supervisor "serving"; starts heartbeats
/// runtime.runUntilStopped()         // until SIGTERM
/// ```
/// Thread rule: `register`, `pollSupervisor` and `runUntilStopped` on one thread (the main one);
/// `log`, `capability`, `has`, `saveCheckpoint` and the heartbeat controls from any.
public final class ServerRuntime: @unchecked Sendable {
    public struct Options: Sendable {
        /// How long `register()` waits for the supervisor's reply.
        public var registerTimeout: Duration = .seconds(10)
        /// Signals that mean "stop" (handled, turned into `runUntilStopped` returning). Pass []
        /// to leave signal dispositions alone.
        public var stopSignals: [Int32] = [SIGTERM, SIGINT]
        /// Also write log records to stderr (always so when standalone).
        public var logToStandardError = false
        /// The checkpoint store's size when standalone (kept in this process only).
        public var standaloneCheckpointCapacity = 1 << 20
        /// Confirm revokes (close the descriptor and tell the supervisor). False only to play a
        /// server that ignores them, in tests: the supervisor then restarts it without them.
        public var acknowledgeRevocations = true
        public init() {}
    }

    /// Why `runUntilStopped` returned.
    public enum StopReason: Equatable, Sendable {
        /// SIGTERM or SIGINT.
        case signal
        /// `requestStop()` was called.
        case requested
        /// The supervisor's end of the channel closed.
        case supervisorGone
    }

    public let environment: ServerEnvironment
    public let options: Options
    public var name: String { environment.serverName }
    public var instance: UInt64 { environment.instance }
    public var isSupervised: Bool { environment.mode == .supervised }

    private let link: SupervisorLink?
    private let heartbeat: Heartbeat?
    private let store: CheckpointStore
    private let capabilityTable: Mutex<[String: Int32]>
    private let stopFD: Int32
    private let stopRequested = Atomic<Bool>(false)
    private let droppedLogs = Atomic<Int>(0)
    /// Total records dropped since start (reported or not), for the server's own statistics.
    private let droppedLogsTotal = Atomic<Int>(0)
    /// When the last "dropped N log records" warning went out (CLOCK_MONOTONIC ns): at most one
    /// a second, so under a flood the warnings do not take the places of the records themselves.
    private let lastDropReport = Atomic<UInt64>(0)
    private let registered = Atomic<Bool>(false)
    /// Notices about the servers this one depends on (`onDependencyChange`).
    let dependencies = DependencyWatch()
    /// Handlers for run-time grants and revokes (`onCapabilityChange`).
    let capabilityHandlers = CapabilityHandlers()
    let blockTokenHandler = BlockTokenHandler()
    /// MSG_SUPERVISOR_BLOCK_TOKEN messages handled so far (`receiveQueuedBlockTokens`).
    let blockTokensReceived = Atomic<Int>(0)
    /// The channel, for the extensions in other files (nil when standalone).
    var supervisorLink: SupervisorLink? { link }

    /// Reads the environment and the inherited descriptors (`ServerEnvironment.current`), and
    /// sets up the runtime. `standaloneName` names the server when no supervisor started it.
    public convenience init(standaloneName: String, options: Options = Options()) throws(ServerKitError) {
        let environment = try ServerEnvironment.current(standaloneName: standaloneName)
        StartupSteps.mark("environment")
        try self.init(environment: environment, options: options)
        StartupSteps.mark("runtime-ready")
    }

    /// Sets up the runtime for an already validated environment. Supervised: adopts descriptors
    /// 3 and 4 (and marks every inherited descriptor close-on-exec so children of the server do
    /// not inherit them).
    public init(environment: ServerEnvironment, options: Options = Options()) throws(ServerKitError) {
        self.environment = environment
        self.options = options
        var table: [String: Int32] = [:]
        for capability in environment.capabilities {
            table[capability.name] = capability.fd
            if capability.fd >= 0 { _ = CL_fcntl_int(capability.fd, F_SETFD, FD_CLOEXEC) }
        }
        capabilityTable = Mutex(table)
        if let listener = environment.listenDescriptor {
            _ = CL_fcntl_int(listener, F_SETFD, FD_CLOEXEC)
            // The server's IPCServer for RUNTIME_DIR/NAME.sock serves on it instead of binding.
            InheritedListener.offer(listener)
        }
        switch environment.mode {
        case .supervised:
            let channel = SupervisorChannel.supervisorFD
            var type: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            guard getsockopt(channel, SOL_SOCKET, SO_TYPE, &type, &length) == 0, type == CL_SOCK_SEQPACKET else {
                throw .supervisorChannelNotSeqpacket
            }
            _ = CL_fcntl_int(channel, F_SETFD, FD_CLOEXEC)
            let checkpoint = SupervisorChannel.checkpointFD
            var status = stat()
            guard fstat(checkpoint, &status) == 0 else { throw .checkpointDescriptorMissing("fstat failed: \(Errno(rawValue: CL_errno()))") }
            // The supervisor's capacity, recovered from the size (two page-rounded slots): a
            // capacity of slot size minus header gives the same slot layout and accepts every
            // length the supervisor's store accepts.
            let capacity = Int(status.st_size) / 2 - CheckpointHeader.size
            guard capacity > 0 else { throw .checkpointDescriptorMissing("it holds \(status.st_size) bytes, too few for two checkpoint slots") }
            _ = CL_fcntl_int(checkpoint, F_SETFD, FD_CLOEXEC)
            StartupSteps.mark("channel-checked")
            let link = SupervisorLink(fd: channel)
            self.link = link
            heartbeat = environment.watchdog.map { Heartbeat(link: link, interval: $0 / 2) }
            store = CheckpointStore(adopting: FileDescriptor(rawValue: checkpoint), capacity: capacity)
            StartupSteps.mark("checkpoint-adopted")
        case .standalone:
            link = nil
            heartbeat = nil
            do {
                store = try CheckpointStore(name: environment.serverName, capacity: options.standaloneCheckpointCapacity)
            } catch {
                throw .checkpoint(error)
            }
        }
        stopFD = options.stopSignals.isEmpty ? CL_eventfd(0, CL_EFD_CLOEXEC | CL_EFD_NONBLOCK) : StopSignal.install(options.stopSignals)
    }

    deinit {
        heartbeat?.stop()
        if options.stopSignals.isEmpty { _ = Glibc.close(stopFD) }
    }

    // MARK: Capabilities

    /// The descriptor of a granted capability (-1 for a grant without one). Throws `missingCapability`, naming it, when not granted.
    public func capability(_ name: String) throws(ServerKitError) -> Int32 {
        guard let fd = capabilityTable.withLock({ $0[name] }) else { throw .missingCapability(name) }
        return fd
    }

    /// CAP_PAGE_CACHE's descriptor: the memfd the supervisor creates once for this server and
    /// hands to every instance (Supervision `PageCacheLog`), for state that must outlive a crash
    /// of this process (vfs_server's write-back log). nil when not granted or standalone.
    public var pageCacheLog: Int32? {
        guard let fd = try? capability(Capability.pageCache.description), fd >= 0 else { return nil }
        return fd
    }

    public func has(_ name: String) -> Bool {
        capabilityTable.withLock { $0[name] != nil }
    }

    /// The granted capabilities' names, sorted.
    public var capabilityNames: [String] {
        capabilityTable.withLock { $0.keys.sorted() }
    }

    /// Applies a MSG_SUPERVISOR_CAPABILITY_GRANT (param1 1 grant, 0 revoke; the name inline; a
    /// grant's descriptor, if any, with SCM_RIGHTS). A replaced or revoked descriptor is closed.
    func applyGrant(_ message: Message, payload: [UInt8], descriptor: Int32) {
        var name = ""
        if case .inline(let offset, let count) = message.data, offset + count <= payload.count {
            name = String(decoding: payload[offset..<(offset + count)], as: UTF8.self)
        }
        guard SupervisorChannel.parseCapabilities(name + "=-1") != nil else {
            if descriptor >= 0 { _ = Glibc.close(descriptor) }
            log(.warning, "ignored a capability grant with a malformed name \"\(name)\"")
            return
        }
        let grant = message.param1 == 1
        let old = capabilityTable.withLock { table in
            let old = table[name]
            if grant { table[name] = descriptor } else { table[name] = nil }
            return old
        }
        if let old, old >= 0, old != descriptor { _ = Glibc.close(old) }
        if !grant, descriptor >= 0 { _ = Glibc.close(descriptor) }
        log(.info, grant ? "capability \(name) granted" : "capability \(name) revoked")
        confirm(.supervisorCapabilityGrant, name: name, param1: grant ? 1 : 0, fd: grant ? descriptor : -1, sequence: message.sequence)
        capabilityHandlers.deliver(CapabilityChange(name: name, granted: grant, fd: grant ? descriptor : -1))
    }

    /// Forgets a capability and closes its descriptor.
    func removeCapability(_ name: String) {
        let old = capabilityTable.withLock { $0.removeValue(forKey: name) }
        if let old, old >= 0 { _ = Glibc.close(old) }
    }

    // MARK: Registration and the supervisor's messages

    /// Tells the supervisor the server is initialised and serving (MSG_SUPERVISOR_REGISTER with
    /// the instance), waits for its reply, then starts the watchdog heartbeat if one is
    /// configured. Grants arriving meanwhile are applied. Standalone: nothing to do.
    public func register() throws(ServerKitError) {
        guard let link else { return }
        let timeout = options.registerTimeout
        let deadline = monotonicNanoseconds() + nanoseconds(timeout)
        let sequence = try link.send(Message(type: .supervisorRegister, param1: environment.instance), timeout: timeout)
        while true {
            let left = deadline - monotonicNanoseconds()
            if left <= 0 { throw .registrationTimedOut(timeout) }
            guard let received = try link.receive(timeout: .nanoseconds(left)) else { continue }
            if received.message.type == .supervisorRegister, received.message.flags.contains(.reply),
               received.message.sequence == sequence {
                if received.descriptor >= 0 { _ = Glibc.close(received.descriptor) }
                guard received.message.status.isOK else { throw .registrationRefused(received.message.status) }
                break
            }
            handle(received)
        }
        registered.store(true, ordering: .relaxed)
        heartbeat?.start()
    }

    /// Handles every message the supervisor has sent, waiting up to `timeout` for the first.
    /// Throws `supervisorGone` when the channel closed. Standalone: returns at once.
    public func pollSupervisor(timeout: Duration = .zero) throws(ServerKitError) {
        guard let link else { return }
        var wait = timeout
        while let received = try link.receive(timeout: wait) {
            handle(received)
            wait = .zero
        }
    }

    func handle(_ received: SupervisorLink.Received) {
        switch received.message.type {
        case .supervisorCapabilityGrant where !received.message.flags.contains(.reply):
            applyGrant(received.message, payload: received.payload, descriptor: received.descriptor)
        case .supervisorCapabilityRevoke where !received.message.flags.contains(.reply):
            if received.descriptor >= 0 { _ = Glibc.close(received.descriptor) }
            applyRevoke(received.message, payload: received.payload)
        case .supervisorBlockToken:
            applyBlockToken(received.message, payload: received.payload, descriptor: received.descriptor)
        case .supervisorDependencyState:
            if received.descriptor >= 0 { _ = Glibc.close(received.descriptor) }
            let notice = received.payload.withUnsafeBytes { DependencyNotice(message: received.message, payload: $0) }
            guard let notice else {
                log(.warning, "ignored a malformed dependency notice (state \(received.message.param1))")
                return
            }
            log(notice.state == .up ? .info : .warning, "\(notice)")
            dependencies.deliver(notice)
        default:
            if received.descriptor >= 0 { _ = Glibc.close(received.descriptor) }
            log(.debug, "ignored \(received.message.type) from the supervisor")
        }
    }

    // MARK: Logging

    /// Sends a structured log record (MSG_SUPERVISOR_LOG, param1 the level 1 debug ... 6
    /// critical). Never blocks: when the channel is full the record is dropped and counted
    /// (`droppedLogRecords`); the next record that gets through is preceded by a warning saying
    /// how many were lost. Standalone, or with `logToStandardError`, the line goes to stderr.
    public func log(_ level: LogLevel, _ text: String) {
        if link == nil || options.logToStandardError {
            writeStandardError("\(name)[\(getpid())] \(level.rawValue): \(text)\n")
        }
        guard let link else { return }
        let dropped = droppedLogs.load(ordering: .relaxed)
        let now = CL_monotonic_ns()
        if dropped > 0 && now &- lastDropReport.load(ordering: .relaxed) >= 1_000_000_000 {
            lastDropReport.store(now, ordering: .relaxed)
            if sendLog(link, .warning, "dropped \(dropped) log records: the supervisor channel was full") {
                droppedLogs.subtract(dropped, ordering: .relaxed)
            }
        }
        if !sendLog(link, level, text) {
            droppedLogs.add(1, ordering: .relaxed)
            droppedLogsTotal.add(1, ordering: .relaxed)
        }
    }

    /// Every log record dropped since the server started, reported or not.
    public var totalDroppedLogRecords: Int { droppedLogsTotal.load(ordering: .relaxed) }

    /// Log records dropped because the channel was full, not yet reported to the supervisor.
    public var droppedLogRecords: Int { droppedLogs.load(ordering: .relaxed) }

    private func sendLog(_ link: SupervisorLink, _ level: LogLevel, _ text: String) -> Bool {
        var bytes = Array(text.utf8.prefix(Message.maxInlinePayload))
        if bytes.isEmpty { bytes = [0x20] }
        var message = Message(type: .supervisorLog, param1: Self.wireLevel(level))
        message.setInlineData(count: UInt32(bytes.count))
        let outcome = bytes.withUnsafeBytes { payload in
            Result { () throws(ServerKitError) -> SupervisorLink.SendOutcome in try link.trySend(message, payload: payload) }
        }
        switch outcome {
        case .success(.sent): return true
        case .success(.wouldBlock): return false
        case .failure:
            // The supervisor is gone: keep the line somewhere a human can find it.
            writeStandardError("\(name)[\(getpid())] \(level.rawValue): \(text)\n")
            return true
        }
    }

    /// The wire level of MSG_SUPERVISOR_LOG's param1: 0 trace, 1 debug, 2 info, 3 notice,
    /// 4 warning, 5 error, 6 critical.
    public static func wireLevel(_ level: LogLevel) -> UInt64 {
        switch level {
        case .debug: 1
        case .info: 2
        case .notice: 3
        case .warning: 4
        case .error: 5
        case .critical: 6
        }
    }

    private func writeStandardError(_ line: String) {
        var line = line
        line.withUTF8 { bytes in _ = write(2, bytes.baseAddress, bytes.count) }
    }

    // MARK: Watchdog

    /// Half the watchdog deadline, or nil when there is no watchdog.
    public var heartbeatInterval: Duration? { heartbeat?.interval }

    /// Stops sending heartbeats (the thread keeps running); the supervisor's watchdog will fire.
    public func pauseHeartbeats() { heartbeat?.paused.store(true, ordering: .relaxed) }
    public func resumeHeartbeats() { heartbeat?.paused.store(false, ordering: .relaxed) }
    /// Heartbeats sent so far.
    public var heartbeatsSent: Int { heartbeat?.beatsSent.load(ordering: .relaxed) ?? 0 }

    /// Sends one heartbeat now (for a server that would rather beat from its own loop); false if
    /// there is no supervisor or the channel was full.
    @discardableResult
    public func sendHeartbeat() -> Bool { heartbeat?.beat() ?? false }

    // MARK: Checkpoints

    /// What `loadCheckpoint` found.
    public enum RestoredCheckpoint: Equatable, Sendable {
        case none
        case restored(bytes: [UInt8], stateVersion: UInt32, sequence: UInt64)
        /// Saves happened but none is intact; `reason` says what was wrong.
        case corrupt(reason: String)
    }

    /// The newest intact checkpoint, or why there is none. A corrupt store is logged ("checkpoint
    /// corrupt: starting fresh (reason)"); damaged older generations beside an intact one are
    /// logged as a warning.
    public func loadCheckpoint() -> RestoredCheckpoint {
        let load: CheckpointLoad
        do {
            load = try store.load()
        } catch {
            let reason = "\(error)"
            log(.error, "checkpoint corrupt: starting fresh (\(reason))")
            return .corrupt(reason: reason)
        }
        switch load {
        case .empty:
            return .none
        case .restored(let checkpoint, let problems):
            if !problems.isEmpty {
                log(.warning, "checkpoint \(checkpoint.sequence) restored; skipped " + problems.map(\.description).joined(separator: "; "))
            }
            return .restored(bytes: checkpoint.bytes, stateVersion: checkpoint.stateVersion, sequence: checkpoint.sequence)
        case .corrupt(let problems):
            let reason = problems.map(\.description).joined(separator: "; ")
            log(.error, "checkpoint corrupt: starting fresh (\(reason))")
            return .corrupt(reason: reason)
        }
    }

    /// The bytes of the newest intact checkpoint; nil when there is none or it is corrupt (then
    /// logged, see `loadCheckpoint`).
    public func restoreCheckpoint() -> [UInt8]? {
        if case .restored(let bytes, _, _) = loadCheckpoint() { return bytes }
        return nil
    }

    /// Saves `bytes` as a new checkpoint generation (torn-write safe, see `CheckpointStore`) and
    /// tells the supervisor (MSG_SUPERVISOR_CHECKPOINT_SAVE, param1 the sequence). Returns the
    /// sequence.
    @discardableResult
    public func saveCheckpoint(_ bytes: [UInt8], stateVersion: UInt32) throws(ServerKitError) -> UInt64 {
        let sequence: UInt64
        do {
            sequence = try store.save(bytes, stateVersion: stateVersion)
        } catch {
            throw .checkpoint(error)
        }
        try link?.send(Message(type: .supervisorCheckpointSave, param1: sequence), timeout: .seconds(5))
        return sequence
    }

    /// The checkpoint store itself (tests and tools; servers use save/restore).
    public var checkpointStore: CheckpointStore { store }

    // MARK: Stopping

    /// Waits for a stop signal (SIGTERM/SIGINT), `requestStop()` or the supervisor going away,
    /// handling the supervisor's messages meanwhile. With `tick`, calls `body` at least that
    /// often (and after every wakeup) so a server can do periodic work on this thread.
    @discardableResult
    public func runUntilStopped(tick: Duration? = nil, _ body: () throws -> Void = {}) rethrows -> StopReason {
        let timeout = tick.map(milliseconds) ?? -1
        while true {
            if stopRequested.load(ordering: .relaxed) { return .requested }
            var entries = [pollfd(fd: stopFD, events: Int16(POLLIN), revents: 0)]
            if let link { entries.append(pollfd(fd: link.fd, events: Int16(POLLIN), revents: 0)) }
            let ready = poll(&entries, nfds_t(entries.count), timeout)
            if ready < 0 && CL_errno() != EINTR { return .supervisorGone }
            if ready > 0 {
                if stopRequested.load(ordering: .relaxed) { return .requested }
                if entries[0].revents != 0 {
                    drainStop()
                    // What the supervisor sent before the signal (a dependency's "failed" notice
                    // comes just before SIGTERM) is handled first, not lost.
                    if entries.count > 1 { try? pollSupervisor() }
                    return .signal
                }
                if entries.count > 1, entries[1].revents != 0 {
                    do { try pollSupervisor() } catch { return .supervisorGone }
                }
            }
            try body()
        }
    }

    /// Makes `runUntilStopped` return `.requested` (from any thread).
    public func requestStop() {
        stopRequested.store(true, ordering: .relaxed)
        var one: UInt64 = 1
        _ = write(stopFD, &one, 8)
    }

    private func drainStop() {
        var value: UInt64 = 0
        _ = read(stopFD, &value, 8)
    }

    /// Stops the heartbeat thread (before exiting, so the supervisor's watchdog does not see a
    /// beat from a server that is shutting down).
    public func shutdown() {
        heartbeat?.stop()
    }
}
