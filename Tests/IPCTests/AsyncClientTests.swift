import Synchronization
import XCTest
#if canImport(Glibc)
import Glibc
#endif
@testable import IPC

/// AsyncIPCClient against a real server process (limitless-testserver --echo) and against a
/// socket nobody answers on: waiting suspends, it does not hold a thread of the cooperative pool.
final class AsyncClientTests: RuntimeDirectoryTestCase {
    private final class Counter: Sendable {
        let value = Atomic<Int>(0)
    }

    private func startEcho(_ name: String) throws -> ChildServer {
        let server = try ChildServer(name: name, directory: directory, log: directory + "/\(name).log", extraArguments: ["--echo"])
        var options = ReconnectingIPCClient.Options()
        options.reconnectDeadline = .seconds(120)
        _ = try ReconnectingIPCClient(name: name, directory: directory, options: options)  // waits for the socket
        return server
    }

    /// A listening socket that accepts connections (the kernel does, up to the backlog) and
    /// never reads or answers.
    private func silentEndpoint(_ name: String) throws -> Int32 {
        try IPCEndpoint(name: name, directory: directory).listen()
    }

    func testSendReceiveAndReceive() async throws {
        let server = try startEcho("asyncecho")
        let client = try AsyncIPCClient.connect(name: "asyncecho", directory: directory)
        var message = Message(type: .vfsRead)
        message.setInlineData(count: 3)
        let reply = try await client.sendReceive(message, payload: [1, 2, 3])
        XCTAssertEqual(reply.status, .ok)
        XCTAssertEqual(reply.payload, [1, 2, 3])
        XCTAssertEqual(reply.message.param2, UInt64(server.pid))
        // Two sent, then received; sendReceive of a third while the first two wait in the stash.
        let first = try await client.send(Message(type: .vfsRead, param1: 1))
        let second = try await client.send(Message(type: .vfsRead, param1: 2))
        let third = try await client.sendReceive(Message(type: .vfsRead, param1: 4))
        XCTAssertEqual(third.payload, [0, 1, 2, 3])
        let a = try await client.receive()
        let b = try await client.receive()
        XCTAssertEqual([a.sequence, b.sequence], [first, second])
        XCTAssertEqual([a.payload.count, b.payload.count], [1, 2])
        server.terminate()
    }

    func testWaitingDoesNotHoldACooperativeThread() async throws {
        let server = try startEcho("busyecho")
        let silent = try silentEndpoint("silent")
        defer { close(silent) }
        // More waiters than the pool has threads (one per core).
        let waiters = max(8, ProcessInfo.processInfo.activeProcessorCount * 4)
        let finished = Counter()
        let directory = self.directory
        let group = Task {
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                for _ in 0..<waiters {
                    tasks.addTask {
                        let client = try AsyncIPCClient.connect(name: "silent", directory: directory)
                        defer { finished.value.add(1, ordering: .relaxed) }
                        do {
                            _ = try await client.sendReceive(Message(type: .ipcPing), timeout: .seconds(600))
                            XCTFail("a reply from a socket nobody answers on")
                        } catch is CancellationError {
                        }
                    }
                }
                try await tasks.waitForAll()
            }
        }
        // While all of them wait, other tasks on the same pool still run and get answers.
        let client = try AsyncIPCClient.connect(name: "busyecho", directory: directory)
        for index in 1...20 {
            let reply = try await client.sendReceive(Message(type: .vfsRead, param1: UInt64(index)), timeout: .seconds(120))
            XCTAssertEqual(reply.payload.count, index)
        }
        XCTAssertEqual(finished.value.load(ordering: .relaxed), 0, "a waiter gave up before it was cancelled")
        // Cancelling wakes them at once (their 600 s deadlines are far off).
        group.cancel()
        try await group.value
        XCTAssertEqual(finished.value.load(ordering: .relaxed), waiters)
        server.terminate()
    }

    func testTimeoutAndDisconnect() async throws {
        let silent = try silentEndpoint("quiet")
        defer { close(silent) }
        let quiet = try AsyncIPCClient.connect(name: "quiet", directory: directory)
        do {
            _ = try await quiet.receive(timeout: .milliseconds(200))
            XCTFail("received from a socket nobody writes to")
        } catch let error as IPCError {
            XCTAssertEqual(error, .timedOut(.milliseconds(200)))
        }

        let server = try startEcho("dying")
        let client = try AsyncIPCClient.connect(name: "dying", directory: directory)
        let pong = try await client.sendReceive(Message(type: .ipcPing))
        XCTAssertEqual(pong.status, .ok)
        server.kill()
        do {
            _ = try await client.sendReceive(Message(type: .ipcPing), timeout: .seconds(120))
            XCTFail("an answer from a killed server")
        } catch let error as IPCError {
            XCTAssertEqual(error, .disconnected)
        }
    }
}
