import IPC
import Platform
import XCTest
@testable import Storage
#if canImport(Glibc)
import Glibc
#endif

/// Zero copy: MSG_BLOCK_REGISTER_BUFFER / MSG_BLOCK_UNREGISTER_BUFFER over a real IPC server and
/// client, against the RAM device's fake IOMMU (`MemoryBlockDevice` as `DirectBlockDevice`:
/// transfers are refused unless their device address lies in a live mapping).
final class RegisteredBufferTests: ServingLoopTestCase {
    override class var namespaces: [UInt32: BlockGeometry] { [2: BlockGeometry(blockSize: 4096, blockCount: 1024)] }

    private func connect() throws -> BlockClient { try BlockClient.connect(name: "storage", directory: directory) }

    private static func fill(_ region: borrowing SharedMemory, offset: Int, with bytes: [UInt8]) {
        let base = UnsafeMutableRawPointer(mutating: region.bytes.baseAddress!) + offset
        bytes.withUnsafeBytes { base.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
    }

    func testRegisteredBufferRoundTripGoesStraightToTheDevice() throws {
        let client = try connect()
        let region = try SharedMemory(size: 64 * 1024)
        let handle = try client.connection.share(region)
        XCTAssertEqual(try client.registerBuffer(sharedHandle: handle, count: 64 * 1024), .success(handle))
        XCTAssertEqual(device.clientMappings.count, 1)
        XCTAssertEqual(device.clientMappings.first?.size, 64 * 1024)

        let data = BlockServerTests.pattern(32 * 1024, seed: 11)
        Self.fill(region, offset: 4096, with: data)
        XCTAssertEqual(try client.write(2, lba: 40, blocks: 8, sharedHandle: handle, offset: 4096, count: 32 * 1024), .ok)
        XCTAssertEqual(device.directTransfers, 1, "the write did not go through the registered mapping")
        Self.fill(region, offset: 0, with: [UInt8](repeating: 0, count: 64 * 1024))
        XCTAssertEqual(try client.read(2, lba: 40, blocks: 8, sharedHandle: handle, offset: 4096, count: 32 * 1024), .ok)
        XCTAssertEqual(device.directTransfers, 2, "the read did not go through the registered mapping")
        XCTAssertEqual(Array(region.bytes[4096..<(4096 + 32 * 1024)]), data)
        XCTAssertEqual(try client.read(2, lba: 40, blocks: 1), .success(Array(data[..<4096])), "inline read disagrees")
        XCTAssertEqual(block.zeroCopyTransfers, 2)

        // Unregistered: the pages leave the fake IOMMU, transfers fall back to the copying path.
        XCTAssertEqual(try client.unregisterBuffer(sharedHandle: handle), .ok)
        XCTAssertTrue(device.clientMappings.isEmpty)
        XCTAssertEqual(try client.read(2, lba: 40, blocks: 8, sharedHandle: handle, offset: 4096, count: 32 * 1024), .ok)
        XCTAssertEqual(device.directTransfers, 2)
        XCTAssertEqual(try client.unregisterBuffer(sharedHandle: handle), .EBADF)
    }

    func testRegistrationRefusals() throws {
        let client = try connect()
        // No shared region named.
        let bare = try client.connection.sendReceive(Message(type: .blockRegisterBuffer), timeout: .seconds(5))
        XCTAssertEqual(bare.status, .EINVAL)
        // Not whole pages.
        let odd = try SharedMemory(size: 6000)
        let oddHandle = try client.connection.share(odd)
        XCTAssertEqual(try client.registerBuffer(sharedHandle: oddHandle, count: 6000), .failure(.EINVAL))
        // Write-sealed: the device could not read into it.
        let sealedBytes = [UInt8](repeating: 5, count: 4096)
        let sealedHandle = try sealedBytes.withUnsafeBytes { bytes in
            let sealed = try SharedMemory(sealedCopyOf: bytes)
            return try client.connection.share(sealed)
        }
        XCTAssertEqual(try client.registerBuffer(sharedHandle: sealedHandle, count: 4096), .failure(.EINVAL))
        // The mapping fails: ENOMEM, nothing recorded; the next attempt works; twice is EEXIST.
        let region = try SharedMemory(size: 8192)
        let handle = try client.connection.share(region)
        device.failNextMapping = "IOMMU out of entries"
        XCTAssertEqual(try client.registerBuffer(sharedHandle: handle, count: 8192), .failure(.ENOMEM))
        XCTAssertTrue(device.clientMappings.isEmpty)
        XCTAssertEqual(try client.registerBuffer(sharedHandle: handle, count: 8192), .success(handle))
        XCTAssertEqual(try client.registerBuffer(sharedHandle: handle, count: 8192), .failure(.EEXIST))
        XCTAssertEqual(device.clientMappings.count, 1)
        XCTAssertEqual(try client.unregisterBuffer(sharedHandle: 99), .EBADF)
    }

    func testAnotherClientsRegistrationIsNotUsed() throws {
        let owner = try connect()
        let ownRegion = try SharedMemory(size: 16 * 1024)
        let ownHandle = try owner.connection.share(ownRegion)
        XCTAssertEqual(try owner.registerBuffer(sharedHandle: ownHandle, count: 16 * 1024), .success(ownHandle))
        // A second client with the same handle number: its transfers are copied, never mapped.
        let other = try connect()
        let otherRegion = try SharedMemory(size: 16 * 1024)
        let otherHandle = try other.connection.share(otherRegion)
        XCTAssertEqual(otherHandle, ownHandle)
        let data = BlockServerTests.pattern(4096, seed: 2)
        Self.fill(otherRegion, offset: 0, with: data)
        XCTAssertEqual(try other.write(2, lba: 3, blocks: 1, sharedHandle: otherHandle, count: 4096), .ok)
        XCTAssertEqual(device.directTransfers, 0)
        XCTAssertEqual(try owner.read(2, lba: 3, blocks: 1, sharedHandle: ownHandle, count: 4096), .ok)
        XCTAssertEqual(device.directTransfers, 1)
        XCTAssertEqual(Array(ownRegion.bytes[..<4096]), data)
        // The other client cannot unregister the owner's buffer.
        XCTAssertEqual(try other.unregisterBuffer(sharedHandle: ownHandle), .EBADF)
        XCTAssertEqual(device.clientMappings.count, 1)
    }

    func testVanishedClientsBuffersAreUnmapped() throws {
        var client: BlockClient? = try connect()
        let region = try SharedMemory(size: 8192)
        let handle = try client!.connection.share(region)
        XCTAssertEqual(try client!.registerBuffer(sharedHandle: handle, count: 8192), .success(handle))
        client = nil  // the connection closes without unregistering
        let deadline = ContinuousClock.now + .seconds(10)
        while loop.endpoint.connectionCount > 0, ContinuousClock.now < deadline { usleep(5000) }
        XCTAssertEqual(loop.endpoint.connectionCount, 0)
        // The loop sweeps in the same turn the disconnection is seen; stop() joins that turn.
        loop.stop()
        XCTAssertEqual(block.vanishedBuffersUnmapped, 1)
        XCTAssertTrue(device.clientMappings.isEmpty)
        loop = nil
    }

    func testStopUnmapsEveryRegisteredBuffer() throws {
        let client = try connect()
        let region = try SharedMemory(size: 4096)
        let handle = try client.connection.share(region)
        XCTAssertEqual(try client.registerBuffer(sharedHandle: handle, count: 4096), .success(handle))
        loop.stop()
        loop = nil
        XCTAssertTrue(device.clientMappings.isEmpty)
        XCTAssertEqual(block.vanishedBuffersUnmapped, 0)
    }

    // MARK: The table on its own

    func testTableFindsOnlyCoveredRangesOfTheSameClient() {
        var table = RegisteredBuffers(capacity: 2)
        let memory = UnsafeMutableRawPointer.allocate(byteCount: 8192, alignment: 4096)
        defer { memory.deallocate() }
        let mapping = DMABuffer(address: memory, deviceAddress: 0x7000_0000, size: 8192)
        XCTAssertTrue(table.add(.init(client: 1, pid: 0, handle: 3, mapping: mapping)))
        XCTAssertEqual(table.find(client: 1, pointer: memory + 4096, bytes: 4096)?.deviceAddress, 0x7000_1000)
        XCTAssertEqual(table.find(client: 1, pointer: memory, bytes: 8192)?.size, 8192)
        XCTAssertNil(table.find(client: 1, pointer: memory + 4096, bytes: 4097), "runs past the end")
        XCTAssertNil(table.find(client: 1, pointer: memory - 512, bytes: 1024), "starts before")
        XCTAssertNil(table.find(client: 2, pointer: memory, bytes: 512), "another client")
        XCTAssertTrue(table.add(.init(client: 2, pid: 0, handle: 3, mapping: mapping)))
        XCTAssertFalse(table.add(.init(client: 3, pid: 0, handle: 1, mapping: mapping)), "full")
        XCTAssertEqual(table.remove(client: 1, handle: 3)?.client, 1)
        XCTAssertNil(table.find(client: 1, pointer: memory, bytes: 512))
        XCTAssertEqual(table.removeAll { $0.client == 2 }.count, 1)
        XCTAssertEqual(table.count, 0)
    }

    func testVanishedMeansProcessGoneOrRegionUnmapped() throws {
        let size = 4096
        let memory = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
        let entry = RegisteredBuffers.Entry(client: 1, pid: getpid(), handle: 1,
                                            mapping: DMABuffer(address: memory, deviceAddress: 0, size: size))
        XCTAssertFalse(RegisteredBuffers.clientVanished(entry))
        var dead = entry
        dead.pid = Int32.max  // no such process
        XCTAssertTrue(RegisteredBuffers.clientVanished(dead))
        munmap(memory, size)
        XCTAssertTrue(RegisteredBuffers.clientVanished(entry))
    }
}
