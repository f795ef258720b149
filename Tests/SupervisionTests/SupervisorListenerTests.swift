import Glibc
import IPC
import XCTest

@testable import Supervision

/// Socket activation with the real supervisor and real `limitless-testserver` processes: the
/// supervisor holds RUNTIME_DIR/NAME.sock across instances, a client that connects while the
/// server is down is answered by the next instance, the supervisor writes NAME.pid, a stop
/// removes both, a removed socket is replaced at the next start, and `listen no` leaves binding
/// to the server.
extension SupervisorIntegrationTests {
    /// Restarts after a pause long enough to connect while the server is down.
    static let slowRestarts = RestartPolicy(mode: .onFailure, initialBackoff: .milliseconds(1500), maximumBackoff: .milliseconds(1500),
                                            intensity: .init(restarts: 10, period: .seconds(60)))

    /// The socket file's inode and change time (an inode number alone may be reused at once).
    func socketInode(_ name: String) -> String? {
        var status = stat()
        guard lstat(directory.path + "/\(name).sock", &status) == 0 else { return nil }
        return "\(status.st_ino)@\(status.st_ctim.tv_sec).\(status.st_ctim.tv_nsec)"
    }

    func pidFile(_ name: String) -> Int32? {
        guard let text = try? String(contentsOfFile: directory.path + "/\(name).pid", encoding: .utf8) else { return nil }
        return Int32(text.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// An echo request; the test server's reply carries its pid in param2.
    func answeringPID(_ client: IPCClient, timeout: Duration = .seconds(30)) throws -> Int32 {
        let reply = try client.sendReceive(Message(type: .vfsRead), timeout: timeout)
        XCTAssertEqual(reply.status, .ok)
        return Int32(truncatingIfNeeded: reply.message.param2)
    }

    func testClientConnectingWhileTheServerIsDownIsAnsweredByTheNextInstance() throws {
        try run([server("echo", ["--echo"], restart: Self.slowRestarts)])
        waitFor("instance 1 running") { isRunning("echo", instance: 1) }
        let first = state("echo")
        let inode = try XCTUnwrap(socketInode("echo"))
        XCTAssertEqual(pidFile("echo"), first.pid, "the supervisor names the instance it started")
        let early = try IPCClient.connect(name: "echo", directory: directory.path)
        XCTAssertEqual(try answeringPID(early), first.pid)

        XCTAssertEqual(kill(first.pid, SIGKILL), 0)
        waitFor("instance 1 gone, restart pending") { state("echo").state == .backoff }
        XCTAssertNil(pidFile("echo"), "no pid file names the dead instance")
        // Connecting succeeds while no instance runs: the connection waits in the backlog of the
        // socket the supervisor holds.
        let waiting = try IPCClient.connect(name: "echo", directory: directory.path)
        XCTAssertEqual(state("echo").state, .backoff, "connected while the server was down")
        XCTAssertEqual(socketInode("echo"), inode)
        // Its request waits too, and the next instance answers it.
        let answeredBy = try answeringPID(waiting)
        let second = state("echo")
        XCTAssertEqual(second.instance, 2)
        XCTAssertEqual(answeredBy, second.pid, logText("echo"))
        XCTAssertNotEqual(answeredBy, first.pid)
        XCTAssertEqual(socketInode("echo"), inode, "the same socket across instances")
        XCTAssertEqual(pidFile("echo"), second.pid)
        // A client of the dead instance sees its connection closed, as before.
        XCTAssertThrowsError(try early.sendReceive(Message(type: .vfsRead), timeout: .seconds(10)))
        // The instance got the socket after its capabilities and did not bind one.
        let held = descriptors(of: second.pid)
        XCTAssertTrue(held[5]?.hasPrefix("socket:") ?? false, "\(held)")
    }

    func testStopClosesAndRemovesTheSocketAndPidFile() throws {
        let supervisor = try run([server("gone", ["--echo"])])
        waitFor("running") { isRunning("gone") }
        XCTAssertNotNil(socketInode("gone"))
        XCTAssertEqual(pidFile("gone"), state("gone").pid)
        try supervisor.stop("gone")
        waitFor("stopped") { state("gone").state == .inactive && !FileManager.default.fileExists(atPath: directory.path + "/gone.sock") }
        XCTAssertNil(pidFile("gone"))
        XCTAssertThrowsError(try IPCClient.connect(name: "gone", directory: directory.path)) { error in
            XCTAssertEqual(error as? IPCError, .serverNotFound(name: "gone", directory: directory.path))
        }
        // Started again, it listens anew.
        try supervisor.start("gone")
        waitFor("running again") { isRunning("gone") }
        let client = try IPCClient.connect(name: "gone", directory: directory.path)
        XCTAssertEqual(try answeringPID(client), state("gone").pid)
    }

    func testASocketRemovedUnderTheSupervisorIsReplacedAtTheNextStart() throws {
        try run([server("moved", ["--echo"])])
        waitFor("instance 1 running") { isRunning("moved", instance: 1) }
        let inode = try XCTUnwrap(socketInode("moved"))
        // Someone (the server, say) removes the path and puts another file there.
        XCTAssertEqual(unlink(directory.path + "/moved.sock"), 0)
        XCTAssertTrue(FileManager.default.createFile(atPath: directory.path + "/moved.sock", contents: Data("x".utf8)))
        XCTAssertEqual(kill(state("moved").pid, SIGKILL), 0)
        waitFor("instance 2 running") { isRunning("moved", instance: 2) }
        XCTAssertTrue(lines("moved", .supervisor).contains { $0.contains("moved.sock was removed or replaced; listening on a new socket") },
                      logText("moved"))
        XCTAssertNotEqual(socketInode("moved"), inode)
        let client = try IPCClient.connect(name: "moved", directory: directory.path)
        XCTAssertEqual(try answeringPID(client), state("moved").pid)
    }

    func testListenNoLeavesBindingToTheServer() throws {
        var configuration = server("own", ["--echo"])
        configuration.listens = false
        try run([configuration])
        waitFor("instance 1 running") { isRunning("own", instance: 1) }
        let first = state("own")
        let inode = try XCTUnwrap(socketInode("own"))
        XCTAssertEqual(pidFile("own"), first.pid, "written by the server itself")
        XCTAssertEqual(kill(first.pid, SIGKILL), 0)
        waitFor("instance 2 running") { isRunning("own", instance: 2) && socketInode("own") != nil }
        XCTAssertNotEqual(socketInode("own"), inode, "the new instance bound a socket of its own")
        let client = try IPCClient.connect(name: "own", directory: directory.path)
        XCTAssertEqual(try answeringPID(client), state("own").pid)
    }

    func testActivatedStandbyServesTheHeldSocket() throws {
        try run([standbyServer("warm", later: ["--echo"])])
        waitFor("instance 1 running and a ready standby") { isRunning("warm", instance: 1) && readyStandby("warm") != nil }
        let standbyPID = state("warm").standbyPID
        let inode = try XCTUnwrap(socketInode("warm"))
        XCTAssertEqual(descriptors(of: standbyPID).keys.sorted(), [0, 1, 2, 3], "no socket before activation")
        XCTAssertEqual(kill(state("warm").pid, SIGKILL), 0)
        waitFor("instance 2 registered") { isRunning("warm", instance: 2) }
        XCTAssertEqual(state("warm").pid, standbyPID)
        XCTAssertEqual(pidFile("warm"), standbyPID)
        XCTAssertEqual(socketInode("warm"), inode)
        let client = try IPCClient.connect(name: "warm", directory: directory.path)
        XCTAssertEqual(try answeringPID(client), standbyPID)
    }
}
