import Atomics
import CLimitless
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// One client's shared-memory ring on the server's side (MSG_IPC_RING_ATTACH): a thread that
/// takes requests from the ring, runs the server's handler on them, and puts the replies back.
///
/// A ring slot holds a whole message: the 64-byte header and its inline payload. What a slot
/// cannot carry travels elsewhere: a request too large for a slot is sent on the socket by the
/// client; a reply too large is sent on the client's socket, and the ring gets a marker in its
/// place (status EMSGSIZE, param1 `IPCRefusal.replyOnSocket`) telling the client to read it
/// there. A ring request may name a shared-memory handle: the ring belongs to one connection and
/// resolves that connection's handles (its `SharedRegionTable`; EBADF for any other, and for one
/// released on the socket meanwhile). Handles are shared and released on the socket only: a
/// share, release or attach on the ring is answered ENOTSUP.
///
/// Per message: one slot copied into a private buffer (the peer can write the shared slot at any
/// time: it is decoded and used from the copy), the handler call, one slot written. No allocation,
/// no reference counting.
final class RingService: @unchecked Sendable {
    /// Unchecked: only the ring's own thread touches it (no dynamic exclusivity check per message).
    @exclusivity(unchecked) private var end: RingServerEnd
    private let handler: UnretainedRequestHandler
    private let connection: IPCConnection
    private let regions: SharedRegionTable
    /// A duplicate of the client's socket: replies too large for a slot go there. Owned here, so
    /// the server thread closing its own descriptor cannot make this one point elsewhere.
    private let socket: Int32
    private let policy: RingWaitPolicy
    private let request: UnsafeMutableRawBufferPointer
    private let reply: UnsafeMutableRawBufferPointer
    private let stopping = ManagedAtomic<Bool>(false)
    private var thread: pthread_t?
    /// Requests served so far (tests, statistics).
    let served = ManagedAtomic<Int>(0)

    /// How long the thread sleeps on the ring before looking at the stop flag again.
    private static let sliceNanoseconds: UInt64 = 50_000_000

    init(memory: SharedRingMemory, handler: UnretainedRequestHandler, connection: IPCConnection, regions: SharedRegionTable,
         socket: Int32, policy: RingWaitPolicy) throws(RingError) {
        end = try memory.serverEnd()
        self.handler = handler
        self.connection = connection
        self.regions = regions
        self.socket = socket
        self.policy = policy
        request = .allocate(byteCount: memory.layout.payloadSize, alignment: 16)
        reply = .allocate(byteCount: Message.maxDatagramSize, alignment: 16)
    }

    deinit {
        request.deallocate()
        reply.deallocate()
        closeDescriptor(socket)
    }

    func start() {
        let context = Unmanaged.passRetained(self).toOpaque()
        var handle = pthread_t()
        let result = pthread_create(&handle, nil, { context in
            Unmanaged<RingService>.fromOpaque(context!).takeRetainedValue().run()
            return nil
        }, context)
        precondition(result == 0, "pthread_create failed: \(result)")
        thread = handle
    }

    /// Ends the thread (within one sleep slice, or once the handler call under way returns).
    func stop() {
        stopping.store(true, ordering: .releasing)
        if let thread {
            pthread_join(thread, nil)
            self.thread = nil
        }
    }

    private func run() {
        while !stopping.load(ordering: .acquiring) {
            let ready: Bool
            do {
                ready = try end.requests.waitForMessage(policy: policy, timeoutNanoseconds: Self.sliceNanoseconds)
            } catch {
                return  // impossible indices: a faulty client; the socket stays for it to notice
            }
            if ready { serveOne() }
        }
    }

    private func serveOne() {
        guard end.requests.tryReceive(into: request) else { return }
        served.wrappingIncrement(ordering: .relaxed)
        let slot = UnsafeRawBufferPointer(request)
        var message: Message
        do {
            message = try Message.decode(slot)
        } catch {
            let type = MessageType(rawValue: UInt32(littleEndian: slot.loadUnaligned(as: UInt32.self)))
            return respond(type: type.isKnown ? type : .ipcError, sequence: Message.salvageSequence(slot),
                           reply: IPCReply(status: error.status, param1: error.code))
        }
        if message.flags.contains(.reply) {
            return respond(type: message.type, sequence: message.sequence,
                           reply: IPCReply(status: .EBADMSG, param1: IPCRefusal.replySentToServer))
        }
        message.senderPID = connection.credentials.pid
        message.senderUID = connection.credentials.uid
        message.senderGID = connection.credentials.gid
        switch message.type {
        case .ipcPing:
            return respond(type: message.type, sequence: message.sequence, reply: .ok)
        case .ipcShare, .ipcRelease, .ipcRingAttach, .ipcError:
            return respond(type: message.type, sequence: message.sequence, reply: .error(.ENOTSUP))
        default:
            break
        }
        let inline = UnsafeRawBufferPointer(rebasing: slot[Message.headerSize...])
        // Plain values into the closure (capturing `self` retained it around every call).
        let handler = handler.call, connection = connection
        let answer = regions.serve(message, inline: inline, reply: UnsafeMutableRawBufferPointer(rebasing: reply[Message.headerSize...])) {
            handler.handle(message, $0, connection)
        }
        respond(type: message.type, sequence: message.sequence, reply: answer)
    }

    /// Writes the reply (whose payload the handler put after the header in `reply`) to the
    /// response ring, or to the socket with a marker in the ring when it does not fit a slot.
    private func respond(type: MessageType, sequence: UInt32, reply answer: IPCReply) {
        var header = Message(type: type, flags: .reply, param1: answer.param1, param2: answer.param2, param3: answer.param3,
                             dataPointer: 0, dataSize: UInt32(answer.payloadCount), sequence: sequence, status: answer.status)
        let length = Message.headerSize + answer.payloadCount
        if length > end.responses.payloadSize {
            header.encode(into: reply)
            guard sendOnSocket(length) else { return }  // the client is gone
            header = Message(type: type, flags: .reply, param1: IPCRefusal.replyOnSocket, sequence: sequence, status: .EMSGSIZE)
            return enqueue(header, payloadCount: 0)
        }
        enqueue(header, payloadCount: answer.payloadCount)
    }

    private func enqueue(_ header: Message, payloadCount: Int) {
        let payload = reply.baseAddress! + Message.headerSize
        while !stopping.load(ordering: .acquiring) {
            let done: Bool
            do {
                done = try end.responses.tryEnqueue { slot in
                    header.encode(into: slot)
                    if payloadCount > 0 { (slot.baseAddress! + Message.headerSize).copyMemory(from: payload, byteCount: payloadCount) }
                }
                if !done { _ = try end.responses.waitForSpace(timeoutNanoseconds: Self.sliceNanoseconds) }
            } catch {
                return
            }
            if done {
                end.responses.flush()
                return
            }
        }
    }

    /// One datagram on the client's (non-blocking) socket, waiting for room; false if it is gone.
    private func sendOnSocket(_ length: Int) -> Bool {
        while !stopping.load(ordering: .acquiring) {
            let sent = CL_ipc_send(socket, reply.baseAddress, length, nil, 0, nil, 0, CL_MSG_DONTWAIT | CL_MSG_NOSIGNAL)
            if sent >= 0 { return true }
            let code = CL_errno()
            if code == EINTR { continue }
            guard code == EAGAIN else { return false }
            var entry = pollfd(fd: socket, events: Int16(POLLOUT), revents: 0)
            _ = poll(&entry, 1, 50)
        }
        return false
    }
}
