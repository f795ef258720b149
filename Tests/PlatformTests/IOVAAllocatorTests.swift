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
