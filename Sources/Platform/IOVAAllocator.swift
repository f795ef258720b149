/// Hands out I/O virtual addresses for DMA mappings: first fit over a sorted free list, with
/// neighbouring free ranges merged on release. IOVAs are deliberately not the process's virtual
/// addresses: those can exceed the IOMMU's address width (39 bits by default on QEMU's
/// intel-iommu) and would tie the device's view to our address-space layout.
public struct IOVAAllocator: Sendable {
    public struct Range: Equatable, Sendable {
        public var start: UInt64
        public var size: UInt64
        public var end: UInt64 { start + size }
    }

    public private(set) var free: [Range]
    public let window: Range

    /// `window` is the usable IOVA space. The default skips the first MiB (IOVA 0 catches bugs
    /// as null pointers do) and stays below 2^39.
    public init(start: UInt64 = 0x10_0000, end: UInt64 = 1 << 39) {
        precondition(end > start, "IOVA window must not be empty")
        window = Range(start: start, size: end - start)
        free = [window]
    }

    /// Reserves `size` bytes aligned to `alignment` (a power of two).
    public mutating func allocate(size: UInt64, alignment: UInt64 = 4096) throws -> UInt64 {
        precondition(size > 0 && alignment > 0 && alignment & (alignment - 1) == 0, "bad IOVA request")
        for index in free.indices {
            let range = free[index]
            let aligned = (range.start + alignment - 1) & ~(alignment - 1)
            guard aligned >= range.start, aligned + size <= range.end, aligned + size > aligned else { continue }
            var replacement: [Range] = []
            if aligned > range.start { replacement.append(Range(start: range.start, size: aligned - range.start)) }
            if aligned + size < range.end { replacement.append(Range(start: aligned + size, size: range.end - aligned - size)) }
            free.replaceSubrange(index...index, with: replacement)
            return aligned
        }
        throw PlatformError.iovaExhausted(requested: Int(clamping: size))
    }

    /// Returns a range; it must be one `allocate` handed out (or a part of one).
    public mutating func release(start: UInt64, size: UInt64) {
        precondition(start >= window.start && start + size <= window.end, "IOVA release outside the window")
        let position = free.firstIndex { $0.start > start } ?? free.endIndex
        if position > free.startIndex { precondition(free[position - 1].end <= start, "IOVA double release") }
        if position < free.endIndex { precondition(start + size <= free[position].start, "IOVA double release") }
        free.insert(Range(start: start, size: size), at: position)
        // Merge with the following and the preceding range where they touch.
        if position + 1 < free.count, free[position].end == free[position + 1].start {
            free[position].size += free[position + 1].size
            free.remove(at: position + 1)
        }
        if position > 0, free[position - 1].end == free[position].start {
            free[position - 1].size += free[position].size
            free.remove(at: position)
        }
    }

    /// Keeps only the parts of the free space that lie inside `usable` (the IOMMU's valid IOVA
    /// ranges: on x86 the MSI window 0xfee00000-0xfeefffff is never usable, and the address
    /// width bounds the top).
    public mutating func restrict(to usable: [Range]) {
        var kept: [Range] = []
        for range in free {
            for allowed in usable.sorted(by: { $0.start < $1.start }) {
                let start = max(range.start, allowed.start)
                let end = min(range.end, allowed.end)
                if end > start { kept.append(Range(start: start, size: end - start)) }
            }
        }
        free = kept
    }

    /// Whether `address` lies in a range handed out (inside the window and not free).
    public func isAllocated(_ address: UInt64) -> Bool {
        address >= window.start && address < window.end && !free.contains { address >= $0.start && address < $0.end }
    }

    public var freeBytes: UInt64 { free.reduce(0) { $0 + $1.size } }
}
