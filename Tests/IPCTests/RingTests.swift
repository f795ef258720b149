import XCTest
@testable import IPC

/// One process, both ends: order, wrap-around, full and empty, batching.
final class RingTests: XCTestCase {
    func testMessagesArriveInOrderAcrossWrapAround() throws {
        let memory = try SharedRingMemory.create(layout: RingLayout(slotSize: 64, capacity: 8))
        var client = try memory.clientEnd()
        var server = try memory.serverEnd()
        var next: UInt64 = 0
        var expected: UInt64 = 0
        // Bursts of 5 into 8 slots: positions wrap many times, never at a burst boundary.
        for _ in 0..<40 {
            for _ in 0..<5 {
                XCTAssertTrue(try withUnsafeBytes(of: next) { try client.requests.trySend($0) })
                next += 1
            }
            while let value = server.requests.tryReceive({ $0.load(as: UInt64.self) }) {
                XCTAssertEqual(value, expected)
                expected += 1
            }
        }
        XCTAssertEqual(expected, 200)
        XCTAssertEqual(client.requests.wakeups, 0, "nobody slept: no wake system calls")
    }

    func testFullRingRefusesAndEmptyRingReturnsNil() throws {
        let memory = try SharedRingMemory.create(layout: RingLayout(slotSize: 32, capacity: 4))
        var client = try memory.clientEnd()
        var server = try memory.serverEnd()
        XCTAssertNil(server.requests.tryReceive { _ in 0 })
        for i in 0..<4 { XCTAssertTrue(try withUnsafeBytes(of: i) { try client.requests.trySend($0) }) }
        XCTAssertFalse(try withUnsafeBytes(of: 99) { try client.requests.trySend($0) }, "a full ring says full")
        XCTAssertEqual(try server.requests.pending(), 4)
        XCTAssertEqual(server.requests.tryReceive { $0.load(as: Int.self) }, 0)
        XCTAssertTrue(try withUnsafeBytes(of: 4) { try client.requests.trySend($0) }, "one slot freed, one message fits")
        for i in 1...4 { XCTAssertEqual(server.requests.tryReceive { $0.load(as: Int.self) }, i) }
        XCTAssertNil(server.requests.tryReceive { _ in 0 })
        var buffer = [UInt8](repeating: 0, count: 8)
        XCTAssertFalse(buffer.withUnsafeMutableBytes { server.requests.tryReceive(into: $0) })
    }

    func testBatchIsVisibleBeforeFlushAndPublishedByIt() throws {
        let memory = try SharedRingMemory.create(layout: RingLayout(slotSize: 64, capacity: 16))
        var client = try memory.clientEnd()
        var server = try memory.serverEnd()
        for i in 0..<10 {
            XCTAssertTrue(try client.requests.tryEnqueue { $0.storeBytes(of: UInt32(i), as: UInt32.self) })
        }
        XCTAssertEqual(try server.requests.pending(), 0, "tail not published before flush")
        XCTAssertTrue(server.requests.hasMessage, "but the stamps are: a spinning consumer starts early")
        client.requests.flush()
        XCTAssertEqual(try server.requests.pending(), 10)
        for i in 0..<10 { XCTAssertEqual(server.requests.tryReceive { $0.load(as: UInt32.self) }, UInt32(i)) }
    }

    func testShortMessageZeroesTheRestOfTheSlotAndLongOneIsRefused() throws {
        let memory = try SharedRingMemory.create(layout: RingLayout(slotSize: 64, capacity: 2))
        var client = try memory.clientEnd()
        var server = try memory.serverEnd()
        XCTAssertEqual(client.payloadSize, 56)
        let full = [UInt8](repeating: 0xFF, count: 56)
        XCTAssertTrue(try full.withUnsafeBytes { try client.requests.trySend($0) })
        _ = server.requests.tryReceive { _ in () }
        XCTAssertTrue(try [1, 2, 3].map(UInt8.init).withUnsafeBytes { try client.requests.trySend($0) })
        XCTAssertTrue(try full.withUnsafeBytes { try client.requests.trySend($0) })
        _ = server.requests.tryReceive { _ in () }
        _ = server.requests.tryReceive { _ in () }
        // Position 2 reuses slot 0, last written with 0xFF: a short message must not leak it.
        XCTAssertTrue(try [7].map(UInt8.init).withUnsafeBytes { try client.requests.trySend($0) })
        XCTAssertEqual(server.requests.tryReceive { Array($0) }, [7] + [UInt8](repeating: 0, count: 55))
        let long = [UInt8](repeating: 1, count: 57)
        XCTAssertThrowsError(try long.withUnsafeBytes { try client.requests.trySend($0) }) { error in
            XCTAssertEqual(error as? RingError, .messageTooLarge(size: 57, limit: 56))
        }
    }

    func testLayoutRejectsSizesThatAreNotPowersOfTwo() {
        XCTAssertThrowsError(try RingLayout(slotSize: 48, capacity: 8))
        XCTAssertThrowsError(try RingLayout(slotSize: 8, capacity: 8))
        XCTAssertThrowsError(try RingLayout(slotSize: 64, capacity: 1000))
        XCTAssertThrowsError(try RingLayout(slotSize: 64, capacity: 1))
        XCTAssertNoThrow(try RingLayout(slotSize: 4096, capacity: 1 << 16))
    }

    func testLayoutKeepsWritersOnSeparateLinePairs() throws {
        let layout = try RingLayout(slotSize: 64, capacity: 1024)
        let offsets = [RingLayout.magicOffset, RingLayout.tailOffset, RingLayout.headOffset, RingLayout.sleepingOffset, RingLayout.ringHeaderSize]
        for (a, b) in zip(offsets, offsets.dropFirst()) { XCTAssertGreaterThanOrEqual(b - a, 128) }
        XCTAssertEqual(layout.ringOffset(0) % 4096, 0)
        XCTAssertEqual(layout.ringOffset(1) % 4096, 0)
        XCTAssertEqual(layout.totalSize, 4096 + 2 * (4096 + 16 * 4096))
    }
}
