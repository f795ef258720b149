import Synchronization
import XCTest
#if canImport(Glibc)
import Glibc
#endif
@testable import IPC

/// `ReconnectingIPCClient` against a real server process that is killed and started again while
/// the client issues a stream of requests: every request gets an answer (a reply or a thrown
/// error); idempotent ones succeed across the restart; others are failed with ENOTCONN only when
/// they were in flight.
final class ReconnectingClientTests: RuntimeDirectoryTestCase {
    private var options: ReconnectingIPCClient.Options {
        var options = ReconnectingIPCClient.Options()
        options.reconnectDeadline = .seconds(120)  // a Swift binary starting on a loaded machine
        return options
    }

    /// Outcomes of the request stream, shared between the client's thread and the test's.
    private final class Outcomes: Sendable {
        struct State {
            var pingsOK = 0
            var otherReplies = 0  // the test server answers what it does not serve with ENOSYS
            var notReplayed = 0
            var unexpected: [String] = []
            var total: Int { pingsOK + otherReplies + notReplayed + unexpected.count }
        }
        let state = Mutex(State())
        let stop = Atomic<Bool>(false)
        let reconnects = Atomic<Int>(0)
        let finished = Atomic<Bool>(false)
    }

    private func waitFor(_ what: String, timeout: Duration = .seconds(120), _ condition: () -> Bool) {
        let deadline = ContinuousClock.now + timeout
        while !condition() {
            if ContinuousClock.now >= deadline { return XCTFail("timed out waiting for \(what)") }
            usleep(5_000)
        }
    }

    func testEveryRequestIsAnsweredAcrossAServerRestart() throws {
        let log = directory + "/server.log"
        var server: ChildServer? = try ChildServer(name: "pinger", directory: directory, log: log)
        let directory = self.directory
        let options = self.options
        let outcomes = Outcomes()
        let thread = Thread {
            defer { outcomes.finished.store(true, ordering: .releasing) }
            let client: ReconnectingIPCClient
            do {
                client = try ReconnectingIPCClient(name: "pinger", directory: directory, options: options)
            } catch {
                outcomes.state.withLock { $0.unexpected.append("connect: \(error)") }
                return
            }
            var index = 0
            while !outcomes.stop.load(ordering: .acquiring) {
                index += 1
                // Pings are idempotent; MSG_VFS_STAT stands for a request that is not.
                let idempotent = index % 3 != 0
                let message = Message(type: idempotent ? .ipcPing : .vfsStat)
                do throws(IPCError) {
                    let reply = try client.sendReceive(message, idempotent: idempotent, timeout: .seconds(60))
                    outcomes.state.withLock { state in
                        if idempotent && reply.status.isOK { state.pingsOK += 1 }
                        else if !idempotent && reply.status == .ENOSYS { state.otherReplies += 1 }
                        else { state.unexpected.append("request \(index): status \(reply.status)") }
                    }
                } catch where !idempotent && error.isNotReplayed {
                    XCTAssertEqual(error, .refused(.vfsStat, .ENOTCONN))
                    XCTAssertTrue(error.description.contains("not sent again"), error.description)
                    outcomes.state.withLock { $0.notReplayed += 1 }
                } catch {
                    outcomes.state.withLock { $0.unexpected.append("request \(index) (idempotent \(idempotent)): \(error)") }
                }
                outcomes.reconnects.store(client.reconnects, ordering: .relaxed)
            }
        }
        thread.start()

        waitFor("requests flowing to the first instance") { outcomes.state.withLock { $0.total } >= 200 || outcomes.finished.load(ordering: .acquiring) }
        // Crash the server mid-stream, leave its stale socket file behind, and start another.
        server?.kill()
        server = nil
        let beforeRestart = outcomes.state.withLock { $0.total }
        server = try ChildServer(name: "pinger", directory: directory, log: log)
        waitFor("the client reconnected") { outcomes.reconnects.load(ordering: .relaxed) >= 1 || outcomes.finished.load(ordering: .acquiring) }
        waitFor("requests flowing to the second instance") {
            outcomes.state.withLock { $0.total } >= beforeRestart + 200 || outcomes.finished.load(ordering: .acquiring)
        }
        outcomes.stop.store(true, ordering: .releasing)
        waitFor("the client thread to finish") { outcomes.finished.load(ordering: .acquiring) }
        server?.terminate()

        let state = outcomes.state.withLock { $0 }
        XCTAssertEqual(state.unexpected, [], (try? String(contentsOfFile: log, encoding: .utf8)) ?? "")
        XCTAssertGreaterThanOrEqual(outcomes.reconnects.load(ordering: .relaxed), 1)
        XCTAssertGreaterThanOrEqual(state.pingsOK, 200, "\(state)")
        XCTAssertGreaterThan(state.otherReplies, 0, "\(state)")
        // At most one request was in flight when the server died.
        XCTAssertLessThanOrEqual(state.notReplayed, 1, "\(state)")
    }

    func testAnIdleClientReconnectsOnItsNextRequest() throws {
        let log = directory + "/server.log"
        var server: ChildServer? = try ChildServer(name: "idle", directory: directory, log: log)
        let client = try ReconnectingIPCClient(name: "idle", directory: directory, options: options)
        try client.ping()
        XCTAssertEqual(client.reconnects, 0)
        server?.terminate()
        server = try ChildServer(name: "idle", directory: directory, log: log)
        // Not idempotent, but never delivered: the old connection's send fails (EPIPE), so it is
        // sent on the new one.
        let reply = try client.sendReceive(Message(type: .vfsStat), idempotent: false, timeout: .seconds(60))
        XCTAssertEqual(reply.status, .ENOSYS)
        XCTAssertEqual(client.reconnects, 1)
        XCTAssertEqual(client.replays, 1)
        server?.terminate()
    }

    func testAServerThatNeverComesBackFailsTheRequestAtTheDeadline() throws {
        let server = try ChildServer(name: "gone", directory: directory, log: directory + "/server.log")
        let client = try ReconnectingIPCClient(name: "gone", directory: directory, options: options)
        try client.ping()
        server.kill()
        client.options.reconnectDeadline = .milliseconds(200)
        XCTAssertThrowsError(try client.ping(timeout: .seconds(5))) { error in
            XCTAssertEqual(error as? IPCError, .serverNotFound(name: "gone", directory: self.directory), "\(error)")
        }
        XCTAssertNil(client.client)
        XCTAssertEqual(client.reconnects, 0)
    }

    func testARingIsAttachedAgainOnReconnectAndUsedAcrossTheRestart() throws {
        let log = directory + "/server.log"
        var server: ChildServer? = try ChildServer(name: "ringed", directory: directory, log: log, extraArguments: ["--echo", "--rings", "2"])
        let client = try ReconnectingIPCClient(name: "ringed", directory: directory, options: options)
        try client.client?.attachRing()
        client.onReconnect = { (fresh) throws(IPCError) in try fresh.attachRing() }
        let first = try client.sendReceive(Message(type: .vfsRead, param1: 4), idempotent: true)
        XCTAssertEqual(first.payload, [0, 1, 2, 3])
        XCTAssertEqual(client.client?.ringExchanges, 1)
        let firstPID = first.message.param2

        server?.kill()
        server = try ChildServer(name: "ringed", directory: directory, log: log, extraArguments: ["--echo", "--rings", "2"])
        // Idempotent: replayed over the new connection's ring, answered by the new process.
        let again = try client.sendReceive(Message(type: .vfsRead, param1: 4), idempotent: true, timeout: .seconds(60))
        XCTAssertEqual(again.payload, [0, 1, 2, 3])
        XCTAssertNotEqual(again.message.param2, firstPID)
        XCTAssertEqual(again.message.param2, UInt64(server!.pid))
        XCTAssertEqual(client.reconnects, 1)
        XCTAssertEqual(client.client?.isRingAttached, true)
        XCTAssertEqual(client.client?.ringExchanges, 1)
        server?.terminate()
    }
}
