import ArgumentParser
import IPC
#if canImport(Glibc)
import Glibc
#endif

/// limitless-fuzz: fuzz targets for the IPC layer (issue 3: "a fuzz target feeds at least a
/// million generated inputs to the server's decoder") and the ext2 file system (issue 6).
///   decoder   Message.decode against an independent model, in process (millions per second)
///   server    generated datagrams at a live IPCServer over a real socket
///   ext2      damaged copies of an mke2fs-made image mounted and used in memory
/// Scripts/fuzz.sh runs long campaigns and builds a libFuzzer (+ASan) binary of the decoder.
struct LimitlessFuzz: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "limitless-fuzz",
        abstract: "Fuzz the IPC layer (the message decoder and a live server) and the ext2 file system.",
        subcommands: [DecoderCommand.self, ServerCommand.self, Ext2Command.self])
}

func monotonicSeconds() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
}

func randomSeed() -> UInt64 {
    var generator = SystemRandomNumberGenerator()
    return generator.next() >> 16  // 48 bits: short enough to type back in
}

func formatRate(_ count: Int, _ seconds: Double) -> String {
    let rate = seconds > 0 ? Double(count) / seconds : 0
    return rate >= 1e6 ? "\(Double(Int(rate / 1e4)) / 100) M/s" : "\(Int(rate)) /s"
}

struct DecoderCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "decoder",
        abstract: "Feed generated datagrams to Message.decode and check it against an independent model.",
        discussion: """
        Inputs: valid headers (every registered type, inline and shared data, requests and replies) mutated \
        field by field and bit by bit, truncated, extended, with random lengths, data ranges, flags and \
        handles; and pure random bytes. Each refusal must be the one the model predicts, with details that \
        describe the input; each accepted message must re-encode to the same header, keep its data inside \
        the payload (inline) or name a non-zero handle (shared), and round-trip. Input i is generated from \
        (seed, i) alone, so a failure is reproduced with --seed S --first-iteration i --iterations 1.
        Exit status: 0 no violation, 1 a violation (printed with its input in hex).
        """)

    @Option(help: "Inputs to generate (default 1000000; unlimited when --duration is given).")
    var iterations: Int?
    @Option(help: "Stop after this many seconds.")
    var duration: Double?
    @Option(help: "Seed (default: random, printed).")
    var seed: UInt64?
    @Option(help: "Index of the first input (to reproduce one).")
    var firstIteration: UInt64 = 0
    @Option(help: "Check this one input (hex) instead of generating.")
    var replayHex: String?

    func run() throws {
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: DatagramGenerator.capacity, alignment: 16)
        defer { scratch.deallocate() }
        if let replayHex {
            guard let bytes = parseHex(replayHex) else { throw ValidationError("--replay-hex: not hex") }
            let result = bytes.withUnsafeBytes { DecoderOracle.check($0, scratch: scratch, deep: true) }
            switch result {
            case .success(let code): print("ok: \(DecoderOracle.kinds[code])")
            case .failure(let violation):
                print("INVARIANT VIOLATION: \(violation)")
                throw ExitCode(1)
            }
            return
        }
        let seed = self.seed ?? randomSeed()
        let limit = iterations ?? (duration == nil ? 1_000_000 : Int.max)
        let generator = DatagramGenerator()
        defer { generator.deallocate() }
        var counts = [Int](repeating: 0, count: DecoderOracle.kinds.count)
        var byStrategy = [Int](repeating: 0, count: Strategy.allCases.count)
        let start = monotonicSeconds()
        let deadline = duration.map { start + $0 } ?? .infinity
        print("limitless-fuzz decoder: seed \(seed), \(duration.map { "for \($0) s" } ?? "\(limit) inputs")")
        var done = 0
        var lastReport = start
        while done < limit {
            if done & 0xFFF == 0 {
                let now = monotonicSeconds()
                if now >= deadline { break }
                if now - lastReport >= 60 {
                    lastReport = now
                    print("  \(done) inputs, \(Int(now - start)) s, accepted \(counts[0])")
                }
            }
            let iteration = firstIteration &+ UInt64(done)
            var random = SplitMix64(seed: seed, iteration: iteration)
            let strategy = Strategy(rawValue: random.below(Strategy.allCases.count))!
            let length = generator.generate(strategy, &random)
            let input = UnsafeRawBufferPointer(rebasing: generator.buffer[0..<length])
            switch DecoderOracle.check(input, scratch: scratch, deep: done & 0x3F == 0) {
            case .success(let code):
                counts[code] += 1
                byStrategy[strategy.rawValue] += 1
                if strategy == .valid && code != 0 {
                    report(Violation("a valid message was refused (\(DecoderOracle.kinds[code]))"), input, seed, iteration, strategy)
                }
            case .failure(let violation):
                report(violation, input, seed, iteration, strategy)
            }
            done += 1
        }
        let elapsed = monotonicSeconds() - start
        print("inputs: \(done) in \(Double(Int(elapsed * 100)) / 100) s (\(formatRate(done, elapsed)))")
        print("accepted: \(counts[0])")
        print("rejected: \(done - counts[0]) — " + (1..<counts.count).map { "\(DecoderOracle.kinds[$0]) \(counts[$0])" }.joined(separator: ", "))
        print("strategies: " + Strategy.allCases.map { "\($0) \(byStrategy[$0.rawValue])" }.joined(separator: ", "))
        print("violations: 0")
    }

    func report(_ violation: Violation, _ input: UnsafeRawBufferPointer, _ seed: UInt64, _ iteration: UInt64, _ strategy: Strategy) -> Never {
        print("INVARIANT VIOLATION: \(violation)")
        print("seed \(seed), iteration \(iteration), strategy \(strategy), input \(input.count) bytes")
        let shown = UnsafeRawBufferPointer(rebasing: input[0..<min(input.count, 8192)])
        print("input hex\(input.count > shown.count ? " (first \(shown.count) bytes)" : ""): \(hex(shown))")
        print("reproduce: limitless-fuzz decoder --seed \(seed) --first-iteration \(iteration) --iterations 1")
        Glibc.exit(1)
    }
}

struct ServerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "server",
        abstract: "Drive generated datagrams (and descriptors) at a live in-process IPCServer over a real socket.",
        discussion: """
        A fuzzing client sends the generator's datagrams (some with memfds, sealed or not, or other \
        descriptors attached; reconnecting whenever the server drops it for protocol errors) and checks \
        that every reply decodes as a reply. Every --ping-every datagrams a second, well-behaved client \
        must get MSG_IPC_PING answered within 5 s. At the end both clients go away and the server's \
        connection count, shared-region count and this process's open descriptors must return to the \
        baseline. Exit status: 0 fine, 1 a violation.
        """)

    @Option(help: "Datagrams to send.")
    var count = 200_000
    @Option(help: "Seed (default: random, printed).")
    var seed: UInt64?
    @Option(help: "Ping from the other client every this many datagrams.")
    var pingEvery = 1000
    @Option(help: "Stop after this many seconds (count is then an upper bound).")
    var duration: Double?

    func run() throws {
        let seed = self.seed ?? randomSeed()
        var fuzz = try ServerFuzz(seed: seed)
        let passed = fuzz.run(count: count, pingEvery: max(1, pingEvery), duration: duration)
        if !passed { throw ExitCode(1) }
    }
}

LimitlessFuzz.main()
