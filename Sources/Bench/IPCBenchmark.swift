import CLimitless

/// `limitless-bench ipc`: the shared-memory ring against its floor (two processes bouncing one
/// cache line), against a plain SOCK_SEQPACKET socket and against the project's own socket layer
/// (`IPCServer`/`IPCClient`), all measured in one run. Figures are
/// printed, never asserted: this machine is shared and noisy.
public struct IPCBenchmark {
    public struct Options: Sendable {
        /// Round trips timed per path (sockets: a tenth of this, they are ~30x slower).
        public var roundTrips = 200_000
        /// Messages sent one way, in batches, per path (sockets: a tenth).
        public var messages = 2_000_000
        /// Messages enqueued per flush (one wake-up at most per flush) in the one-way test.
        public var batch = 32
        public var slotSize = 64
        /// Slots per ring for the one-way (batched) test: room for many batches in flight.
        public var capacity = 1024
        /// Slots per ring for synchronous round trips: one request in flight at a time, so a few
        /// slots suffice, and a small ring stays hot on both cores (as `attachRing`'s default).
        public var roundTripCapacity = 4
        /// Spin before sleeping, both ring endpoints.
        public var spinNanoseconds: UInt64 = 20_000
        /// Upper bound on the whole run's timed loops, in seconds; each of the seven loops gets a seventh.
        public var durationSeconds = 4.0

        public init() {}

        static let timedLoops = 7.0
        var loopBudgetNanoseconds: UInt64 { UInt64(durationSeconds / Self.timedLoops * 1e9) }
    }

    public let options: Options
    public init(options: Options) { self.options = options }

    /// Runs every path and prints the table.
    public func run() throws(BenchError) {
        let placement = CPUPlacement.choose()
        CPUPlacement.pin(to: placement.parent)
        let clock = CycleClock.measure()
        var report = IPCReport(options: options, placement: placement, clock: clock)
        report.printHeader()

        let alternating = try AlternatingRounds.measure(options: options, peerCPU: placement.peer)
        report.floor = alternating.floor
        report.ringRoundTrip = alternating.ring
        report.alternating = alternating
        report.ringOneWay = try RingBench.oneWay(options: options, peerCPU: placement.peer)
        report.socketRoundTrip = try SeqpacketBench.roundTrips(options: options, peerCPU: placement.peer)
        report.socketOneWay = try SeqpacketBench.oneWay(options: options, peerCPU: placement.peer)
        report.ipcSocket = try IPCSocketBench.measure(options: options, peerCPU: placement.peer)
        report.printTable()
    }

    /// The peer side: what `limitless-bench ipc --role ROLE` runs in the second process.
    public static func runPeer(role: String, descriptor: Int32, cpu: Int?, options: Options) throws {
        CPUPlacement.pin(to: cpu)
        switch role {
        case CacheLineFloor.peerRole: try CacheLineFloor.peer(descriptor: descriptor)
        case RingBench.echoRole: try RingBench.echo(descriptor: descriptor, options: options)
        case RingBench.sinkRole: try RingBench.sink(descriptor: descriptor, options: options)
        case SeqpacketBench.echoRole: try SeqpacketBench.echo(descriptor: descriptor)
        case SeqpacketBench.sinkRole: try SeqpacketBench.sink(descriptor: descriptor)
        case IPCSocketBench.echoRole: try IPCSocketBench.echoServer(descriptor: descriptor, options: options)
        default: throw BenchError.unknownRole(role)
        }
    }
}

/// Round-trip latencies of one path, in TSC cycles.
struct RoundTripResult {
    var p50: Double
    var p99: Double
    var count: Int
    /// Futex sleeps and wakes on the measuring side (rings only).
    var sleeps = 0
    var wakeups = 0
}

/// One-way throughput of one path.
struct OneWayResult {
    var messages: Int
    var cycles: UInt64
    var nanoseconds: UInt64
    var errors: Int
    var wakeups = 0

    var cyclesPerMessage: Double { Double(cycles) / Double(max(messages, 1)) }
    var messagesPerSecond: Double { Double(messages) / (Double(nanoseconds) / 1e9) }
}

/// Measures one timed loop: stops at `count` iterations or when the budget is spent (checked every
/// 1024 iterations, so the clock costs nothing per iteration). The first `warmup` iterations are
/// not recorded.
func timedLoop(count: Int, warmup: Int = 1_000, budgetNanoseconds: UInt64,
               _ iteration: (Int) throws(BenchError) -> UInt64) throws(BenchError) -> RoundTripResult {
    var samples = Samples(capacity: count)
    let start = CL_monotonic_ns()
    for i in 0..<warmup { _ = try iteration(i) }
    var i = 0
    while i < count {
        samples.record(try iteration(warmup + i))
        i += 1
        if i & 1023 == 0, CL_monotonic_ns() &- start > budgetNanoseconds { break }
    }
    return RoundTripResult(p50: samples.percentile(0.5), p99: samples.percentile(0.99), count: samples.count)
}
