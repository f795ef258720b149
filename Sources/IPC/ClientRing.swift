import CLimitless
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A client's shared-memory ring to its server (`IPCClient.attachRing`): requests out, replies
/// in, each slot a whole message (header and inline payload).
final class ClientRing {
    /// Unchecked: only the client's calling thread touches it (IPCClient is not thread-safe), and a
    /// dynamic exclusivity check per message would cost more than the rest of the ring's path.
    @exclusivity(unchecked) var end: RingClientEnd
    let policy: RingWaitPolicy
    /// A private copy of the last reply slot: the peer can write the shared one at any time.
    let response: UnsafeMutableRawBufferPointer
    let payloadSize: Int
    /// Replies received over the ring (tests, statistics).
    var exchanges = 0

    init(end: consuming RingClientEnd, policy: RingWaitPolicy) {
        payloadSize = end.payloadSize
        self.end = end
        self.policy = policy
        response = .allocate(byteCount: payloadSize, alignment: 16)
    }

    deinit { response.deallocate() }
}

extension IPCClient {
    /// Whether `sendReceive` goes over a shared-memory ring.
    public var isRingAttached: Bool { ringChannel != nil }

    /// Replies that came over the ring since it was attached (a reply too large for a slot counts
    /// too: its marker came over the ring).
    public var ringExchanges: Int { ringChannel?.takeUnretainedValue().exchanges ?? 0 }

    /// Asks the server for a shared-memory ring (MSG_IPC_RING_ATTACH): it creates the memfd,
    /// passes it back (SCM_RIGHTS) and serves the ring on a thread of its own with the same
    /// handler as socket messages. From then on `sendReceive` (both forms) goes over the ring
    /// for requests whose header and inline payload fit a slot (`slotSize` minus 8 bytes), and
    /// over the socket for larger ones. A request naming a shared-memory handle goes over the
    /// ring too (the ring resolves this connection's handles); `send`, `receive`, `share` and
    /// `release` stay on the socket. A reply too large for a slot comes on the socket by itself.
    ///
    /// Throws `.refused(.ipcRingAttach, status)`: ENOTSUP when the server does not offer rings
    /// (`IPCServer.Configuration.maxRings`), EBUSY when it has none left or this connection has
    /// one, EINVAL for a layout it does not accept, EPROTO for a memfd that fails validation.
    ///
    /// `capacity` is small by default: `sendReceive` has one request in flight at a time, and a
    /// ring that cycles through few slots keeps them hot on both cores. Measured on a quiet host
    /// (README, "the ring's round trip"): ring round trip over its cache-line floor 0.92-1.09x
    /// with 4 slots, 1.14-1.17x with 8, 1.36x with 16, about 1.4x with 64.
    public func attachRing(slotSize: Int = 256, capacity: Int = 4, policy: RingWaitPolicy = .adaptive,
                           timeout: Duration? = .seconds(10)) throws(IPCError) {
        guard ringChannel == nil else { throw .refused(.ipcRingAttach, .EBUSY) }
        keepDescriptors = true
        defer { keepDescriptors = false }
        closeDescriptor(keptDescriptor)
        keptDescriptor = -1
        let sequence = try send(Message(type: .ipcRingAttach, param1: UInt64(max(0, slotSize)), param2: UInt64(max(0, capacity))))
        let reply = try awaitReply(sequence: sequence, timeout: timeout)
        let fd = keptDescriptor
        keptDescriptor = -1
        guard reply.status.isOK, fd >= 0 else {
            closeDescriptor(fd)
            throw .refused(.ipcRingAttach, reply.status.isOK ? .EPROTO : reply.status)
        }
        do {
            let memory = try SharedRingMemory.attach(descriptor: FileDescriptor(rawValue: fd))
            guard memory.layout.payloadSize >= Message.headerSize else { throw RingError.messageTooLarge(size: Message.headerSize, limit: memory.layout.payloadSize) }
            ringChannel = Unmanaged.passRetained(ClientRing(end: try memory.clientEnd(), policy: policy))
        } catch {
            throw .refused(.ipcRingAttach, .EPROTO)
        }
    }

    /// Stops using the ring (requests go over the socket again). The server's ring thread ends
    /// when this connection closes.
    public func detachRing() {
        ringChannel?.release()
        ringChannel = nil
    }

    // MARK: The ring path of sendReceive

    private enum RingOutcome {
        case reply(Message, UnsafeRawBufferPointer)
        /// The reply was too large for a slot: read it from the socket.
        case onSocket
        /// The request does not fit a slot: send it on the socket.
        case tooLarge
        case failure(IPCError)
    }

    /// `sendReceive` over the ring; nil when the request does not fit a slot.
    func ringSendReceive(_ message: Message, payload: UnsafeRawBufferPointer, timeout: Duration?) throws(IPCError) -> Reply? {
        guard let (header, view) = try ringExchange(message, payload: payload, timeout: timeout) else { return nil }
        return Reply(message: header, payload: Array(view))
    }

    /// The allocation-free form; nil when the request does not fit a slot.
    func ringSendReceive(_ message: Message, payload: UnsafeRawBufferPointer, into reply: UnsafeMutableRawBufferPointer,
                         timeout: Duration?) throws(IPCError) -> (Message, Int)? {
        guard let (header, view) = try ringExchange(message, payload: payload, timeout: timeout) else { return nil }
        return (header, Self.copy(view, into: reply))
    }

    /// One request and its reply over the ring. The reply view is valid until the next call.
    private func ringExchange(_ message: Message, payload: UnsafeRawBufferPointer,
                              timeout: Duration?) throws(IPCError) -> (Message, UnsafeRawBufferPointer)? {
        guard let channel = ringChannel else { return nil }
        guard payload.count <= Message.maxInlinePayload else { throw .payloadTooLarge(payload.count) }
        var request = message
        let sequence = nextSequence()
        request.sequence = sequence
        request.senderPID = 0
        request.senderUID = 0
        request.senderGID = 0
        let limit = timeout.map { UInt64(max(0, $0.nanoseconds)) } ?? .max
        let socket = fd
        // Guaranteed reference: no retain or release of the ring per message.
        let outcome = channel._withUnsafeGuaranteedRef { ring in
            Self.exchange(ring, request, payload: payload, timeoutNanoseconds: limit, socket: socket)
        }
        switch outcome {
        case .reply(let header, let view): return (header, view)
        case .tooLarge: return nil
        case .onSocket: return try replyTo(sequence: sequence, timeout: timeout)
        case .failure(let error):
            if case .timedOut = error { throw .timedOut(timeout ?? .zero) }
            throw error
        }
    }

    private static let sliceNanoseconds: UInt64 = 100_000_000

    private static func exchange(_ ring: ClientRing, _ request: Message, payload: UnsafeRawBufferPointer,
                                 timeoutNanoseconds: UInt64, socket: Int32) -> RingOutcome {
        let count = payload.count
        guard Message.headerSize + count <= ring.payloadSize else { return .tooLarge }
        let start = CL_monotonic_ns()
        do {
            while true {
                let sent = try ring.end.requests.tryEnqueue { slot in
                    request.encode(into: slot)
                    if count > 0 { (slot.baseAddress! + Message.headerSize).copyMemory(from: payload.baseAddress!, byteCount: count) }
                }
                if sent { break }
                let elapsed = CL_monotonic_ns() &- start
                if elapsed >= timeoutNanoseconds { return .failure(.timedOut(.zero)) }
                _ = try ring.end.requests.waitForSpace(timeoutNanoseconds: min(sliceNanoseconds, timeoutNanoseconds - elapsed))
                if hungUp(socket) { return .failure(.disconnected) }
            }
            ring.end.requests.flush()
            while true {
                let elapsed = CL_monotonic_ns() &- start
                if elapsed >= timeoutNanoseconds && !ring.end.responses.hasMessage { return .failure(.timedOut(.zero)) }
                let ready = try ring.end.responses.waitForMessage(policy: ring.policy,
                                                                   timeoutNanoseconds: min(sliceNanoseconds, timeoutNanoseconds &- elapsed))
                if !ready {
                    // The server died (or stopped serving this ring): its socket end says so.
                    if hungUp(socket) { return .failure(.disconnected) }
                    continue
                }
                guard ring.end.responses.tryReceive(into: ring.response) else { continue }
                let slot = UnsafeRawBufferPointer(ring.response)
                let header: Message
                do { header = try Message.decode(slot) } catch { return .failure(.badReply(error)) }
                // A reply to a request that timed out earlier: skip it.
                guard header.sequence == request.sequence, header.flags.contains(.reply) else { continue }
                ring.exchanges &+= 1
                if header.status == .EMSGSIZE && header.param1 == IPCRefusal.replyOnSocket { return .onSocket }
                switch header.data {
                case .inline(let offset, let size):
                    return .reply(header, UnsafeRawBufferPointer(rebasing: slot[(Message.headerSize + offset)..<(Message.headerSize + offset + size)]))
                case .none, .shared:
                    return .reply(header, UnsafeRawBufferPointer(start: nil, count: 0))
                }
            }
        } catch {
            return .failure(.systemCall("shared-memory ring (\(error))", .protocolError))
        }
    }

    /// POLLRDHUP (glibc names it only with _GNU_SOURCE).
    private static let pollReadHangUp: Int16 = 0x2000

    /// Whether the server's end of the socket is closed; never blocks.
    private static func hungUp(_ socket: Int32) -> Bool {
        var entry = pollfd(fd: socket, events: Int16(POLLIN) | pollReadHangUp, revents: 0)
        guard poll(&entry, 1, 0) > 0 else { return false }
        return entry.revents & (Int16(POLLHUP) | pollReadHangUp | Int16(POLLERR)) != 0
    }
}
