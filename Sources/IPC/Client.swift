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
    private var lastSequence: UInt32 = 0
    private let receiveBuffer: UnsafeMutableRawBufferPointer
    private let headerBuffer: UnsafeMutableRawBufferPointer
    private var stashed: [Reply] = []
    private static let batchLimit = 64

    private init(endpoint: IPCEndpoint, fd: Int32) {
        self.endpoint = endpoint
        self.fd = fd
        receiveBuffer = .allocate(byteCount: Message.maxDatagramSize, alignment: 16)
        headerBuffer = .allocate(byteCount: Message.headerSize * Self.batchLimit, alignment: 16)
    }

    deinit {
        closeDescriptor(fd)
        receiveBuffer.deallocate()
        headerBuffer.deallocate()
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

    private func nextSequence() -> UInt32 {
        lastSequence &+= 1
        if lastSequence == 0 { lastSequence = 1 }  // 0 marks error replies to undecodable datagrams
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
        var message = message
        message.sequence = nextSequence()
        message.senderPID = 0
        message.senderUID = 0
        message.senderGID = 0
        message.encode(into: headerBuffer)
        var fds = descriptor
        let sent = retryingEINTR {
            CL_ipc_send(fd, headerBuffer.baseAddress, Message.headerSize, payload.baseAddress, payload.count,
                        &fds, descriptor >= 0 ? 1 : 0, CL_MSG_NOSIGNAL)
        }
        try check(sent, "sendmsg")
        return message.sequence
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
    /// call, not per message); returns their sequence numbers in order. Each gets its own reply.
    public func sendBatch(_ messages: [Message]) throws(IPCError) -> [UInt32] {
        var sequences: [UInt32] = []
        sequences.reserveCapacity(messages.count)
        var start = 0
        while start < messages.count {
            let count = min(Self.batchLimit, messages.count - start)
            for index in 0..<count {
                var message = messages[start + index]
                message.sequence = nextSequence()
                message.senderPID = 0
                message.senderUID = 0
                message.senderGID = 0
                message.encode(into: UnsafeMutableRawBufferPointer(rebasing: headerBuffer[(index * Message.headerSize)...]))
                sequences.append(message.sequence)
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
        return sequences
    }

    // MARK: Receiving

    /// The next reply (a stashed one first), waiting up to `timeout` (nil: forever).
    public func receive(timeout: Duration? = nil) throws(IPCError) -> Reply {
        if !stashed.isEmpty { return stashed.removeFirst() }
        let (message, count) = try receiveIntoBuffer(deadline: deadline(timeout), timeout: timeout)
        return Reply(message: message, payload: Array(UnsafeRawBufferPointer(start: receiveBuffer.baseAddress! + Message.headerSize, count: count)))
    }

    /// The allocation-free form: decodes the next reply and copies up to `payload.count` bytes of
    /// its inline payload into `payload`; returns the header and the payload length.
    public func receive(into payload: UnsafeMutableRawBufferPointer, timeout: Duration? = nil) throws(IPCError) -> (Message, Int) {
        if !stashed.isEmpty {
            let reply = stashed.removeFirst()
            let count = min(payload.count, reply.payload.count)
            reply.payload.withUnsafeBytes { payload.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[..<count])) }
            return (reply.message, reply.payload.count)
        }
        let (message, count) = try receiveIntoBuffer(deadline: deadline(timeout), timeout: timeout)
        if count > 0, payload.count > 0 {
            payload.copyMemory(from: UnsafeRawBufferPointer(start: receiveBuffer.baseAddress! + Message.headerSize, count: min(count, payload.count)))
        }
        return (message, count)
    }

    /// Sends a request and waits for its reply (replies to earlier `send`s that arrive first are
    /// kept for `receive`). A reply's non-OK status is returned, not thrown: it is the server's
    /// answer. Thrown: transport failures, `.timedOut`.
    public func sendReceive(_ message: Message, payload: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0),
                            timeout: Duration? = .seconds(10)) throws(IPCError) -> Reply {
        let sequence = try send(message, payload: payload)
        return try awaitReply(sequence: sequence, timeout: timeout)
    }

    func awaitReply(sequence: UInt32, timeout: Duration?) throws(IPCError) -> Reply {
        if let index = stashed.firstIndex(where: { $0.sequence == sequence }) { return stashed.remove(at: index) }
        let deadline = deadline(timeout)
        while true {
            let (reply, count) = try receiveIntoBuffer(deadline: deadline, timeout: timeout)
            let copy = Reply(message: reply, payload: Array(UnsafeRawBufferPointer(start: receiveBuffer.baseAddress! + Message.headerSize, count: count)))
            if reply.sequence == sequence { return copy }
            stashed.append(copy)
        }
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

    /// Tells the server to forget a handle (close its descriptor, unmap).
    public func release(handle: UInt32, timeout: Duration? = .seconds(10)) throws(IPCError) {
        let reply = try sendReceive(Message(type: .ipcRelease, param1: UInt64(handle)), timeout: timeout)
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
            var fds: (Int32, Int32) = (-1, -1)
            var fdCount: Int32 = 0, flags: Int32 = 0
            let count = withUnsafeMutableBytes(of: &fds) { raw in
                CL_ipc_recv(fd, receiveBuffer.baseAddress, receiveBuffer.count, raw.baseAddress!.assumingMemoryBound(to: Int32.self),
                            2, &fdCount, &flags, CL_MSG_DONTWAIT)
            }
            // Servers send no descriptors in replies; any that come are closed, never leaked.
            if fdCount > 0 { closeDescriptor(fds.0) }
            if fdCount > 1 { closeDescriptor(fds.1) }
            if count < 0 {
                let code = CL_errno()
                if code == EAGAIN || code == EINTR { continue }
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
