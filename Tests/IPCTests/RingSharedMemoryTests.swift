import CLimitless
import Foundation
import XCTest
@testable import IPC
#if canImport(Glibc)
import Glibc
#endif

/// Ring requests that name a shared-memory handle: the ring resolves its own connection's handles
/// (shared and released on the socket), and nothing else.
final class RingSharedMemoryTests: RuntimeDirectoryTestCase {
    /// Lets a test hold the ring thread inside the handler while it acts on the socket.
    final class Gate: @unchecked Sendable {
        let entered = DispatchSemaphore(value: 0)
        let proceed = DispatchSemaphore(value: 0)
        var holdNext = false
    }

    /// VFS_WRITE: param1 = byte sum of the data, param2 = its count, param3 = 1 if writable.
    private func startServer(_ gate: Gate) throws -> IPCServer {
        var configuration = IPCServer.Configuration()
        configuration.maxRings = 2
        let server = try IPCServer(name: "shm", directory: directory, configuration: configuration) { request, payload, _ in
            guard request.type == .vfsWrite else { return .error(.ENOSYS) }
            if gate.holdNext {
                gate.holdNext = false
                gate.entered.signal()
                _ = gate.proceed.wait(timeout: .now() + 10)
            }
            var sum: UInt64 = 0
            for byte in payload.data { sum &+= UInt64(byte) }
            return IPCReply(param1: sum, param2: UInt64(payload.data.count), param3: payload.writableData == nil ? 0 : 1)
        }
        server.start()
        return server
    }

    /// A sealed shared-memory copy of `bytes` (SharedMemory is not copyable: no withUnsafeBytes result).
    private func sealedCopy(_ bytes: [UInt8]) throws -> SharedMemory {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 8)
        defer { buffer.deallocate() }
        buffer.copyBytes(from: bytes)
        return try SharedMemory(sealedCopyOf: UnsafeRawBufferPointer(buffer))
    }

    private func write(handle: UInt32, offset: UInt32 = 0, count: UInt32) -> Message {
        var message = Message(type: .vfsWrite)
        message.setSharedData(handle: handle, offset: offset, count: count)
        return message
    }

    func testAWriteWhoseDataIsInSharedMemoryGoesOverTheRing() throws {
        let server = try startServer(Gate())
        defer { server.stop() }
        let client = try IPCClient.connect(name: "shm", directory: directory)
        try client.attachRing(slotSize: 128, capacity: 16)
        let bytes = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        let memory = try sealedCopy(bytes)
        let handle = try client.share(memory)

        let reply = try client.sendReceive(write(handle: handle, count: UInt32(bytes.count)))
        XCTAssertEqual(reply.status, .ok)
        XCTAssertEqual(reply.message.param1, bytes.reduce(0) { $0 + UInt64($1) })
        XCTAssertEqual(reply.message.param2, UInt64(bytes.count))
        XCTAssertEqual(reply.message.param3, 0, "a sealed copy is not writable")
        XCTAssertEqual(client.ringExchanges, 1, "answered over the ring")

        // A range of it; one past its end.
        let tail = try client.sendReceive(write(handle: handle, offset: 99_990, count: 10))
        XCTAssertEqual(tail.message.param1, bytes[99_990...].reduce(0) { $0 + UInt64($1) })
        XCTAssertEqual(try client.sendReceive(write(handle: handle, offset: 99_990, count: 11)).status, .EINVAL)

        // A writable region: the handler gets the writable view over the ring as well.
        let writable = try SharedMemory(size: 4096)
        let writableHandle = try client.share(writable)
        XCTAssertEqual(try client.sendReceive(write(handle: writableHandle, count: 4096)).message.param3, 1)
        XCTAssertEqual(client.ringExchanges, 4)
    }

    func testAForgedHandleOrAnotherConnectionsHandleIsEBADFOnTheRing() throws {
        let server = try startServer(Gate())
        defer { server.stop() }
        let owner = try IPCClient.connect(name: "shm", directory: directory)
        let memory = try sealedCopy([UInt8](repeating: 1, count: 64))
        let theirs = try owner.share(memory)

        let client = try IPCClient.connect(name: "shm", directory: directory)
        try client.attachRing(slotSize: 128, capacity: 16)
        // Another connection's handle (the same number this connection would get), never-shared
        // numbers, the largest: all EBADF, all over the ring, the server serves on.
        for handle in [theirs, 2, 64, 65, UInt32.max] {
            XCTAssertEqual(try client.sendReceive(write(handle: handle, count: 1)).status, .EBADF, "handle \(handle)")
        }
        XCTAssertEqual(client.ringExchanges, 5)
        XCTAssertEqual(try owner.sendReceive(write(handle: theirs, count: 64)).message.param1, 64, "the owner's handle still works")
        let mine = try client.share(memory)
        XCTAssertEqual(try client.sendReceive(write(handle: mine, count: 64)).message.param1, 64)
    }

    func testAHandleReleasedOnTheSocketWhileTheRingUsesItIsEBADFAfterwardsAndNothingCrashes() throws {
        let gate = Gate()
        let server = try startServer(gate)
        defer { server.stop() }
        let client = try IPCClient.connect(name: "shm", directory: directory)
        try client.attachRing(slotSize: 128, capacity: 16)
        let bytes = [UInt8](repeating: 3, count: 1 << 20)
        let memory = try sealedCopy(bytes)
        let handle = try client.share(memory)
        XCTAssertEqual(server.sharedRegionCount, 1)

        // The ring thread enters the handler with the region and is held there.
        gate.holdNext = true
        let answer = Answer()
        let request = write(handle: handle, count: UInt32(bytes.count))
        let busy = Unchecked(client)  // used by that thread only until it ends
        let thread = Thread { answer.set(Result { try busy.value.sendReceive(request) }) }
        thread.start()
        XCTAssertEqual(gate.entered.wait(timeout: .now() + 10), .success)

        // Meanwhile MSG_IPC_RELEASE on the socket (raw: the client object is busy on the other
        // thread, which only polls the socket). The epoll thread releases the handle at once.
        let releaseSequence: UInt32 = 0x7000_0000
        let datagram = UnsafeMutableRawBufferPointer.allocate(byteCount: Message.headerSize, alignment: 8)
        defer { datagram.deallocate() }
        Message(type: .ipcRelease, param1: UInt64(handle), sequence: releaseSequence).encode(into: datagram)
        XCTAssertEqual(CL_ipc_send(client.fd, datagram.baseAddress, Message.headerSize, nil, 0, nil, 0, CL_MSG_NOSIGNAL),
                       Message.headerSize)
        for _ in 0..<500 where server.sharedRegionCount != 0 { usleep(10_000) }
        XCTAssertEqual(server.sharedRegionCount, 0, "released while the ring thread still uses it")

        // The handler goes on reading the region it was given: still mapped, the full sum.
        gate.proceed.signal()
        for _ in 0..<1000 where answer.value == nil { usleep(10_000) }
        let reply = try XCTUnwrap(answer.value).get()
        XCTAssertEqual(reply.status, .ok)
        XCTAssertEqual(reply.message.param1, UInt64(3 << 20))

        // From now on the handle is unknown, over the ring and over the socket.
        XCTAssertEqual(try client.sendReceive(write(handle: handle, count: 8)).status, .EBADF)
        XCTAssertEqual(client.ringExchanges, 2)
        let released = try client.receive(timeout: .seconds(5))
        XCTAssertEqual(released.message.sequence, releaseSequence)
        XCTAssertEqual(released.status, .ok)
        XCTAssertThrowsError(try client.release(handle: handle)) { error in
            XCTAssertEqual(error as? IPCError, .refused(.ipcRelease, .EBADF))
        }
        // The slot is free again once the request ended: a new share gets it, and works.
        let again = try client.share(memory)
        XCTAssertEqual(again, handle)
        XCTAssertEqual(try client.sendReceive(write(handle: again, count: 8)).message.param1, 24)
    }

    final class Answer: @unchecked Sendable {
        private let lock = NSLock()
        private var result: Result<IPCClient.Reply, Error>?
        func set(_ value: Result<IPCClient.Reply, Error>) { lock.lock(); result = value; lock.unlock() }
        var value: Result<IPCClient.Reply, Error>? { lock.lock(); defer { lock.unlock() }; return result }
    }

    struct Unchecked<Value>: @unchecked Sendable {
        let value: Value
        init(_ value: Value) { self.value = value }
    }
}
