import CLimitless

/// Access to a device's memory-mapped registers. Drivers are generic over it, so the same code
/// runs on a mapped BAR (`MMIORegion`) and on a scripted fake device in unit tests; with
/// generics (not existentials) the real path specialises to single volatile loads and stores.
public protocol RegisterIO {
    var length: Int { get }
    func read8(_ offset: Int) -> UInt8
    func read16(_ offset: Int) -> UInt16
    func read32(_ offset: Int) -> UInt32
    func read64(_ offset: Int) -> UInt64
    func write8(_ offset: Int, _ value: UInt8)
    func write16(_ offset: Int, _ value: UInt16)
    func write32(_ offset: Int, _ value: UInt32)
    func write64(_ offset: Int, _ value: UInt64)
}

extension RegisterIO {
    /// Polls until `(read32(offset) & mask) == expected` or `timeoutNanoseconds` pass — the
    /// shape of ixy's wait_set_reg32. Returns whether the condition was met.
    public func waitFor32(_ offset: Int, mask: UInt32, equals expected: UInt32,
                          timeoutNanoseconds: UInt64, clock: MonotonicClock = .init()) -> Bool {
        let deadline = clock.now() &+ timeoutNanoseconds
        while true {
            if read32(offset) & mask == expected { return true }
            if clock.now() >= deadline { return read32(offset) & mask == expected }
            clock.pause()
        }
    }

    public func setBits32(_ offset: Int, _ bits: UInt32) { write32(offset, read32(offset) | bits) }
    public func clearBits32(_ offset: Int, _ bits: UInt32) { write32(offset, read32(offset) & ~bits) }
}

/// A mapped MMIO window (a BAR, or part of one): a plain pointer and a length, so copying it is
/// free and touches no reference count. The owner of the mapping (`VFIODevice`, `UIODevice`)
/// keeps it alive; a view must not outlive its owner.
///
/// Bounds are checked with `precondition` in debug builds only; drivers keep offsets from the
/// spec's register map, and a release hot path must not pay for a branch per access.
public struct MMIORegion: RegisterIO, @unchecked Sendable {
    public let base: UnsafeMutableRawPointer
    public let length: Int

    public init(base: UnsafeMutableRawPointer, length: Int) {
        self.base = base
        self.length = length
    }

    /// A window of this region, e.g. the NVMe doorbells or the xHCI runtime registers.
    public func subregion(offset: Int, length: Int) -> MMIORegion {
        precondition(offset >= 0 && length >= 0 && offset + length <= self.length, "MMIO subregion out of range")
        return MMIORegion(base: base + offset, length: length)
    }

    @inline(__always) private func check(_ offset: Int, _ size: Int) {
        assert(offset >= 0 && offset + size <= length && offset % size == 0,
               "MMIO access of \(size) bytes at \(offset) outside or misaligned in \(length)-byte region")
    }

    @inline(__always) public func read8(_ offset: Int) -> UInt8 { check(offset, 1); return CL_mmio_read8(base, offset) }
    @inline(__always) public func read16(_ offset: Int) -> UInt16 { check(offset, 2); return CL_mmio_read16(base, offset) }
    @inline(__always) public func read32(_ offset: Int) -> UInt32 { check(offset, 4); return CL_mmio_read32(base, offset) }
    @inline(__always) public func read64(_ offset: Int) -> UInt64 { check(offset, 8); return CL_mmio_read64(base, offset) }
    @inline(__always) public func write8(_ offset: Int, _ value: UInt8) { check(offset, 1); CL_mmio_write8(base, offset, value) }
    @inline(__always) public func write16(_ offset: Int, _ value: UInt16) { check(offset, 2); CL_mmio_write16(base, offset, value) }
    @inline(__always) public func write32(_ offset: Int, _ value: UInt32) { check(offset, 4); CL_mmio_write32(base, offset, value) }
    @inline(__always) public func write64(_ offset: Int, _ value: UInt64) { check(offset, 8); CL_mmio_write64(base, offset, value) }
}

/// Nanosecond monotonic time for register polling and interrupt timeouts.
public struct MonotonicClock: Sendable {
    public init() {}
    public func now() -> UInt64 {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        return UInt64(spec.tv_sec) &* 1_000_000_000 &+ UInt64(spec.tv_nsec)
    }
    /// A short pause between register polls: long enough not to hammer the bus, short enough
    /// for controller state changes measured in microseconds.
    public func pause() {
        var request = timespec(tv_sec: 0, tv_nsec: 10_000)
        nanosleep(&request, nil)
    }
}

#if canImport(Glibc)
import Glibc
#endif
