import IPC
import Platform
import XCTest
@testable import Storage
#if canImport(Glibc)
import Glibc
#endif

/// The ring path (`BlockRing`): a client ring attached over a real IPC connection, polled by the
/// serving loop, against the RAM device (completes at submission) with its fake IOMMU.
final class BlockRingTests: ServingLoopTestCase {
    override class var namespaces: [UInt32: BlockGeometry] {
        [1: BlockGeometry(blockSize: 512, blockCount: 4096), 2: BlockGeometry(blockSize: 4096, blockCount: 1024)]
    }

    /// Reaps until `count` completions arrived (or 10 s passed).
    private func collect(_ ring: BlockRingClient, _ count: Int) -> [UInt64: (IPCStatus, Int)] {
        var results: [UInt64: (IPCStatus, Int)] = [:]
        let deadline = ContinuousClock.now + .seconds(10)
        while results.count < count, ContinuousClock.now < deadline {
            if ring.reap({ results[$0] = ($1, $2) }) == 0 { usleep(100) }
        }
        return results
    }

    private func attach(entries: Int = 16, dataBytes: Int = 64 * 1024) throws -> (BlockClient, BlockRingClient, UInt32) {
        let client = try BlockClient.connect(name: "storage", directory: directory)
        let ring = try BlockRingClient(entries: entries, dataBytes: dataBytes)
        let handle = try client.connection.share(ring.memory)
        XCTAssertEqual(try client.attachRing(sharedHandle: handle, count: UInt32(ring.memory.size)), .success(handle))
        return (client, ring, handle)
    }

    func testRequestsThroughTheRingMoveDataStraightToTheDevice() throws {
        let (client, ring, handle) = try attach()
        XCTAssertEqual(block.ringCount, 1)
        // Eight 4 KiB writes published at once, each from its own piece of the data area.
        let data = BlockServerTests.pattern(8 * 4096, seed: 21)
        data.withUnsafeBytes { ring.data.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: data.count) }
        for index in 0..<8 {
            XCTAssertTrue(ring.enqueue(write: true, nsid: 2, lba: UInt64(100 + index * 2), blocks: 1,
                                       dataOffset: UInt32(index * 4096), tag: UInt64(index)))
        }
        ring.publish()
        let written = collect(ring, 8)
        XCTAssertEqual(written.count, 8)
        for index in 0..<8 { XCTAssertEqual(written[UInt64(index)]?.0, .ok); XCTAssertEqual(written[UInt64(index)]?.1, 4096) }
        XCTAssertEqual(device.directTransfers, 8, "ring writes must go straight from the mapped data area")
        // Read them back through the ring into the second half of the data area.
        for index in 0..<8 {
            XCTAssertTrue(ring.enqueue(write: false, nsid: 2, lba: UInt64(100 + index * 2), blocks: 1,
                                       dataOffset: UInt32(32 * 1024 + index * 4096), tag: UInt64(100 + index)))
        }
        ring.publish()
        XCTAssertEqual(collect(ring, 8).values.filter { $0.0 == .ok }.count, 8)
        XCTAssertEqual(Array(UnsafeRawBufferPointer(rebasing: ring.data[(32 * 1024)..<(64 * 1024)])), data)
        // The message path agrees on what is on the medium.
        XCTAssertEqual(try client.read(2, lba: 102, blocks: 1), .success(Array(data[4096..<8192])))
        XCTAssertGreaterThanOrEqual(block.ringRequests, 16)
        // Detached: the ring is no longer polled and its pages leave the fake IOMMU.
        XCTAssertEqual(try client.unregisterBuffer(sharedHandle: handle), .ok)
        XCTAssertEqual(block.ringCount, 0)
        XCTAssertTrue(device.clientMappings.isEmpty)
    }

    /// Releasing the shared handle of a registered ring (MSG_IPC_RELEASE) would unmap the
    /// memory the serving loop polls: refused with EBUSY until the ring is unregistered, and the
    /// ring keeps working meanwhile.
    func testARegisteredRingsHandleIsNotReleasedUntilUnregistered() throws {
        let (client, ring, handle) = try attach()
        XCTAssertThrowsError(try client.connection.release(handle: handle)) { error in
            XCTAssertEqual(error as? IPCError, .refused(.ipcRelease, .EBUSY))
        }
        XCTAssertTrue(ring.enqueue(write: false, nsid: 2, lba: 7, blocks: 1, dataOffset: 0, tag: 1))
        ring.publish()
        XCTAssertEqual(collect(ring, 1)[1]?.0, .ok, "the ring is still polled after the refused release")
        XCTAssertEqual(try client.unregisterBuffer(sharedHandle: handle), .ok)
        XCTAssertNoThrow(try client.connection.release(handle: handle))
        XCTAssertEqual(block.ringCount, 0)
        XCTAssertTrue(device.clientMappings.isEmpty)
    }

    func testBadRingEntriesCompleteWithAnErrorAndTouchNothing() throws {
        let (_, ring, _) = try attach(entries: 8, dataBytes: 16 * 1024)
        let cases: [(write: Bool, nsid: UInt32, lba: UInt64, blocks: UInt32, offset: UInt32, expected: IPCStatus)] = [
            (false, 7, 0, 1, 0, .ENOENT),                 // no such namespace
            (false, 2, 1023, 2, 0, .ERANGE),              // past the end
            (false, 2, 0, 0, 0, .EINVAL),                 // zero blocks
            (true, 2, 0, 4, 4096, .EINVAL),               // data runs past the data area
            (true, 1, 0, 1, 2, .EINVAL),                  // data not dword aligned
            (false, 2, 0, 64, 0, .EMSGSIZE),              // more than one command moves
        ]
        for (index, item) in cases.enumerated() {
            XCTAssertTrue(ring.enqueue(write: item.write, nsid: item.nsid, lba: item.lba, blocks: item.blocks,
                                       dataOffset: item.offset, tag: UInt64(index)))
        }
        ring.publish()
        let results = collect(ring, cases.count)
        for (index, item) in cases.enumerated() {
            XCTAssertEqual(results[UInt64(index)]?.0, item.expected, "case \(index)")
        }
        XCTAssertEqual(device.directTransfers, 0)
    }

    func testAttachRefusesWhatIsNotARing() throws {
        let client = try BlockClient.connect(name: "storage", directory: directory)
        let plain = try SharedMemory(size: 64 * 1024)
        let handle = try client.connection.share(plain)
        XCTAssertEqual(try client.attachRing(sharedHandle: handle, count: 64 * 1024), .failure(.EINVAL))
        XCTAssertEqual(block.ringCount, 0)
        XCTAssertTrue(device.clientMappings.isEmpty)
    }

    func testAVanishedRingClientIsDetached() throws {
        var client: BlockClient?
        var ring: BlockRingClient?
        (client, ring, _) = try attach()
        client = nil
        ring = nil
        let deadline = ContinuousClock.now + .seconds(10)
        while loop.endpoint.connectionCount > 0, ContinuousClock.now < deadline { usleep(5000) }
        loop.stop()
        loop = nil
        XCTAssertEqual(block.vanishedBuffersUnmapped, 1)
        XCTAssertEqual(block.ringCount, 0)
        XCTAssertTrue(device.clientMappings.isEmpty)
    }

    /// A ring client without the right to write publishes a stream of writes: each completes
    /// EACCES, but the log gets the first refusal, one line per `refusalLogInterval`, and a count
    /// when the connection closes, not a line per request.
    func testRingRefusalsAreLoggedOncePerConnectionThenCounted() throws {
        loop.stop()
        let logged = BlockServerTests.LogBox()
        let refusing = BlockServer(device: device, policy: BlockAccessPolicy(readers: .anyone, writers: .uids([]))) { logged.append($0) }
        refusing.refusalLogInterval = 100
        block = refusing
        loop = BlockServingLoop(server: refusing, endpoint: try refusing.makeIPCServer(name: "refusing", directory: directory))
        loop.wakeInterval = .milliseconds(20)
        loop.start()

        var client: BlockClient? = try BlockClient.connect(name: "refusing", directory: directory)
        let ring = try BlockRingClient(entries: 16, dataBytes: 64 * 1024)
        let handle = try client!.connection.share(ring.memory)
        XCTAssertEqual(try client!.attachRing(sharedHandle: handle, count: UInt32(ring.memory.size)), .success(handle))
        let total = 250
        var statuses: [UInt64: IPCStatus] = [:]
        var sent = 0
        let deadline = ContinuousClock.now + .seconds(30)
        while statuses.count < total, ContinuousClock.now < deadline {
            while sent < total, sent - statuses.count < 16,
                  ring.enqueue(write: true, nsid: 2, lba: UInt64(sent % 64), blocks: 1, dataOffset: 0, tag: UInt64(sent)) {
                sent += 1
            }
            ring.publish()
            if ring.reap({ tag, status, _ in statuses[tag] = status }) == 0 { usleep(100) }
        }
        XCTAssertEqual(statuses.count, total)
        XCTAssertTrue(statuses.values.allSatisfy { $0 == .EACCES }, "\(Set(statuses.values))")
        // Reads are allowed: the connection still works.
        XCTAssertEqual(try client!.read(2, lba: 0, blocks: 1).map(\.count), .success(4096))
        XCTAssertEqual(refusing.refusals, UInt64(total))
        var refusalLines = logged.all.filter { $0.contains("refused MSG_BLOCK_WRITE") }
        XCTAssertEqual(refusalLines.count, 3, "the first, the 100th and the 200th: \(refusalLines)")
        XCTAssertTrue(refusalLines.first?.contains("further refusals on this connection are counted") ?? false, "\(refusalLines)")
        XCTAssertTrue(refusalLines.last?.contains("200 refused on this connection so far") ?? false, "\(refusalLines)")

        // The connection ends: one line with the count.
        client = nil
        let closed = ContinuousClock.now + .seconds(10)
        while !logged.all.contains(where: { $0.contains("closed after") }), ContinuousClock.now < closed { usleep(5000) }
        refusalLines = logged.all.filter { $0.contains("refused") }
        XCTAssertEqual(refusalLines.count, 4, "\(refusalLines)")
        XCTAssertTrue(refusalLines.last?.contains("closed after \(total) refused requests") ?? false, "\(refusalLines)")
    }

    func testBenchOverTheRing() throws {
        let client = try BlockClient.connect(name: "storage", directory: directory)
        let result = try StorageTool.bench(client, options: .init(nsid: 2, seconds: 0.2, queueDepth: 8, ioSize: 4096,
                                                                  mode: .mixed, dataPath: .ring))
        XCTAssertGreaterThan(result.operations, 0)
        XCTAssertEqual(result.reads + result.writes, result.operations)
        XCTAssertEqual(device.directTransfers, result.operations)
        XCTAssertEqual(block.ringCount, 0, "the bench detaches its ring")
    }
}
