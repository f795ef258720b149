import CLimitless
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// "seqpacket (raw)": the same exchanges over a plain AF_UNIX SOCK_SEQPACKET socket pair, one
/// 64-byte datagram per message, blocking send and recv. What every message costs without shared
/// memory: two system calls per side and a scheduler wake-up per message.
enum SeqpacketBench {
    static let echoRole = "seqpacket-echo"
    static let sinkRole = "seqpacket-sink"
    static let messageSize = 64
    static let stop = UInt64.max

    static func socketPair() throws(BenchError) -> (Int32, Int32) {
        var fds: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw .systemCall("socketpair(AF_UNIX, SOCK_SEQPACKET)", Errno(rawValue: errno))
        }
        return (fds[0], fds[1])
    }

    static func sendMessage(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer) throws(BenchError) {
        while true {
            let n = send(fd, buffer.baseAddress, messageSize, 0)
            if n == messageSize { return }
            if n < 0, errno == EINTR { continue }
            throw .systemCall("send (seqpacket)", Errno(rawValue: n < 0 ? errno : EMSGSIZE))
        }
    }

    /// Receives one datagram; false when the peer closed.
    static func receiveMessage(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer) throws(BenchError) -> Bool {
        while true {
            let n = recv(fd, buffer.baseAddress, messageSize, 0)
            if n == messageSize { return true }
            if n == 0 { return false }
            if n < 0, errno == EINTR { continue }
            throw .systemCall("recv (seqpacket)", Errno(rawValue: n < 0 ? errno : EMSGSIZE))
        }
    }

    static func withPeer<T>(role: String, peerCPU: Int?, _ body: (Int32, UnsafeMutableRawBufferPointer) throws(BenchError) -> T) throws(BenchError) -> T {
        let (mine, theirs) = try socketPair()
        defer { close(mine) }
        let peer: PeerProcess
        do {
            defer { close(theirs) }
            peer = try PeerProcess.spawn(role: role, descriptor: theirs, cpu: peerCPU)
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: messageSize, alignment: 8)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        do throws(BenchError) {
            guard try receiveMessage(mine, buffer) else { throw BenchError.peerFailed(role: role, status: -1) }  // hello
            let result = try body(mine, buffer)
            try peer.wait()
            return result
        } catch {
            peer.kill()
            throw error
        }
    }

    static func roundTrips(options: IPCBenchmark.Options, peerCPU: Int?) throws(BenchError) -> RoundTripResult {
        try withPeer(role: echoRole, peerCPU: peerCPU) { fd, buffer throws(BenchError) in
            let result = try timedLoop(count: max(1_000, options.roundTrips / 10), warmup: 200,
                                       budgetNanoseconds: options.loopBudgetNanoseconds) { i throws(BenchError) in
                buffer.storeBytes(of: UInt64(i), as: UInt64.self)
                let start = CL_cycles()
                try sendMessage(fd, buffer)
                guard try receiveMessage(fd, buffer) else { throw .peerFailed(role: echoRole, status: -1) }
                let cycles = CL_cycles_ordered() &- start
                guard buffer.load(as: UInt64.self) == UInt64(i) else { throw .peerFailed(role: echoRole, status: -1) }
                return cycles
            }
            buffer.storeBytes(of: stop, as: UInt64.self)
            try sendMessage(fd, buffer)
            return result
        }
    }

    static func oneWay(options: IPCBenchmark.Options, peerCPU: Int?) throws(BenchError) -> OneWayResult {
        try withPeer(role: sinkRole, peerCPU: peerCPU) { fd, buffer throws(BenchError) in
            let total = UInt64(max(1_000, options.messages / 10))
            let startTime = CL_monotonic_ns()
            let start = CL_cycles()
            var sent: UInt64 = 0
            while sent < total {
                buffer.storeBytes(of: sent, as: UInt64.self)
                try sendMessage(fd, buffer)
                sent += 1
                if sent & 0x3FF == 0, CL_monotonic_ns() &- startTime > options.loopBudgetNanoseconds { break }
            }
            buffer.storeBytes(of: stop, as: UInt64.self)
            try sendMessage(fd, buffer)
            guard try receiveMessage(fd, buffer) else { throw .peerFailed(role: sinkRole, status: -1) }
            let cycles = CL_cycles_ordered() &- start
            let nanoseconds = CL_monotonic_ns() &- startTime
            let received = buffer.load(as: UInt64.self)
            let errors = buffer.load(fromByteOffset: 8, as: UInt64.self)
            return OneWayResult(messages: Int(received), cycles: cycles, nanoseconds: nanoseconds,
                                errors: Int(errors) + (received == sent ? 0 : 1))
        }
    }

    /// Peer: echo every datagram until `stop`.
    static func echo(descriptor fd: Int32) throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: messageSize, alignment: 8)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        try sendMessage(fd, buffer)  // hello
        while try receiveMessage(fd, buffer) {
            if buffer.load(as: UInt64.self) == stop { return }
            try sendMessage(fd, buffer)
        }
    }

    /// Peer: count datagrams until `stop`, checking order; answer (count, out of order).
    static func sink(descriptor fd: Int32) throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: messageSize, alignment: 8)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        try sendMessage(fd, buffer)  // hello
        var expected: UInt64 = 0
        var errors: UInt64 = 0
        while try receiveMessage(fd, buffer) {
            let value = buffer.load(as: UInt64.self)
            if value == stop { break }
            if value != expected { errors += 1 }
            expected += 1
        }
        buffer.storeBytes(of: expected, as: UInt64.self)
        buffer.storeBytes(of: errors, toByteOffset: 8, as: UInt64.self)
        try sendMessage(fd, buffer)
    }
}
