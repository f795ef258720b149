import CLimitless
import CNUMA
#if canImport(Glibc)
import Glibc
#endif

/// A piece of pinned memory the device can reach: where we see it and where the device does.
/// A plain value: passing it around touches no reference count. The `DMAAllocator` that
/// handed it out owns the memory.
public struct DMABuffer: Equatable, @unchecked Sendable {
    public let address: UnsafeMutableRawPointer
    /// The IOVA (VFIO) or physical address (UIO) to give the device.
    public let deviceAddress: UInt64
    public let size: Int

    public init(address: UnsafeMutableRawPointer, deviceAddress: UInt64, size: Int) {
        self.address = address
        self.deviceAddress = deviceAddress
        self.size = size
    }

    public func zero() { address.initializeMemory(as: UInt8.self, repeating: 0, count: size) }

    /// A part of this buffer, e.g. one entry of a queue.
    public func slice(offset: Int, size: Int) -> DMABuffer {
        precondition(offset >= 0 && size >= 0 && offset + size <= self.size, "DMA slice out of range")
        return DMABuffer(address: address + offset, deviceAddress: deviceAddress + UInt64(offset), size: size)
    }
}

/// Allocates DMA memory in 2 MiB slabs — huge pages when the system has them reserved, 4 KiB pages
/// otherwise — maps each slab into the device's address space once, and carves buffers out of
/// slabs. One mapping per slab, not per buffer, keeps a container far below VFIO's 65,535-mapping
/// limit. Allocation is for set-up (queues, buffer pools); per-I/O buffers come from a
/// `DMABufferPool`, which allocates nothing.
public final class DMAAllocator {
    public static let slabSize = 2 << 20

    public let mapper: any DMAMapper
    public let numaNode: Int?
    public private(set) var usesHugePages: Bool
    private var slabs: [Slab] = []

    struct Slab {
        var base: UnsafeMutableRawPointer
        var deviceAddress: UInt64
        var size: Int
        var hugePages: Bool
        /// Free byte ranges (offset, length), sorted.
        var free: [(offset: Int, length: Int)]
        var live = 0
        /// Bytes from here to the end have never been handed out, so they are still zero (fresh
        /// mmap memory): a buffer carved there needs no zeroing (2 MiB of it is milliseconds
        /// under an emulated CPU).
        var neverUsedFrom = 0
    }

    /// `numaNode` places the memory on the device's node (libnuma); nil leaves placement to the kernel.
    public init(mapper: any DMAMapper, numaNode: Int? = nil, useHugePages: Bool = true) {
        self.mapper = mapper
        self.numaNode = numaNode
        self.usesHugePages = useHugePages
    }

    deinit {
        for slab in slabs {
            try? mapper.unmapForDevice(deviceAddress: slab.deviceAddress, size: slab.size)
            munmap(slab.base, slab.size)
        }
    }

    public var slabCount: Int { slabs.count }
    public var bytesReserved: Int { slabs.reduce(0) { $0 + $1.size } }

    /// Returns zeroed memory of at least `size` bytes aligned to `alignment` (a power of two up
    /// to 2 MiB), both in our address space and in the device's.
    public func allocate(size: Int, alignment: Int = 4096) throws -> DMABuffer {
        precondition(size > 0 && alignment > 0 && alignment & (alignment - 1) == 0 && alignment <= Self.slabSize,
                     "DMA allocation needs a positive size and a power-of-two alignment up to 2 MiB")
        let rounded = (size + 63) & ~63
        for index in slabs.indices {
            if let buffer = carve(slabIndex: index, size: rounded, alignment: alignment) { return buffer }
        }
        let slabBytes = (rounded + Self.slabSize - 1) / Self.slabSize * Self.slabSize
        slabs.append(try makeSlab(size: slabBytes))
        guard let buffer = carve(slabIndex: slabs.count - 1, size: rounded, alignment: alignment) else {
            throw PlatformError.outOfDMAMemory(requested: size, reason: "a new slab could not hold the request")
        }
        return buffer
    }

    /// Returns a buffer to its slab. Slabs stay mapped until the allocator goes away, so a
    /// device that still holds an address cannot fault into memory that was given back.
    public func free(_ buffer: DMABuffer) {
        guard let index = slabs.firstIndex(where: { buffer.address >= $0.base && buffer.address < $0.base + $0.size }) else {
            preconditionFailure("DMA buffer freed to an allocator that did not make it")
        }
        let offset = buffer.address - slabs[index].base
        let length = (buffer.size + 63) & ~63
        var free = slabs[index].free
        let position = free.firstIndex { $0.offset > offset } ?? free.endIndex
        free.insert((offset, length), at: position)
        var merged: [(offset: Int, length: Int)] = []
        for range in free {
            if let last = merged.last, last.offset + last.length == range.offset {
                merged[merged.count - 1].length += range.length
            } else {
                merged.append(range)
            }
        }
        slabs[index].free = merged
        slabs[index].live -= 1
    }

    /// Unmaps from the device and returns to the system every slab with no live buffer; returns
    /// how many bytes were released. Call it once the device can no longer hold those addresses
    /// (after a queue is deleted, say): from then on a stray DMA there faults in the IOMMU.
    @discardableResult
    public func releaseUnusedSlabs() throws -> Int {
        var released = 0
        var kept: [Slab] = []
        for slab in slabs {
            guard slab.live == 0 else { kept.append(slab); continue }
            try mapper.unmapForDevice(deviceAddress: slab.deviceAddress, size: slab.size)
            munmap(slab.base, slab.size)
            released += slab.size
        }
        slabs = kept
        return released
    }

    private func carve(slabIndex: Int, size: Int, alignment: Int) -> DMABuffer? {
        var slab = slabs[slabIndex]
        for (position, range) in slab.free.enumerated() {
            let start = (range.offset + alignment - 1) & ~(alignment - 1)
            guard start + size <= range.offset + range.length else { continue }
            var replacement: [(offset: Int, length: Int)] = []
            if start > range.offset { replacement.append((range.offset, start - range.offset)) }
            let end = start + size
            if end < range.offset + range.length { replacement.append((end, range.offset + range.length - end)) }
            slab.free.replaceSubrange(position...position, with: replacement)
            slab.live += 1
            let fresh = start >= slab.neverUsedFrom
            slab.neverUsedFrom = max(slab.neverUsedFrom, end)
            slabs[slabIndex] = slab
            let buffer = DMABuffer(address: slab.base + start, deviceAddress: slab.deviceAddress + UInt64(start), size: size)
            if !fresh { buffer.zero() }
            return buffer
        }
        return nil
    }

    private func makeSlab(size: Int) throws -> Slab {
        if mapper.pinsMemory { try checkMemlock(adding: size) }
        let memory: UnsafeMutableRawPointer, huge: Bool
        // Memory a standby backed before its activation (`DMAMemoryReserve`); its placement was
        // not chosen, so not for an allocator bound to a NUMA node.
        if numaNode == nil, let reserved = DMAMemoryReserve.take(size: size, allowHugePages: usesHugePages) {
            memory = reserved.base
            huge = reserved.hugePages
        } else {
            guard let mapped = Self.mapAnonymous(size: size, hugePages: usesHugePages) else {
                throw PlatformError.outOfDMAMemory(requested: size, reason: "mmap: \(String(cString: strerror(CL_errno())))")
            }
            // No huge pages reserved (vm.nr_hugepages is 0): fall back for good, once.
            if usesHugePages && !mapped.hugePages { usesHugePages = false }
            memory = mapped.base
            huge = mapped.hugePages
            if let numaNode, numa_available() >= 0 { numa_tonode_memory(memory, size, Int32(numaNode)) }
            // Touch every page now so it is backed (on the chosen node) before it is pinned.
            memset(memory, 0, size)
        }
        let deviceAddress: UInt64
        do {
            deviceAddress = try mapper.mapForDevice(memory, size: size)
        } catch {
            munmap(memory, size)
            throw error
        }
        return Slab(base: memory, deviceAddress: deviceAddress, size: size, hugePages: huge, free: [(0, size)])
    }

    /// `size` bytes of fresh anonymous memory for a slab: 2 MiB huge pages when `hugePages` and
    /// the system has them reserved, else 4 KiB pages; nil when neither maps (errno says why).
    static func mapAnonymous(size: Int, hugePages: Bool) -> (base: UnsafeMutableRawPointer, hugePages: Bool)? {
        if hugePages {
            let pointer = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | CL_MAP_HUGETLB | CL_MAP_HUGE_2MB, -1, 0)
            if let pointer, CL_is_map_failed(pointer) == 0 { return (pointer, true) }
        }
        let pointer = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let pointer, CL_is_map_failed(pointer) == 0 else { return nil }
        return (pointer, false)
    }

    private func checkMemlock(adding size: Int) throws {
        // Root (CAP_IPC_LOCK) is not limited; everyone else pins against RLIMIT_MEMLOCK.
        guard geteuid() != 0 else { return }
        var soft: UInt64 = 0, hard: UInt64 = 0
        guard CL_getrlimit_memlock(&soft, &hard) == 0 else { return }
        let needed = bytesReserved + size
        if UInt64(needed) > soft { throw PlatformError.memlockTooLow(needed: needed, limit: soft) }
    }
}

/// Fixed-size DMA buffers from one allocation with a stack of free indices (ixy's mempool):
/// taking and returning a buffer is two loads and a store — no allocation, no reference count.
/// Single-threaded by design: one pool per queue.
public struct DMABufferPool: ~Copyable {
    public let region: DMABuffer
    public let bufferSize: Int
    public let capacity: Int
    private let freeStack: UnsafeMutablePointer<Int32>
    public private(set) var freeCount: Int

    public init(allocator: DMAAllocator, bufferSize: Int, count: Int) throws {
        precondition(bufferSize > 0 && count > 0 && count <= Int(Int32.max), "pool needs buffers")
        let stride = (bufferSize + 63) & ~63
        region = try allocator.allocate(size: stride * count, alignment: bufferSize >= 4096 ? 4096 : 64)
        self.bufferSize = stride
        capacity = count
        freeStack = .allocate(capacity: count)
        for index in 0..<count { freeStack[index] = Int32(count - 1 - index) }
        freeCount = count
    }

    deinit { freeStack.deallocate() }

    /// A free buffer's index, or nil when all are in use.
    @inline(__always)
    public mutating func take() -> Int32? {
        guard freeCount > 0 else { return nil }
        freeCount -= 1
        return freeStack[freeCount]
    }

    @inline(__always)
    public mutating func give(_ index: Int32) {
        precondition(freeCount < capacity, "buffer returned twice")
        freeStack[freeCount] = index
        freeCount += 1
    }

    @inline(__always)
    public func address(_ index: Int32) -> UnsafeMutableRawPointer { region.address + Int(index) * bufferSize }

    @inline(__always)
    public func deviceAddress(_ index: Int32) -> UInt64 { region.deviceAddress + UInt64(Int(index) * bufferSize) }
}
