import PlatformTestSupport
import Foundation
import XCTest
@testable import IPC
#if canImport(Glibc)
import Glibc
#endif

/// Handlers as objects (`IPCRequestHandler`): served on the socket and on a ring, called for
/// completions on every wakeup, and kept alive by the server exactly as long as it lives.
/// (That the calls touch no reference count is HotPathAllocationTests' part, in an optimized build.)
final class RequestHandlerTests: RuntimeDirectoryTestCase {
    /// Echoes param1 plus 1000 and notes who asked; defers MSG_VFS_READ and answers it (param1
    /// 99) from `pollCompletions`.
    final class Recorder: IPCRequestHandler, @unchecked Sendable {
        private let lock = NSLock()
        private var requests = 0
        private var pids: Set<Int32> = []
        private var tokens: [IPCReplyToken] = []
        private var polls = 0
        /// The server that owns this handler (set once it exists; an owned reference would be a cycle).
        weak var server: IPCServer?

        var requestCount: Int { lock.withLock { requests } }
        var senderPIDs: Set<Int32> { lock.withLock { pids } }
        var pollCount: Int { lock.withLock { polls } }

        func handle(_ request: Message, _ payload: IPCPayload, _ connection: IPCConnection) -> IPCReply {
            lock.withLock {
                requests += 1
                pids.insert(connection.credentials.pid)
                if request.type == .vfsRead { tokens.append(payload.replyToken) }
            }
            return request.type == .vfsRead ? .deferred : IPCReply(param1: request.param1 + 1000)
        }

        func pollCompletions() {
            let due = lock.withLock {
                polls += 1
                defer { tokens.removeAll() }
                return tokens
            }
            for token in due { server?.complete(token, IPCReply(param1: 99)) }
        }
    }

    func testAnObjectHandlerServesTheSocketAndARingWithTheKernelsCredentials() throws {
        let recorder = Recorder()
        var configuration = IPCServer.Configuration()
        configuration.maxRings = 1
        let server = try IPCServer(name: "objects", directory: directory, configuration: configuration, requestHandler: recorder)
        server.start()
        defer { server.stop() }
        let client = try IPCClient.connect(name: "objects", directory: directory)
        let onSocket = try client.sendReceive(Message(type: .vfsStat, param1: 1), timeout: .seconds(5))
        XCTAssertEqual(onSocket.status, .ok)
        XCTAssertEqual(onSocket.message.param1, 1001)
        try client.attachRing()
        XCTAssertEqual(server.ringCount, 1)
        let onRing = try client.sendReceive(Message(type: .vfsStat, param1: 2), timeout: .seconds(5))
        XCTAssertEqual(onRing.status, .ok)
        XCTAssertEqual(onRing.message.param1, 1002)
        XCTAssertEqual(recorder.requestCount, 2)
        XCTAssertEqual(recorder.senderPIDs, [getpid()])
    }

    func testPollCompletionsRunsOnWakeupsAndAnswersDeferredRequests() throws {
        let recorder = Recorder()
        let server = try IPCServer(name: "polled", directory: directory, requestHandler: recorder)
        recorder.server = server
        server.pollsCompletions = true  // nothing else wakes the server for the deferred answer
        server.start()
        defer { server.stop() }
        let client = try IPCClient.connect(name: "polled", directory: directory)
        let reply = try client.sendReceive(Message(type: .vfsRead), timeout: .seconds(5))
        XCTAssertEqual(reply.status, .ok)
        XCTAssertEqual(reply.message.param1, 99)
        XCTAssertGreaterThan(recorder.pollCount, 0)
        XCTAssertEqual(server.deferredCount, 0)
    }

    func testTheServerKeepsItsHandlerAliveUntilItGoesAway() throws {
        weak var released: Recorder?
        var server: IPCServer? = try {
            let recorder = Recorder()
            released = recorder
            return try IPCServer(name: "lifetime", directory: directory, requestHandler: recorder)
        }()
        XCTAssertNotNil(released, "the server holds its handler")
        let client = try IPCClient.connect(name: "lifetime", directory: directory)
        _ = try client.send(Message(type: .vfsStat, param1: 5))
        // Stepped on this thread: one wakeup accepts the client, a later one serves its request.
        for _ in 0..<50 where (released?.requestCount ?? 0) == 0 { server?.serveOnce(timeout: .milliseconds(100)) }
        XCTAssertEqual(try client.receive(timeout: .seconds(5)).message.param1, 1005)
        server?.stop()
        server = nil
        XCTAssertNil(released, "the server released its handler")
    }
}
