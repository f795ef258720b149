import XCTest
import Glibc
@testable import Platform

/// Memory a standby backs before its activation (`DMAMemoryReserve`) becomes an allocator's next
/// slab, zero, and is only mapped then; an allocator bound to a NUMA node leaves it alone.
final class DMAMemoryReserveTests: XCTestCase {
    override func tearDown() {
        // The reserve is process-wide: leave nothing behind for other tests' allocators.
        while let region = DMAMemoryReserve.take(size: DMAAllocator.slabSize, allowHugePages: true) {
            munmap(region.base, region.size)
        }
    }

    func testAPreparedRegionBecomesTheNextSlab() throws {
        XCTAssertEqual(DMAMemoryReserve.bytesHeld, 0)
        XCTAssertEqual(DMAMemoryReserve.prepare(slabs: 2), 2 * DMAAllocator.slabSize)
        let mapper = IdentityDMAMapper()
        let allocator = DMAAllocator(mapper: mapper)
        XCTAssertEqual(mapper.mapped.count, 0, "nothing is mapped for a device before an allocator takes it")
        let queue = try allocator.allocate(size: 4096)
        XCTAssertEqual(DMAMemoryReserve.bytesHeld, DMAAllocator.slabSize, "the first slab came from the reserve")
        let bounce = try allocator.allocate(size: DMAAllocator.slabSize)
        XCTAssertEqual(DMAMemoryReserve.bytesHeld, 0, "and the second")
        XCTAssertEqual(allocator.slabCount, 2)
        XCTAssertEqual(mapper.mapped.count, 2)
        for buffer in [queue, bounce] {
            XCTAssertTrue(mapper.isMapped(buffer.deviceAddress, size: buffer.size))
            XCTAssertTrue(UnsafeRawBufferPointer(start: buffer.address, count: buffer.size).allSatisfy { $0 == 0 })
        }
        // Memory handed out before is cleared when it is handed out again.
        bounce.address.initializeMemory(as: UInt8.self, repeating: 0x5A, count: bounce.size)
        allocator.free(bounce)
        let again = try allocator.allocate(size: DMAAllocator.slabSize)
        XCTAssertEqual(again.address, bounce.address)
        XCTAssertTrue(UnsafeRawBufferPointer(start: again.address, count: again.size).allSatisfy { $0 == 0 })
    }

    func testAnAllocatorOnANUMANodeDoesNotTakeTheReserve() throws {
        DMAMemoryReserve.prepare(slabs: 1)
        let allocator = DMAAllocator(mapper: IdentityDMAMapper(), numaNode: 0, useHugePages: false)
        _ = try allocator.allocate(size: 4096)
        XCTAssertEqual(DMAMemoryReserve.bytesHeld, DMAAllocator.slabSize, "its placement was not chosen for that node")
    }

    func testAFreshSlabsBuffersAreZeroAfterUseOfTheirNeighbours() throws {
        let allocator = DMAAllocator(mapper: IdentityDMAMapper(), useHugePages: false)
        let first = try allocator.allocate(size: 4096)
        first.address.initializeMemory(as: UInt8.self, repeating: 0xFF, count: first.size)
        let second = try allocator.allocate(size: 64, alignment: 64)
        XCTAssertEqual(second.address, first.address + 4096)
        XCTAssertTrue(UnsafeRawBufferPointer(start: second.address, count: second.size).allSatisfy { $0 == 0 })
        allocator.free(first)
        let third = try allocator.allocate(size: 64, alignment: 64)
        XCTAssertEqual(third.address, first.address, "first fit reuses the freed space")
        XCTAssertTrue(UnsafeRawBufferPointer(start: third.address, count: third.size).allSatisfy { $0 == 0 })
    }
}
