import XCTest
import CLimitless
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif
@testable import IPC

/// A peer may hand us anything as a ring memfd, and may write anything into it later: each case
/// must end in a RingError, never a crash or an access outside the mapping.
final class RingAttachTests: XCTestCase {
    private func make(capacity: Int = 8) throws -> SharedRingMemory {
        try SharedRingMemory.create(layout: RingLayout(slotSize: 64, capacity: capacity))
    }
    private func attachCopy(of memory: SharedRingMemory) throws(RingError) -> SharedRingMemory {
        try SharedRingMemory.attach(descriptor: FileDescriptor(rawValue: dup(memory.descriptor.rawValue)))
    }
    private func expect(_ expected: (RingError) -> Bool, _ body: () throws -> Void, line: UInt = #line) {
        XCTAssertThrowsError(try body(), line: line) { error in
            guard let error = error as? RingError else { return XCTFail("not a RingError: \(error)", line: line) }
            XCTAssertTrue(expected(error), "unexpected: \(error)", line: line)
            XCTAssertFalse(error.description.isEmpty)
        }
    }
    private func ring(_ memory: SharedRingMemory, _ index: Int) -> UnsafeMutableRawPointer {
        memory.base + memory.layout.ringOffset(index)
    }

    func testAttachSeesTheSameRings() throws {
        let memory = try make()
        let peer = try attachCopy(of: memory)
        XCTAssertEqual(peer.layout, memory.layout)
        var client = try memory.clientEnd()
        var server = try peer.serverEnd()
        XCTAssertTrue(try withUnsafeBytes(of: 42) { try client.requests.trySend($0) })
        XCTAssertEqual(server.requests.tryReceive { $0.load(as: Int.self) }, 42)
    }

    func testBadMagicIsRefused() throws {
        let memory = try make()
        memory.base.storeBytes(of: 0xDEAD_BEEF, as: UInt64.self)
        expect({ if case .badMagic = $0 { true } else { false } }) { _ = try attachCopy(of: memory) }
        let other = try make()
        ring(other, 1).storeBytes(of: 0, as: UInt64.self)
        expect({ if case .badMagic = $0 { true } else { false } }) { _ = try attachCopy(of: other) }
    }

    func testBadVersionIsRefused() throws {
        let memory = try make()
        memory.base.storeBytes(of: UInt32(9), toByteOffset: RingLayout.versionOffset, as: UInt32.self)
        expect({ $0 == .unsupportedVersion(found: 9, supported: 1) }) { _ = try attachCopy(of: memory) }
    }

    func testBadCapacityIsRefused() throws {
        for bad: UInt32 in [0, 3, 1 << 30, .max] {
            let memory = try make()
            memory.base.storeBytes(of: bad, toByteOffset: RingLayout.capacityOffset, as: UInt32.self)
            expect({ if case .invalidLayout = $0 { true } else { false } }) { _ = try attachCopy(of: memory) }
        }
        // A capacity the memfd is too small for.
        let small = try make(capacity: 8)
        small.base.storeBytes(of: UInt32(1 << 16), toByteOffset: RingLayout.capacityOffset, as: UInt32.self)
        expect({ if case .truncated = $0 { true } else { false } }) { _ = try attachCopy(of: small) }
        // A ring header that disagrees with the pair header.
        let mismatch = try make(capacity: 16)
        ring(mismatch, 0).storeBytes(of: UInt32(8), toByteOffset: RingLayout.capacityOffset, as: UInt32.self)
        expect({ if case .headerMismatch = $0 { true } else { false } }) { _ = try attachCopy(of: mismatch) }
    }

    func testIndicesBeyondCapacityAreRefusedOnAttach() throws {
        for (head, tail): (UInt64, UInt64) in [(0, 9), (20, 4), (.max, 0), (100, 100 + 9)] {
            let memory = try make(capacity: 8)
            ring(memory, 1).storeBytes(of: head, toByteOffset: RingLayout.headOffset, as: UInt64.self)
            ring(memory, 1).storeBytes(of: tail, toByteOffset: RingLayout.tailOffset, as: UInt64.self)
            expect({ if case .corruptIndices = $0 { true } else { false } }) { _ = try attachCopy(of: memory) }
        }
        // At the limit is fine: a full ring, or a consumer that read a whole unpublished batch.
        let full = try make(capacity: 8)
        ring(full, 0).storeBytes(of: UInt64(8), toByteOffset: RingLayout.tailOffset, as: UInt64.self)
        ring(full, 1).storeBytes(of: UInt64(8), toByteOffset: RingLayout.headOffset, as: UInt64.self)
        XCTAssertNoThrow(try attachCopy(of: full))
    }

    func testUnsealedOrTruncatedMemfdIsRefused() throws {
        let fd = CL_memfd_create("not-a-ring", 0x0001)
        XCTAssertGreaterThanOrEqual(fd, 0)
        XCTAssertEqual(ftruncate(fd, 1 << 20), 0)
        expect({ if case .notSealed = $0 { true } else { false } }) {
            _ = try SharedRingMemory.attach(descriptor: FileDescriptor(rawValue: fd))
        }
        let sealed = CL_memfd_create("tiny", 0x0003)
        XCTAssertEqual(ftruncate(sealed, 100), 0)
        XCTAssertEqual(fcntl(sealed, 1033, 0x0002), 0)
        expect({ $0 == .truncated(size: 100, needed: 4096) }) {
            _ = try SharedRingMemory.attach(descriptor: FileDescriptor(rawValue: sealed))
        }
    }

    func testHostileHeadWhileRunningIsAnErrorForTheProducer() throws {
        let memory = try make(capacity: 4)
        var client = try memory.clientEnd()
        for i in 0..<4 { XCTAssertTrue(try withUnsafeBytes(of: i) { try client.requests.trySend($0) }) }
        // The "consumer" claims to have read more than was ever written.
        ring(memory, 0).storeBytes(of: UInt64(1000), toByteOffset: RingLayout.headOffset, as: UInt64.self)
        expect({ if case .corruptIndices = $0 { true } else { false } }) {
            _ = try withUnsafeBytes(of: 5) { try client.requests.trySend($0) }
        }
    }

    func testHostileTailAndStampsWhileRunningCannotMisleadTheConsumer() throws {
        let memory = try make(capacity: 4)
        var server = try memory.serverEnd()
        // Garbage in every stamp: nothing matches the expected position, nothing is read.
        for slot in 0..<4 {
            (ring(memory, 0) + RingLayout.ringHeaderSize + slot * 64).storeBytes(of: UInt64.max - UInt64(slot), as: UInt64.self)
        }
        XCTAssertNil(server.requests.tryReceive { _ in 0 })
        // A tail far beyond capacity: reported, whether asked directly or met while going to sleep.
        ring(memory, 0).storeBytes(of: UInt64(1 << 40), toByteOffset: RingLayout.tailOffset, as: UInt64.self)
        expect({ if case .corruptIndices = $0 { true } else { false } }) { _ = try server.requests.pending() }
        expect({ if case .corruptIndices = $0 { true } else { false } }) {
            _ = try server.requests.waitForMessage(policy: .sleepOnly, timeoutNanoseconds: 10_000_000)
        }
    }

    func testWaitTimesOutOnAnEmptyRing() throws {
        let memory = try make()
        var server = try memory.serverEnd()
        let start = CL_monotonic_ns()
        XCTAssertFalse(try server.requests.waitForMessage(policy: RingWaitPolicy(spinNanoseconds: 1_000), timeoutNanoseconds: 20_000_000))
        XCTAssertGreaterThanOrEqual(CL_monotonic_ns() - start, 20_000_000)
        XCTAssertGreaterThanOrEqual(server.requests.sleeps, 1)
    }
}
