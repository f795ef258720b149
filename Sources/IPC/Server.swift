import Atomics
import CLimitless
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A server endpoint: one thread serves every client through epoll.
///
/// Per wakeup, each readable client's datagrams are read into that client's bounded queue
/// (buffers from one preallocated pool, so a message costs no allocation); datagrams beyond the
/// queue's depth are answered at once with status EBUSY and param1 `IPCRefusal.busy`, never
/// dropped silently. Queues are then served round-robin, one message per client per turn, so a
/// busy client cannot starve the others. A client whose socket cannot take a reply is not read
/// until it can (back-pressure), rather than the server blocking.
///
/// Bad input never stops the server: a datagram that fails validation gets an error reply
/// (EBADMSG, EMSGSIZE, ENOSYS, EBADF... with a code in param1); after
/// `Configuration.maxProtocolErrors` of them the client is disconnected. A client that goes away
/// has its socket, queued messages, received descriptors and mappings freed at once.
///
/// Deferred replies: a handler may return `IPCReply.deferred` (say, after submitting the request
/// to a device queue) and answer later with `complete(_:_:payload:)`, on the serving thread
/// (from the handler's `IPCRequestHandler.pollCompletions`, which `serveOnce` calls on every wakeup, or from a later handler
/// call). Replies then go out in completion order; clients match them by sequence. A client
/// with `maxDeferredPerClient` answers outstanding is not served further (its queue fills, then
/// EBUSY) until some complete, and its MSG_IPC_RELEASE waits until none are outstanding, so a
/// region never goes away under a request still using it. A client that disconnects with
/// answers outstanding loses its socket at once, but its shared regions stay mapped until the
/// last of those answers is completed (and discarded): the handler may still be copying into
/// them, or a device still moving data.
///
/// Thread rule: `run`/`serveOnce` on one thread at a time; `stop()`, `connectionCount` and
/// `sharedRegionCount` from any thread.
public final class IPCServer: @unchecked Sendable {
    public typealias Handler = @Sendable (_ request: Message, _ payload: IPCPayload, _ connection: IPCConnection) -> IPCReply

    public struct Configuration: Sendable {
        /// Clients served at once; one more is sent EBUSY and closed.
        public var maxClients = 128
        /// Messages queued per client before EBUSY replies.
        public var queueDepth = 16
        /// Datagram buffers shared by all queues (each `Message.maxDatagramSize` bytes of
        /// address space, touched only when used).
        public var bufferPoolSize = 256
        /// Shared-memory handles per client; more shares are refused with EMFILE and their
        /// descriptors closed.
        public var maxHandlesPerClient = 64
        /// Malformed messages tolerated from one client before it is disconnected.
        public var maxProtocolErrors = 64
        /// Deferred answers (`IPCReply.deferred`) one client may have outstanding; beyond them its
        /// requests wait in its queue (and once that is full are answered EBUSY).
        public var maxDeferredPerClient = 64
        /// Clients that may attach a shared-memory ring (MSG_IPC_RING_ATTACH), each served on its
        /// own thread. 0 (the default) refuses attaches with ENOTSUP, and the clients keep using
        /// the socket. Above 0 the handler is called from several threads at once (this one and
        /// one per ring), so it must be safe for that.
        public var maxRings = 0
        /// Largest slot and capacity a client may ask for.
        public var maxRingSlotSize = 4096
        public var maxRingCapacity = 1024
        /// How ring threads wait for requests: spin briefly, then sleep on the futex.
        public var ringWaitPolicy = RingWaitPolicy.adaptive
        /// Message types besides MSG_IPC_SHARE that may carry one descriptor (SCM_RIGHTS): the
        /// handler sees it as `IPCPayload.descriptor`, valid during the call only (the server
        /// closes it afterwards). Any other type with a descriptor is refused with EBADMSG.
        public var descriptorMessages: [MessageType] = []
        /// Called on the serving thread when a client's connection ends (it went away, was
        /// disconnected, or the server stopped), so a handler can forget what it kept per connection.
        public var connectionEnded: (@Sendable (IPCConnection) -> Void)? = nil
        /// Asked on the serving thread before a client's MSG_IPC_RELEASE forgets a handle: a
        /// status refuses the release with it (the handler still uses the region beyond single
        /// requests, e.g. registered with a device and polled as a ring), nil lets it go.
        public var releaseCheck: (@Sendable (IPCConnection, UInt64) -> IPCStatus?)? = nil
        /// Serve on the listening socket the supervisor passed down for this endpoint
        /// (`InheritedListener`) instead of binding one; the server then neither writes nor
        /// removes the socket and pid files (the supervisor does). Without one it binds.
        public var adoptsInheritedListener = true
        public init() {}
    }

    public let endpoint: IPCEndpoint
    public let configuration: Configuration
    private let handler: UnretainedRequestHandler

    private let listenFD: Int32
    /// The listening socket came from the supervisor, which owns its path and the pid file.
    public let adoptedListener: Bool
    private let epollFD: Int32
    private let stopFD: Int32
    private let clients: SlotTable<ClientState>
    /// Every client's queue of pool buffers: slot `s` owns `queueDepth` entries from
    /// `s * queueDepth`. Kept outside `ClientState` so queueing writes through a plain pointer:
    /// a store into an array inside an optional element of `clients` runs Array's modify
    /// accessor, which allocated once per request, in release builds too (HotPathAllocationTests).
    private let queues: UnsafeMutablePointer<Int32>
    private var generations: [UInt32]
    private var nextConnectionID: UInt64 = 1
    private let pool: UnsafeMutableRawPointer
    private var poolLengths: [Int]
    private var poolFDs: [Int32]
    private var freeBuffers: [Int32]
    private let scratch: UnsafeMutableRawBufferPointer
    private let replyBuffer: UnsafeMutableRawBufferPointer
    private var events: UnsafeMutablePointer<epoll_event>
    private static let maxEvents: Int32 = 64
    private var thread: pthread_t?
    private var closed = false
    /// Shared regions of clients that disconnected with deferred answers outstanding, kept
    /// mapped until those are completed.
    private var heldRegions: [(connection: UInt64, outstanding: Int, regions: SharedRegionTable)] = []
    /// Deferred answers outstanding, over all clients (gone ones included).
    public private(set) var deferredCount = 0
    /// Completions that found their client gone, and were discarded.
    public private(set) var discardedCompletions: UInt64 = 0
    /// Nothing wakes the server when deferred answers become ready (no wake descriptor): while
    /// any are outstanding `serveOnce` does not wait, so `run` polls. Set before serving starts.
    public var pollsCompletions = false

    private let connections = ManagedAtomic<Int>(0)
    private let regions = ManagedAtomic<Int>(0)
    private let rings = ManagedAtomic<Int>(0)

    /// Shared-memory rings attached now.
    public var ringCount: Int { rings.load(ordering: .relaxed) }

    /// Clients connected now.
    public var connectionCount: Int { connections.load(ordering: .relaxed) }
    /// Shared-memory regions held for all clients now.
    public var sharedRegionCount: Int { regions.load(ordering: .relaxed) }

    private static let listenToken: UInt64 = 0
    private static let stopToken: UInt64 = 1
    /// Client tokens are generation << 32 | slot + 2, never this.
    private static let wakeToken: UInt64 = .max

    private struct ClientState {
        var fd: Int32
        var connection: IPCConnection
        /// Its shared-memory handles, shared with its ring's thread.
        let regions: SharedRegionTable
        var queueHead = 0
        var queueCount = 0
        var protocolErrors = 0
        /// Replies the socket could not take yet (oldest first); while there are any, the client
        /// is neither read nor served.
        var pendingReplies: [[UInt8]] = []
        /// Deferred answers outstanding.
        var deferred = 0
        /// Its shared-memory ring, served on the ring's own thread.
        var ring: RingService? = nil
    }

    /// Listens at `DIR/NAME.sock` (creating DIR, replacing a stale socket) and writes
    /// `DIR/NAME.pid`, or adopts the supervisor's listening socket for that path (see
    /// `Configuration.adoptsInheritedListener`). Serve with `start()` (own thread) or `run()` / `serveOnce` (caller's thread).
    public convenience init(name: String, directory: String = IPCRuntime.defaultDirectory,
                            configuration: Configuration = Configuration(), handler: @escaping Handler) throws(IPCError) {
        try self.init(name: name, directory: directory, configuration: configuration, requestHandler: ClosureRequestHandler(handler))
    }

    /// The same with the handler as an object (`IPCRequestHandler`), which the server keeps alive
    /// and calls per request without touching a reference count: the form for hot paths.
    public init<RequestHandler: IPCRequestHandler>(name: String, directory: String = IPCRuntime.defaultDirectory,
                                                   configuration: Configuration = Configuration(),
                                                   requestHandler: RequestHandler) throws(IPCError) {
        precondition(configuration.maxClients > 0 && configuration.queueDepth > 0 && configuration.bufferPoolSize > 0)
        let endpoint = try IPCEndpoint(name: name, directory: directory)
        self.endpoint = endpoint
        self.configuration = configuration
        handler = UnretainedRequestHandler(requestHandler)
        let inherited = configuration.adoptsInheritedListener ? InheritedListener.take(for: endpoint) : nil
        let listenFD: Int32
        if let inherited { listenFD = inherited } else { listenFD = try endpoint.listen() }
        var epollFD: Int32 = -1, stopFD: Int32 = -1
        do throws(IPCError) {
            epollFD = try sys("epoll_create1") { epoll_create1(Int32(EPOLL_CLOEXEC)) }
            stopFD = try sys("eventfd") { CL_eventfd(0, CL_EFD_CLOEXEC | CL_EFD_NONBLOCK) }
            try Self.watch(epollFD, listenFD, token: Self.listenToken, events: UInt32(EPOLLIN.rawValue))
            try Self.watch(epollFD, stopFD, token: Self.stopToken, events: UInt32(EPOLLIN.rawValue))
        } catch {
            closeDescriptor(stopFD)
            closeDescriptor(epollFD)
            closeDescriptor(listenFD)
            if inherited == nil { endpoint.removeFiles() }
            throw error
        }
        self.listenFD = listenFD
        adoptedListener = inherited != nil
        self.epollFD = epollFD
        self.stopFD = stopFD
        clients = SlotTable(count: configuration.maxClients)
        queues = .allocate(capacity: configuration.maxClients * configuration.queueDepth)
        queues.initialize(repeating: -1, count: configuration.maxClients * configuration.queueDepth)
        generations = Array(repeating: 0, count: configuration.maxClients)
        let poolBytes = configuration.bufferPoolSize * Message.maxDatagramSize
        let poolBase = mmap(nil, poolBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        precondition(poolBase != nil && CL_is_map_failed(poolBase) == 0, "could not reserve the IPC buffer pool")
        pool = poolBase!
        poolLengths = Array(repeating: 0, count: configuration.bufferPoolSize)
        poolFDs = Array(repeating: -1, count: configuration.bufferPoolSize)
        freeBuffers = (0..<Int32(configuration.bufferPoolSize)).reversed()
        scratch = .allocate(byteCount: Message.maxDatagramSize, alignment: 16)
        replyBuffer = .allocate(byteCount: Message.maxDatagramSize, alignment: 16)
        events = .allocate(capacity: Int(Self.maxEvents))
    }

    deinit {
        stop()
        munmap(pool, configuration.bufferPoolSize * Message.maxDatagramSize)
        scratch.deallocate()
        replyBuffer.deallocate()
        events.deallocate()
        queues.deallocate()
        clients.deallocate()
    }

    // MARK: Running

    /// Serves on a new thread until `stop()`.
    public func start() {
        precondition(thread == nil, "IPCServer.start called twice")
        let context = Unmanaged.passRetained(self).toOpaque()
        var handle = pthread_t()
        let result = pthread_create(&handle, nil, { context in
            let server = Unmanaged<IPCServer>.fromOpaque(context!).takeRetainedValue()
            server.run()
            return nil
        }, context)
        precondition(result == 0, "pthread_create failed: \(result)")
        thread = handle
    }

    /// Serves on the calling thread until `stop()`.
    public func run() {
        while serveOnce(timeout: nil) {}
    }

    /// Waits up to `timeout` (nil: forever) for activity, handles it, and returns false once the
    /// server was asked to stop. Lets a test step the server deterministically.
    @discardableResult
    public func serveOnce(timeout: Duration? = .zero) -> Bool {
        var milliseconds = timeout.map { Int32(clamping: ($0.nanoseconds + 999_999) / 1_000_000) } ?? -1
        if pollsCompletions && deferredCount > 0 { milliseconds = 0 }
        let count = epoll_wait(epollFD, events, Self.maxEvents, milliseconds)
        if count < 0 { return CL_errno() == EINTR }
        var stopping = false
        for index in 0..<Int(count) {
            let event = events[index]
            let token = event.data.u64
            switch token {
            case Self.listenToken: acceptClients()
            case Self.stopToken: stopping = true
            case Self.wakeToken: break  // the completion poller below looks
            default:
                let slot = Int(token & 0xFFFF_FFFF) - 2
                guard slot >= 0, slot < clients.count, clients[slot] != nil,
                      generations[slot] == UInt32(token >> 32) else { continue }
                handleEvents(event.events, slot: slot)
            }
        }
        handler.call.pollCompletions()
        serveQueues()
        return !stopping
    }

    /// Makes `serveOnce` wake when `descriptor` becomes readable (level triggered: the
    /// handler's `pollCompletions` must consume what made it readable), e.g. a device's completion
    /// interrupt eventfd. The caller keeps owning the descriptor.
    public func addWakeDescriptor(_ descriptor: Int32) throws(IPCError) {
        try Self.watch(epollFD, descriptor, token: Self.wakeToken, events: UInt32(EPOLLIN.rawValue))
    }

    /// Stops serving (from any thread), waits for the serving thread, disconnects every client
    /// and removes the socket and pid files (only closes an adopted listener: clients connecting
    /// now wait for the next instance). Idempotent.
    public func stop() {
        // After the first stop the eventfd's number may already belong to someone else.
        guard !closed else { return }
        var one: UInt64 = 1
        _ = write(stopFD, &one, 8)
        if let thread {
            pthread_join(thread, nil)
            self.thread = nil
        }
        closed = true
        for slot in clients.indices where clients[slot] != nil { disconnect(slot) }
        // Whoever deferred answers has had its chance to finish them (see `complete`).
        for held in heldRegions {
            regions.wrappingDecrement(by: held.regions.releaseAll(), ordering: .relaxed)
        }
        heldRegions.removeAll()
        closeDescriptor(listenFD)
        closeDescriptor(stopFD)
        closeDescriptor(epollFD)
        if !adoptedListener { endpoint.removeFiles() }
    }

    // MARK: Clients coming and going

    private static func watch(_ epollFD: Int32, _ fd: Int32, token: UInt64, events: UInt32, modify: Bool = false) throws(IPCError) {
        var event = epoll_event()
        event.events = events
        event.data.u64 = token
        _ = try sys("epoll_ctl") { epoll_ctl(epollFD, modify ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &event) }
    }

    private func token(slot: Int) -> UInt64 { UInt64(generations[slot]) << 32 | UInt64(slot + 2) }

    private static let readEvents = UInt32(EPOLLIN.rawValue | EPOLLRDHUP.rawValue)
    private static let writeEvents = UInt32(EPOLLOUT.rawValue | EPOLLRDHUP.rawValue)

    private func acceptClients() {
        while true {
            let fd = CL_accept_nonblocking(listenFD)
            if fd < 0 {
                let code = CL_errno()
                if code == EINTR || code == ECONNABORTED { continue }
                return  // EAGAIN: none left; EMFILE and the like: try again on the next wakeup
            }
            guard let credentials = try? PeerCredentials.of(socket: fd) else {
                closeDescriptor(fd)
                continue
            }
            guard let slot = clients.firstIndex(where: { $0 == nil }) else {
                refuse(fd, type: .ipcError, sequence: 0, status: .EBUSY, code: IPCRefusal.serverFull)
                closeDescriptor(fd)
                continue
            }
            generations[slot] &+= 1
            let connection = IPCConnection(id: nextConnectionID, credentials: credentials)
            nextConnectionID += 1
            if (try? Self.watch(epollFD, fd, token: token(slot: slot), events: Self.readEvents)) == nil {
                closeDescriptor(fd)
                continue
            }
            clients[slot] = ClientState(
                fd: fd, connection: connection,
                regions: SharedRegionTable(capacity: configuration.maxHandlesPerClient))
            connections.wrappingIncrement(ordering: .relaxed)
        }
    }

    /// Frees everything a client held: queued buffers (and descriptors in them), shared regions,
    /// the socket.
    private func disconnect(_ slot: Int) {
        guard let client = clients[slot] else { return }
        clients[slot] = nil
        if let ring = client.ring {
            ring.stop()
            rings.wrappingDecrement(ordering: .relaxed)
        }
        // Before its regions are unmapped: a handler polling one of them (a block ring) stops first.
        configuration.connectionEnded?(client.connection)
        var position = client.queueHead
        for _ in 0..<client.queueCount {
            releaseBuffer(queues[slot * configuration.queueDepth + position])
            position = (position + 1) % configuration.queueDepth
        }
        if client.deferred > 0 {
            // A deferred answer may still be using a region (copying into it): keep them all
            // mapped until its last answer is completed or discarded (`releaseHeld`).
            heldRegions.append((client.connection.id, client.deferred, client.regions))
        } else {
            // After the ring thread stopped: no region is in use.
            regions.wrappingDecrement(by: client.regions.releaseAll(), ordering: .relaxed)
        }
        _ = epoll_ctl(epollFD, EPOLL_CTL_DEL, client.fd, nil)
        closeDescriptor(client.fd)
        connections.wrappingDecrement(ordering: .relaxed)
    }

    private func releaseBuffer(_ buffer: Int32) {
        closeDescriptor(poolFDs[Int(buffer)])
        poolFDs[Int(buffer)] = -1
        freeBuffers.append(buffer)
    }

    // MARK: Reading

    private func handleEvents(_ bits: UInt32, slot: Int) {
        if bits & UInt32(EPOLLOUT.rawValue) != 0 { flushPending(slot) }
        guard clients[slot] != nil else { return }
        if bits & UInt32(EPOLLERR.rawValue) != 0 { return disconnect(slot) }
        if bits & UInt32(EPOLLIN.rawValue | EPOLLRDHUP.rawValue | EPOLLHUP.rawValue) != 0 {
            let hangUp = bits & UInt32(EPOLLRDHUP.rawValue | EPOLLHUP.rawValue) != 0
            readDatagrams(slot, hangUp: hangUp)
        }
    }

    private func readDatagrams(_ slot: Int, hangUp: Bool) {
        let budget = configuration.queueDepth * 4
        var fds: (Int32, Int32) = (-1, -1)
        for _ in 0..<budget {
            // Fields read in place: copying the `ClientState` out retains its references per datagram.
            guard clients[slot] != nil, clients[slot]!.pendingReplies.isEmpty else { return }
            let clientFD = clients[slot]!.fd, queueHead = clients[slot]!.queueHead, queueCount = clients[slot]!.queueCount
            let queued = queueCount < configuration.queueDepth && !freeBuffers.isEmpty
            let buffer: Int32 = queued ? freeBuffers.removeLast() : -1
            let target = queued ? pool + Int(buffer) * Message.maxDatagramSize : scratch.baseAddress!
            var fdCount: Int32 = 0, flags: Int32 = 0
            let count = withUnsafeMutableBytes(of: &fds) { raw in
                CL_ipc_recv(clientFD, target, Message.maxDatagramSize, raw.baseAddress!.assumingMemoryBound(to: Int32.self),
                            2, &fdCount, &flags, CL_MSG_DONTWAIT)
            }
            if count < 0 {
                if queued { freeBuffers.append(buffer) }
                let code = CL_errno()
                if code == EAGAIN || code == EINTR { return }
                return disconnect(slot)
            }
            if count == 0 && fdCount == 0 && hangUp {
                if queued { freeBuffers.append(buffer) }
                return disconnect(slot)  // end of stream: the client is gone
            }
            // At most one descriptor is ever wanted (MSG_IPC_SHARE); a second one marks the message.
            if fdCount > 1 { closeDescriptor(fds.0); closeDescriptor(fds.1); fds.0 = -2 }
            let oversized = flags & CL_MSG_TRUNC != 0
            if !queued || oversized {
                if fds.0 >= 0 { closeDescriptor(fds.0) }
                let view = UnsafeRawBufferPointer(start: target, count: min(count, Message.maxDatagramSize))
                if queued { freeBuffers.append(buffer) }
                if oversized {
                    protocolError(slot, sequence: Message.salvageSequence(view), status: .EMSGSIZE, code: IPCRefusal.oversized)
                } else {
                    let type = view.count >= 4 ? MessageType(rawValue: UInt32(littleEndian: view.loadUnaligned(as: UInt32.self))) : .ipcError
                    sendReply(slot, type: type.isKnown ? type : .ipcError, sequence: Message.salvageSequence(view),
                              reply: IPCReply(status: .EBUSY, param1: IPCRefusal.busy))
                }
                fds = (-1, -1)
                continue
            }
            poolLengths[Int(buffer)] = count
            poolFDs[Int(buffer)] = fdCount == 1 ? fds.0 : (fdCount > 1 ? -2 : -1)
            fds = (-1, -1)
            queues[slot * configuration.queueDepth + (queueHead + queueCount) % configuration.queueDepth] = buffer
            clients[slot]!.queueCount += 1
        }
    }

    // MARK: Serving

    private func serveQueues() {
        var progress = true
        while progress {
            progress = false
            for slot in clients.indices {
                // Fields read in place (no `ClientState` copy, so no retains per request).
                guard clients[slot] != nil, clients[slot]!.queueCount > 0, clients[slot]!.pendingReplies.isEmpty else { continue }
                let queueHead = clients[slot]!.queueHead, deferred = clients[slot]!.deferred
                let buffer = queues[slot * configuration.queueDepth + queueHead]
                if deferred > 0 && (deferred >= configuration.maxDeferredPerClient || releasesRegion(buffer)) {
                    continue  // paused until answers complete
                }
                clients[slot]!.queueHead = (queueHead + 1) % configuration.queueDepth
                clients[slot]!.queueCount -= 1
                serve(slot, buffer: buffer)
                if poolFDs[Int(buffer)] == -2 { poolFDs[Int(buffer)] = -1 }
                releaseBuffer(buffer)
                progress = true
            }
        }
    }

    /// Whether the queued datagram is a MSG_IPC_RELEASE (which must wait for deferred answers).
    private func releasesRegion(_ buffer: Int32) -> Bool {
        guard poolLengths[Int(buffer)] >= 4 else { return false }
        let raw = (pool + Int(buffer) * Message.maxDatagramSize).loadUnaligned(as: UInt32.self)
        return MessageType(rawValue: UInt32(littleEndian: raw)) == .ipcRelease
    }

    private func serve(_ slot: Int, buffer: Int32) {
        let datagram = UnsafeRawBufferPointer(start: pool + Int(buffer) * Message.maxDatagramSize, count: poolLengths[Int(buffer)])
        var message: Message
        do {
            message = try Message.decode(datagram)
        } catch {
            let type = datagram.count >= 4 ? MessageType(rawValue: UInt32(littleEndian: datagram.loadUnaligned(as: UInt32.self))) : .ipcError
            return protocolError(slot, type: type.isKnown ? type : .ipcError, sequence: Message.salvageSequence(datagram),
                                 status: error.status, code: error.code)
        }
        guard !message.flags.contains(.reply) else {
            return protocolError(slot, type: message.type, sequence: message.sequence, status: .EBADMSG, code: IPCRefusal.replySentToServer)
        }
        // A plain value read in place: copying the whole `ClientState` out would retain its
        // references once per request.
        let connection = clients[slot]!.connection
        // Whatever the client wrote in these fields, the kernel's word replaces it.
        message.senderPID = connection.credentials.pid
        message.senderUID = connection.credentials.uid
        message.senderGID = connection.credentials.gid

        let descriptor = poolFDs[Int(buffer)]
        if descriptor == -2 || (descriptor >= 0 && message.type != .ipcShare && !configuration.descriptorMessages.contains(message.type)) {
            return protocolError(slot, type: message.type, sequence: message.sequence, status: .EBADMSG,
                                 code: IPCRefusal.unexpectedDescriptors)
        }
        switch message.type {
        case .ipcShare:
            guard descriptor >= 0 else {
                return protocolError(slot, type: message.type, sequence: message.sequence, status: .EBADMSG,
                                     code: IPCRefusal.missingDescriptor)
            }
            return share(slot, descriptor: descriptor, buffer: buffer, sequence: message.sequence)
        case .ipcRelease:
            // param1 is the client's word: bound it before converting (a value >= 2^63 must not trap).
            // Unmapped now, or when a ring request using it ends; unknown from now on either way.
            if let refusal = configuration.releaseCheck?(clients[slot]!.connection, message.param1) {
                return sendReply(slot, type: message.type, sequence: message.sequence, reply: .error(refusal))
            }
            guard clients[slot]!.regions.release(handle: message.param1) else {
                return sendReply(slot, type: message.type, sequence: message.sequence, reply: .error(.EBADF))
            }
            regions.wrappingDecrement(ordering: .relaxed)
            return sendReply(slot, type: message.type, sequence: message.sequence, reply: .ok)
        case .ipcPing:
            return sendReply(slot, type: message.type, sequence: message.sequence, reply: .ok)
        case .ipcRingAttach:
            return attachRing(slot, message)
        case .ipcError:
            return protocolError(slot, type: message.type, sequence: message.sequence, status: .EBADMSG, code: 0)
        default:
            break
        }

        let inline = UnsafeRawBufferPointer(rebasing: datagram[Message.headerSize...])
        let replyPayload = UnsafeMutableRawBufferPointer(rebasing: replyBuffer[Message.headerSize...])
        // A descriptor the handler is shown stays in the pool slot: `releaseBuffer` closes it.
        let token = IPCReplyToken(slot: Int32(slot), generation: generations[slot], connection: connection.id,
                                  type: message.type, sequence: message.sequence)
        // The table outlives the call (only `disconnect` drops it, never during a handler), so it
        // is borrowed unretained rather than retained per request. The closure below captures
        // only plain values: capturing `self` (to reach the handler) retained it around the call.
        let handler = handler.call
        let reply = Unmanaged.passUnretained(clients[slot]!.regions)._withUnsafeGuaranteedRef { regions in
            regions.serve(message, inline: inline, reply: replyPayload, replyToken: token) { payload in
                var payload = payload
                payload.descriptor = descriptor
                return handler.handle(message, payload, connection)
            }
        }
        if reply.isDeferred {
            guard clients[slot] != nil else { return }  // cannot happen: the handler does not disconnect
            clients[slot]!.deferred += 1
            deferredCount += 1
            return
        }
        sendReply(slot, type: message.type, sequence: message.sequence, reply: reply)
    }

    // MARK: Deferred answers

    /// Answers a request its handler deferred, with `reply` and `payload` as inline data (at
    /// most `Message.maxInlinePayload` bytes). Call exactly once per deferred request, on the
    /// serving thread (from the handler's `pollCompletions` or `handle`; a handler calling it must do so
    /// before writing its own reply payload, which shares the reply buffer). Returns false when
    /// the client has gone: the answer is discarded, and once its last one is, the regions the
    /// client left behind are unmapped. Never disconnects anyone itself (a client whose socket
    /// broke is disconnected by the next wakeup's hang-up).
    @discardableResult
    public func complete(_ token: IPCReplyToken, _ reply: IPCReply, payload: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0)) -> Bool {
        let slot = Int(token.slot)
        guard slot >= 0 else { return false }
        deferredCount -= 1
        // Fields read in place (no `ClientState` copy, so no retains per completion).
        guard slot < clients.count, generations[slot] == token.generation, clients[slot] != nil,
              clients[slot]!.connection.id == token.connection, clients[slot]!.deferred > 0 else {
            discardedCompletions &+= 1
            releaseHeld(connection: token.connection)
            return false
        }
        clients[slot]!.deferred -= 1
        var answer = reply
        if answer.isDeferred || payload.count > Message.maxInlinePayload {
            answer = .error(.EIO)
        } else if payload.count > 0 {
            (replyBuffer.baseAddress! + Message.headerSize).copyMemory(from: payload.baseAddress!, byteCount: payload.count)
            answer.payloadCount = payload.count
        } else {
            answer.payloadCount = 0
        }
        sendReply(slot, type: token.type, sequence: token.sequence, reply: answer, disconnectOnFailure: false)
        return true
    }

    private func releaseHeld(connection: UInt64) {
        guard let index = heldRegions.firstIndex(where: { $0.connection == connection }) else { return }
        heldRegions[index].outstanding -= 1
        guard heldRegions[index].outstanding == 0 else { return }
        let held = heldRegions.remove(at: index)
        regions.wrappingDecrement(by: held.regions.releaseAll(), ordering: .relaxed)
    }

    private func share(_ slot: Int, descriptor: Int32, buffer: Int32, sequence: UInt32) {
        // The descriptor now belongs to this function: adopted into the table or closed.
        poolFDs[Int(buffer)] = -1
        switch SharedRegion.adopt(fd: descriptor) {
        case .failure(let status):
            closeDescriptor(descriptor)
            sendReply(slot, type: .ipcShare, sequence: sequence, reply: .error(status))
        case .success(let region):
            guard let handle = clients[slot]!.regions.add(region) else {
                region.release()
                return sendReply(slot, type: .ipcShare, sequence: sequence, reply: .error(.EMFILE))
            }
            regions.wrappingIncrement(ordering: .relaxed)
            sendReply(slot, type: .ipcShare, sequence: sequence,
                      reply: IPCReply(param1: UInt64(handle), param2: UInt64(region.size), param3: region.writable ? 1 : 0))
        }
    }

    /// MSG_IPC_RING_ATTACH: param1 slot size, param2 capacity (0: 256 and 4, as `attachRing`).
    /// Creates the ring memfd, starts its thread, and replies with the memfd (SCM_RIGHTS) and the
    /// layout.
    private func attachRing(_ slot: Int, _ message: Message) {
        let sequence = message.sequence
        guard configuration.maxRings > 0 else { return sendReply(slot, type: .ipcRingAttach, sequence: sequence, reply: .error(.ENOTSUP)) }
        guard clients[slot]!.ring == nil, rings.load(ordering: .relaxed) < configuration.maxRings else {
            return sendReply(slot, type: .ipcRingAttach, sequence: sequence, reply: .error(.EBUSY))
        }
        let slotSize = message.param1 == 0 ? 256 : message.param1
        let capacity = message.param2 == 0 ? 4 : message.param2
        guard slotSize <= UInt64(configuration.maxRingSlotSize), capacity <= UInt64(configuration.maxRingCapacity),
              slotSize >= UInt64(Message.headerSize + RingLayout.stampSize),
              let layout = try? RingLayout(slotSize: Int(slotSize), capacity: Int(capacity)) else {
            return sendReply(slot, type: .ipcRingAttach, sequence: sequence, reply: .error(.EINVAL))
        }
        let client = clients[slot]!
        let socket = fcntl(client.fd, F_DUPFD_CLOEXEC, 0)
        guard socket >= 0 else { return sendReply(slot, type: .ipcRingAttach, sequence: sequence, reply: .error(.EMFILE)) }
        let memory: SharedRingMemory
        let service: RingService
        do {
            memory = try SharedRingMemory.create(layout: layout, name: "limitless-ring-\(endpoint.name)")
            service = try RingService(memory: memory, handler: handler, connection: client.connection, regions: client.regions,
                                      socket: socket, policy: configuration.ringWaitPolicy)
        } catch {
            closeDescriptor(socket)
            return sendReply(slot, type: .ipcRingAttach, sequence: sequence, reply: .error(.ENOMEM))
        }
        service.start()
        clients[slot]!.ring = service
        rings.wrappingIncrement(ordering: .relaxed)
        sendReply(slot, type: .ipcRingAttach, sequence: sequence, reply: IPCReply(param1: slotSize, param2: capacity),
                  descriptor: memory.descriptor.rawValue)
    }

    // MARK: Replying

    private func protocolError(_ slot: Int, type: MessageType = .ipcError, sequence: UInt32, status: IPCStatus, code: UInt64) {
        sendReply(slot, type: type, sequence: sequence, reply: IPCReply(status: status, param1: code))
        guard clients[slot] != nil else { return }
        clients[slot]!.protocolErrors += 1
        if clients[slot]!.protocolErrors >= configuration.maxProtocolErrors { disconnect(slot) }
    }

    /// Sends a reply whose payload (if any) the handler already wrote after the header in
    /// `replyBuffer`. If the client's socket is full the reply is parked and the client paused.
    /// A reply with a `descriptor` (ring attach) that must wait for room loses the descriptor:
    /// the client sees the reply without one and gives up on the attach.
    private func sendReply(_ slot: Int, type: MessageType, sequence: UInt32, reply: IPCReply, descriptor: Int32 = -1,
                           disconnectOnFailure: Bool = true) {
        // Fields read in place (no `ClientState` copy, so no retains per reply).
        guard clients[slot] != nil else { return }
        let clientFD = clients[slot]!.fd
        let length = Message.headerSize + reply.payloadCount
        let header = Message(type: type, flags: .reply, param1: reply.param1, param2: reply.param2, param3: reply.param3,
                             dataPointer: 0, dataSize: UInt32(reply.payloadCount), sequence: sequence, status: reply.status)
        header.encode(into: replyBuffer)
        if !clients[slot]!.pendingReplies.isEmpty {
            // Deferred answers completing while earlier replies wait: they queue behind them.
            clients[slot]!.pendingReplies.append(Array(UnsafeRawBufferPointer(rebasing: replyBuffer[..<length])))
            return
        }
        var fd = descriptor
        let sent = CL_ipc_send(clientFD, replyBuffer.baseAddress, length, nil, 0, &fd, descriptor >= 0 ? 1 : 0,
                               CL_MSG_DONTWAIT | CL_MSG_NOSIGNAL)
        if sent >= 0 { return }
        let code = CL_errno()
        if code == EAGAIN {
            clients[slot]!.pendingReplies.append(Array(UnsafeRawBufferPointer(rebasing: replyBuffer[..<length])))
            if (try? Self.watch(epollFD, clientFD, token: token(slot: slot), events: Self.writeEvents, modify: true)) == nil,
               disconnectOnFailure {
                disconnect(slot)
            }
        } else if disconnectOnFailure {
            disconnect(slot)  // EPIPE, ECONNRESET: the client is gone
        }
    }

    private func flushPending(_ slot: Int) {
        guard let client = clients[slot], !client.pendingReplies.isEmpty else { return }
        var sentCount = 0
        for pending in client.pendingReplies {
            let sent = pending.withUnsafeBytes {
                CL_ipc_send(client.fd, $0.baseAddress, $0.count, nil, 0, nil, 0, CL_MSG_DONTWAIT | CL_MSG_NOSIGNAL)
            }
            if sent < 0 {
                if CL_errno() != EAGAIN { return disconnect(slot) }
                break
            }
            sentCount += 1
        }
        clients[slot]!.pendingReplies.removeFirst(sentCount)
        guard clients[slot]!.pendingReplies.isEmpty else { return }
        if (try? Self.watch(epollFD, client.fd, token: token(slot: slot), events: Self.readEvents, modify: true)) == nil {
            disconnect(slot)
        }
    }

    /// Sends a single error reply on a socket that is not (or no longer) a client.
    private func refuse(_ fd: Int32, type: MessageType, sequence: UInt32, status: IPCStatus, code: UInt64) {
        Message(type: type, flags: .reply, param1: code, sequence: sequence, status: status).encode(into: replyBuffer)
        _ = CL_ipc_send(fd, replyBuffer.baseAddress, Message.headerSize, nil, 0, nil, 0, CL_MSG_DONTWAIT | CL_MSG_NOSIGNAL)
    }
}
