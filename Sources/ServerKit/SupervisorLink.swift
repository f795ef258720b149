import CLimitless
import IPC
import Synchronization
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The server's end of the supervisor channel (descriptor 3): sends IPC messages and receives the
/// supervisor's (with a descriptor, for capability grants).
///
/// Sending is safe from any thread (one sendmsg per SEQPACKET message is atomic); receiving is
/// for one thread at a time (the server's main loop).
final class SupervisorLink: Sendable {
    let fd: Int32
    private let lastSequence = Atomic<UInt32>(0)
    private let receiveBuffer: Mutex<UnsafeMutableRawBufferPointer>

    struct Received {
        var message: Message
        var payload: [UInt8]
        /// A descriptor that came with the message (SCM_RIGHTS), or -1; the receiver owns it.
        var descriptor: Int32
    }

    enum SendOutcome { case sent(UInt32), wouldBlock }

    init(fd: Int32) {
        self.fd = fd
        receiveBuffer = Mutex(.allocate(byteCount: Message.maxDatagramSize, alignment: 16))
    }

    deinit {
        receiveBuffer.withLock { $0.deallocate() }
        _ = Glibc.close(fd)
    }

    private func nextSequence() -> UInt32 {
        while true {
            let value = lastSequence.add(1, ordering: .relaxed).newValue
            if value != 0 { return value }
        }
    }

    /// One attempt that never blocks: `.wouldBlock` when the socket buffer is full.
    func trySend(_ message: Message, payload: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0)) throws(ServerKitError) -> SendOutcome {
        var message = message
        message.sequence = nextSequence()
        let count = withUnsafeTemporaryAllocation(byteCount: Message.headerSize, alignment: 16) { header in
            message.encode(into: header)
            while true {
                let sent = CL_ipc_send(fd, header.baseAddress, Message.headerSize, payload.baseAddress, payload.count, nil, 0,
                                       CL_MSG_NOSIGNAL | CL_MSG_DONTWAIT)
                if sent >= 0 || CL_errno() != EINTR { return sent }
            }
        }
        if count >= 0 { return .sent(message.sequence) }
        let code = CL_errno()
        if code == EAGAIN || code == EWOULDBLOCK || code == ENOBUFS { return .wouldBlock }
        if code == EPIPE || code == ECONNRESET || code == ENOTCONN { throw .supervisorGone }
        throw .channel("sendmsg", Errno(rawValue: code))
    }

    /// Sends, waiting up to `timeout` for room in the socket buffer.
    @discardableResult
    func send(_ message: Message, payload: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0),
              timeout: Duration) throws(ServerKitError) -> UInt32 {
        let deadline = monotonicNanoseconds() + nanoseconds(timeout)
        while true {
            if case .sent(let sequence) = try trySend(message, payload: payload) { return sequence }
            let left = deadline - monotonicNanoseconds()
            if left <= 0 { throw .channel("sendmsg (the supervisor is not reading; gave up after \(timeout))", .resourceTemporarilyUnavailable) }
            var entry = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            _ = poll(&entry, 1, Int32(clamping: (left + 999_999) / 1_000_000))
        }
    }

    /// The next message, waiting up to `timeout` (zero: only what is already there). Nil when
    /// nothing arrived in time. Datagrams that fail to decode are skipped.
    func receive(timeout: Duration) throws(ServerKitError) -> Received? {
        let deadline = monotonicNanoseconds() + nanoseconds(timeout)
        while true {
            var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let left = max(0, deadline - monotonicNanoseconds())
            let ready = poll(&entry, 1, Int32(clamping: (left + 999_999) / 1_000_000))
            if ready < 0 {
                if CL_errno() == EINTR { continue }
                throw .channel("poll", Errno(rawValue: CL_errno()))
            }
            if ready == 0 {
                if left == 0 { return nil }
                continue
            }
            let result: Result<Received?, ServerKitError> = receiveBuffer.withLock { buffer in
                var fds: (Int32, Int32) = (-1, -1)
                var fdCount: Int32 = 0, flags: Int32 = 0
                let count = withUnsafeMutableBytes(of: &fds) { raw in
                    CL_ipc_recv(fd, buffer.baseAddress, buffer.count, raw.baseAddress!.assumingMemoryBound(to: Int32.self),
                                2, &fdCount, &flags, CL_MSG_DONTWAIT)
                }
                if fdCount > 1 { _ = Glibc.close(fds.1) }  // a message carries at most one
                let descriptor = fdCount > 0 ? fds.0 : -1
                if count < 0 {
                    let code = CL_errno()
                    if code == EAGAIN || code == EINTR { return .success(nil) }
                    if code == ECONNRESET { return .failure(.supervisorGone) }
                    return .failure(.channel("recvmsg", Errno(rawValue: code)))
                }
                if count == 0 { return .failure(.supervisorGone) }
                guard flags & CL_MSG_TRUNC == 0,
                      let message = try? Message.decode(UnsafeRawBufferPointer(start: buffer.baseAddress, count: count)) else {
                    if descriptor >= 0 { _ = Glibc.close(descriptor) }
                    return .success(nil)
                }
                let payload = Array(UnsafeRawBufferPointer(start: buffer.baseAddress! + Message.headerSize, count: count - Message.headerSize))
                return .success(Received(message: message, payload: payload, descriptor: descriptor))
            }
            if let received = try result.get() { return received }
            if monotonicNanoseconds() >= deadline && timeout > .zero { return nil }
            if timeout == .zero { return nil }
        }
    }
}

func monotonicNanoseconds() -> Int64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
}

func nanoseconds(_ duration: Duration) -> Int64 {
    let (seconds, attoseconds) = duration.components
    return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
}

func milliseconds(_ duration: Duration) -> Int32 {
    Int32(clamping: (nanoseconds(duration) + 999_999) / 1_000_000)
}
