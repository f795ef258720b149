import CLimitless
import IPC
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// "ipc socket (IPCServer/IPCClient)": the project's own socket IPC layer, end to end. The peer
/// process runs an `IPCServer` (its default `Configuration`, one epoll thread) with an echo
/// handler, listening in a temporary runtime directory the measuring process creates; the
/// measuring process connects an `IPCClient` and times
///   - synchronous round trips: `sendReceive` of a header-only request, and
///   - asynchronous cost: `sendBatch` of `batch` header-only requests, then their `batch` replies
///     drained with the allocation-free `receive(into:)`. `batch` is at most the server's
///     per-client queue depth (`Configuration.queueDepth`): past it the server answers EBUSY
///     instead of running the request.
///
/// Control channel: a SOCK_SEQPACKET socket pair (the inherited descriptor). The parent sends the
/// runtime directory's path; the peer starts its server there and answers its queue depth; any
/// later datagram (or the parent going away) tells the peer to stop its server, which removes its
/// socket and pid files, and exit.
enum IPCSocketBench {
    static let echoRole = "ipc-socket-echo"
    static let serverName = "bench"
    /// Goes through the handler (MSG_IPC_PING would be answered by the server itself).
    static let requestType = MessageType.vfsStat
    static let timeout: Duration = .seconds(10)

    struct Result {
        var roundTrip: RoundTripResult
        var oneWay: OneWayResult
        /// The peer server's `Configuration.queueDepth`, and the batch size chosen from it.
        var queueDepth: Int
        var batch: Int
        /// Replies refused with EBUSY in the asynchronous test (0 while batch <= queue depth).
        var busy: Int
        /// The same round trips after `IPCClient.attachRing`: `sendReceive` over the server's
        /// shared-memory ring, served by the ring's thread with the same handler.
        var ringRoundTrip: RoundTripResult?
        var ringSlotSize = 0
    }

    /// The ring the client asks for: a header-only request is 64 bytes, so a 128-byte slot.
    static let ringSlotSize = 128

    static func ipc<T>(_ what: String, _ body: () throws(IPCError) -> T) throws(BenchError) -> T {
        do { return try body() } catch { throw .systemCall("\(what): \(error)", .ioError) }
    }

    static func measure(options: IPCBenchmark.Options, peerCPU: Int?) throws(BenchError) -> Result {
        let (mine, theirs) = try SeqpacketBench.socketPair()
        defer { close(mine) }
        var receiveTimeout = timeval(tv_sec: 10, tv_usec: 0)
        _ = setsockopt(mine, SOL_SOCKET, SO_RCVTIMEO, &receiveTimeout, socklen_t(MemoryLayout<timeval>.size))
        let directory = try makeTemporaryDirectory()
        defer { removeDirectory(directory) }
        let peer: PeerProcess
        do {
            defer { close(theirs) }
            peer = try PeerProcess.spawn(role: echoRole, descriptor: theirs, cpu: peerCPU)
        }
        do throws(BenchError) {
            try sendControl(mine, Array(directory.utf8))
            var depth: UInt64 = 0
            let n = recv(mine, &depth, 8, 0)
            guard n == 8, depth > 0 else { throw BenchError.peerFailed(role: echoRole, status: -1) }
            let queueDepth = Int(depth)
            let batch = max(1, min(options.batch, queueDepth))
            let client = try ipc("IPCClient.connect(\(serverName), \(directory))") { () throws(IPCError) in
                try IPCClient.connect(name: serverName, directory: directory)
            }
            let roundTrip = try roundTrips(client, options: options)
            let (oneWay, busy) = try batched(client, batch: batch, options: options)
            try ipc("IPCClient.attachRing") { () throws(IPCError) in
                try client.attachRing(slotSize: ringSlotSize, capacity: options.roundTripCapacity, policy: RingWaitPolicy(spinNanoseconds: options.spinNanoseconds))
            }
            let ring = try roundTrips(client, options: options, count: options.roundTrips)
            guard client.ringExchanges >= ring.count else { throw BenchError.peerFailed(role: echoRole, status: -2) }
            try sendControl(mine, [0])  // stop
            try peer.wait()
            return Result(roundTrip: roundTrip, oneWay: oneWay, queueDepth: queueDepth, batch: batch, busy: busy,
                          ringRoundTrip: ring, ringSlotSize: ringSlotSize)
        } catch {
            peer.kill()
            try? peer.wait()
            throw error
        }
    }

    /// Synchronous `sendReceive` of a header-only request; the echo handler returns param1.
    static func roundTrips(_ client: IPCClient, options: IPCBenchmark.Options, count: Int? = nil) throws(BenchError) -> RoundTripResult {
        var message = Message(type: requestType)
        return try timedLoop(count: count ?? max(1_000, options.roundTrips / 10), warmup: 200,
                             budgetNanoseconds: options.loopBudgetNanoseconds) { i throws(BenchError) in
            message.param1 = UInt64(i)
            let start = CL_cycles()
            let reply: Message
            do { (reply, _) = try client.sendReceive(message, into: UnsafeMutableRawBufferPointer(start: nil, count: 0), timeout: timeout) } catch {
                throw .systemCall("IPCClient.sendReceive: \(error)", .ioError)
            }
            let cycles = CL_cycles_ordered() &- start
            guard reply.status.isOK, reply.param1 == UInt64(i) else { throw .peerFailed(role: echoRole, status: -1) }
            return cycles
        }
    }

    /// `sendBatch` of `batch` requests, then their replies drained with `receive(into:)`, until
    /// `messages / 10` were sent or the loop's budget is spent. Counts OK replies as messages;
    /// out-of-order or failed replies as errors, EBUSY ones separately.
    static func batched(_ client: IPCClient, batch: Int, options: IPCBenchmark.Options) throws(BenchError) -> (OneWayResult, busy: Int) {
        var messages = [Message](repeating: Message(type: requestType), count: batch)  // once, reused
        let noPayload = UnsafeMutableRawBufferPointer(start: nil, count: 0)
        let total = UInt64(max(1_000, options.messages / 10))
        var sent: UInt64 = 0, expected: UInt64 = 0
        var received = 0, errors = 0, busy = 0
        let startTime = CL_monotonic_ns()
        let start = CL_cycles()
        while sent < total {
            for index in 0..<batch { messages[index].param1 = sent &+ UInt64(index) }
            do {
                _ = try messages.withUnsafeBufferPointer { (batch) throws(IPCError) -> UInt32 in try client.sendBatch(batch) }
                for _ in 0..<batch {
                    let (reply, _) = try client.receive(into: noPayload, timeout: timeout)
                    if reply.status == .EBUSY {
                        busy += 1
                    } else if !reply.status.isOK {
                        errors += 1
                    } else {
                        if reply.param1 != expected { errors += 1 }
                        expected = reply.param1 &+ 1
                        received += 1
                    }
                }
            } catch {
                throw .systemCall("IPCClient.sendBatch/receive: \(error)", .ioError)
            }
            sent += UInt64(batch)
            if CL_monotonic_ns() &- startTime > options.loopBudgetNanoseconds { break }
        }
        let cycles = CL_cycles_ordered() &- start
        let nanoseconds = CL_monotonic_ns() &- startTime
        return (OneWayResult(messages: received, cycles: cycles, nanoseconds: nanoseconds, errors: errors), busy)
    }

    /// Peer: serve `IPCServer` with an echo handler in the directory the parent sends, until told
    /// to stop (or the parent goes away).
    static func echoServer(descriptor fd: Int32, options: IPCBenchmark.Options) throws {
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { throw BenchError.peerFailed(role: echoRole, status: -1) }
        let directory = String(decoding: buffer[..<n], as: UTF8.self)
        var configuration = IPCServer.Configuration()
        configuration.maxRings = 1
        configuration.ringWaitPolicy = RingWaitPolicy(spinNanoseconds: options.spinNanoseconds)
        let server = try IPCServer(name: serverName, directory: directory, configuration: configuration, requestHandler: EchoHandler())
        server.start()  // its thread inherits this thread's CPU pinning
        defer { server.stop() }
        var depth = UInt64(server.configuration.queueDepth)
        guard send(fd, &depth, 8, 0) == 8 else { throw BenchError.systemCall("send (control)", Errno(rawValue: errno)) }
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0, errno == EINTR { continue }
            return  // stop, or the parent is gone
        }
    }

    /// The peer's handler: echoes the request's params (an object: called with no reference counting).
    private final class EchoHandler: IPCRequestHandler {
        func handle(_ request: Message, _ payload: IPCPayload, _ connection: IPCConnection) -> IPCReply {
            IPCReply(param1: request.param1, param2: request.param2, param3: request.param3)
        }
    }

    private static func sendControl(_ fd: Int32, _ bytes: [UInt8]) throws(BenchError) {
        let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        guard n == bytes.count else { throw .systemCall("send (control)", Errno(rawValue: n < 0 ? errno : EMSGSIZE)) }
    }

    private static func makeTemporaryDirectory() throws(BenchError) -> String {
        var template = Array("/tmp/limitless-bench-ipc-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!).map { String(cString: $0) } }
        guard let made else { throw .systemCall("mkdtemp(/tmp/limitless-bench-ipc-XXXXXX)", Errno(rawValue: errno)) }
        return made
    }

    /// Removes what a server may have left (its socket and pid files if it was killed) and the
    /// directory.
    private static func removeDirectory(_ directory: String) {
        if let dir = opendir(directory) {
            while let entry = readdir(dir) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
                if name != "." && name != ".." { unlink(directory + "/" + name) }
            }
            closedir(dir)
        }
        rmdir(directory)
    }
}
