import IPC
import Platform
import XCTest
@testable import Storage
#if canImport(Glibc)
import Glibc
#endif

/// Rings dealt to a second serving thread (`storage_server --queues 2`): the message thread keeps
/// every other ring, the worker serves its own, detach waits for it, pause parks it.
final class BlockRingWorkerTests: ServingLoopTestCase {
    override class var namespaces: [UInt32: BlockGeometry] { [1: BlockGeometry(blockSize: 512, blockCount: 4096)] }

    private var worker: BlockRingWorker!

    override func setUpWithError() throws {
        try super.setUpWithError()
        // The worker's own device (its own queue); requests refused before the device (no such
        // namespace) complete without a DMA, which this RAM device could not translate for a
        // mapping made by the message thread's device.
        worker = BlockRingWorker(server: BlockServer(device: MemoryBlockDevice(namespaces: Self.namespaces)), label: "thread 2 (test)")
        block.ringWorkers = [worker]
        worker.start()
    }

    override func tearDown() {
        // The message thread first (its stop detaches the worker's rings), then the worker.
        loop?.stop()
        loop = nil
        worker?.stop()
        worker = nil
        super.tearDown()
    }

    private func attach() throws -> (BlockClient, BlockRingClient, UInt32) {
        let client = try BlockClient.connect(name: "storage", directory: directory)
        let ring = try BlockRingClient(entries: 8, dataBytes: 16 * 1024)
        let handle = try client.connection.share(ring.memory)
        XCTAssertEqual(try client.attachRing(sharedHandle: handle, count: UInt32(ring.memory.size)), .success(handle))
        return (client, ring, handle)
    }

    /// Publishes one request for a namespace that does not exist and waits for its completion.
    private func roundTrip(_ ring: BlockRingClient, tag: UInt64, within seconds: Double = 5) -> IPCStatus? {
        XCTAssertTrue(ring.enqueue(write: false, nsid: 9, lba: 0, blocks: 1, dataOffset: 0, tag: tag))
        ring.publish()
        var status: IPCStatus?
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        while status == nil, ContinuousClock.now < deadline {
            if ring.reap({ reapedTag, reapedStatus, _ in if reapedTag == tag { status = reapedStatus } }) == 0 { usleep(200) }
        }
        return status
    }

    func testRingsAreDealtRoundRobinAndServedByTheirThread() throws {
        let (firstClient, first, _) = try attach()
        let (secondClient, second, secondHandle) = try attach()
        // The first ring stays on the message thread, the second goes to the worker.
        XCTAssertEqual(block.ringCount, 1)
        XCTAssertEqual(roundTrip(first, tag: 1), .ENOENT)
        XCTAssertEqual(roundTrip(second, tag: 2), .ENOENT)
        XCTAssertEqual(worker.server.ringCount, 1)

        // Parked: the worker takes nothing; resumed, it answers what was waiting.
        worker.pause()
        XCTAssertTrue(second.enqueue(write: false, nsid: 9, lba: 0, blocks: 1, dataOffset: 0, tag: 3))
        second.publish()
        usleep(50_000)
        XCTAssertEqual(second.reap { _, _, _ in }, 0, "a paused ring thread must not serve")
        worker.resume()
        var resumed: IPCStatus?
        let deadline = ContinuousClock.now + .seconds(5)
        while resumed == nil, ContinuousClock.now < deadline {
            if second.reap({ tag, status, _ in if tag == 3 { resumed = status } }) == 0 { usleep(200) }
        }
        XCTAssertEqual(resumed, .ENOENT)

        // Unregistering detaches it on its thread before the pages are unmapped.
        XCTAssertEqual(try secondClient.unregisterBuffer(sharedHandle: secondHandle), .ok)
        XCTAssertEqual(worker.server.ringCount, 0)
        XCTAssertEqual(device.clientMappings.count, 1, "only the first ring's pages stay mapped")
        withExtendedLifetime(firstClient) {}
    }

    func testAVanishedClientsRingStopsOnItsThreadBeforeItsMemoryGoes() throws {
        let (keptClient, keptRing, _) = try attach()
        var (client, ring, _): (BlockClient?, BlockRingClient?, UInt32) = try attach()
        XCTAssertEqual(roundTrip(ring!, tag: 1), .ENOENT)
        XCTAssertEqual(worker.server.ringCount, 1)
        client = nil
        ring = nil
        let deadline = ContinuousClock.now + .seconds(5)
        while worker.server.ringCount > 0 || device.clientMappings.count > 1, ContinuousClock.now < deadline { usleep(10_000) }
        XCTAssertEqual(worker.server.ringCount, 0)
        XCTAssertEqual(device.clientMappings.count, 1)
        XCTAssertNil(client)
        // The other client's ring, on the message thread, is untouched.
        XCTAssertEqual(block.ringCount, 1)
        XCTAssertEqual(roundTrip(keptRing, tag: 2), .ENOENT)
        withExtendedLifetime(keptClient) {}
    }
}
