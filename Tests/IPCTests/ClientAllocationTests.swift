import CLimitless
import XCTest
@testable import IPC
#if canImport(Glibc)
import Glibc
#endif

/// The allocation-free client calls: `sendReceive(_:payload:into:timeout:)`,
/// `sendBatch(_: UnsafeBufferPointer<Message>)`, the out-of-order stash, sequence numbering
/// across the wrap (their allocation counts: BenchTests/HotPathAllocationTests).
final class ClientAllocationTests: RuntimeDirectoryTestCase {
    /// Reply payload = the request's data reversed; param1 = the request's param1.
    private static let echo: IPCServer.Handler = { request, payload, _ in
        let count = payload.data.count
        for index in 0..<count { payload.reply[index] = payload.data[count - 1 - index] }
        return IPCReply(param1: request.param1, payloadCount: count)
    }

    private func startServer(queueDepth: Int = 16) throws -> IPCServer {
        var configuration = IPCServer.Configuration()
        configuration.queueDepth = queueDepth
        let server = try IPCServer(name: "vfs", directory: directory, configuration: configuration, handler: Self.echo)
        server.start()
        return server
    }

    private func request(_ tag: UInt64, payloadCount: Int) -> Message {
        var message = Message(type: .vfsWrite, param1: tag)
        message.setInlineData(count: UInt32(payloadCount))
        return message
    }

    // MARK: Behaviour

    func testSendReceiveIntoCopiesTheMatchingReplyAndReportsTruncation() throws {
        let server = try startServer()
        defer { server.stop() }
        let client = try IPCClient.connect(name: "vfs", directory: directory)
        let payload: [UInt8] = [1, 2, 3, 4, 5]
        var buffer = [UInt8](repeating: 0xEE, count: 8)

        let (reply, count) = try payload.withUnsafeBytes { sent in
            try buffer.withUnsafeMutableBytes { try client.sendReceive(request(7, payloadCount: 5), payload: sent, into: $0) }
        }
        XCTAssertTrue(reply.flags.contains(.reply))
        XCTAssertEqual(reply.status, .ok)
        XCTAssertEqual(reply.param1, 7)
        XCTAssertEqual(reply.sequence, client.lastSequence)
        XCTAssertEqual(count, 5)
        XCTAssertEqual(buffer, [5, 4, 3, 2, 1, 0xEE, 0xEE, 0xEE])

        // A 2-byte buffer gets the first 2 bytes; the full length is still reported.
        var small = [UInt8](repeating: 0, count: 2)
        let (_, full) = try payload.withUnsafeBytes { sent in
            try small.withUnsafeMutableBytes { try client.sendReceive(request(8, payloadCount: 5), payload: sent, into: $0) }
        }
        XCTAssertEqual(full, 5)
        XCTAssertEqual(small, [5, 4])

        // An empty buffer: header only, length still reported.
        let (header, length) = try payload.withUnsafeBytes { sent in
            try client.sendReceive(request(9, payloadCount: 3), payload: sent, into: UnsafeMutableRawBufferPointer(start: nil, count: 0))
        }
        XCTAssertEqual(header.param1, 9)
        XCTAssertEqual(length, 3)

        // The convenience form still works and agrees.
        let convenience = try payload.withUnsafeBytes { try client.sendReceive(request(10, payloadCount: 4), payload: $0) }
        XCTAssertEqual(convenience.payload, [4, 3, 2, 1])
        XCTAssertEqual(convenience.message.param1, 10)
    }

    /// More replies arrive before the awaited one than the stash has slots: the first
    /// `stashCapacity` go to slots, the rest spill; all come back from `receive` in arrival order
    /// with their payloads, and one can be taken from the middle by sequence.
    func testOutOfOrderRepliesAreStashedBeyondTheSlotsAndReturnedInOrder() throws {
        let earlier = IPCClient.stashCapacity * 2 + 5
        let server = try startServer(queueDepth: earlier + 8)  // every request queued: replies in order, no EBUSY
        defer { server.stop() }
        let client = try IPCClient.connect(name: "vfs", directory: directory)

        var sequences: [UInt32] = []
        for index in 0..<earlier {
            let bytes: [UInt8] = [UInt8(index), UInt8(index &+ 1), UInt8(index &+ 2)]
            sequences.append(try bytes.withUnsafeBytes { try client.send(request(UInt64(index), payloadCount: 3), payload: $0) })
        }
        var buffer = [UInt8](repeating: 0, count: 16)
        let (reply, count) = try buffer.withUnsafeMutableBytes { try client.sendReceive(request(999, payloadCount: 0), into: $0) }
        XCTAssertEqual(reply.param1, 999)
        XCTAssertEqual(reply.sequence, client.lastSequence)
        XCTAssertEqual(count, 0)

        // Take one from the slots' middle and one from the spill by sequence (internal API).
        let middle = 3, spilled = IPCClient.stashCapacity + 2
        let fromSlot = try client.awaitReply(sequence: sequences[middle], timeout: .seconds(5))
        XCTAssertEqual(fromSlot.message.param1, UInt64(middle))
        XCTAssertEqual(fromSlot.payload, [UInt8(middle + 2), UInt8(middle + 1), UInt8(middle)])
        let fromSpill = try client.awaitReply(sequence: sequences[spilled], timeout: .seconds(5))
        XCTAssertEqual(fromSpill.message.param1, UInt64(spilled))
        XCTAssertEqual(fromSpill.payload, [UInt8(spilled + 2), UInt8(spilled + 1), UInt8(spilled)])

        // One more out-of-order reply while the spill is non-empty: it must come after all others.
        let late = try client.send(request(1_000, payloadCount: 0))
        let (last, _) = try client.sendReceive(request(1_001, payloadCount: 0), into: UnsafeMutableRawBufferPointer(start: nil, count: 0))
        XCTAssertEqual(last.param1, 1_001)

        var expected = Array(0..<earlier)
        expected.removeAll { $0 == middle || $0 == spilled }
        for (position, index) in expected.enumerated() {
            // Alternate the two receive forms.
            if position.isMultiple(of: 2) {
                let (message, length) = try buffer.withUnsafeMutableBytes { try client.receive(into: $0, timeout: .seconds(5)) }
                XCTAssertEqual(message.sequence, sequences[index])
                XCTAssertEqual(message.param1, UInt64(index))
                XCTAssertEqual(length, 3)
                XCTAssertEqual(Array(buffer[..<3]), [UInt8(index &+ 2), UInt8(index &+ 1), UInt8(index)])
            } else {
                let reply = try client.receive(timeout: .seconds(5))
                XCTAssertEqual(reply.sequence, sequences[index])
                XCTAssertEqual(reply.payload, [UInt8(index &+ 2), UInt8(index &+ 1), UInt8(index)])
            }
        }
        XCTAssertEqual(try client.receive(timeout: .seconds(5)).sequence, late)
        XCTAssertThrowsError(try client.receive(timeout: .milliseconds(50))) {
            guard case .timedOut = $0 as? IPCError else { return XCTFail("expected a timeout, got \($0)") }
        }

        // The slots are reusable afterwards (a second out-of-order round, within the slots).
        let again = try client.send(request(2_000, payloadCount: 0))
        _ = try client.sendReceive(request(2_001, payloadCount: 0), into: UnsafeMutableRawBufferPointer(start: nil, count: 0))
        XCTAssertEqual(try client.receive(timeout: .seconds(5)).sequence, again)
    }

    func testSequenceArithmeticSkipsZero() {
        XCTAssertEqual(IPCClient.sequence(after: 0), 1)
        XCTAssertEqual(IPCClient.sequence(after: 41), 42)
        XCTAssertEqual(IPCClient.sequence(after: .max - 1), .max)
        XCTAssertEqual(IPCClient.sequence(after: .max), 1)
        XCTAssertEqual(IPCClient.sequence(5, advancedBy: 0), 5)
        XCTAssertEqual(IPCClient.sequence(5, advancedBy: 3), 8)
        XCTAssertEqual(IPCClient.sequence(.max - 1, advancedBy: 1), .max)
        XCTAssertEqual(IPCClient.sequence(.max - 1, advancedBy: 2), 1)
        XCTAssertEqual(IPCClient.sequence(.max - 1, advancedBy: 4), 3)
        XCTAssertEqual(IPCClient.sequence(1, advancedBy: Int(UInt32.max)), 1)  // full period: 1...max
        var walked: UInt32 = .max - 3
        for offset in 0..<10 {
            XCTAssertEqual(IPCClient.sequence(.max - 3, advancedBy: offset), walked)
            walked = IPCClient.sequence(after: walked)
        }
    }

    /// Batches straddling UInt32.max: the first sequence is returned, the rest follow with 0
    /// skipped, every request gets exactly one reply with one of those numbers, and the
    /// array wrapper reports the same numbers. 100 messages also cross the 64-message chunk.
    func testBatchSequenceNumbersAcrossTheWrap() throws {
        let server = try startServer(queueDepth: 256)
        defer { server.stop() }
        let client = try IPCClient.connect(name: "vfs", directory: directory)

        let messages = (0..<100).map { Message(type: .vfsStat, param1: UInt64($0)) }  // ipcPing is answered by the server itself
        client.lastSequence = .max - 40
        let first = try messages.withUnsafeBufferPointer { try client.sendBatch($0) }
        XCTAssertEqual(first, .max - 39)
        let expected = (0..<messages.count).map { IPCClient.sequence(first, advancedBy: $0) }
        XCTAssertFalse(expected.contains(0))
        XCTAssertEqual(expected[39], .max)
        XCTAssertEqual(expected[40], 1)
        XCTAssertEqual(client.lastSequence, expected.last)
        var seen: [UInt32: UInt64] = [:]
        for _ in messages {
            let reply = try client.receive(timeout: .seconds(5))
            XCTAssertEqual(reply.status, .ok)
            XCTAssertNil(seen[reply.sequence])
            seen[reply.sequence] = reply.message.param1
        }
        XCTAssertEqual(Set(seen.keys), Set(expected))
        for (offset, sequence) in expected.enumerated() { XCTAssertEqual(seen[sequence], UInt64(offset)) }

        // The array wrapper across the wrap.
        client.lastSequence = .max - 2
        let sequences = try client.sendBatch(Array(messages[..<5]))
        XCTAssertEqual(sequences, [.max - 1, .max, 1, 2, 3])
        var replies: [UInt32] = []
        for _ in sequences { replies.append(try client.receive(timeout: .seconds(5)).sequence) }
        XCTAssertEqual(Set(replies), Set(sequences))

        // An empty batch sends nothing, consumes no number, and returns 0.
        let before = client.lastSequence
        XCTAssertEqual(try [Message]().withUnsafeBufferPointer { try client.sendBatch($0) }, 0)
        XCTAssertEqual(try client.sendBatch([Message]()), [])
        XCTAssertEqual(client.lastSequence, before)
    }

    // The allocation counts of these calls (and of the server, rings, storage and the C library)
    // are asserted in BenchTests/HotPathAllocationTests, in separate processes under a counting
    // LD_PRELOAD library: in-process counting had no hook that works (mallinfo2 reports bytes in
    // use, not calls; the runtime's Instruments hooks crash on tagged values).
}
