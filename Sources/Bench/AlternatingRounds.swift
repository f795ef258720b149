import CLimitless

/// The ring's round trip against its floor, measured so that a shared, noisy machine treats both
/// alike: both peers start once, then rounds alternate in one run (floor, ring, floor, ring, ...),
/// each round beginning with unrecorded warm-up round trips. Host noise (another tenant, a build
/// on the other core, frequency changes) lasting longer than a round lands on both paths, so the
/// median of the per-round p50 ratios is the fair comparison; the pooled percentiles of all
/// rounds are reported beside it.
enum AlternatingRounds {
    struct Result {
        var floor: RoundTripResult
        var ring: RoundTripResult
        /// ring p50 / floor p50 of each round, sorted.
        var ratios: [Double]

        var medianRatio: Double {
            guard !ratios.isEmpty else { return .nan }
            let middle = ratios.count / 2
            return ratios.count % 2 == 1 ? ratios[middle] : (ratios[middle - 1] + ratios[middle]) / 2
        }
    }

    static let rounds = 20
    static let warmup = 200
    /// Rounds always run, whatever the time budget says.
    static let minimumRounds = 5

    static func measure(options: IPCBenchmark.Options, peerCPU: Int?) throws(BenchError) -> Result {
        var floor = try CacheLineFloor.Session(peerCPU: peerCPU)
        var ring: RingBench.Session
        do {
            ring = try RingBench.Session.start(options: options, peerCPU: peerCPU)
        } catch {
            floor.abandon()
            throw error
        }
        let perRound = max(100, options.roundTrips / rounds)
        var floorSamples = Samples(capacity: perRound * rounds)
        var ringSamples = Samples(capacity: perRound * rounds)
        var round = Samples(capacity: perRound)
        var ratios: [Double] = []
        ratios.reserveCapacity(rounds)
        // The two timed loops this replaces each had a budget.
        let budget = options.loopBudgetNanoseconds &* 2
        let start = CL_monotonic_ns()
        /// One round of one path: warm-up, then `perRound` samples into the round and the pool; its p50.
        func measureRound(into pool: inout Samples, _ roundTrip: () throws(BenchError) -> UInt64) throws(BenchError) -> Double {
            round.removeAll()
            for _ in 0..<warmup { _ = try roundTrip() }
            for _ in 0..<perRound {
                let cycles = try roundTrip()
                round.record(cycles)
                pool.record(cycles)
            }
            return round.percentile(0.5)
        }
        do throws(BenchError) {
            for index in 0..<rounds {
                let floorMedian = try measureRound(into: &floorSamples) { () throws(BenchError) in try floor.roundTrip() }
                let ringMedian = try measureRound(into: &ringSamples) { () throws(BenchError) in try ring.roundTrip() }
                ratios.append(ringMedian / floorMedian)
                if index + 1 >= minimumRounds, CL_monotonic_ns() &- start > budget { break }
            }
        } catch {
            floor.abandon()
            ring.abandon()
            throw error
        }
        let (sleeps, wakeups) = (ring.sleeps, ring.wakeups)
        try floor.finish()
        try ring.finish()
        var ringResult = RoundTripResult(p50: ringSamples.percentile(0.5), p99: ringSamples.percentile(0.99), count: ringSamples.count)
        ringResult.sleeps = sleeps
        ringResult.wakeups = wakeups
        return Result(floor: RoundTripResult(p50: floorSamples.percentile(0.5), p99: floorSamples.percentile(0.99), count: floorSamples.count),
                      ring: ringResult, ratios: ratios.sorted())
    }
}
