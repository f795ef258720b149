import XCTest
import Glibc
import CLimitless
@testable import Platform

final class DMAAllocatorTests: XCTestCase {
    func testBuffersComeFromOneMappedSlab() throws {
        let mapper = IdentityDMAMapper()
        let allocator = DMAAllocator(mapper: mapper, useHugePages: false)
        var buffers: [DMABuffer] = []
        for _ in 0..<100 { buffers.append(try allocator.allocate(size: 4096)) }
        XCTAssertEqual(allocator.slabCount, 1, "100 small buffers fit one 2 MiB slab: one IOMMU mapping, not 100")
        XCTAssertEqual(mapper.mapped.count, 1)
        for buffer in buffers {
            XCTAssertEqual(UInt(bitPattern: buffer.address) % 4096, 0)
            XCTAssertTrue(mapper.isMapped(buffer.deviceAddress, size: buffer.size))
        }
        let starts = Set(buffers.map(\.deviceAddress))
        XCTAssertEqual(starts.count, 100)
    }

    func testBuffersAreZeroedAndDistinct() throws {
        let allocator = DMAAllocator(mapper: IdentityDMAMapper(), useHugePages: false)
        let a = try allocator.allocate(size: 512)
        a.address.initializeMemory(as: UInt8.self, repeating: 0xAB, count: a.size)
        allocator.free(a)
        let b = try allocator.allocate(size: 512)
        XCTAssertEqual(b.address, a.address, "first fit reuses the freed space")
        XCTAssertTrue(UnsafeRawBufferPointer(start: b.address, count: b.size).allSatisfy { $0 == 0 })
    }

    func testFreedSpaceMergesSoALargeBufferFitsAgain() throws {
        let allocator = DMAAllocator(mapper: IdentityDMAMapper(), useHugePages: false)
        let pieces = try (0..<512).map { _ in try allocator.allocate(size: 4096) }
        pieces.forEach(allocator.free)
        _ = try allocator.allocate(size: 2 << 20)
        XCTAssertEqual(allocator.slabCount, 1, "512 freed 4 KiB pieces merge back into the whole slab")
    }

    func testLargeRequestsGetTheirOwnSlab() throws {
        let mapper = IdentityDMAMapper()
        let allocator = DMAAllocator(mapper: mapper, useHugePages: false)
        let big = try allocator.allocate(size: 5 << 20)
        XCTAssertGreaterThanOrEqual(big.size, 5 << 20)
        XCTAssertEqual(allocator.bytesReserved, 6 << 20)
    }

    func testAlignmentIsHonoured() throws {
        let allocator = DMAAllocator(mapper: IdentityDMAMapper(), useHugePages: false)
        _ = try allocator.allocate(size: 100, alignment: 64)
        let aligned = try allocator.allocate(size: 100, alignment: 65536)
        XCTAssertEqual(aligned.deviceAddress % 65536, 0)
    }

    func testHugePagesFallBackWhenNoneAreReserved() throws {
        let allocator = DMAAllocator(mapper: IdentityDMAMapper(), useHugePages: true)
        let buffer = try allocator.allocate(size: 4096)
        let reserved = Sysfs(root: "/proc/sys").readText("/proc/sys/vm/nr_hugepages").flatMap { Int($0) } ?? 0
        if reserved == 0 { XCTAssertFalse(allocator.usesHugePages) }
        XCTAssertEqual(UInt(bitPattern: buffer.address) % 4096, 0)
    }

    func testSliceStaysInside() throws {
        let allocator = DMAAllocator(mapper: IdentityDMAMapper(), useHugePages: false)
        let buffer = try allocator.allocate(size: 8192)
        let slice = buffer.slice(offset: 4096, size: 64)
        XCTAssertEqual(slice.deviceAddress, buffer.deviceAddress + 4096)
        XCTAssertEqual(slice.address, buffer.address + 4096)
    }

    func testMappingFailureReleasesTheSlab() {
        final class FailingMapper: DMAMapper {
            var pinsMemory: Bool { false }
            func mapForDevice(_ address: UnsafeMutableRawPointer, size: Int) throws -> UInt64 {
                throw PlatformError.iovaExhausted(requested: size)
            }
            func unmapForDevice(deviceAddress: UInt64, size: Int) throws {}
        }
        let allocator = DMAAllocator(mapper: FailingMapper(), useHugePages: false)
        XCTAssertThrowsError(try allocator.allocate(size: 4096))
        XCTAssertEqual(allocator.slabCount, 0)
    }
}

final class DMABufferPoolTests: XCTestCase {
    func testTakeAndGiveAreALIFOStackOfIndices() throws {
        let allocator = DMAAllocator(mapper: IdentityDMAMapper(), useHugePages: false)
        var pool = try DMABufferPool(allocator: allocator, bufferSize: 2048, count: 8)
        var taken: [Int32] = []
        while let index = pool.take() { taken.append(index) }
        XCTAssertEqual(taken, Array(0..<8))
        XCTAssertNil(pool.take())
        pool.give(3)
        XCTAssertEqual(pool.take(), 3)
        XCTAssertEqual(pool.deviceAddress(1) - pool.deviceAddress(0), 2048)
        XCTAssertEqual(pool.address(7) - pool.address(0), 7 * 2048)
    }
}

final class MMIORegionTests: XCTestCase {
    func testAccessesHitTheRightBytesLittleEndian() {
        let memory = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 8)
        defer { memory.deallocate() }
        memory.initializeMemory(as: UInt8.self, repeating: 0, count: 64)
        let region = MMIORegion(base: memory, length: 64)
        region.write32(8, 0x1122_3344)
        XCTAssertEqual(region.read8(8), 0x44)
        XCTAssertEqual(region.read16(10), 0x1122)
        region.write64(16, 0x0102_0304_0506_0708)
        XCTAssertEqual(region.read32(20), 0x0102_0304)
        let doorbells = region.subregion(offset: 16, length: 16)
        XCTAssertEqual(doorbells.read64(0), 0x0102_0304_0506_0708)
        region.setBits32(8, 0x8000_0000)
        XCTAssertEqual(region.read32(8), 0x9122_3344)
        region.clearBits32(8, 0x1000_0000)
        XCTAssertEqual(region.read32(8), 0x8122_3344)
    }

    func testWaitForTimesOutAndSucceeds() {
        let memory = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
        defer { memory.deallocate() }
        let region = MMIORegion(base: memory, length: 8)
        region.write32(0, 0)
        XCTAssertFalse(region.waitFor32(0, mask: 1, equals: 1, timeoutNanoseconds: 1_000_000))
        region.write32(0, 3)
        XCTAssertTrue(region.waitFor32(0, mask: 1, equals: 1, timeoutNanoseconds: 1_000_000))
    }
}

final class InterruptLineTests: XCTestCase {
    func testWaitReturnsTheCountOrZeroOnTimeout() throws {
        let fd = CL_eventfd(0, CL_EFD_NONBLOCK)
        XCTAssertGreaterThanOrEqual(fd, 0)
        defer { close(fd) }
        let line = InterruptLine(fd: fd, kind: .msix, vector: 0)
        XCTAssertEqual(line.wait(timeoutNanoseconds: 1_000_000), 0)
        var two: UInt64 = 2
        _ = write(fd, &two, 8)
        XCTAssertEqual(line.wait(timeoutNanoseconds: 1_000_000_000), 2)
        XCTAssertEqual(line.consume(), 0, "the count is cleared by the wait")
    }
}

final class PagemapTests: XCTestCase {
    func testPhysicalAddressOfLockedPageNeedsRoot() throws {
        let memory = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { memory.deallocate() }
        memory.storeBytes(of: 1, as: UInt8.self)
        let mapper = PagemapMapper()
        if geteuid() == 0 {
            let physical = try mapper.mapForDevice(memory, size: 4096)
            XCTAssertNotEqual(physical, 0)
            XCTAssertEqual(physical % 4096, 0)
        } else {
            XCTAssertThrowsError(try mapper.mapForDevice(memory, size: 4096)) { error in
                XCTAssertTrue("\(error)".contains("root"), "\(error)")
            }
        }
    }
}

final class NUMATests: XCTestCase {
    func testRunningOnAnExistingNodeAndRefusingAMissingOne() {
        XCTAssertGreaterThanOrEqual(NUMA.nodeCount, 1)
        if NUMA.available { XCTAssertTrue(NUMA.runCurrentThread(onNode: 0)) }
        XCTAssertFalse(NUMA.runCurrentThread(onNode: NUMA.nodeCount + 5))
        XCTAssertFalse(NUMA.runCurrentThread(onNode: -1))
    }

    func testAllocatorPlacesMemoryOnNodeZero() throws {
        let allocator = DMAAllocator(mapper: IdentityDMAMapper(), numaNode: 0, useHugePages: false)
        let buffer = try allocator.allocate(size: 4096)
        buffer.address.storeBytes(of: 7, as: UInt8.self)
        XCTAssertEqual(buffer.address.load(as: UInt8.self), 7)
    }
}

final class DMAReleaseTests: XCTestCase {
    func testUnusedSlabsAreUnmappedAndLiveOnesKept() throws {
        let mapper = IdentityDMAMapper()
        let allocator = DMAAllocator(mapper: mapper, useHugePages: false)
        let kept = try allocator.allocate(size: 4096)
        let big = try allocator.allocate(size: 3 << 20)
        XCTAssertEqual(mapper.mapped.count, 2)
        allocator.free(big)
        XCTAssertEqual(try allocator.releaseUnusedSlabs(), 4 << 20)
        XCTAssertEqual(mapper.mapped.count, 1)
        XCTAssertTrue(mapper.isMapped(kept.deviceAddress, size: kept.size))
        XCTAssertFalse(mapper.isMapped(big.deviceAddress, size: 4096))
    }
}
