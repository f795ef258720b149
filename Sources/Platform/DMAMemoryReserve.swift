import CLimitless
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// DMA slabs' memory backed ahead of need. A fresh slab costs a 2 MiB mmap whose every page is
/// faulted in and zeroed before it can be pinned; under an emulated CPU that is most of a slab's
/// cost (several milliseconds each). A standby instance (servers.conf `standby yes`) cannot map
/// anything for its device before it is activated (it holds no container), but it can back the
/// memory: `prepare` does that, and `DMAAllocator` takes these regions for its next slabs, so
/// the restart only pins and maps them.
///
/// The regions are plain anonymous memory (not locked, not mapped for any device) until an
/// allocator takes them; they are zero, as fresh mmap memory is. NUMA placement cannot be
/// chosen before the device is known, so an allocator with a NUMA node does not take them.
public enum DMAMemoryReserve {
    struct Region: @unchecked Sendable {
        var base: UnsafeMutableRawPointer
        var size: Int
        var hugePages: Bool
    }

    private static let regions = Mutex<[Region]>([])

    /// Backs `slabs` regions of `DMAAllocator.slabSize` now (huge pages where the system has them
    /// reserved, else 4 KiB pages, each touched). Returns how many bytes are held in reserve.
    @discardableResult
    public static func prepare(slabs: Int) -> Int {
        let size = DMAAllocator.slabSize
        var made: [Region] = []
        for _ in 0..<max(0, slabs) {
            guard let mapped = DMAAllocator.mapAnonymous(size: size, hugePages: true) else { break }
            // Writing every page is what backs it; the pages stay zero.
            memset(mapped.base, 0, size)
            made.append(Region(base: mapped.base, size: size, hugePages: mapped.hugePages))
        }
        return regions.withLock { held in
            held += made
            return held.reduce(0) { $0 + $1.size }
        }
    }

    /// A backed, zero region of exactly `size` bytes, or nil; huge-page regions only when
    /// `allowHugePages`. The caller owns it (munmap).
    static func take(size: Int, allowHugePages: Bool) -> Region? {
        regions.withLock { held in
            guard let index = held.firstIndex(where: { $0.size == size && (allowHugePages || !$0.hugePages) }) else { return nil }
            return held.remove(at: index)
        }
    }

    /// Bytes held in reserve, not yet taken.
    public static var bytesHeld: Int { regions.withLock { $0.reduce(0) { $0 + $1.size } } }
}
