import IPC
import Platform

/// The block protocol's server logic (see `BlockProtocol` for the table): decodes and validates a
/// request, checks the client's access, runs it on the `BlockDevice`, and builds the reply.
/// `handle` runs on the IPC server's one thread, which is also the only user of the device.
///
/// On a `QueuedBlockDevice` served through `makeIPCServer`, read, write, flush and trim are not
/// waited for: the command is submitted, the answer deferred (`IPCReply.deferred`) and sent when
/// the command completes (`pollCompletions`, the IPC server's completion poller), so a client's
/// batch, or many clients, keep many commands in flight. Like a disk's queue, commands in flight
/// together are not ordered among themselves: a client that needs one done before another (a
/// read of what it wrote) waits for the first answer. A flush waits for every command in flight
/// before it is submitted (a Flush covers only the writes completed before it, NVM command set
/// 3.2.2), so it covers every write sent before it.
public final class BlockServer: IPCRequestHandler, @unchecked Sendable {
    public let device: any BlockDevice
    /// Who may use the server without presenting a capability token (by uid).
    public let policy: BlockAccessPolicy
    /// The CAP_BLOCK_* tokens the supervisor said stand for rights (see `BlockCapabilityTokens`).
    public let tokens: BlockCapabilityTokens
    /// The rights each connection proved with tokens (serving thread only).
    private var presented = PresentedCapabilities()
    /// Requests refused for a missing capability.
    public private(set) var refusals: UInt64 = 0
    /// Refusals per connection (serving thread only): the first is logged, then one line per
    /// `refusalLogInterval` and one when the connection ends, so a ring client without rights
    /// cannot flood the log with a line per request.
    private var refusalsByConnection: [UInt64: UInt64] = [:]
    public var refusalLogInterval: UInt64 = 1000
    let log: @Sendable (String) -> Void
    /// Where routine access news goes (a token presented); `log` gets refusals and errors.
    public var info: @Sendable (String) -> Void = { _ in }
    /// Requests served (any status), for statistics.
    public private(set) var requests: UInt64 = 0
    public internal(set) var deviceErrors: UInt64 = 0
    /// Registered client buffers (zero copy), and transfers that went straight to one.
    public private(set) var registered = RegisteredBuffers()
    public internal(set) var zeroCopyTransfers: UInt64 = 0
    /// Registered buffers unmapped because their client vanished (not by unregister or stop).
    public private(set) var vanishedBuffersUnmapped: UInt64 = 0
    /// The device as a `DirectBlockDevice` when it is one (looked up once, not per request).
    private let direct: (any DirectBlockDevice)?
    /// The same as a `QueuedBlockDevice` (rings need it).
    private let queued: (any QueuedBlockDevice)?
    /// The same for the per-request paths (see the type), and what keeps it alive.
    private let queuedOwner: BorrowedQueuedDevice?
    private let borrowedQueued: Unmanaged<BorrowedQueuedDevice>?
    /// Attached rings (`BlockRing`), served by `pollRings`. A device tag is ring index << 32 |
    /// the ring's slot; the array changes only when no ring command is in flight.
    private var rings: [BlockRingServerState] = [] {
        didSet { borrowedRings = rings.map { Unmanaged.passUnretained($0) } }
    }
    /// `rings` as plain words for the polling passes (which run even when idle): reading a class
    /// reference out of `rings` retained it, twice per pass. `rings` keeps them alive.
    private var borrowedRings: [Unmanaged<BlockRingServerState>] = []
    /// Requests served through rings, and ring commands reaped.
    public private(set) var ringRequests: UInt64 = 0
    public var ringCount: Int { rings.count }
    /// More serving threads, each with its own queue (`storage_server --queues N`): attached
    /// rings are dealt round-robin to this thread and to them. Set before serving.
    public var ringWorkers: [BlockRingWorker] = []
    /// Rings dealt so far, and where each one on another thread went (changes only at attach
    /// and detach).
    private var ringsDealt = 0
    private var placedRings: [(client: UInt64, handle: UInt32, worker: BlockRingWorker)] = []
    /// Message-path requests waiting for their command (see the type's comment).
    var deferred: DeferredBlockRequests?
    /// The IPC server that answers them; it owns this server through its handler, so it is
    /// held without a reference count: `Unmanaged`, because even a nil check of an
    /// `unowned(unsafe)` reference retained it, once per request.
    var replies: Unmanaged<IPCServer>?
    /// Message-path requests answered at their command's completion, for statistics.
    public internal(set) var deferredRequests: UInt64 = 0
    /// Message-path requests on the device now.
    public var deferredInFlight: Int { deferred?.inFlight ?? 0 }
    /// Bounce slots free now, and in all.
    public var freeBounceSlots: Int { deferred?.freeBounceSlots ?? 0 }
    public var bounceSlotCount: Int { deferred?.slotCount ?? 0 }
    /// Whether message-path requests on a queued device are answered at completion (the
    /// default); false: one at a time, each waited for (the older way, kept for comparison).
    public var defersAnswers = true
    /// How long a request waits for a free command or bounce slot before it is answered EBUSY.
    public var roomWaitNanoseconds: UInt64 = 1_000_000_000

    public init(device: any BlockDevice, policy: BlockAccessPolicy = .acceptAll, tokens: BlockCapabilityTokens = BlockCapabilityTokens(),
                log: @escaping @Sendable (String) -> Void = { _ in }) {
        self.device = device
        self.policy = policy
        self.tokens = tokens
        self.log = log
        direct = device as? any DirectBlockDevice
        queued = device as? any QueuedBlockDevice
        queuedOwner = queued.map { BorrowedQueuedDevice.opening($0) }
        borrowedQueued = queuedOwner.map { Unmanaged.passUnretained($0) }
        if let queued {
            deferred = DeferredBlockRequests(bounce: queued.bounceBuffer, capacity: queued.freeCommandSlots)
        }
    }

    /// An IPC server at `directory/name.sock` answering with `handle`. Call `start()` on it.
    public func makeIPCServer(name: String, directory: String) throws(IPCError) -> IPCServer {
        try makeIPCServer(name: name, directory: directory, configuration: Self.ipcConfiguration)
    }

    /// The same with the IPC server's limits spelled out.
    /// MSG_BLOCK_PRESENT_CAPABILITY is let through with its descriptor, and a connection's
    /// presented capabilities are forgotten when it ends.
    public func makeIPCServer(name: String, directory: String, configuration: IPCServer.Configuration) throws(IPCError) -> IPCServer {
        var configuration = configuration
        configuration.descriptorMessages.append(.blockPresentCapability)
        configuration.connectionEnded = { [self] connection in connectionEnded(connection.id) }
        // A registered region stays mapped until it is unregistered: the device has it in its
        // IOMMU domain, and a ring in it is polled through this process's mapping.
        configuration.releaseCheck = { [self] connection, handle in
            handle <= UInt64(UInt32.max) && registered.entry(client: connection.id, handle: UInt32(handle)) != nil ? .EBUSY : nil
        }
        let endpoint = try IPCServer(name: name, directory: directory, configuration: configuration, requestHandler: self)
        if let queued {
            replies = Unmanaged.passUnretained(endpoint)
            endpoint.pollsCompletions = true
            if let descriptor = queued.completionDescriptor {
                do {
                    try endpoint.addWakeDescriptor(descriptor)
                    endpoint.pollsCompletions = false
                } catch {
                    log("completions are polled: watching the device's interrupt failed: \(error)")
                }
            }
        }
        return endpoint
    }

    /// Whether the serving loop must poll for completions (the device has no descriptor the IPC
    /// server waits on) because message-path commands are in flight.
    public var mustPollCompletions: Bool { deferredInFlight > 0 && queued?.completionDescriptor == nil }

    /// IPC limits for a block server: a client may keep 64 requests queued (the IPC default is
    /// 16), so a client at queue depth 32 (fio's usual deep setting, `limitless-storage bench
    /// --queue-depth 32`) is never answered EBUSY.
    public static var ipcConfiguration: IPCServer.Configuration {
        var configuration = IPCServer.Configuration()
        configuration.queueDepth = 64
        return configuration
    }

    /// `handle` for a caller without connection identities: every request counts as client 0.
    public func handle(_ message: Message, _ payload: IPCPayload, _ uid: UInt32) -> IPCReply {
        handle(message, payload, uid: uid, client: 0, pid: 0)
    }

    /// `IPCRequestHandler`: the IPC server calls this per request, with no reference counting.
    public func handle(_ message: Message, _ payload: IPCPayload, _ connection: IPCConnection) -> IPCReply {
        handle(message, payload, uid: connection.credentials.uid, client: connection.id, pid: connection.credentials.pid)
    }

    /// Serves one request from connection `client` (its IPC connection id; process `pid`).
    public func handle(_ message: Message, _ payload: IPCPayload, uid: UInt32, client: UInt64, pid: Int32) -> IPCReply {
        requests &+= 1
        if message.type == .blockRegisterBuffer || message.type == .blockUnregisterBuffer {
            // An unregistered buffer must not be in use by a command: finish them all first.
            drainDevice()
            return registration(message, payload, uid: uid, client: client, pid: pid)
        }
        if message.type == .blockPresentCapability {
            return present(payload.descriptor, client: client, uid: uid, pid: pid)
        }
        let sharedWritable: Bool
        if case .shared = message.data { sharedWritable = payload.writableData != nil } else { sharedWritable = true }
        let request: BlockRequest
        // A closure literal, not `device.geometry`: the partially applied method of an
        // existential allocated a context per request (HotPathAllocationTests). It borrows
        // `self` unretained: capturing it retained it per request.
        let server = Unmanaged.passUnretained(self)
        switch BlockRequestDecoder.decode(message, sharedWritable: sharedWritable,
                                          geometry: { nsid in server._withUnsafeGuaranteedRef { $0.device.geometry(nsid) } }) {
        case .failure(let status): return .error(status)
        case .success(let decoded): request = decoded
        }
        guard allows(write: request.isWrite, client: client, uid: uid) else {
            refuse(message.type, needing: .needed(write: request.isWrite), client: client, uid: uid, pid: pid)
            return .error(.EACCES)
        }
        let geometry = device.geometry(request.nsid)!
        switch request {
        case .read, .write, .flush, .trim:
            if defersAnswers, payload.replyToken.canDefer, replies != nil, let borrowedQueued,
               let reply = borrowedQueued._withUnsafeGuaranteedRef({
                   $0.submitDeferred(self, request, message, payload, client: client, blockSize: geometry.blockSize)
               }) {
                return reply
            }
            // The blocking paths below want the device idle (and the whole bounce buffer).
            drainDevice()
        default:
            break
        }
        do throws(BlockDeviceError) {
            switch request {
            case .openNamespace:
                return IPCReply(param1: UInt64(geometry.blockSize), param2: geometry.blockCount)
            case .geometry:
                return IPCReply(param1: UInt64(geometry.blockSize), param2: geometry.blockCount,
                                param3: UInt64(BlockProtocol.maxSharedBytes))
            case .read(let nsid, let lba, let blocks, let toShared):
                let bytes = blocks * geometry.blockSize
                if toShared {
                    let target = UnsafeMutableRawBufferPointer(rebasing: payload.writableData![..<bytes])
                    if registered.count > 0, let direct,
                       let dma = registered.find(client: client, pointer: target.baseAddress!, bytes: bytes) {
                        try direct.read(nsid: nsid, lba: lba, blocks: blocks, dma: dma)
                        zeroCopyTransfers &+= 1
                        return IPCReply(param1: UInt64(bytes), param2: 1)
                    }
                    try device.read(nsid: nsid, lba: lba, blocks: blocks, into: target)
                    return IPCReply(param1: UInt64(bytes))
                }
                let target = UnsafeMutableRawBufferPointer(rebasing: payload.reply[..<bytes])
                try device.read(nsid: nsid, lba: lba, blocks: blocks, into: target)
                return IPCReply(param1: UInt64(bytes), payloadCount: bytes)
            case .write(let nsid, let lba, let blocks):
                if case .shared = message.data, registered.count > 0, let direct, let base = payload.data.baseAddress,
                   let dma = registered.find(client: client, pointer: base, bytes: payload.data.count) {
                    try direct.write(nsid: nsid, lba: lba, blocks: blocks, dma: dma)
                    zeroCopyTransfers &+= 1
                    return IPCReply(param1: UInt64(payload.data.count), param2: 1)
                }
                try device.write(nsid: nsid, lba: lba, blocks: blocks, from: payload.data)
                return IPCReply(param1: UInt64(payload.data.count))
            case .flush(let nsid):
                try device.flush(nsid: nsid)
                return .ok
            case .trim(let nsid, let lba, let blocks):
                try device.trim(nsid: nsid, lba: lba, blocks: blocks)
                return .ok
            }
        } catch {
            deviceErrors &+= 1
            log("\(message.type) nsid \(request.nsid) failed: \(error.detail) -> \(error.status)")
            return .error(error.status)
        }
    }

    // MARK: Access (CAP_BLOCK_READ, CAP_BLOCK_WRITE)

    /// Whether connection `client` may run a request that reads (`write` false) or changes the
    /// device. A connection that presented capability tokens has exactly the rights they stand
    /// for now; one that presented nothing is judged by its uid (`policy`).
    @inline(__always)
    func allows(write: Bool, client: UInt64, uid: UInt32) -> Bool {
        if let rights = presented.rights(client: client, table: tokens) { return rights.contains(.needed(write: write)) }
        return write ? policy.writers.allows(uid) : policy.readers.allows(uid)
    }

    private func refuse(_ type: MessageType, needing rights: BlockRights, client: UInt64, uid: UInt32, pid: Int32) {
        refusals &+= 1
        let count = (refusalsByConnection[client] ?? 0) &+ 1
        refusalsByConnection[client] = count
        guard count == 1 || count % refusalLogInterval == 0 else { return }
        let proved = presented.rights(client: client, table: tokens)
        log("refused \(type) from connection \(client) (pid \(pid), uid \(uid)): it lacks \(rights) ("
            + (proved.map { "it presented tokens for \($0)" } ?? "no token presented, and uid \(uid) is not allowed by --allow-uid") + ")"
            + (count == 1 ? "; further refusals on this connection are counted, logged every \(refusalLogInterval) and when it closes"
                          : "; \(count) refused on this connection so far"))
    }

    /// MSG_BLOCK_PRESENT_CAPABILITY: identifies the token by its file (the IPC server closes the
    /// received descriptor after this) and adds its rights to the connection's. Replies with the
    /// connection's rights in param1; an unknown or revoked token is refused with EACCES, a
    /// message without a descriptor with EINVAL.
    private func present(_ descriptor: Int32, client: UInt64, uid: UInt32, pid: Int32) -> IPCReply {
        guard descriptor >= 0 else { return .error(.EINVAL) }
        guard let (entry, token) = tokens.lookup(descriptor: descriptor) else {
            refusals &+= 1
            log("connection \(client) (pid \(pid), uid \(uid)) presented a descriptor that is no CAP_BLOCK token the supervisor gave out: refused")
            return .error(.EACCES)
        }
        let rights = presented.add(token, client: client, table: tokens)
        for placed in placedRings where placed.client == client {
            placed.worker.updateRights(client: client, tokens: presented.tokens(client: client))
        }
        info("connection \(client) (pid \(pid)) presented \(entry.holder)'s \(entry.rights) token; it now has \(rights)")
        return IPCReply(param1: rights.rawValue)
    }

    /// Forgets what connection `client` presented (its connection ended).
    func connectionEnded(_ client: UInt64) {
        presented.forget(client: client)
        if let count = refusalsByConnection.removeValue(forKey: client), count > 1 {
            log("connection \(client) closed after \(count) refused requests")
        }
        // The IPC server unmaps the client's regions right after this: its rings stop now, on
        // whichever thread serves them (their commands finish first). The registrations stay
        // until the sweep unmaps them from the device.
        if rings.contains(where: { $0.client == client }) {
            drainDevice()
            rings.removeAll { $0.client == client }
        }
        for placed in placedRings where placed.client == client { placed.worker.detach(client: client, handle: placed.handle) }
        placedRings.removeAll { $0.client == client }
    }

    /// Connections that presented tokens and are still open.
    public var connectionsWithTokens: Int { presented.count }

    // MARK: Registered buffers (zero copy)

    /// MSG_BLOCK_REGISTER_BUFFER / MSG_BLOCK_UNREGISTER_BUFFER (see `BlockProtocol`).
    private func registration(_ message: Message, _ payload: IPCPayload, uid: UInt32, client: UInt64, pid: Int32) -> IPCReply {
        guard let direct else { return .error(.ENOTSUP) }
        guard allows(write: false, client: client, uid: uid) || allows(write: true, client: client, uid: uid) else {
            refuse(message.type, needing: [.read, .write], client: client, uid: uid, pid: pid)
            return .error(.EACCES)
        }
        if message.type == .blockUnregisterBuffer {
            guard message.param1 > 0, message.param1 <= UInt64(UInt32.max),
                  let entry = registered.remove(client: client, handle: UInt32(message.param1)) else { return .error(.EBADF) }
            detachRing(entry)
            do throws(BlockDeviceError) {
                try direct.unmapClientMemory(entry.mapping)
            } catch {
                log("unregister handle \(entry.handle) of client \(client): \(error)")
                return .error(error.status)
            }
            return .ok
        }
        guard case .shared(let handle, _, _) = message.data else { return .error(.EINVAL) }
        // The device writes into the buffer on reads: it must be writable, and PRPs want whole
        // pages (NVMe 2.0 4.1.1: every PRP entry after the first is page aligned).
        guard let memory = payload.writableData, let base = memory.baseAddress, memory.count > 0,
              UInt(bitPattern: base) & 4095 == 0, memory.count & 4095 == 0 else { return .error(.EINVAL) }
        guard registered.entry(client: client, handle: handle) == nil else { return .error(.EEXIST) }
        let asRing = message.param1 == BlockRing.registerFlag
        var ringEntries = 0
        if asRing {
            guard queued != nil else { return .error(.ENOTSUP) }
            guard let entries = BlockRing.validEntries(base, size: memory.count) else { return .error(.EINVAL) }
            ringEntries = entries
        } else if message.param1 != 0 {
            return .error(.EINVAL)
        }
        sweepVanishedClients()
        guard !registered.isFull else { return .error(.ENOSPC) }
        let mapping: DMABuffer
        do throws(BlockDeviceError) {
            mapping = try direct.mapClientMemory(memory)
        } catch {
            log("register \(memory.count) bytes (handle \(handle)) for client \(client): \(error)")
            return .error(error.status)
        }
        _ = registered.add(RegisteredBuffers.Entry(client: client, pid: pid, handle: handle, mapping: mapping))
        if asRing {
            let ring = BlockRingServerState(client: client, handle: handle, uid: uid, entries: ringEntries, mapping: mapping)
            let turn = ringsDealt % (ringWorkers.count + 1)
            ringsDealt &+= 1
            if turn == 0 {
                rings.append(ring)
            } else {
                let worker = ringWorkers[turn - 1]
                placedRings.append((client, handle, worker))
                worker.attach(ring, tokens: presented.tokens(client: client))
                info("ring of connection \(client) (pid \(pid)) served by \(worker.label)")
            }
        }
        return IPCReply(param1: UInt64(handle), param2: UInt64(memory.count))
    }

    /// Unmaps the buffers of clients that have vanished (process gone, or the IPC server has
    /// unmapped their region: disconnected or released). `connectionCount` 0 means every client
    /// is gone. Call from the serving thread (storage_server does between IPC wakeups). Returns
    /// how many were unmapped.
    @discardableResult
    public func sweepVanishedClients(connectionCount: Int? = nil) -> Int {
        guard registered.count > 0 else { return 0 }
        let everyone = connectionCount == 0
        let gone = registered.removeAll { everyone || RegisteredBuffers.clientVanished($0) }
        // A vanished client's zero-copy commands may still be in flight: the device must not
        // write to pages after their mapping is gone.
        if !gone.isEmpty { drainDevice() }
        for entry in gone { unmap(entry, why: "client \(entry.client) (pid \(entry.pid)) vanished") }
        vanishedBuffersUnmapped &+= UInt64(gone.count)
        return gone.count
    }

    /// Unmaps every registered buffer (at shutdown).
    public func unregisterAll() {
        for entry in registered.removeAll(where: { _ in true }) { unmap(entry, why: "server stopping") }
    }

    private func unmap(_ entry: RegisteredBuffers.Entry, why: String) {
        detachRing(entry)
        do throws(BlockDeviceError) {
            try direct?.unmapClientMemory(entry.mapping)
        } catch {
            log("unmapping handle \(entry.handle) (\(why)): \(error)")
        }
    }

    // MARK: Rings (BlockRing)

    /// Stops serving `entry`'s ring if it is one: its commands in flight finish first (the
    /// device must not DMA into pages about to be unmapped).
    private func detachRing(_ entry: RegisteredBuffers.Entry) {
        if let placed = placedRings.firstIndex(where: { $0.client == entry.client && $0.handle == entry.handle }) {
            placedRings[placed].worker.detach(client: entry.client, handle: entry.handle)
            placedRings.remove(at: placed)
            return
        }
        guard let index = rings.firstIndex(where: { $0.client == entry.client && $0.handle == entry.handle }) else { return }
        drainRings()
        rings.remove(at: index)
    }

    /// Waits (polling) until no command is in flight, posting ring completions and answering
    /// deferred requests. A device that stops answering for 10 s leaves them (logged); the
    /// caller goes on.
    public func drainDevice() {
        guard let queued, queued.commandsInFlight > 0 else { return }
        let clock = MonotonicClock()
        let deadline = clock.now() + 10_000_000_000
        while queued.commandsInFlight > 0 {
            if reapDevice() == 0, clock.now() > deadline {
                log("commands still in flight after 10 s: \(queued.commandsInFlight)")
                return
            }
        }
    }

    /// A ring handed over by the message thread's server (`BlockRingWorker`), checked with the
    /// tokens its client presented there.
    func adoptRing(_ ring: BlockRingServerState, tokens: [BlockCapabilityTokens.Presented]?) {
        presented.replace(client: ring.client, tokens: tokens, table: self.tokens)
        rings.append(ring)
    }

    /// Stops serving a ring handed over (its commands finish first).
    func dropRing(client: UInt64, handle: UInt32) {
        guard let index = rings.firstIndex(where: { $0.client == client && $0.handle == handle }) else { return }
        drainDevice()
        rings.remove(at: index)
        if !rings.contains(where: { $0.client == client }) { presented.forget(client: client) }
    }

    func replaceRights(client: UInt64, tokens: [BlockCapabilityTokens.Presented]?) {
        presented.replace(client: client, tokens: tokens, table: self.tokens)
    }

    /// Clears the device's completion signal (a ring thread waiting on its queue's vector).
    func consumeDeviceSignal() { borrowedQueued?._withUnsafeGuaranteedRef { $0.consumeCompletionSignal() } }

    /// Finishes ring commands in flight (`drainDevice`).
    public func drainRings() { drainDevice() }

    /// `IPCRequestHandler.pollCompletions`, called by the IPC server on every wakeup: answers the
    /// deferred requests whose commands have completed (and posts ring completions that came
    /// with them).
    public func pollCompletions() {
        borrowedQueued?._withUnsafeGuaranteedRef { $0.pollCompletions(self) }
    }

    /// The same with the device opened to its type (`BorrowedQueuedDevice`): calls on the
    /// existential retained it around each one.
    func pollCompletions(_ queued: some QueuedBlockDevice) {
        guard queued.commandsInFlight > 0 else { return }
        queued.consumeCompletionSignal()
        reapDevice(queued)
    }

    /// Every completion so far: ring commands' posted to their rings, deferred requests
    /// answered. Returns how many.
    @discardableResult
    func reapDevice() -> Int {
        guard let queued else { return 0 }
        return reapDevice(queued)
    }

    func reapDevice(_ queued: some QueuedBlockDevice) -> Int {
        var ringCompletions = 0
        let count = queued.reapCompleted { tag, status in
            if tag & DeferredBlockRequests.tagBit != 0 { return finishDeferred(tag: tag, status: status) }
            let index = Int(tag >> 32)
            guard index < borrowedRings.count else { return }
            borrowedRings[index]._withUnsafeGuaranteedRef { $0.complete(slot: Int(tag & 0xFFFF_FFFF), status: status) }
            ringCompletions += 1
        }
        if ringCompletions > 0 {
            for index in borrowedRings.indices {  // no iterator: see pollRings
                borrowedRings[index]._withUnsafeGuaranteedRef { $0.publishCompletions() }
            }
            ringRequests &+= UInt64(ringCompletions)
        }
        return count
    }

    /// Whether an idle polling pass should keep spinning rather than yield the CPU: commands
    /// are on the device and every completion posted so far has been read by its client, so
    /// the next thing to happen is the device's (NVMe polled completion, as the in-process
    /// driver waits). Otherwise a client has work to do, or nothing is in flight: yield.
    public var ringsAwaitDevice: Bool {
        // Asked on every idle pass of a ring thread: borrowed, as in `pollRings`.
        guard let borrowedQueued, borrowedQueued._withUnsafeGuaranteedRef({ $0.commandsInFlight }) > 0 else { return false }
        for index in borrowedRings.indices where borrowedRings[index]._withUnsafeGuaranteedRef({ $0.hasUnreadCompletions }) {
            return false
        }
        return true
    }

    /// One pass over every attached ring: completions reaped and posted; every request the
    /// clients published (as far as the device queue and each CQ have room) checked and
    /// submitted, all under one doorbell. Returns the work done (requests taken + completions),
    /// 0 when idle. Call from the serving thread (`BlockServingLoop` does, in a polling loop,
    /// while rings are attached).
    @discardableResult
    public func pollRings() -> Int {
        guard !borrowedRings.isEmpty, let borrowedQueued else { return 0 }
        return borrowedQueued._withUnsafeGuaranteedRef { $0.pollRings(self) }
    }

    /// The same with the device opened to its type and the rings borrowed (`borrowedRings`):
    /// an idle pass touches no reference count.
    func pollRings(_ queued: some QueuedBlockDevice) -> Int {
        var work = reapDevice(queued)
        queued.beginBatch()
        for index in borrowedRings.indices {  // not enumerated(): unspecialized in a debug build, it allocated per pass
            work += borrowedRings[index]._withUnsafeGuaranteedRef { ring in
                guard let available = ring.published(), available > 0 else { return 0 }
                var room = ring.completionRoom()
                var taken = 0, refused = 0
                while taken < available, room > 0, queued.freeCommandSlots > 0 {
                    let request = ring.take()
                    taken += 1
                    room -= 1
                    let status = submitRingRequest(request, ring: ring, index: index, device: queued)
                    if !status.isOK {
                        ring.post(tag: request.tag, status: status, bytes: 0)
                        refused += 1
                    }
                }
                if taken > 0 { ring.publishHead() }
                if refused > 0 { ring.publishCompletions() }
                return taken
            }
        }
        queued.endBatch()
        return work
    }

    /// Checks one ring request (read once from shared memory by `take`) and submits it. Returns
    /// ok when submitted (its completion comes from the device), else the status to post.
    @inline(__always)
    private func submitRingRequest(_ request: (opcode: UInt8, nsid: UInt32, lba: UInt64, blocks: UInt32, dataOffset: UInt32, tag: UInt64),
                                   ring: BlockRingServerState, index: Int, device: some QueuedBlockDevice) -> IPCStatus {
        guard request.opcode == BlockRing.opcodeRead || request.opcode == BlockRing.opcodeWrite else { return .EINVAL }
        guard let geometry = device.geometry(request.nsid) else { return .ENOENT }
        guard request.blocks > 0 else { return .EINVAL }
        guard request.lba < geometry.blockCount, UInt64(request.blocks) <= geometry.blockCount - request.lba else { return .ERANGE }
        let bytes = Int(request.blocks) * geometry.blockSize
        guard bytes <= device.maximumCommandBytes else { return .EMSGSIZE }
        let offset = Int(request.dataOffset)
        guard offset & 3 == 0, offset <= ring.data.size, bytes <= ring.data.size - offset else { return .EINVAL }
        let write = request.opcode == BlockRing.opcodeWrite
        guard allows(write: write, client: ring.client, uid: ring.uid) else {
            refuse(write ? .blockWrite : .blockRead, needing: .needed(write: write), client: ring.client, uid: ring.uid, pid: 0)
            return .EACCES
        }
        let slot = ring.hold(tag: request.tag, bytes: UInt32(bytes))
        do throws(BlockDeviceError) {
            try device.submit(write: write, nsid: request.nsid, lba: request.lba, blocks: Int(request.blocks),
                              dma: ring.data.slice(offset: offset, size: bytes), tag: UInt64(index) << 32 | UInt64(slot))
        } catch {
            ring.complete(slot: slot, status: error.status)
            ring.publishCompletions()
            deviceErrors &+= 1
        }
        return .ok
    }
}
