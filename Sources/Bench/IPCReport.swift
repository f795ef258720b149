#if canImport(Glibc)
import Glibc
#endif

/// The printed result of `limitless-bench ipc`: one table, then the ratios beside their targets.
/// Targets are shown, never asserted.
struct IPCReport {
    let options: IPCBenchmark.Options
    let placement: CPUPlacement
    let clock: CycleClock
    var floor: RoundTripResult?
    var ringRoundTrip: RoundTripResult?
    var alternating: AlternatingRounds.Result?
    var ringOneWay: OneWayResult?
    var socketRoundTrip: RoundTripResult?
    var socketOneWay: OneWayResult?
    var ipcSocket: IPCSocketBench.Result?

    init(options: IPCBenchmark.Options, placement: CPUPlacement, clock: CycleClock) {
        self.options = options
        self.placement = placement
        self.clock = clock
    }

    func printHeader() {
        let cpus = placement.allowed.map(String.init).joined(separator: ",")
        print("limitless-bench ipc: \(placement.allowed.count) CPU(s) allowed [\(cpus)]; "
            + "measuring process on CPU \(placement.parent.map(String.init) ?? "?"), peer on CPU \(placement.peer.map(String.init) ?? "?")")
        if placement.allowed.count < 2 {
            print("WARNING: only one CPU: both processes share it, every hand-off is a context switch; "
                + "spinning figures are meaningless here. Run on a machine with two or more CPUs.")
        }
        print("TSC \(fixed(clock.gigahertz, 3)) GHz, measured against CLOCK_MONOTONIC over \(clock.measuredOverNanoseconds / 1_000_000) ms "
            + "(cycles below are TSC cycles at that rate)")
        print("ring: \(options.slotSize)-byte slots (\(options.slotSize - 8)-byte payload), \(options.roundTripCapacity) per ring for round trips, "
            + "\(options.capacity) for one-way; spin \(options.spinNanoseconds / 1000) µs then futex; one-way batches of \(options.batch)")
        print("floor and ring round trips: \(AlternatingRounds.rounds) alternating rounds (floor, ring, floor, ring, ...) in this run, "
            + "\(AlternatingRounds.warmup) unrecorded warm-up round trips each; the ratio below is the median of the per-round p50 ratios, "
            + "so host noise hits both alike; the table pools all rounds")
        print("")
    }

    func printTable() {
        let header = ["path", "RTT p50 ns", "p50 cyc", "RTT p99 ns", "p99 cyc", "samples", "1-way cyc/msg", "msgs/s"]
        var rows: [[String]] = []
        func row(_ name: String, _ rt: RoundTripResult?, _ ow: OneWayResult?) {
            rows.append([
                name,
                rt.map { fixed(clock.nanoseconds($0.p50), 0) } ?? "-",
                rt.map { fixed($0.p50, 0) } ?? "-",
                rt.map { fixed(clock.nanoseconds($0.p99), 0) } ?? "-",
                rt.map { fixed($0.p99, 0) } ?? "-",
                rt.map { String($0.count) } ?? "-",
                ow.map { fixed($0.cyclesPerMessage, 1) } ?? "-",
                ow.map { millions($0.messagesPerSecond) } ?? "-",
            ])
        }
        row("floor (1 cache line)", floor, nil)
        row("ring (shared memory)", ringRoundTrip, ringOneWay)
        row("seqpacket (raw)", socketRoundTrip, socketOneWay)
        row("ipc socket (IPCServer/IPCClient)", ipcSocket?.roundTrip, ipcSocket?.oneWay)
        row("ipc ring (IPCClient.attachRing)", ipcSocket?.ringRoundTrip, nil)
        let widths = header.indices.map { column in ([header] + rows).map { $0[column].count }.max() ?? 0 }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { index, cell in
                index == 0 ? cell + String(repeating: " ", count: widths[index] - cell.count)
                    : String(repeating: " ", count: widths[index] - cell.count) + cell
            }.joined(separator: "  ")
        }
        print(line(header))
        print(String(repeating: "-", count: widths.reduce(0, +) + 2 * (widths.count - 1)))
        rows.forEach { print(line($0)) }
        print("")

        if let ring = ringRoundTrip, let floor {
            let pooled = ring.p50 / floor.p50
            if let alternating, let low = alternating.ratios.first, let high = alternating.ratios.last {
                let ratio = alternating.medianRatio
                print("ring round trip / floor (p50):    \(fixed(ratio, 2))x median of \(alternating.ratios.count) rounds' ratios "
                    + "(range \(fixed(low, 2))-\(fixed(high, 2))), pooled \(fixed(pooled, 2))x   target <= 1.25x  \(mark(ratio <= 1.25))")
            } else {
                print("ring round trip / floor (p50):    \(fixed(pooled, 2))x   target <= 1.25x  \(mark(pooled <= 1.25))")
            }
        }
        if let ring = ringOneWay {
            print("ring one-way cost:                \(fixed(ring.cyclesPerMessage, 1)) cycles/msg   target <= 200  \(mark(ring.cyclesPerMessage <= 200))")
            print("ring one-way rate:                \(millions(ring.messagesPerSecond)) msgs/s   target >= 10 M  \(mark(ring.messagesPerSecond >= 10e6))")
        }
        if let socket = socketRoundTrip, let ring = ringRoundTrip {
            let ratio = socket.p50 / ring.p50
            print("seqpacket / ring round trip (p50): \(fixed(ratio, 1))x   target > 20x  \(mark(ratio > 20))")
        }
        if let socket = socketOneWay, let ring = ringOneWay {
            print("seqpacket / ring one-way cost:     \(fixed(socket.cyclesPerMessage / ring.cyclesPerMessage, 1))x")
        }
        if let ipc = ipcSocket?.roundTrip, let ring = ringRoundTrip {
            let ratio = ipc.p50 / ring.p50
            print("ipc socket / ring round trip (p50): \(fixed(ratio, 1))x   target ring > 20x faster  \(mark(ratio > 20))")
        }
        if let ipc = ipcSocket?.oneWay, let ring = ringOneWay {
            print("ipc socket / ring one-way cost:     \(fixed(ipc.cyclesPerMessage / ring.cyclesPerMessage, 1))x")
        }
        if let ipc = ipcSocket?.roundTrip, let ring = ipcSocket?.ringRoundTrip {
            print("ipc socket / ipc ring round trip (p50): \(fixed(ipc.p50 / ring.p50, 1))x   (the same sendReceive, before and after attachRing)")
        }
        if let ipc = ipcSocket?.roundTrip, let socket = socketRoundTrip {
            print("ipc socket / seqpacket round trip (p50): \(fixed(ipc.p50 / socket.p50, 2))x   (the layer's own overhead)")
        }
        var notes: [String] = []
        if let ring = ringRoundTrip { notes.append("ring round trips: \(ring.sleeps) futex sleeps, \(ring.wakeups) wakes on the client side") }
        if let ring = ringOneWay { notes.append("ring one-way: \(ring.wakeups) wakes; \(ring.errors) sequence errors") }
        if let socket = socketOneWay { notes.append("seqpacket one-way: \(socket.errors) sequence errors") }
        if let ipc = ipcSocket {
            notes.append("ipc socket: round trips are sendReceive of a header-only \(IPCSocketBench.requestType) to an echo handler; "
                + "one-way is sendBatch of \(ipc.batch) then its \(ipc.batch) replies drained with receive(into:)")
            notes.append("ipc socket: batch \(ipc.batch) = min(--batch \(options.batch), server Configuration.queueDepth \(ipc.queueDepth)) "
                + "(past the queue depth the server answers EBUSY); \(ipc.busy) EBUSY, \(ipc.oneWay.errors) errors/out of order")
            if let ring = ipc.ringRoundTrip {
                notes.append("ipc ring: the same sendReceive(into:) after attachRing(slotSize: \(ipc.ringSlotSize)), served by the server's "
                    + "ring thread with the same handler; \(ring.count) samples")
            }
        }
        notes.forEach { print("  " + $0) }
    }

    private func mark(_ met: Bool) -> String { met ? "(met)" : "(NOT met)" }
}

func fixed(_ value: Double, _ decimals: Int) -> String {
    guard value.isFinite else { return "-" }
    var scale = 1.0
    for _ in 0..<decimals { scale *= 10 }
    let rounded = (value * scale).rounded() / scale
    if decimals == 0 { return String(Int(rounded)) }
    var text = String(rounded)
    let fraction = text.split(separator: ".").last.map(\.count) ?? 0
    if fraction < decimals { text += String(repeating: "0", count: decimals - fraction) }
    return text
}

func millions(_ rate: Double) -> String { fixed(rate / 1e6, 2) + " M" }
