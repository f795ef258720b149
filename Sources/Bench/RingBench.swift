import CLimitless
import IPC
import SystemPackage

/// The shared-memory ring pair between two processes: synchronous round trips (client sends,
/// server echoes) and one-way batched sends. The measuring side is the client.
enum RingBench {
    static let echoRole = "ring-echo"
    static let sinkRole = "ring-sink"
    /// First word of a message that ends the peer's loop.
    static let stop = UInt64.max
    static let peerTimeout: UInt64 = 10_000_000_000

    static func policy(_ options: IPCBenchmark.Options) -> RingWaitPolicy {
        RingWaitPolicy(spinNanoseconds: options.spinNanoseconds)
    }

    static func makeMemory(_ options: IPCBenchmark.Options) throws(BenchError) -> SharedRingMemory {
        do {
            return try SharedRingMemory.create(layout: RingLayout(slotSize: options.slotSize, capacity: options.capacity))
        } catch {
            throw .systemCall("creating the ring pair (\(error))", .invalidArgument)
        }
    }

    static func ring<T: ~Copyable>(_ what: String, _ body: () throws(RingError) -> T) throws(BenchError) -> T {
        do { return try body() } catch { throw .systemCall("\(what): \(error)", .ioError) }
    }

    /// Synchronous round trips (client sends, the peer echoes) on a ring pair of
    /// `options.roundTripCapacity` slots; timed one at a time (`RoundTripRounds`).
    struct Session: ~Copyable {
        let memory: SharedRingMemory
        // A struct, not a class: mutating a class's stored property costs a dynamic exclusivity
        // check (swift_beginAccess) per round trip, which the floor does not pay.
        var client: RingClientEnd
        let peer: PeerProcess
        let policy: RingWaitPolicy
        let message: UnsafeMutableRawBufferPointer
        let reply: UnsafeMutableRawBufferPointer
        var sequence: UInt64 = 0

        static func start(options: IPCBenchmark.Options, peerCPU: Int?) throws(BenchError) -> Session {
            var layoutOptions = options
            layoutOptions.capacity = options.roundTripCapacity
            let memory = try makeMemory(layoutOptions)
            var client = try ring("client end") { () throws(RingError) in try memory.clientEnd() }
            let peer = try PeerProcess.spawn(role: echoRole, descriptor: memory.descriptor.rawValue, cpu: peerCPU,
                                             arguments: ["--spin-ns", String(options.spinNanoseconds)])
            let policy = RingBench.policy(options)
            let message = UnsafeMutableRawBufferPointer.allocate(byteCount: client.payloadSize, alignment: 8)
            let reply = UnsafeMutableRawBufferPointer.allocate(byteCount: client.payloadSize, alignment: 8)
            message.initializeMemory(as: UInt8.self, repeating: 0)
            // The peer says hello once it is attached.
            do throws(BenchError) {
                guard try ring("waiting for the echo peer", { () throws(RingError) in
                    try client.responses.receive(into: reply, policy: policy, timeoutNanoseconds: peerTimeout)
                }) else { throw BenchError.peerTimedOut(role: echoRole, seconds: 10) }
            } catch {
                peer.kill()
                message.deallocate()
                reply.deallocate()
                throw error
            }
            return Session(memory: memory, client: client, peer: peer, policy: policy, message: message, reply: reply)
        }

        private init(memory: SharedRingMemory, client: consuming RingClientEnd, peer: PeerProcess, policy: RingWaitPolicy,
                     message: UnsafeMutableRawBufferPointer, reply: UnsafeMutableRawBufferPointer) {
            self.memory = memory
            self.client = client
            self.peer = peer
            self.policy = policy
            self.message = message
            self.reply = reply
        }

        deinit {
            message.deallocate()
            reply.deallocate()
        }

        /// One round trip, in TSC cycles; the echo is checked.
        mutating func roundTrip() throws(BenchError) -> UInt64 {
            sequence &+= 1
            message.storeBytes(of: sequence, as: UInt64.self)
            let start = CL_cycles()
            let answered: Bool
            do {
                answered = try client.sendReceive(UnsafeRawBufferPointer(message), into: reply, policy: policy,
                                                  timeoutNanoseconds: peerTimeout)
            } catch { throw .systemCall("ring round trip: \(error)", .ioError) }
            let cycles = CL_cycles_ordered() &- start
            guard answered, reply.load(as: UInt64.self) == sequence else { throw .peerFailed(role: echoRole, status: -1) }
            return cycles
        }

        /// Futex sleeps and wakes on the client side so far.
        var sleeps: Int { client.responses.sleeps }
        var wakeups: Int { client.requests.wakeups }

        consuming func finish() throws(BenchError) {
            message.storeBytes(of: stop, as: UInt64.self)
            let message = self.message
            _ = try ring("stopping the echo peer") { () throws(RingError) in try client.requests.send(UnsafeRawBufferPointer(message)) }
            try peer.wait()
        }

        func abandon() { peer.kill() }
    }

    /// Peer: echo every request until `stop`.
    static func echo(descriptor: Int32, options: IPCBenchmark.Options) throws {
        let memory = try SharedRingMemory.attach(descriptor: FileDescriptor(rawValue: descriptor))
        var server = try memory.serverEnd()
        let policy = policy(options)
        let message = UnsafeMutableRawBufferPointer.allocate(byteCount: server.payloadSize, alignment: 8)
        defer { message.deallocate() }
        message.initializeMemory(as: UInt8.self, repeating: 0)
        _ = try server.responses.send(UnsafeRawBufferPointer(message))  // hello
        while true {
            guard try server.requests.receive(into: message, policy: policy, timeoutNanoseconds: peerTimeout) else {
                throw BenchError.peerTimedOut(role: echoRole, seconds: 10)
            }
            if message.load(as: UInt64.self) == stop { return }
            _ = try server.responses.send(UnsafeRawBufferPointer(message))
        }
    }

    static func oneWay(options: IPCBenchmark.Options, peerCPU: Int?) throws(BenchError) -> OneWayResult {
        let memory = try makeMemory(options)
        var client = try ring("client end") { () throws(RingError) in try memory.clientEnd() }
        let peer = try PeerProcess.spawn(role: sinkRole, descriptor: memory.descriptor.rawValue, cpu: peerCPU,
                                         arguments: ["--spin-ns", String(options.spinNanoseconds)])
        let policy = policy(options)
        let reply = UnsafeMutableRawBufferPointer.allocate(byteCount: client.payloadSize, alignment: 8)
        defer { reply.deallocate() }
        do throws(BenchError) {
            guard try ring("waiting for the sink peer", { () throws(RingError) in
                try client.responses.receive(into: reply, policy: policy, timeoutNanoseconds: peerTimeout)
            }) else { throw BenchError.peerTimedOut(role: sinkRole, seconds: 10) }
            let total = UInt64(options.messages)
            let batch = max(1, options.batch)
            let budget = options.loopBudgetNanoseconds
            var sent: UInt64 = 0
            let startTime = CL_monotonic_ns()
            let start = CL_cycles()
            try ring("sending") { () throws(RingError) in
                while sent < total {
                    var inBatch = 0
                    while inBatch < batch, sent < total, try client.requests.tryEnqueue({ $0.storeBytes(of: sent, as: UInt64.self) }) {
                        sent &+= 1
                        inBatch &+= 1
                    }
                    client.requests.flush()
                    if inBatch == 0 { _ = try client.requests.waitForSpace(timeoutNanoseconds: peerTimeout) }
                    if sent & 0xFFFF == 0, CL_monotonic_ns() &- startTime > budget { break }
                }
                reply.storeBytes(of: stop, as: UInt64.self)
                _ = try client.requests.send(UnsafeRawBufferPointer(reply), timeoutNanoseconds: peerTimeout)
            }
            // The sink answers after the last message: (received, out of order).
            guard try ring("waiting for the sink's count", { () throws(RingError) in
                try client.responses.receive(into: reply, policy: policy, timeoutNanoseconds: peerTimeout)
            }) else { throw BenchError.peerTimedOut(role: sinkRole, seconds: 10) }
            let cycles = CL_cycles_ordered() &- start
            let nanoseconds = CL_monotonic_ns() &- startTime
            let received = reply.load(as: UInt64.self)
            let errors = reply.load(fromByteOffset: 8, as: UInt64.self)
            try peer.wait()
            return OneWayResult(messages: Int(received), cycles: cycles, nanoseconds: nanoseconds,
                                errors: Int(errors) + (received == sent ? 0 : 1), wakeups: client.requests.wakeups)
        } catch {
            peer.kill()
            throw error
        }
    }

    /// Peer: take messages until `stop`, checking their sequence numbers; answer with the count.
    static func sink(descriptor: Int32, options: IPCBenchmark.Options) throws {
        let memory = try SharedRingMemory.attach(descriptor: FileDescriptor(rawValue: descriptor))
        var server = try memory.serverEnd()
        let policy = policy(options)
        var answer: (UInt64, UInt64) = (0, 0)
        _ = try withUnsafeBytes(of: answer) { try server.responses.send($0) }  // hello
        var expected: UInt64 = 0
        var errors: UInt64 = 0
        while true {
            guard let value = server.requests.tryReceive({ $0.load(as: UInt64.self) }) else {
                guard try server.requests.waitForMessage(policy: policy, timeoutNanoseconds: peerTimeout) else {
                    throw BenchError.peerTimedOut(role: sinkRole, seconds: 10)
                }
                continue
            }
            if value == stop { break }
            if value != expected { errors &+= 1 }
            expected &+= 1
        }
        answer = (expected, errors)
        _ = try withUnsafeBytes(of: answer) { try server.responses.send($0) }
    }
}
