import ArgumentParser
import Bench

@main
struct LimitlessBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "limitless-bench",
        abstract: "Benchmarks that print figures (never timed assertions).",
        subcommands: [IPC.self, SupervisorCommand.self, VFSCommand.self, AllocCommand.self])
}

struct IPC: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Shared-memory ring vs. its cache-line floor vs. a SOCK_SEQPACKET socket, between two processes.",
        discussion: """
            Prints round-trip latency (p50, p99, in ns and TSC cycles), one-way cost per message with
            batching and messages per second, and the ratios against their targets. The two processes
            are pinned to different CPUs when there are two or more. Build with -c release.
            """)

    @Option(help: "Round trips timed per path (the socket path runs a tenth as many).")
    var roundTrips = 200_000

    @Option(help: "Messages sent one way per path (the socket path sends a tenth as many).")
    var messages = 2_000_000

    @Option(help: "Messages enqueued per flush (at most one wake-up each) in the one-way test.")
    var batch = 32

    @Option(help: "Ring slot size in bytes, a power of two (8 bytes of each slot are its stamp).")
    var slotSize = 64

    @Option(help: "Slots per ring in the one-way (batched) test, a power of two.")
    var capacity = 1024

    @Option(help: "Slots per ring for synchronous round trips, a power of two.")
    var roundTripCapacity = 4

    @Option(name: .customLong("spin-us"), help: "Microseconds a ring endpoint spins before it sleeps on the futex.")
    var spinMicroseconds: UInt64 = 20

    @Option(help: "Upper bound in seconds on all timed loops together.")
    var duration = 4.0

    // The peer process: this binary started again with these (hidden) options.
    @Option(help: .hidden) var role: String?
    @Option(help: .hidden) var fd: Int32 = -1
    @Option(help: .hidden) var cpu: Int?
    @Option(name: .customLong("spin-ns"), help: .hidden) var spinNanoseconds: UInt64?

    func validate() throws {
        guard roundTrips > 0, messages > 0, batch > 0 else { throw ValidationError("--round-trips, --messages and --batch must be positive") }
        guard duration > 0 else { throw ValidationError("--duration must be positive") }
    }

    func run() throws {
        var options = IPCBenchmark.Options()
        options.roundTrips = roundTrips
        options.messages = messages
        options.batch = batch
        options.slotSize = slotSize
        options.capacity = capacity
        options.roundTripCapacity = roundTripCapacity
        options.spinNanoseconds = spinNanoseconds ?? spinMicroseconds * 1000
        options.durationSeconds = duration
        if let role {
            try IPCBenchmark.runPeer(role: role, descriptor: fd, cpu: cpu, options: options)
        } else {
            try IPCBenchmark(options: options).run()
        }
    }
}

struct SupervisorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "supervisor",
        abstract: "Crash (SIGKILL) to the new instance's REGISTER under the real supervisor, beside a plain spawn of the same binary.",
        discussion: """
            Runs the supervisor in this process over limitless-testserver with restart backoff 0, SIGKILLs the \
            running instance --trials times, and prints p50/p99 of: exit seen, new instance spawned, REGISTER \
            received (all from the SIGKILL), and spawn to REGISTER; once with the supervisor's default loop poll \
            interval and once with 5 ms, each without and with a standby instance (servers.conf `standby yes`), \
            and the p50s side by side. Beside them: posix_spawn to first stdout line of /bin/echo and of the \
            test server. Figures only, never asserted. Build with -c release.
            """)

    @Option(help: "Crashes (and plain spawns) per row.")
    var trials = 30

    @Option(help: "The test server binary (default: limitless-testserver next to this executable).")
    var server: String?

    func validate() throws {
        guard trials > 0 else { throw ValidationError("--trials must be positive") }
    }

    func run() throws {
        var options = SupervisorBench.Options()
        options.trials = trials
        options.serverPath = server
        try SupervisorBench(options: options).run()
    }
}
