import XCTest
@testable import Platform

final class IOVAAllocatorTests: XCTestCase {
    func testAllocatesAlignedNonOverlappingRanges() throws {
        var allocator = IOVAAllocator(start: 0x1000, end: 0x100_0000)
        let first = try allocator.allocate(size: 0x3000)
        let second = try allocator.allocate(size: 0x20_0000, alignment: 0x20_0000)
        XCTAssertEqual(first, 0x1000)
        XCTAssertEqual(second % 0x20_0000, 0)
        XCTAssertGreaterThanOrEqual(second, first + 0x3000)
    }

    func testReleaseMergesNeighboursBackIntoOneRange() throws {
        var allocator = IOVAAllocator(start: 0x1000, end: 0x10_1000)
        let a = try allocator.allocate(size: 0x1000)
        let b = try allocator.allocate(size: 0x1000)
        let c = try allocator.allocate(size: 0x1000)
        allocator.release(start: a, size: 0x1000)
        allocator.release(start: c, size: 0x1000)
        XCTAssertEqual(allocator.free.count, 2)
        allocator.release(start: b, size: 0x1000)
        XCTAssertEqual(allocator.free, [IOVAAllocator.Range(start: 0x1000, size: 0x10_0000)])
    }

    func testExhaustionIsAnError() throws {
        var allocator = IOVAAllocator(start: 0x1000, end: 0x3000)
        _ = try allocator.allocate(size: 0x2000)
        XCTAssertThrowsError(try allocator.allocate(size: 0x1000)) { error in
            XCTAssertEqual(error as? PlatformError, .iovaExhausted(requested: 0x1000))
        }
    }

    func testReusesFreedSpaceFirstFit() throws {
        var allocator = IOVAAllocator(start: 0x1000, end: 0x10_0000)
        let a = try allocator.allocate(size: 0x2000)
        _ = try allocator.allocate(size: 0x1000)
        allocator.release(start: a, size: 0x2000)
        XCTAssertEqual(try allocator.allocate(size: 0x1000), a)
    }
}

final class IOVARestrictionTests: XCTestCase {
    func testRestrictKeepsOnlyUsableRangesAroundTheMSIWindow() throws {
        var allocator = IOVAAllocator(start: 0x10_0000, end: 1 << 39)
        // What intel-iommu reports: everything below the MSI window, and above it up to 2^39.
        allocator.restrict(to: [.init(start: 0, size: 0xFEE0_0000), .init(start: 0xFEF0_0000, size: (1 << 39) - 0xFEF0_0000)])
        XCTAssertEqual(allocator.free.count, 2)
        XCTAssertEqual(allocator.free[0].end, 0xFEE0_0000)
        XCTAssertEqual(allocator.free[1].start, 0xFEF0_0000)
        _ = try allocator.allocate(size: 0xFEC0_0000)
        let next = try allocator.allocate(size: 0x40_0000)
        XCTAssertGreaterThanOrEqual(next, 0xFEF0_0000, "no IOVA may land in the MSI window")
    }
}
