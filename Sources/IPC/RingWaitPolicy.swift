/// How a ring endpoint waits: spin first (a reply from a busy peer usually arrives within a few
/// microseconds, and a spinning core sees it within one cache-line transfer), then sleep in the
/// kernel so an idle endpoint costs no CPU.
public struct RingWaitPolicy: Sendable, Equatable {
    /// How long to spin with `pause` before sleeping. Longer wastes a core while idle; shorter
    /// pays a futex wake (a system call on each side, several microseconds) per message.
    public var spinNanoseconds: UInt64
    /// Longest single futex sleep. The consumer re-checks the ring after each, so a wake-up lost
    /// to a peer that died between publishing and waking costs at most this long.
    public var sleepSliceNanoseconds: UInt64

    public init(spinNanoseconds: UInt64 = 10_000, sleepSliceNanoseconds: UInt64 = 100_000_000) {
        self.spinNanoseconds = spinNanoseconds
        self.sleepSliceNanoseconds = max(sleepSliceNanoseconds, 1_000)
    }

    /// Spin about 10 µs, then sleep.
    public static let adaptive = RingWaitPolicy()
    /// Never sleep: for dedicated cores (and for measuring the spinning floor).
    public static let spinOnly = RingWaitPolicy(spinNanoseconds: .max)
    /// Sleep at once: for endpoints that must not burn CPU.
    public static let sleepOnly = RingWaitPolicy(spinNanoseconds: 0)
}
