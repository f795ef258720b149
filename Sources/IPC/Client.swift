import CLimitless
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A connection to one server. Not thread-safe: one thread (or one actor) uses it at a time.
///
/// Every request gets a sequence number (`send` returns it) and its reply carries the same
/// number, so after several asynchronous `send`s the replies from `receive` can be matched;
/// `sendReceive` waits for its own reply and keeps others for later `receive` calls.
///
/// Hot-path forms create no arrays or other heap objects per call:
/// `send`, `sendReceive(_:payload:into:timeout:)`, `receive(into:timeout:)` and
/// `sendBatch(_: UnsafeBufferPointer<Message>)`. The forms returning `Reply` or `[UInt32]` are
/// convenience wrappers that allocate their results. Replies that arrive while `sendReceive`
/// waits for another sequence are kept in a stash of `stashCapacity` preallocated slots (their
/// payload storage, `stashCapacity * Message.maxInlinePayload` bytes, is allocated once, on the
/// first out-of-order reply); only when more replies than that are waiting does the stash spill
/// into a growing array (an allocation, on that rare path only).
public final class IPCClient {
    /// A reply with its inline payload copied out.
    public struct Reply: Equatable, Sendable {
        public var message: Message
        public var payload: [UInt8]
        public var status: IPCStatus { message.status }
        public var sequence: UInt32 { message.sequence }
    }

    public let endpoint: IPCEndpoint
    let fd: Int32
    /// The sequence number of the last request sent (0 before the first). Internal so tests
    /// can start it near the wrap.
    var lastSequence: UInt32 = 0
    private let receiveBuffer: UnsafeMutableRawBufferPointer
    private let headerBuffer: UnsafeMutableRawBufferPointer
    private static let batchLimit = 64

    /// Out-of-order replies kept without allocating: as many as a server queues per client.
    public static let stashCapacity = IPCServer.Configuration().queueDepth
    /// Per slot: the header and inline payload length; payload bytes live in `stashStorage`.
    private let stashMessages: UnsafeMutablePointer<Message>
    private let stashLengths: UnsafeMutablePointer<Int>
    /// Occupied slot indices, oldest first (`stashCount` of them), and the free ones.
    private let stashOrder: UnsafeMutablePointer<Int>
    private let stashFree: UnsafeMutablePointer<Int>
    private var stashCount = 0
    private var stashFreeCount: Int
    /// `stashCapacity * Message.maxInlinePayload` bytes, allocated on first use.
    private var stashStorage: UnsafeMutableRawPointer?
    /// Replies beyond the slots, newer than every slotted one (the rare path; allocates).
    private var overflow: [Reply] = []
    private var overflowCount = 0  // overflow.count, read without touching the array

    // Ring hooks (ClientRing.swift).
    /// The attached shared-memory ring; unmanaged so the per-message path touches no count.
    var ringChannel: Unmanaged<ClientRing>?
    /// While set, a descriptor arriving with a reply is kept in `keptDescriptor`, not closed.
    var keepDescriptors = false
    var keptDescriptor: Int32 = -1

    private init(endpoint: IPCEndpoint, fd: Int32) {
        self.endpoint = endpoint
        self.fd = fd
        receiveBuffer = .allocate(byteCount: Message.maxDatagramSize, alignment: 16)
        headerBuffer = .allocate(byteCount: Message.headerSize * Self.batchLimit, alignment: 16)
        let capacity = Self.stashCapacity
        stashMessages = .allocate(capacity: capacity)
        stashMessages.initialize(repeating: Message(type: .ipcPing), count: capacity)
        stashLengths = .allocate(capacity: capacity)
        stashLengths.initialize(repeating: 0, count: capacity)
        stashOrder = .allocate(capacity: capacity)
        stashOrder.initialize(repeating: 0, count: capacity)
        stashFree = .allocate(capacity: capacity)
        for slot in 0..<capacity { (stashFree + slot).initialize(to: capacity - 1 - slot) }
        stashFreeCount = capacity
    }

    deinit {
        ringChannel?.release()
        closeDescriptor(keptDescriptor)
        closeDescriptor(fd)
        receiveBuffer.deallocate()
        headerBuffer.deallocate()
        stashMessages.deallocate()
        stashLengths.deallocate()
        stashOrder.deallocate()
        stashFree.deallocate()
        stashStorage?.deallocate()
    }

    /// Connects to the server listening at `DIR/NAME.sock`.
    public static func connect(name: String, directory: String = IPCRuntime.defaultDirectory) throws(IPCError) -> IPCClient {
        let endpoint = try IPCEndpoint(name: name, directory: directory)
        return IPCClient(endpoint: endpoint, fd: try endpoint.connectSocket())
    }

    /// Connects to the server whose `NAME.pid` file in the runtime directory holds `pid`.
    public static func connect(pid: Int32, directory: String = IPCRuntime.defaultDirectory) throws(IPCError) -> IPCClient {
        let endpoint = try IPCEndpoint.lookup(pid: pid, directory: directory)
        return IPCClient(endpoint: endpoint, fd: try endpoint.connectSocket())
    }

    /// The sequence number a client gives the request after one numbered `sequence`: the next
    /// integer, except that 0 is skipped on the wrap (`UInt32.max` is followed by 1), since 0
    /// marks error replies to undecodable datagrams.
    @inlinable
    public static func sequence(after sequence: UInt32) -> UInt32 {
        sequence == .max ? 1 : sequence + 1
    }

    /// The sequence number `offset` requests after `first` (`offset` ≥ 0), skipping 0 on the
    /// wrap: `sequence(first, advancedBy: 1) == sequence(after: first)`. With `first` from
    /// `sendBatch(_: UnsafeBufferPointer<Message>)`, the sequence of the batch's `offset`th message.
    @inlinable
    public static func sequence(_ first: UInt32, advancedBy offset: Int) -> UInt32 {
        precondition(offset >= 0, "offset must not be negative")
        if offset == 0 { return first }
        let period: UInt64 = 0xFFFF_FFFF  // 1...UInt32.max
        let base = UInt64(first == 0 ? period : UInt64(first)) - 1  // 0 behaves like UInt32.max
        return UInt32((base + UInt64(offset) % period) % period + 1)
    }

    func nextSequence() -> UInt32 {
        lastSequence = Self.sequence(after: lastSequence)
        return lastSequence
    }

    // MARK: Sending

    /// Sends one request without waiting; returns its sequence number (the message's own
    /// `sequence` and sender fields are replaced). Blocks only while the socket buffer is full.
    @discardableResult
    public func send(_ message: Message, payload: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0)) throws(IPCError) -> UInt32 {
        try send(message, payload: payload, descriptor: -1)
    }

    func send(_ message: Message, payload: UnsafeRawBufferPointer, descriptor: Int32) throws(IPCError) -> UInt32 {
        guard payload.count <= Message.maxInlinePayload else { throw .payloadTooLarge(payload.count) }
        let sequence = encodeForSending(message, into: headerBuffer)
        var fds = descriptor
        let sent = retryingEINTR {
            CL_ipc_send(fd, headerBuffer.baseAddress, Message.headerSize, payload.baseAddress, payload.count,
                        &fds, descriptor >= 0 ? 1 : 0, CL_MSG_NOSIGNAL)
        }
        try check(sent, "sendmsg")
        return sequence
    }

    /// Numbers `message` and encodes it into `header`; the sender fields go out as zero, since
    /// the receiver fills them from SO_PEERCRED whatever a client writes there.
    private func encodeForSending(_ message: Message, into header: UnsafeMutableRawBufferPointer) -> UInt32 {
        var message = message
        message.sequence = nextSequence()
        message.senderPID = 0
        message.senderUID = 0
        message.senderGID = 0
        message.encode(into: header)
        return message.sequence
    }

    /// One attempt to send that never blocks (the async API's): the sequence number, or nil when
    /// the socket buffer is full (then no sequence number is used up).
    func trySendNow(_ message: Message, payload: UnsafeRawBufferPointer) throws(IPCError) -> UInt32? {
        guard payload.count <= Message.maxInlinePayload else { throw .payloadTooLarge(payload.count) }
        let previous = lastSequence
        let sequence = encodeForSending(message, into: headerBuffer)
        let sent = retryingEINTR {
            CL_ipc_send(fd, headerBuffer.baseAddress, Message.headerSize, payload.baseAddress, payload.count, nil, 0,
                        CL_MSG_NOSIGNAL | CL_MSG_DONTWAIT)
        }
        if case .failure(let errno) = sent, errno == .resourceTemporarilyUnavailable || errno == .noBufferSpace {
            lastSequence = previous
            return nil
        }
        try check(sent, "sendmsg")
        return sequence
    }

    /// Sends bytes exactly as given (tests use it to play a misbehaving client).
    func sendRaw(_ bytes: UnsafeRawBufferPointer, descriptors: [Int32] = []) throws(IPCError) {
        let sent = descriptors.withUnsafeBufferPointer { fds in
            retryingEINTR {
                CL_ipc_send(fd, bytes.baseAddress, bytes.count, nil, 0, fds.baseAddress, Int32(fds.count), CL_MSG_NOSIGNAL)
            }
        }
        try check(sent, "sendmsg")
    }

    /// Sends many header-only requests with one sendmmsg(2) per 64 (one wakeup of the server per
    /// call, not per message); each gets its own reply. Allocates nothing.
    ///
    /// Returns the sequence number of the FIRST message (0 if `messages` is empty: nothing is
    /// sent). The batch's numbers are consecutive, except that 0 is skipped on the wrap
    /// (`UInt32.max` is followed by 1): message `i` has `IPCClient.sequence(first, advancedBy: i)`.
    /// The messages' own `sequence` and sender fields are ignored.
    public func sendBatch(_ messages: UnsafeBufferPointer<Message>) throws(IPCError) -> UInt32 {
        var first: UInt32 = 0
        var start = 0
        while start < messages.count {
            let count = min(Self.batchLimit, messages.count - start)
            for index in 0..<count {
                let sequence = encodeForSending(messages[start + index],
                                                into: UnsafeMutableRawBufferPointer(rebasing: headerBuffer[(index * Message.headerSize)...]))
                if start == 0 && index == 0 { first = sequence }
            }
            var sentSoFar = 0
            while sentSoFar < count {
                let remaining = count - sentSoFar
                let sent = withUnsafeTemporaryAllocation(of: UnsafeRawPointer?.self, capacity: remaining) { heads in
                    withUnsafeTemporaryAllocation(of: Int.self, capacity: remaining) { lengths in
                        withUnsafeTemporaryAllocation(of: UnsafeRawPointer?.self, capacity: remaining) { bodies in
                            withUnsafeTemporaryAllocation(of: Int.self, capacity: remaining) { bodyLengths in
                                for index in 0..<remaining {
                                    heads[index] = UnsafeRawPointer(headerBuffer.baseAddress! + (sentSoFar + index) * Message.headerSize)
                                    lengths[index] = Message.headerSize
                                    bodies[index] = nil
                                    bodyLengths[index] = 0
                                }
                                return retryingEINTR {
                                    CL_ipc_sendmmsg(fd, heads.baseAddress, lengths.baseAddress, bodies.baseAddress,
                                                    bodyLengths.baseAddress, UInt32(remaining), CL_MSG_NOSIGNAL)
                                }
                            }
                        }
                    }
                }
                sentSoFar += try check(sent.map { Int($0) }, "sendmmsg")
            }
            start += count
        }
        return first
    }

    /// As `sendBatch(_: UnsafeBufferPointer<Message>)`, returning every message's sequence
    /// number in order (allocates the result).
    public func sendBatch(_ messages: [Message]) throws(IPCError) -> [UInt32] {
        let first = try messages.withUnsafeBufferPointer { (buffer) throws(IPCError) -> UInt32 in try sendBatch(buffer) }
        var sequences: [UInt32] = []
        sequences.reserveCapacity(messages.count)
        var sequence = first
        for _ in messages {
            sequences.append(sequence)
            sequence = Self.sequence(after: sequence)
        }
        return sequences
    }

    // MARK: Receiving

    /// The next reply (a stashed one first), waiting up to `timeout` (nil: forever).
    public func receive(timeout: Duration? = nil) throws(IPCError) -> Reply {
        let (message, payload) = try nextReply(timeout: timeout)
        return Reply(message: message, payload: Array(payload))
    }

    /// The allocation-free form: decodes the next reply (a stashed one first) and copies up to
    /// `payload.count` bytes of its inline payload into `payload`; returns the header and the
    /// reply's full payload length (more than `payload.count` if it was truncated).
    public func receive(into payload: UnsafeMutableRawBufferPointer, timeout: Duration? = nil) throws(IPCError) -> (Message, Int) {
        let (message, received) = try nextReply(timeout: timeout)
        return (message, Self.copy(received, into: payload))
    }

    /// Sends a request and waits for its reply (replies to earlier `send`s that arrive first are
    /// kept for `receive`). A reply's non-OK status is returned, not thrown: it is the server's
    /// answer. Thrown: transport failures, `.timedOut`.
    public func sendReceive(_ message: Message, payload: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0),
                            timeout: Duration? = .seconds(10)) throws(IPCError) -> Reply {
        if ringChannel != nil, let reply = try ringSendReceive(message, payload: payload, timeout: timeout) { return reply }
        let sequence = try send(message, payload: payload)
        return try awaitReply(sequence: sequence, timeout: timeout)
    }

    /// The allocation-free form of `sendReceive`: sends a request, waits for its reply and copies
    /// up to `reply.count` bytes of the reply's inline payload into `reply`. Returns the reply's
    /// header and its full payload length, which exceeds `reply.count` when the payload was
    /// truncated. Replies to other sequences that arrive first are stashed for `receive`.
    public func sendReceive(_ message: Message, payload: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0),
                            into reply: UnsafeMutableRawBufferPointer,
                            timeout: Duration? = .seconds(10)) throws(IPCError) -> (Message, Int) {
        if ringChannel != nil, let result = try ringSendReceive(message, payload: payload, into: reply, timeout: timeout) { return result }
        let sequence = try send(message, payload: payload)
        let (header, received) = try replyTo(sequence: sequence, timeout: timeout)
        return (header, Self.copy(received, into: reply))
    }

    /// `awaitReply` into the caller's buffer (the allocation-free form; for `ReconnectingIPCClient`).
    func awaitReply(sequence: UInt32, into reply: UnsafeMutableRawBufferPointer, timeout: Duration?) throws(IPCError) -> (Message, Int) {
        let (header, received) = try replyTo(sequence: sequence, timeout: timeout)
        return (header, Self.copy(received, into: reply))
    }

    func awaitReply(sequence: UInt32, timeout: Duration?) throws(IPCError) -> Reply {
        let (message, payload) = try replyTo(sequence: sequence, timeout: timeout)
        return Reply(message: message, payload: Array(payload))
    }

    /// Copies what fits; returns the full length.
    static func copy(_ payload: UnsafeRawBufferPointer, into buffer: UnsafeMutableRawBufferPointer) -> Int {
        let count = min(payload.count, buffer.count)
        if count > 0 { buffer.baseAddress!.copyMemory(from: payload.baseAddress!, byteCount: count) }
        return payload.count
    }

    /// The next reply, stashed or received. The payload view points into this client's buffers
    /// and is valid until the next call on it.
    private func nextReply(timeout: Duration?) throws(IPCError) -> (Message, UnsafeRawBufferPointer) {
        if let stashed = takeStashed(sequence: nil) { return stashed }
        let (message, count) = try receiveIntoBuffer(deadline: deadline(timeout), timeout: timeout)
        return (message, receivedPayload(count))
    }

    /// The reply with `sequence`, stashed or received (stashing others); view as `nextReply`.
    func replyTo(sequence: UInt32, timeout: Duration?) throws(IPCError) -> (Message, UnsafeRawBufferPointer) {
        if let stashed = takeStashed(sequence: sequence) { return stashed }
        let deadline = deadline(timeout)
        while true {
            let (message, count) = try receiveIntoBuffer(deadline: deadline, timeout: timeout)
            if message.sequence == sequence { return (message, receivedPayload(count)) }
            stash(message, payloadCount: count)
        }
    }

    func receivedPayload(_ count: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: receiveBuffer.baseAddress! + Message.headerSize, count: count)
    }

    // MARK: Stash of out-of-order replies

    /// Keeps the reply just received into `receiveBuffer`: in a slot while one is free and
    /// nothing has spilled (so slots always hold older replies than `overflow`), else in `overflow`.
    func stash(_ message: Message, payloadCount: Int) {
        let payload = receivedPayload(payloadCount)
        guard overflowCount == 0, stashFreeCount > 0 else {
            overflow.append(Reply(message: message, payload: Array(payload)))
            overflowCount += 1
            return
        }
        let storage: UnsafeMutableRawPointer
        if let existing = stashStorage {
            storage = existing
        } else {
            storage = .allocate(byteCount: Self.stashCapacity * Message.maxInlinePayload, alignment: 16)
            stashStorage = storage
        }
        stashFreeCount -= 1
        let slot = stashFree[stashFreeCount]
        stashMessages[slot] = message
        stashLengths[slot] = payloadCount
        if payloadCount > 0 {
            (storage + slot * Message.maxInlinePayload).copyMemory(from: payload.baseAddress!, byteCount: payloadCount)
        }
        stashOrder[stashCount] = slot
        stashCount += 1
    }

    /// Removes and returns the oldest stashed reply (with `sequence`, if given). The payload view
    /// is valid until the next `stash`.
    func takeStashed(sequence: UInt32?) -> (Message, UnsafeRawBufferPointer)? {
        if stashCount == 0 && overflowCount == 0 { return nil }
        for position in 0..<stashCount {
            let slot = stashOrder[position]
            if let sequence, stashMessages[slot].sequence != sequence { continue }
            for later in position..<(stashCount - 1) { stashOrder[later] = stashOrder[later + 1] }
            stashCount -= 1
            stashFree[stashFreeCount] = slot
            stashFreeCount += 1
            let payload = UnsafeRawBufferPointer(start: stashStorage! + slot * Message.maxInlinePayload, count: stashLengths[slot])
            return (stashMessages[slot], payload)
        }
        guard overflowCount > 0 else { return nil }
        let index: Int
        if let sequence {
            guard let found = overflow.firstIndex(where: { $0.sequence == sequence }) else { return nil }
            index = found
        } else {
            index = 0
        }
        let reply = overflow.remove(at: index)
        overflowCount -= 1
        let count = reply.payload.count
        reply.payload.withUnsafeBytes { bytes in
            if count > 0 { (receiveBuffer.baseAddress! + Message.headerSize).copyMemory(from: bytes.baseAddress!, byteCount: count) }
        }
        return (reply.message, receivedPayload(count))
    }

    // MARK: Shared memory

    /// Sends the region's descriptor to the server once; returns the handle to name it by in
    /// later messages (`Message.setSharedData(handle:offset:count:)`). The region stays ours too.
    public func share(_ memory: borrowing SharedMemory, timeout: Duration? = .seconds(10)) throws(IPCError) -> UInt32 {
        try share(descriptor: memory.fd.rawValue, timeout: timeout)
    }

    /// As `share(_:)`, for any memfd sealed at least against shrinking (the server refuses others
    /// with EINVAL).
    public func share(descriptor: Int32, timeout: Duration? = .seconds(10)) throws(IPCError) -> UInt32 {
        let sequence = try send(Message(type: .ipcShare), payload: UnsafeRawBufferPointer(start: nil, count: 0), descriptor: descriptor)
        let reply = try awaitReply(sequence: sequence, timeout: timeout)
        guard reply.status.isOK, reply.message.param1 > 0, reply.message.param1 <= UInt64(UInt32.max) else {
            throw .refused(.ipcShare, reply.status.isOK ? .EPROTO : reply.status)
        }
        return UInt32(reply.message.param1)
    }

    /// Sends `message` with `descriptor` attached (SCM_RIGHTS) and waits for the reply: for the
    /// types a server takes a descriptor with (`IPCServer.Configuration.descriptorMessages`),
    /// such as MSG_BLOCK_PRESENT_CAPABILITY. The descriptor stays ours too.
    public func sendReceive(_ message: Message, descriptor: Int32, timeout: Duration? = .seconds(10)) throws(IPCError) -> Reply {
        let sequence = try send(message, payload: UnsafeRawBufferPointer(start: nil, count: 0), descriptor: descriptor)
        return try awaitReply(sequence: sequence, timeout: timeout)
    }

    /// Tells the server to forget a handle (close its descriptor, unmap).
    public func release(handle: UInt32, timeout: Duration? = .seconds(10)) throws(IPCError) {
        // On the socket, where handles are shared and released (a ring answers ENOTSUP).
        let sequence = try send(Message(type: .ipcRelease, param1: UInt64(handle)))
        let reply = try awaitReply(sequence: sequence, timeout: timeout)
        guard reply.status.isOK else { throw .refused(.ipcRelease, reply.status) }
    }

    // MARK: Plumbing

    private func deadline(_ timeout: Duration?) -> Int64? {
        timeout.map { monotonicNanoseconds() + $0.nanoseconds }
    }

    @discardableResult
    private func check(_ result: Result<Int, Errno>, _ call: String) throws(IPCError) -> Int {
        switch result {
        case .success(let value): return value
        case .failure(let errno):
            if errno == .brokenPipe || errno == .connectionReset || errno == .socketNotConnected { throw .disconnected }
            throw .systemCall(call, errno)
        }
    }

    /// Waits for and decodes one datagram into `receiveBuffer`; returns the header and the inline
    /// payload length.
    private func receiveIntoBuffer(deadline: Int64?, timeout: Duration?) throws(IPCError) -> (Message, Int) {
        while true {
            var milliseconds: Int32 = -1
            if let deadline {
                let left = deadline - monotonicNanoseconds()
                if left <= 0 { throw .timedOut(timeout ?? .zero) }
                milliseconds = Int32(clamping: (left + 999_999) / 1_000_000)
            }
            var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&entry, 1, milliseconds)
            if ready < 0 {
                if CL_errno() == EINTR { continue }
                throw .systemCall("poll", Errno(rawValue: CL_errno()))
            }
            if ready == 0 { continue }  // the deadline check above decides
            if let received = try receiveAvailable() { return received }
        }
    }

    /// One datagram if one is there (never waits): decoded into `receiveBuffer`, returning the
    /// header and the inline payload length; nil when there is none yet.
    func receiveAvailable() throws(IPCError) -> (Message, Int)? {
        while true {
            var fds: (Int32, Int32) = (-1, -1)
            var fdCount: Int32 = 0, flags: Int32 = 0
            let count = withUnsafeMutableBytes(of: &fds) { raw in
                CL_ipc_recv(fd, receiveBuffer.baseAddress, receiveBuffer.count, raw.baseAddress!.assumingMemoryBound(to: Int32.self),
                            2, &fdCount, &flags, CL_MSG_DONTWAIT)
            }
            // Servers send no descriptors in replies (but the ring attach's); any others that come
            // are closed, never leaked.
            if fdCount > 0 {
                if keepDescriptors {
                    closeDescriptor(keptDescriptor)
                    keptDescriptor = fds.0
                } else {
                    closeDescriptor(fds.0)
                }
            }
            if fdCount > 1 { closeDescriptor(fds.1) }
            if count < 0 {
                let code = CL_errno()
                if code == EINTR { continue }
                if code == EAGAIN { return nil }
                if code == ECONNRESET { throw .disconnected }
                throw .systemCall("recvmsg", Errno(rawValue: code))
            }
            if count == 0 { throw .disconnected }
            if flags & CL_MSG_TRUNC != 0 { throw .badReply(.oversized(count: count, limit: Message.maxDatagramSize)) }
            let datagram = UnsafeRawBufferPointer(start: receiveBuffer.baseAddress, count: count)
            let message: Message
            do { message = try Message.decode(datagram) } catch { throw .badReply(error) }
            return (message, count - Message.headerSize)
        }
    }
}
