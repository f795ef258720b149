import CLimitless
#if canImport(Glibc)
import Glibc
#endif

/// Converts time-stamp-counter cycles to nanoseconds. The rate is measured against
/// CLOCK_MONOTONIC (the kernel's own calibration is not exported to userspace without root).
public struct CycleClock: Sendable {
    public let cyclesPerNanosecond: Double
    public let measuredOverNanoseconds: UInt64

    public static func measure(milliseconds: UInt64 = 100) -> CycleClock {
        let t0 = CL_monotonic_ns()
        let c0 = CL_cycles()
        usleep(UInt32(milliseconds * 1000))
        let c1 = CL_cycles_ordered()
        let t1 = CL_monotonic_ns()
        return CycleClock(cyclesPerNanosecond: Double(c1 &- c0) / Double(t1 &- t0), measuredOverNanoseconds: t1 &- t0)
    }

    public func nanoseconds(_ cycles: Double) -> Double { cycles / cyclesPerNanosecond }
    public var gigahertz: Double { cyclesPerNanosecond }
}

/// A fixed number of cycle counts, allocated once before a timed loop so recording a sample is a
/// store, never an allocation.
struct Samples: ~Copyable {
    private let storage: UnsafeMutableBufferPointer<UInt64>
    private(set) var count = 0

    init(capacity: Int) {
        storage = .allocate(capacity: max(capacity, 1))
    }
    deinit { storage.deallocate() }

    var isFull: Bool { count == storage.count }

    /// Forgets the samples, keeping the storage (a new round).
    mutating func removeAll() { count = 0 }

    mutating func record(_ cycles: UInt64) {
        storage[count] = cycles
        count &+= 1
    }

    /// The value at `fraction` (0.5: median) of the recorded samples; sorts them.
    func percentile(_ fraction: Double) -> Double {
        guard count > 0 else { return .nan }
        var recorded = UnsafeMutableBufferPointer(rebasing: storage[0..<count])
        recorded.sort()
        let index = min(count - 1, Int((Double(count - 1) * fraction).rounded()))
        return Double(recorded[index])
    }
}
