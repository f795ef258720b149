import PlatformTestSupport
import Foundation
@testable import IPC
import XCTest
@testable import Storage
#if canImport(Glibc)
import Glibc
#endif

/// The message path's deferred answers: requests go to the device queue without waiting and are
/// answered when their command completes. The RAM device holds its commands (data not moved)
/// until the test finishes them, in any order; the IPC server is stepped on the test thread, so
/// the device is only ever touched from one thread.
final class DeferredBlockTests: XCTestCase {
    private var directory = ""
    private var device: MemoryBlockDevice!
    private var block: BlockServer!
    private var server: IPCServer!
    private static let blockSize = 4096

    override func setUpWithError() throws {
        var template = Array("/tmp/limitless-deferred-XXXXXX".utf8CString)
        directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        device = MemoryBlockDevice(namespaces: [2: BlockGeometry(blockSize: Self.blockSize, blockCount: 1024)])
        device.holdCompletions = true
        block = BlockServer(device: device)
        server = try block.makeIPCServer(name: "storage", directory: directory)
    }

    override func tearDown() {
        server?.stop()
        server = nil
        block = nil
        device = nil
        _ = rmdir(directory)
    }

    private func connect() throws -> IPCClient {
        let client = try IPCClient.connect(name: "storage", directory: directory)
        server.serveOnce(timeout: .seconds(1))
        return client
    }

    /// Runs `body` (which waits for replies) on another thread while this one serves.
    private func serving<T>(_ body: @escaping @Sendable () throws -> T) throws -> T {
        let result = LockedResult<T>()
        let thread = Thread { result.set(Result { try body() }) }
        thread.start()
        while !result.done { server.serveOnce(timeout: .milliseconds(5)) }
        return try result.value!.get()
    }

    struct Unchecked<T>: @unchecked Sendable {
        let value: T
        init(_ value: T) { self.value = value }
    }

    final class LockedResult<T>: @unchecked Sendable {
        private let lock = NSLock()
        private var stored: Result<T, Error>?
        func set(_ value: Result<T, Error>) { lock.lock(); stored = value; lock.unlock() }
        var done: Bool { lock.lock(); defer { lock.unlock() }; return stored != nil }
        var value: Result<T, Error>? { lock.lock(); defer { lock.unlock() }; return stored }
    }

    private static func pattern(lba: Int) -> [UInt8] {
        (0..<blockSize).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ lba &* 13 &+ 1) }
    }

    private func fill(lbas: Range<Int>) throws {
        for lba in lbas {
            try Self.pattern(lba: lba).withUnsafeBytes { try device.write(nsid: 2, lba: UInt64(lba), blocks: 1, from: $0) }
        }
    }

    private func deviceBlock(_ lba: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.blockSize)
        try bytes.withUnsafeMutableBytes { try device.read(nsid: 2, lba: UInt64(lba), blocks: 1, into: $0) }
        return bytes
    }

    private static func read(_ lba: Int) -> Message { Message(type: .blockRead, param1: 2, param2: UInt64(lba), param3: 1) }

    func testBatchIsInFlightTogetherAndAnsweredOutOfOrderOnceEachWithTheRightData() throws {
        try fill(lbas: 0..<8)
        let client = try connect()
        // Eight reads in one batch, then four inline writes.
        let reads = try client.sendBatch((0..<8).map { Self.read($0) })
        var writes: [UInt32: Int] = [:]
        for lba in 100..<104 {
            let data = Self.pattern(lba: lba)
            let sequence = try data.withUnsafeBytes { bytes in
                var message = Message(type: .blockWrite, param1: 2, param2: UInt64(lba), param3: 1)
                message.setInlineData(count: UInt32(bytes.count))
                return try client.send(message, payload: bytes)
            }
            writes[sequence] = lba
        }
        server.serveOnce(timeout: .seconds(1))
        XCTAssertEqual(device.held.count, 12, "all twelve on the device at once")
        XCTAssertEqual(block.deferredInFlight, 12)
        XCTAssertEqual(server.deferredCount, 12)
        XCTAssertThrowsError(try client.receive(timeout: .milliseconds(50)), "nothing answered before its command completes")
        // Finish them scrambled: odd positions from the back, then the rest.
        for index in [11, 9, 7, 5, 3, 1] { device.finishHeld(at: index) }
        server.serveOnce(timeout: .zero)
        var answered: [UInt32: IPCClient.Reply] = [:]
        for _ in 0..<6 {
            let reply = try client.receive(timeout: .seconds(5))
            XCTAssertNil(answered[reply.sequence], "answered twice")
            answered[reply.sequence] = reply
        }
        while !device.held.isEmpty { device.finishHeld(at: device.held.count / 2) }
        server.serveOnce(timeout: .zero)
        for _ in 0..<6 {
            let reply = try client.receive(timeout: .seconds(5))
            XCTAssertNil(answered[reply.sequence], "answered twice")
            answered[reply.sequence] = reply
        }
        XCTAssertThrowsError(try client.receive(timeout: .milliseconds(50)), "no extra replies")
        for (lba, sequence) in reads.enumerated() {
            XCTAssertEqual(answered[sequence]?.status, .ok)
            XCTAssertEqual(answered[sequence]?.payload, Self.pattern(lba: lba), "read of LBA \(lba)")
        }
        for (sequence, lba) in writes {
            XCTAssertEqual(answered[sequence]?.status, .ok)
            XCTAssertEqual(answered[sequence]?.message.param1, UInt64(Self.blockSize))
            XCTAssertEqual(try deviceBlock(lba), Self.pattern(lba: lba))
        }
        XCTAssertEqual(block.deferredInFlight, 0)
        XCTAssertEqual(block.freeBounceSlots, block.bounceSlotCount, "every bounce slot back in the pool")
        XCTAssertEqual(block.deferredRequests, 12)
    }

    func testFlushIsSubmittedOnlyAfterTheWritesSentBeforeIt() throws {
        device.finishOnReap = 1  // late, newest first, but progressing as the server polls
        let client = try connect()
        var messages: [Message] = []
        for lba in 0..<3 { messages.append(Message(type: .blockTrim, param1: 2, param2: UInt64(lba), param3: 1)) }
        messages.append(Message(type: .blockFlush, param1: 2))
        let sequences = try client.sendBatch(messages)
        server.serveOnce(timeout: .seconds(1))
        while block.deferredInFlight > 0 { server.serveOnce(timeout: .zero) }
        var statuses: [UInt32: IPCStatus] = [:]
        for _ in 0..<4 {
            let reply = try client.receive(timeout: .seconds(5))
            statuses[reply.sequence] = reply.status
        }
        XCTAssertEqual(Set(statuses.keys), Set(sequences))
        XCTAssertEqual(Set(statuses.values), [.ok])
        XCTAssertEqual(device.ranKinds, [.trim, .trim, .trim, .flush])
        XCTAssertEqual(device.flushes, 1)
        XCTAssertEqual(device.trims, 3)
    }

    func testFullDeviceQueueAnswersBusyAndNothingIsLost() throws {
        block.roomWaitNanoseconds = 0
        try fill(lbas: 0..<40)
        let client = try connect()
        let slots = block.bounceSlotCount
        XCTAssertGreaterThan(slots, 0)
        let sequences = try client.sendBatch((0..<(slots + 3)).map { Self.read($0) })
        server.serveOnce(timeout: .seconds(1))
        XCTAssertEqual(device.held.count, slots)
        var busy: Set<UInt32> = []
        for _ in 0..<3 {
            let reply = try client.receive(timeout: .seconds(5))
            XCTAssertEqual(reply.status, .EBUSY)
            busy.insert(reply.sequence)
        }
        XCTAssertEqual(busy, Set(sequences.suffix(3)))
        while !device.held.isEmpty { device.finishHeld(at: 0) }
        // 32 replies of 4 KiB may fill the socket: keep serving while another thread reads them.
        let connection = Unchecked(client)
        let replies = try serving { try (0..<slots).map { _ in try connection.value.receive(timeout: .seconds(5)) } }
        for reply in replies {
            XCTAssertEqual(reply.status, .ok)
            let lba = sequences.firstIndex(of: reply.sequence)!
            XCTAssertEqual(reply.payload, Self.pattern(lba: lba))
        }
        XCTAssertEqual(Set(replies.map(\.sequence)), Set(sequences.prefix(slots)))
        XCTAssertEqual(block.freeBounceSlots, slots)
    }

    func testClientVanishingWithReadsInFlightLosesNothingAndLeaksNothing() throws {
        try fill(lbas: 0..<8)
        // Warm up (lazy allocations of a first connection and share), then measure.
        do {
            let client = try connect()
            let region = try SharedMemory(size: 4096)
            let connection = Unchecked(client), descriptor = region.fd.rawValue
            _ = try serving { try connection.value.share(descriptor: descriptor) }
        }
        while server.connectionCount > 0 || server.sharedRegionCount > 0 { server.serveOnce(timeout: .milliseconds(5)) }
        let baseline = openDescriptorCount()
        do {
            let client = try connect()
            let region = try SharedMemory(size: 4 * Self.blockSize)
            let connection = Unchecked(client), descriptor = region.fd.rawValue
            let handle = try serving { try connection.value.share(descriptor: descriptor) }
            for piece in 0..<4 {
                var message = Self.read(piece)
                message.setSharedData(handle: handle, offset: UInt32(piece * Self.blockSize), count: UInt32(Self.blockSize))
                try client.send(message)
            }
            _ = try client.sendBatch([Self.read(4), Self.read(5)])
            server.serveOnce(timeout: .seconds(1))
            XCTAssertEqual(device.held.count, 6)
        }  // the client and its region close here
        while server.connectionCount > 0 { server.serveOnce(timeout: .milliseconds(5)) }
        XCTAssertEqual(server.sharedRegionCount, 1, "the region stays mapped while reads into it are in flight")
        // The device finishes late: reads are copied into the (still mapped) region, answers discarded.
        while !device.held.isEmpty { device.finishHeld(at: device.held.count - 1) }
        server.serveOnce(timeout: .zero)
        XCTAssertEqual(server.discardedCompletions, 6)
        XCTAssertEqual(server.deferredCount, 0)
        XCTAssertEqual(server.sharedRegionCount, 0)
        XCTAssertEqual(block.deferredInFlight, 0)
        XCTAssertEqual(block.freeBounceSlots, block.bounceSlotCount)
        XCTAssertEqual(block.deviceErrors, 0)
        XCTAssertEqual(openDescriptorCount(), baseline)
        // The server carries on.
        let next = try connect()
        try next.send(Self.read(3))
        server.serveOnce(timeout: .seconds(1))
        device.finishHeld(at: 0)
        server.serveOnce(timeout: .zero)
        XCTAssertEqual(try next.receive(timeout: .seconds(5)).payload, Self.pattern(lba: 3))
    }

    func testVanishedClientsRegisteredBufferIsUnmappedOnlyAfterItsCommandsComplete() throws {
        device.finishOnReap = 1
        try fill(lbas: 0..<4)
        do {
            let client = try connect()
            let region = try SharedMemory(size: 4 * Self.blockSize)
            let connection = Unchecked(client), descriptor = region.fd.rawValue
            let handle = try serving { try connection.value.share(descriptor: descriptor) }
            let registered = try serving { try BlockClient(connection: connection.value).registerBuffer(sharedHandle: handle, count: UInt32(4 * Self.blockSize)) }
            XCTAssertEqual(registered, .success(handle))
            device.finishOnReap = 0
            for piece in 0..<4 {
                var message = Self.read(piece)
                message.setSharedData(handle: handle, offset: UInt32(piece * Self.blockSize), count: UInt32(Self.blockSize))
                try client.send(message)
            }
            server.serveOnce(timeout: .seconds(1))
            XCTAssertEqual(device.held.count, 4)
            XCTAssertEqual(block.zeroCopyTransfers, 4)
        }
        while server.connectionCount > 0 { server.serveOnce(timeout: .milliseconds(5)) }
        XCTAssertEqual(device.clientMappings.count, 1)
        // The sweep must not unmap under the device: it waits for the four commands first.
        device.finishOnReap = 1
        XCTAssertEqual(block.sweepVanishedClients(connectionCount: 0), 1)
        XCTAssertTrue(device.held.isEmpty)
        XCTAssertEqual(device.clientMappings.count, 0)
        XCTAssertEqual(block.deviceErrors, 0, "every transfer found its mapping live")
        XCTAssertEqual(server.discardedCompletions, 4)
    }

    func testGarbageIsAnsweredWhileRequestsAreInFlight() throws {
        try fill(lbas: 0..<2)
        let client = try connect()
        let good = try client.sendBatch([Self.read(0), Self.read(1)])
        server.serveOnce(timeout: .seconds(1))
        XCTAssertEqual(device.held.count, 2)
        // A read past the end, a read of no blocks, an unknown namespace, raw garbage.
        let bad = try client.sendBatch([Message(type: .blockRead, param1: 2, param2: 1024, param3: 1),
                                        Message(type: .blockRead, param1: 2, param2: 0, param3: 0),
                                        Message(type: .blockRead, param1: 9, param2: 0, param3: 1)])
        try [UInt8](repeating: 0xAB, count: 40).withUnsafeBytes { try client.sendRaw($0) }
        server.serveOnce(timeout: .seconds(1))
        var statuses: [UInt32: IPCStatus] = [:]
        for _ in 0..<4 {
            let reply = try client.receive(timeout: .seconds(5))
            statuses[reply.sequence] = reply.status
        }
        XCTAssertEqual(bad.map { statuses[$0] }, [.ERANGE, .EINVAL, .ENOENT])
        XCTAssertEqual(statuses.values.filter { $0 == .EBADMSG }.count, 1)
        device.finishHeld(at: 1)
        device.finishHeld(at: 0)
        server.serveOnce(timeout: .zero)
        for lba in [1, 0] {
            let reply = try client.receive(timeout: .seconds(5))
            XCTAssertEqual(reply.sequence, good[lba])
            XCTAssertEqual(reply.payload, Self.pattern(lba: lba))
        }
    }
}
