import PlatformTestSupport
import CLimitless
import Foundation
import XCTest
@testable import IPC
#if canImport(Glibc)
import Glibc
#endif

/// Deferred answers (`IPCReply.deferred`, `IPCServer.complete`) over real sockets: the handler
/// keeps each request's token, the test decides when and in what order they are answered, and
/// the server's completion poller (woken through an eventfd, as a device interrupt would wake
/// it) sends them on the serving thread.
final class DeferredReplyTests: RuntimeDirectoryTestCase {
    /// What the handler saw, and the answers the test queued for the poller.
    final class Desk: @unchecked Sendable {
        private let lock = NSLock()
        private var tokens: [IPCReplyToken] = []
        private var answers: [(IPCReplyToken, IPCReply, [UInt8])] = []
        private(set) var delivered: [Bool] = []
        let wake = CL_eventfd(0, CL_EFD_CLOEXEC | CL_EFD_NONBLOCK)

        deinit { close(wake) }

        func took(_ token: IPCReplyToken) { lock.lock(); tokens.append(token); lock.unlock() }
        var taken: [IPCReplyToken] { lock.lock(); defer { lock.unlock() }; return tokens }
        var results: [Bool] { lock.lock(); defer { lock.unlock() }; return delivered }

        /// Queues an answer and wakes the server.
        func answer(_ token: IPCReplyToken, _ reply: IPCReply, payload: [UInt8] = []) {
            lock.lock(); answers.append((token, reply, payload)); lock.unlock()
            var one: UInt64 = 1
            _ = write(wake, &one, 8)
        }

        /// Sends the queued answers: runs on the serving thread (`pollCompletions`).
        func poll(_ server: IPCServer) {
            var count: UInt64 = 0
            _ = read(wake, &count, 8)
            lock.lock()
            let due = answers
            answers.removeAll()
            lock.unlock()
            for (token, reply, payload) in due {
                let done = payload.withUnsafeBytes { server.complete(token, reply, payload: $0) }
                lock.lock(); delivered.append(done); lock.unlock()
            }
        }
    }

    /// Defers every MSG_VFS_READ (keeping the token) and answers anything else at once; its
    /// `pollCompletions` sends the desk's queued answers.
    final class DeferringHandler: IPCRequestHandler, @unchecked Sendable {
        let desk: Desk
        weak var server: IPCServer?

        init(desk: Desk) { self.desk = desk }

        func handle(_ request: Message, _ payload: IPCPayload, _ connection: IPCConnection) -> IPCReply {
            guard request.type == .vfsRead else { return IPCReply(param1: 7) }
            XCTAssertTrue(payload.replyToken.canDefer)
            desk.took(payload.replyToken)
            return .deferred
        }

        func pollCompletions() {
            if let server { desk.poll(server) }
        }
    }

    private var desk: Desk!

    /// A server whose handler defers every MSG_VFS_READ (keeping the token) and answers
    /// anything else at once.
    private func makeServer(start: Bool = true, _ configure: (inout IPCServer.Configuration) -> Void = { _ in }) throws -> IPCServer {
        let desk = Desk()
        self.desk = desk
        var configuration = IPCServer.Configuration()
        configure(&configuration)
        let handler = DeferringHandler(desk: desk)
        let server = try IPCServer(name: "deferred", directory: directory, configuration: configuration, requestHandler: handler)
        handler.server = server
        try server.addWakeDescriptor(desk.wake)
        if start { server.start() }
        return server
    }

    private static func sharedRead(_ handle: UInt32) -> Message {
        var message = Message(type: .vfsRead)
        message.setSharedData(handle: handle, count: 4096)
        return message
    }

    private func waitUntil(_ condition: () -> Bool, file: StaticString = #filePath, line: UInt = #line) {
        for _ in 0..<500 where !condition() { usleep(10_000) }
        XCTAssertTrue(condition(), "condition not reached within 5 s", file: file, line: line)
    }

    func testAnswersGoOutInCompletionOrderEachExactlyOnceWithItsPayload() throws {
        let server = try makeServer()
        defer { server.stop() }
        let client = try IPCClient.connect(name: "deferred", directory: directory)
        let sequences = try client.sendBatch((0..<8).map { _ in Message(type: .vfsRead) })
        waitUntil { desk.taken.count == 8 }
        XCTAssertEqual(server.deferredCount, 8)
        // Answer in reverse order, each with its own payload (its sequence, repeated).
        for token in desk.taken.reversed() {
            desk.answer(token, IPCReply(param1: UInt64(token.sequence)), payload: [UInt8](repeating: UInt8(truncatingIfNeeded: token.sequence), count: 100))
        }
        var seen: [UInt32] = []
        for _ in 0..<8 {
            let reply = try client.receive(timeout: .seconds(5))
            XCTAssertEqual(reply.status, .ok)
            XCTAssertEqual(reply.message.type, .vfsRead)
            XCTAssertEqual(reply.message.param1, UInt64(reply.sequence))
            XCTAssertEqual(reply.payload, [UInt8](repeating: UInt8(truncatingIfNeeded: reply.sequence), count: 100))
            seen.append(reply.sequence)
        }
        XCTAssertEqual(seen, sequences.reversed(), "replies come in completion order")
        XCTAssertThrowsError(try client.receive(timeout: .milliseconds(100)), "no reply twice")
        waitUntil { server.deferredCount == 0 }
        XCTAssertEqual(desk.results, [Bool](repeating: true, count: 8))
        // An immediate answer still works meanwhile.
        XCTAssertEqual(try client.sendReceive(Message(type: .vfsStat)).message.param1, 7)
    }

    func testImmediateAnswersOvertakeDeferredOnes() throws {
        let server = try makeServer()
        defer { server.stop() }
        let client = try IPCClient.connect(name: "deferred", directory: directory)
        let slow = try client.send(Message(type: .vfsRead))
        waitUntil { desk.taken.count == 1 }
        // sendReceive stashes nothing and gets its own answer while the first is outstanding.
        XCTAssertEqual(try client.sendReceive(Message(type: .vfsStat)).message.param1, 7)
        desk.answer(desk.taken[0], .error(.EIO))
        let reply = try client.receive(timeout: .seconds(5))
        XCTAssertEqual(reply.sequence, slow)
        XCTAssertEqual(reply.status, .EIO)
    }

    func testPerClientBoundQueuesThenAnswersBusy() throws {
        // Stepped on this thread (deterministic: one wakeup reads the whole batch); answers are
        // completed here too, as the serving thread.
        let server = try makeServer(start: false) { $0.maxDeferredPerClient = 2; $0.queueDepth = 3 }
        defer { server.stop() }
        let client = try IPCClient.connect(name: "deferred", directory: directory)
        let other = try IPCClient.connect(name: "deferred", directory: directory)
        server.serveOnce(timeout: .seconds(1))  // accept both
        let sequences = try client.sendBatch((0..<10).map { _ in Message(type: .vfsRead) })
        server.serveOnce(timeout: .seconds(1))
        // Three queued (two of them now deferred, the third waiting), the other seven told
        // EBUSY: none dropped.
        XCTAssertEqual(desk.taken.count, 2)
        var busy: [UInt32] = []
        for _ in 0..<7 {
            let reply = try client.receive(timeout: .seconds(5))
            XCTAssertEqual(reply.status, .EBUSY)
            XCTAssertEqual(reply.message.param1, IPCRefusal.busy)
            busy.append(reply.sequence)
        }
        XCTAssertEqual(busy, Array(sequences.suffix(7)))
        server.serveOnce(timeout: .zero)
        XCTAssertEqual(desk.taken.count, 2, "the bound holds")
        // Another client is not held up by this one.
        let otherSequence = try other.send(Message(type: .vfsRead))
        server.serveOnce(timeout: .seconds(1))
        XCTAssertEqual(desk.taken.count, 3)
        XCTAssertEqual(desk.taken[2].sequence, otherSequence)
        // A completion lets the waiting request in.
        XCTAssertTrue(server.complete(desk.taken[0], .ok))
        server.serveOnce(timeout: .zero)
        XCTAssertEqual(desk.taken.count, 4)
        XCTAssertEqual(desk.taken[3].sequence, sequences[2])
        for token in [desk.taken[1], desk.taken[3], desk.taken[2]] { XCTAssertTrue(server.complete(token, .ok)) }
        let answered = try (0..<3).map { _ in try client.receive(timeout: .seconds(5)).sequence }
        XCTAssertEqual(answered, [sequences[0], sequences[1], sequences[2]])
        XCTAssertEqual(try other.receive(timeout: .seconds(5)).sequence, otherSequence)
        XCTAssertEqual(server.deferredCount, 0)
    }

    func testVanishedClientsRegionsStayUntilItsAnswersCompleteThenAllIsFreed() throws {
        let server = try makeServer()
        defer { server.stop() }
        // Warm up (first connection's lazy allocations), then measure.
        _ = try IPCClient.connect(name: "deferred", directory: directory).sendReceive(Message(type: .ipcPing))
        waitUntil { server.connectionCount == 0 }
        let baseline = openDescriptorCount()
        do {
            let client = try IPCClient.connect(name: "deferred", directory: directory)
            let region = try SharedMemory(size: 8192)
            let handle = try client.share(region)
            for _ in 0..<3 {
                try client.send(Self.sharedRead(handle))
            }
            waitUntil { desk.taken.count == 3 }
        }  // the client and its region close here
        waitUntil { server.connectionCount == 0 }
        XCTAssertEqual(server.sharedRegionCount, 1, "kept mapped while answers are outstanding")
        desk.answer(desk.taken[0], .ok)
        desk.answer(desk.taken[1], .ok)
        waitUntil { desk.results.count == 2 }
        XCTAssertEqual(server.sharedRegionCount, 1)
        desk.answer(desk.taken[2], .ok)
        waitUntil { desk.results.count == 3 }
        XCTAssertEqual(desk.results, [false, false, false], "late completions are discarded")
        XCTAssertEqual(server.discardedCompletions, 3)
        XCTAssertEqual(server.deferredCount, 0)
        XCTAssertEqual(server.sharedRegionCount, 0)
        waitUntil { openDescriptorCount() == baseline }
        // A stale token does nothing more (no crash, counts unchanged besides the discard).
        desk.answer(desk.taken[0], .ok)
        waitUntil { desk.results.count == 4 }
        XCTAssertEqual(server.sharedRegionCount, 0)
        XCTAssertEqual(try IPCClient.connect(name: "deferred", directory: directory).sendReceive(Message(type: .ipcPing)).status, .ok)
    }

    func testReleaseWaitsForTheClientsOutstandingAnswers() throws {
        let server = try makeServer()
        defer { server.stop() }
        let client = try IPCClient.connect(name: "deferred", directory: directory)
        let region = try SharedMemory(size: 4096)
        let handle = try client.share(region)
        try client.send(Self.sharedRead(handle))
        waitUntil { desk.taken.count == 1 }
        let release = try client.send(Message(type: .ipcRelease, param1: UInt64(handle)))
        usleep(100_000)
        XCTAssertEqual(server.sharedRegionCount, 1, "not released under an outstanding answer")
        desk.answer(desk.taken[0], .ok)
        var statuses: [UInt32: IPCStatus] = [:]
        for _ in 0..<2 {
            let reply = try client.receive(timeout: .seconds(5))
            statuses[reply.sequence] = reply.status
        }
        XCTAssertEqual(statuses[release], .ok)
        XCTAssertEqual(server.sharedRegionCount, 0)
    }

    func testGarbageStillAnsweredWhileAnswersAreOutstanding() throws {
        let server = try makeServer()
        defer { server.stop() }
        let client = try IPCClient.connect(name: "deferred", directory: directory)
        try client.send(Message(type: .vfsRead))
        waitUntil { desk.taken.count == 1 }
        try [UInt8](repeating: 0xEE, count: 30).withUnsafeBytes { try client.sendRaw($0) }
        XCTAssertEqual(try client.receive(timeout: .seconds(5)).status, .EBADMSG)
        desk.answer(desk.taken[0], .ok)
        XCTAssertEqual(try client.receive(timeout: .seconds(5)).status, .ok)
        XCTAssertEqual(server.connectionCount, 1)
    }
}
