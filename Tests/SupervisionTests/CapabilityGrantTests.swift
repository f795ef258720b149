import Foundation
import Glibc
import IPC
import PlatformTestSupport
import XCTest

@testable import Supervision

/// serverctl grant / revoke against the real supervisor and a real limitless-testserver: the
/// descriptor arrives in the server (it says what it points at), revokes are confirmed, and a
/// server that ignores a revoke is restarted without the capability.
extension SupervisorIntegrationTests {
    /// `run`, with the file DIR/grant-test standing for CAP_ACPI_READ and no device provider.
    func runWithGrantableCapability(_ servers: [ServerConfiguration], revokeTimeout: Duration = .seconds(5)) throws -> (Supervisor, Int32) {
        let file = open(directory.path + "/grant-test", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        XCTAssertGreaterThanOrEqual(file, 0)
        addTeardownBlock { close(file) }
        var options = Supervisor.Options()
        options.runtimeDirectory = directory.path
        options.startTimeout = .seconds(30)
        options.checkpointCapacity = 4096
        options.capabilityProvider = nil
        options.revokeTimeout = revokeTimeout
        options.capabilityDescriptors = { _ in ["CAP_ACPI_READ": file] }
        let supervisor = try Supervisor(configuration: try SupervisorConfiguration(servers: servers), options: options,
                                        logs: try LogStore(LogStore.Configuration()))
        self.supervisor = supervisor
        supervisor.start()
        return (supervisor, file)
    }

    static let root = PeerCredentials(pid: getpid(), uid: 0, gid: 0)

    func respond(_ command: ControlCommand, _ capabilities: [String], as credentials: PeerCredentials = root)
        -> (status: IPCStatus, text: String, omitted: UInt64) {
        ControlServer.respond(command: command.rawValue, name: "svc", capabilities: capabilities, credentials: credentials,
                              supervisor: supervisor!, authorization: ControlAuthorization(adminGroupID: 990))
    }

    func testGrantPassesTheDescriptorAndRevokeIsConfirmed() throws {
        try runWithGrantableCapability([server("svc", [])])
        waitFor("svc running") { isRunning("svc") }
        XCTAssertEqual(state("svc").capabilities, [])

        let stranger = PeerCredentials(pid: getpid(), uid: 1000, gid: 1000)
        XCTAssertEqual(respond(.grant, ["CAP_ACPI_READ"], as: stranger).status, .EACCES)
        let unknown = respond(.grant, ["CAP_ACPI_RAED"])
        XCTAssertEqual(unknown.status, .EINVAL)
        XCTAssertTrue(unknown.text.contains("did you mean CAP_ACPI_READ?"), unknown.text)
        let noDevice = respond(.grant, ["CAP_MMIO_NVME0"])
        XCTAssertEqual(noDevice.status, .EINVAL)
        XCTAssertTrue(noDevice.text.contains("has no `device NVME0 ...` line"), noDevice.text)
        XCTAssertEqual(state("svc").capabilities, [])

        let granted = respond(.grant, ["CAP_ACPI_READ"])
        XCTAssertEqual(granted.status, .ok, granted.text)
        let status = try XCTUnwrap(ServerStatus(encoded: Substring(granted.text)))
        let entry = try XCTUnwrap(status.capabilities.first { $0.hasPrefix("CAP_ACPI_READ=") }, "\(status.capabilities)")
        let fd = try XCTUnwrap(Int32(entry.dropFirst("CAP_ACPI_READ=".count)))
        XCTAssertGreaterThanOrEqual(fd, 3)
        XCTAssertTrue(ControlFormatting.capabilities(status).contains("CAP_ACPI_READ       fd \(fd)"), ControlFormatting.capabilities(status))
        XCTAssertTrue(ControlFormatting.json(status).contains("\"CAP_ACPI_READ\":\(fd)"), ControlFormatting.json(status))
        // The server holds the supervisor's file itself, under the number it reported.
        waitFor("the server's grant line") { lines("svc", .stdout).contains { $0.hasPrefix("capability: CAP_ACPI_READ granted") } }
        let line = lines("svc", .stdout).first { $0.hasPrefix("capability: CAP_ACPI_READ granted") }!
        XCTAssertEqual(line, "capability: CAP_ACPI_READ granted fd \(fd) (\(directory.path)/grant-test)")

        let revoked = respond(.revoke, ["CAP_ACPI_READ"])
        XCTAssertEqual(revoked.status, .ok, revoked.text)
        XCTAssertEqual(ServerStatus(encoded: Substring(revoked.text))?.capabilities, [])
        // Printed after the confirmation was sent; stdout is read in its own time.
        waitFor("the server's revoke line") { lines("svc", .stdout).contains("capability: CAP_ACPI_READ revoked") }
        XCTAssertTrue(lines("svc", .supervisor).contains("confirmed: CAP_ACPI_READ revoked"), logText("svc"))
        // Confirmed: no restart.
        XCTAssertEqual(state("svc").instance, 1)
        XCTAssertTrue(isRunning("svc", instance: 1))
        let again = respond(.revoke, ["CAP_ACPI_READ"])
        XCTAssertEqual(again.status, .EINVAL)
        XCTAssertTrue(again.text.contains("svc is not granted CAP_ACPI_READ"), again.text)
    }

    func testAServerIgnoringARevokeIsRestartedWithoutTheCapability() throws {
        var configuration = server("svc", ["--ignore-revoke"])
        configuration.capabilities = [.acpiRead]
        try runWithGrantableCapability([configuration], revokeTimeout: .milliseconds(500))
        waitFor("svc running") { isRunning("svc") }
        XCTAssertEqual(state("svc").capabilities.map { String($0.prefix { $0 != "=" }) }, ["CAP_ACPI_READ"])
        waitFor("the first instance's capabilities line") { lines("svc", .stdout).contains("capabilities: CAP_ACPI_READ") }

        try supervisor!.revoke(["CAP_ACPI_READ"], from: "svc", timeout: .seconds(90))
        waitFor("the second instance running") { isRunning("svc", instance: 2) }
        XCTAssertEqual(state("svc").capabilities, [])
        let text = logText("svc")
        XCTAssertTrue(text.contains("ignored the revoke of CAP_ACPI_READ"), text)
        XCTAssertTrue(text.contains("did not confirm revoking CAP_ACPI_READ within 500ms; restarting it without"), text)
        waitFor("the second instance's registered line") { lines("svc", .stdout).contains("registered: svc instance 2") }
        // Only the first instance was started with it.
        XCTAssertEqual(lines("svc", .stdout).filter { $0 == "capabilities: CAP_ACPI_READ" }.count, 1, text)
        // A grant brings it back, to the running second instance.
        try supervisor!.grant(["CAP_ACPI_READ"], to: "svc", timeout: .seconds(60))
        XCTAssertTrue(state("svc").capabilities.contains { $0.hasPrefix("CAP_ACPI_READ=") }, "\(state("svc").capabilities)")
    }

    /// The serverctl binary itself, through the control socket (as root: grant needs an admin).
    func testServerctlGrantRevokeAndCaps() throws {
        let program = Self.productsDirectory() + "/serverctl"
        guard access(program, X_OK) == 0 else { throw XCTSkip("no serverctl next to the tests") }
        guard getuid() == 0 else { throw XCTSkip("grant needs root or the limitless-admin group") }
        try runWithGrantableCapability([server("svc", [])])
        let control = try ControlServer(supervisor: supervisor!, directory: directory.path)
        control.start()
        defer { control.stop() }
        waitFor("svc running") { isRunning("svc") }

        func serverctl(_ arguments: [String]) throws -> (status: Int32, output: String) {
            try ChildProcess.output(program, arguments + ["--runtime-dir", directory.path])
        }
        let granted = try serverctl(["grant", "svc", "CAP_ACPI_READ"])
        XCTAssertEqual(granted.status, 0, granted.output)
        XCTAssertTrue(granted.output.hasPrefix("CAP_ACPI_READ       fd "), granted.output)
        let caps = try serverctl(["caps", "svc", "--json"])
        XCTAssertEqual(caps.status, 0, caps.output)
        XCTAssertTrue(caps.output.contains("\"capabilities\":{\"CAP_ACPI_READ\":"), caps.output)
        let revoked = try serverctl(["revoke", "svc", "CAP_ACPI_READ"])
        XCTAssertEqual(revoked.status, 0, revoked.output)
        XCTAssertEqual(revoked.output, "svc is granted no capabilities.\n")
        let bad = try serverctl(["revoke", "svc", "CAP_NOPE"])
        XCTAssertEqual(bad.status, 1, bad.output)
        XCTAssertTrue(bad.output.hasPrefix("serverctl: CAP_NOPE is not a capability"), bad.output)
        let help = try serverctl(["grant", "--help"])
        XCTAssertTrue(help.output.contains("USAGE: serverctl grant"), help.output)
    }
}
