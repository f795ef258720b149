import XCTest
#if canImport(Glibc)
import Glibc
#endif
@testable import IPC

/// The shared-memory ring through the IPCServer/IPCClient API, with the server in another
/// process (limitless-testserver --echo --rings N).
final class RingAPITests: RuntimeDirectoryTestCase {
    private func startServer(_ name: String, rings: Int) throws -> (ChildServer, IPCClient) {
        let server = try ChildServer(name: name, directory: directory, log: directory + "/\(name).log",
                                     extraArguments: ["--echo", "--rings", String(rings)])
        var options = ReconnectingIPCClient.Options()
        options.reconnectDeadline = .seconds(120)
        // Wait for the socket the way a client that starts with its server would.
        _ = try ReconnectingIPCClient(name: name, directory: directory, options: options)
        return (server, try IPCClient.connect(name: name, directory: directory))
    }

    func testRequestsGoOverTheRingAndLargeOnesOverTheSocket() throws {
        let (server, client) = try startServer("ringecho", rings: 2)
        try client.attachRing(slotSize: 256, capacity: 16)
        XCTAssertTrue(client.isRingAttached)

        for index in 0..<1000 {
            var value = UInt64(index)
            var message = Message(type: .vfsRead)
            message.setInlineData(count: 8)
            let reply = try withUnsafeBytes(of: &value) { try client.sendReceive(message, payload: $0) }
            XCTAssertEqual(reply.status, .ok)
            XCTAssertEqual(reply.message.param2, UInt64(server.pid), "answered by another process")
            XCTAssertEqual(reply.payload, withUnsafeBytes(of: &value) { Array($0) })
            if reply.payload.count != 8 { break }
        }
        XCTAssertEqual(client.ringExchanges, 1000)
        XCTAssertEqual(try client.sendReceive(Message(type: .ipcPing)).status, .ok)
        XCTAssertEqual(client.ringExchanges, 1001)

        // The allocation-free form, over the ring too.
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 8)
        defer { buffer.deallocate() }
        let (header, length) = try client.sendReceive(Message(type: .vfsRead, param1: 16), into: buffer)
        XCTAssertEqual(header.status, .ok)
        XCTAssertEqual(length, 16)
        XCTAssertEqual(Array(buffer[..<16]), (0..<16).map { UInt8($0) })
        XCTAssertEqual(client.ringExchanges, 1002)

        // A request larger than a slot goes over the socket.
        let big = [UInt8](repeating: 7, count: 1000)
        var request = Message(type: .vfsWrite)
        request.setInlineData(count: 1000)
        let echoed = try big.withUnsafeBytes { try client.sendReceive(request, payload: $0) }
        XCTAssertEqual(echoed.payload, big)
        XCTAssertEqual(client.ringExchanges, 1002)

        // A reply larger than a slot comes over the socket, announced on the ring.
        let large = try client.sendReceive(Message(type: .vfsRead, param1: 3000))
        XCTAssertEqual(large.status, .ok)
        XCTAssertEqual(large.payload.count, 3000)
        XCTAssertEqual(large.payload[2999], UInt8(truncatingIfNeeded: 2999))
        XCTAssertEqual(client.ringExchanges, 1003)

        // Asking twice on one connection is refused.
        XCTAssertThrowsError(try client.attachRing()) { error in
            XCTAssertEqual(error as? IPCError, .refused(.ipcRingAttach, .EBUSY))
        }
        server.terminate()
    }

    func testAServerWithoutRingsRefusesAndTheSocketKeepsWorking() throws {
        let (server, client) = try startServer("noring", rings: 0)
        XCTAssertThrowsError(try client.attachRing()) { error in
            XCTAssertEqual(error as? IPCError, .refused(.ipcRingAttach, .ENOTSUP))
        }
        XCTAssertFalse(client.isRingAttached)
        XCTAssertEqual(try client.sendReceive(Message(type: .vfsRead, param1: 4)).payload, [0, 1, 2, 3])
        XCTAssertEqual(client.ringExchanges, 0)
        server.terminate()
    }

    func testAServerDyingUnderTheRingIsReportedNotWaitedFor() throws {
        let (server, client) = try startServer("ringdies", rings: 1)
        try client.attachRing()
        XCTAssertEqual(try client.sendReceive(Message(type: .ipcPing)).status, .ok)
        server.kill()
        XCTAssertThrowsError(try client.sendReceive(Message(type: .ipcPing), timeout: .seconds(120))) { error in
            XCTAssertEqual(error as? IPCError, .disconnected)
        }
    }

    func testABadLayoutIsRefused() throws {
        let (server, client) = try startServer("ringbad", rings: 1)
        XCTAssertThrowsError(try client.attachRing(slotSize: 100)) { error in
            XCTAssertEqual(error as? IPCError, .refused(.ipcRingAttach, .EINVAL))
        }
        XCTAssertThrowsError(try client.attachRing(slotSize: 64)) { error in  // no room for a header
            XCTAssertEqual(error as? IPCError, .refused(.ipcRingAttach, .EINVAL))
        }
        try client.attachRing(slotSize: 128, capacity: 2)
        XCTAssertEqual(try client.sendReceive(Message(type: .ipcPing)).status, .ok)
        server.terminate()
    }
}
