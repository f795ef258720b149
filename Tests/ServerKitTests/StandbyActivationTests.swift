import CLimitless
import IPC
import ServerKit
import Supervision
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// `limitless-testserver` started as a standby by a fake supervisor: it reports ready and waits
/// holding nothing; an activation puts the checkpoint and the variables in place and it runs as
/// a fresh instance would; a malformed activation, or the supervisor going away, ends it with a
/// clear message.
final class StandbyActivationTests: XCTestCase {
    func activation(_ variables: String) -> (Message, [UInt8]) {
        var message = Message(type: .supervisorStandbyActivate)
        message.setInlineData(count: UInt32(variables.utf8.count))
        return (message, Array(variables.utf8))
    }

    func startStandby(_ supervisor: FakeSupervisor) throws {
        try supervisor.spawn(standby: true)
        XCTAssertTrue(supervisor.wait { !$0.messages(.supervisorStandbyReady).isEmpty },
                      "no READY; stdout: \(supervisor.output) stderr: \(supervisor.errorOutput)")
        XCTAssertTrue(supervisor.messages(.supervisorRegister).isEmpty)
    }

    func testActivatedStandbyRunsAsTheInstanceItIsTold() throws {
        let supervisor = try FakeSupervisor()
        _ = try supervisor.store.save(Array("kept".utf8), stateVersion: 1)
        try startStandby(supervisor)
        // Anything else that comes first is dropped with its descriptor; it keeps waiting.
        let stray = open("/dev/null", O_RDONLY | O_CLOEXEC)
        supervisor.send(Message(type: .supervisorHeartbeat), descriptor: stray)
        close(stray)
        supervisor.pump(milliseconds: 100)
        XCTAssertTrue(supervisor.messages(.supervisorRegister).isEmpty)

        let (message, payload) = activation("LIMITLESS_INSTANCE=7\nLIMITLESS_CAPABILITIES=")
        supervisor.send(message, payload: payload, descriptor: supervisor.store.fileDescriptor.rawValue)
        XCTAssertTrue(supervisor.wait { !$0.messages(.supervisorRegister).isEmpty },
                      "no REGISTER after activation; stdout: \(supervisor.output) stderr: \(supervisor.errorOutput)")
        XCTAssertEqual(supervisor.messages(.supervisorRegister).first?.message.param1, 7)
        XCTAssertTrue(supervisor.wait { $0.output.contains("registered: testsrv instance 7") }, supervisor.output)
        XCTAssertTrue(supervisor.output.contains("checkpoint: kept"), supervisor.output)
        kill(supervisor.pid, SIGTERM)
        XCTAssertEqual(supervisor.waitForExit().flatMap(FakeSupervisor.exitCode), 0, supervisor.output)
    }

    /// The supervisor queues a provider's block tokens right behind the activation, which
    /// announces how many (param1): the server takes them all before it goes on to serve, even
    /// when they come later than its first look at the channel.
    func testTheBlockTokensAnActivationAnnouncesAreTakenBeforeServing() throws {
        let supervisor = try FakeSupervisor()
        try startStandby(supervisor)
        var (message, payload) = activation("LIMITLESS_INSTANCE=3\nLIMITLESS_CAPABILITIES=")
        message.param1 = 2
        supervisor.send(message, payload: payload, descriptor: supervisor.store.fileDescriptor.rawValue)
        supervisor.pump(milliseconds: 300)
        XCTAssertFalse(supervisor.output.contains("block tokens taken"), "it went on before the announced tokens came: \(supervisor.output)")
        for (holder, right) in [("reader", UInt64(1)), ("writer", UInt64(2))] {
            var token = Message(type: .supervisorBlockToken, param1: right)
            token.setInlineData(count: UInt32(holder.utf8.count))
            let fd = open("/dev/null", O_RDONLY | O_CLOEXEC)
            supervisor.send(token, payload: Array(holder.utf8), descriptor: fd)
            close(fd)
        }
        XCTAssertTrue(supervisor.wait { $0.output.contains("registered: testsrv instance 3") },
                      "stdout: \(supervisor.output) stderr: \(supervisor.errorOutput)")
        let lines = supervisor.output.split(separator: "\n").map(String.init)
        let taken = try XCTUnwrap(lines.firstIndex(of: "block tokens taken"), supervisor.output)
        let tokens = lines.indices.filter { lines[$0].hasPrefix("block token: ") }
        XCTAssertEqual(tokens.map { lines[$0].split(separator: " ").prefix(5).joined(separator: " ") },
                       ["block token: reader rights 1", "block token: writer rights 2"])
        XCTAssertTrue(tokens.allSatisfy { $0 < taken }, supervisor.output)
        kill(supervisor.pid, SIGTERM)
        XCTAssertEqual(supervisor.waitForExit().flatMap(FakeSupervisor.exitCode), 0, supervisor.output)
    }

    func testAnActivationSettingOtherVariablesIsRefused() throws {
        let supervisor = try FakeSupervisor()
        try startStandby(supervisor)
        let (message, payload) = activation("LIMITLESS_INSTANCE=2\nLD_PRELOAD=/tmp/evil.so")
        supervisor.send(message, payload: payload, descriptor: supervisor.store.fileDescriptor.rawValue)
        let status = try XCTUnwrap(supervisor.waitForExit(), "the standby did not exit")
        XCTAssertEqual(FakeSupervisor.exitCode(status), 78, supervisor.errorOutput)
        XCTAssertTrue(supervisor.errorOutput.contains("standby activation failed: unexpected line \"LD_PRELOAD=/tmp/evil.so\""),
                      supervisor.errorOutput)
        XCTAssertTrue(supervisor.messages(.supervisorRegister).isEmpty)
    }

    func testAnActivationWithoutTheCheckpointIsRefused() throws {
        let supervisor = try FakeSupervisor()
        try startStandby(supervisor)
        let (message, payload) = activation("LIMITLESS_INSTANCE=2")
        supervisor.send(message, payload: payload)
        let status = try XCTUnwrap(supervisor.waitForExit(), "the standby did not exit")
        XCTAssertEqual(FakeSupervisor.exitCode(status), 78, supervisor.errorOutput)
        XCTAssertTrue(supervisor.errorOutput.contains("no checkpoint descriptor came with it"), supervisor.errorOutput)
    }
}
