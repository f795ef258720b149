import CLimitless
import IPC
import ServerKit
import Supervision
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// `limitless-testserver` as a real child of a fake supervisor. Timing is never asserted
/// exactly: every check waits for its condition with a generous timeout.
final class TestServerTests: XCTestCase {
    func testRegisterHeartbeatsLogAndOrderlyStop() throws {
        let supervisor = try FakeSupervisor()
        try supervisor.spawn(instance: 3, watchdogMs: 200)
        XCTAssertTrue(supervisor.wait { !$0.messages(.supervisorRegister).isEmpty },
                      "no REGISTER; stdout: \(supervisor.output) stderr: \(supervisor.errorOutput)")
        XCTAssertEqual(supervisor.messages(.supervisorRegister).first?.message.param1, 3)
        XCTAssertTrue(supervisor.wait(seconds: 3) { $0.messages(.supervisorHeartbeat).count >= 2 },
                      "fewer than 2 heartbeats in 3 s at a 200 ms watchdog")
        XCTAssertTrue(supervisor.wait { $0.messages(.supervisorLog).contains { $0.text.contains("instance 3 serving") } })
        let log = supervisor.messages(.supervisorLog).first { $0.text.contains("serving") }
        XCTAssertEqual(log?.message.param1, ServerRuntime.wireLevel(.info))

        XCTAssertTrue(supervisor.wait { $0.output.contains("registered: testsrv instance 3") }, supervisor.output)
        kill(supervisor.pid, SIGTERM)
        let status = try XCTUnwrap(supervisor.waitForExit(), "SIGTERM did not stop the server")
        XCTAssertEqual(FakeSupervisor.exitCode(status), 0, "stdout: \(supervisor.output)")
        XCTAssertTrue(supervisor.output.contains("stopping: signal"), supervisor.output)
    }

    func testCheckpointSavedByOneInstanceIsRestoredByTheNext() throws {
        let supervisor = try FakeSupervisor()
        try supervisor.spawn(arguments: ["--save-checkpoint", "hello from 1", "--exit-code", "0"], instance: 1)
        XCTAssertEqual(supervisor.waitForExit().flatMap(FakeSupervisor.exitCode), 0, supervisor.output + supervisor.errorOutput)
        supervisor.pump(milliseconds: 50)
        XCTAssertTrue(supervisor.output.contains("checkpoint: none"), supervisor.output)
        XCTAssertEqual(supervisor.messages(.supervisorCheckpointSave).first?.message.param1, 1)
        XCTAssertEqual(try supervisor.store.load().checkpoint?.bytes, Array("hello from 1".utf8))

        try supervisor.spawn(arguments: ["--print-checkpoint"], instance: 2)
        XCTAssertEqual(supervisor.waitForExit().flatMap(FakeSupervisor.exitCode), 0)
        XCTAssertTrue(supervisor.output.contains("checkpoint: hello from 1"), supervisor.output)
    }

    func testCorruptCheckpointMakesTheNextInstanceStartFresh() throws {
        let supervisor = try FakeSupervisor()
        try supervisor.spawn(arguments: ["--save-checkpoint", "doomed", "--corrupt-checkpoint", "--exit-code", "0"])
        XCTAssertEqual(supervisor.waitForExit().flatMap(FakeSupervisor.exitCode), 0, supervisor.output + supervisor.errorOutput)

        try supervisor.spawn(arguments: ["--print-checkpoint"], instance: 2)
        XCTAssertEqual(supervisor.waitForExit().flatMap(FakeSupervisor.exitCode), 0)
        XCTAssertTrue(supervisor.output.contains("checkpoint corrupt: starting fresh ("), supervisor.output)
        // Also said to the supervisor, as a log record.
        supervisor.pump(milliseconds: 50)
        XCTAssertTrue(supervisor.messages(.supervisorLog).contains { $0.text.hasPrefix("checkpoint corrupt: starting fresh") })
    }

    func testIgnoredSIGTERMNeedsSIGKILL() throws {
        let supervisor = try FakeSupervisor()
        try supervisor.spawn(arguments: ["--ignore-sigterm"])
        XCTAssertTrue(supervisor.wait { $0.output.contains("registered:") }, supervisor.output + supervisor.errorOutput)
        kill(supervisor.pid, SIGTERM)
        XCTAssertFalse(supervisor.wait(seconds: 0.5) { $0.exitStatus != nil }, "the server stopped despite --ignore-sigterm")
        kill(supervisor.pid, SIGKILL)
        let status = try XCTUnwrap(supervisor.waitForExit())
        XCTAssertEqual(FakeSupervisor.terminatingSignal(status), SIGKILL)
    }

    func testHangStopsHeartbeats() throws {
        let supervisor = try FakeSupervisor()
        try supervisor.spawn(arguments: ["--hang-after-ms", "300"], watchdogMs: 100)
        XCTAssertTrue(supervisor.wait { $0.output.contains("hanging") }, supervisor.output + supervisor.errorOutput)
        supervisor.pump(milliseconds: 100)  // a beat already under way may still arrive
        let before = supervisor.messages(.supervisorHeartbeat).count
        XCTAssertGreaterThan(before, 0)
        supervisor.pump(milliseconds: 600)
        XCTAssertEqual(supervisor.messages(.supervisorHeartbeat).count, before, "heartbeats continued while hung")
        kill(supervisor.pid, SIGKILL)
        _ = supervisor.waitForExit()
    }

    func testCrashAndExitCode() throws {
        let supervisor = try FakeSupervisor()
        try supervisor.spawn(arguments: ["--crash-after-ms", "50", "--crash-signal", "ABRT"])
        let crashed = try XCTUnwrap(supervisor.waitForExit())
        XCTAssertEqual(FakeSupervisor.terminatingSignal(crashed), SIGABRT)

        try supervisor.spawn(arguments: ["--exit-code", "7", "--exit-after-ms", "50"])
        let exited = try XCTUnwrap(supervisor.waitForExit())
        XCTAssertEqual(FakeSupervisor.exitCode(exited), 7)
    }

    func testCapabilityGrantArrivesOverTheChannel() throws {
        let supervisor = try FakeSupervisor()
        try supervisor.spawn()
        XCTAssertTrue(supervisor.wait { $0.output.contains("registered:") }, supervisor.output + supervisor.errorOutput)
        let granted = CL_eventfd(0, CL_EFD_CLOEXEC)
        defer { close(granted) }
        let name = Array("CAP_TEST_GRANT".utf8)
        var grant = Message(type: .supervisorCapabilityGrant, param1: 1)
        grant.setInlineData(count: UInt32(name.count))
        supervisor.send(grant, payload: name, descriptor: granted)
        XCTAssertTrue(supervisor.wait { $0.messages(.supervisorLog).contains { $0.text == "capability CAP_TEST_GRANT granted" } })
        var revoke = Message(type: .supervisorCapabilityGrant, param1: 0)
        revoke.setInlineData(count: UInt32(name.count))
        supervisor.send(revoke, payload: name)
        XCTAssertTrue(supervisor.wait { $0.messages(.supervisorLog).contains { $0.text == "capability CAP_TEST_GRANT revoked" } })
        // Both confirmed, the grant with the descriptor's number in the server.
        XCTAssertTrue(supervisor.wait { $0.messages(.supervisorCapabilityGrant).filter { $0.message.flags.contains(.reply) }.count == 2 })
        let confirmations = supervisor.messages(.supervisorCapabilityGrant).filter { $0.message.flags.contains(.reply) }
        XCTAssertEqual(confirmations.map(\.message.param1), [1, 0])
        XCTAssertGreaterThanOrEqual(Int64(bitPattern: confirmations.first?.message.param2 ?? 0), 3)
        XCTAssertEqual(confirmations.map(\.text), ["CAP_TEST_GRANT", "CAP_TEST_GRANT"])
        XCTAssertTrue(supervisor.output.contains("capability: CAP_TEST_GRANT granted fd "), supervisor.output)

        // The revoke message proper: closed, confirmed, and the server says so.
        supervisor.send(grant, payload: name, descriptor: granted)
        var revoke2 = Message(type: .supervisorCapabilityRevoke)
        revoke2.setInlineData(count: UInt32(name.count))
        supervisor.send(revoke2, payload: name)
        XCTAssertTrue(supervisor.wait { $0.messages(.supervisorCapabilityRevoke).contains { $0.message.flags.contains(.reply) && $0.text == "CAP_TEST_GRANT" } },
                      supervisor.output + supervisor.errorOutput)
        XCTAssertTrue(supervisor.wait { $0.output.contains("capability: CAP_TEST_GRANT revoked") }, supervisor.output)
        kill(supervisor.pid, SIGTERM)
        XCTAssertEqual(supervisor.waitForExit().flatMap(FakeSupervisor.exitCode), 0)
    }

    func testMalformedEnvironmentExitsWithAClearError() throws {
        let supervisor = try FakeSupervisor()
        try supervisor.spawn(extraEnvironment: ["LIMITLESS_CAPABILITIES": "CAP_BROKEN"])
        XCTAssertEqual(supervisor.waitForExit().flatMap(FakeSupervisor.exitCode), 78)
        XCTAssertTrue(supervisor.errorOutput.contains("LIMITLESS_CAPABILITIES=\"CAP_BROKEN\" is malformed"), supervisor.errorOutput)
    }

    func testSeccompRefusesANetworkSocket() throws {
        let supervisor = try FakeSupervisor()
        try supervisor.spawn(arguments: ["--seccomp", "--exit-code", "0"])
        XCTAssertEqual(supervisor.waitForExit().flatMap(FakeSupervisor.exitCode), 0, supervisor.output + supervisor.errorOutput)
        XCTAssertTrue(supervisor.output.contains("seccomp: socket(AF_INET) refused: errno \(EPERM)"), supervisor.output)
        XCTAssertTrue(supervisor.output.contains("registered:"), supervisor.output)
    }

    func testLogFloodNeverBlocks() throws {
        let supervisor = try FakeSupervisor()
        supervisor.answerRegister = true
        try supervisor.spawn(arguments: ["--flood-log", "20000", "--exit-code", "0"])
        // Read only the REGISTER, then stop reading so the channel fills.
        XCTAssertTrue(supervisor.wait { !$0.messages(.supervisorRegister).isEmpty })
        let deadline = FakeSupervisor.now() + 20_000
        while FakeSupervisor.now() < deadline {
            supervisor.reap()
            if supervisor.exitStatus != nil { break }
            usleep(10_000)
        }
        XCTAssertEqual(supervisor.exitStatus.flatMap(FakeSupervisor.exitCode), 0, "the flood blocked the server")
        XCTAssertTrue(supervisor.output.contains("flood: 20000 lines"), supervisor.output)
        XCTAssertFalse(supervisor.output.contains("flood: 20000 lines, 0 dropped"), supervisor.output)
    }
}
