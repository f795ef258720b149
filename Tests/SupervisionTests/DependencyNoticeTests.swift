import Glibc
import IPC
import XCTest

@testable import Supervision

/// Dependents are told when a dependency goes down, comes back, or fails for good, and keep
/// running meanwhile: the real supervisor and two real limitless-testserver processes.
extension SupervisorIntegrationTests {
    func testDependentStaysUpAndIsToldItsDependencyWentDownAndCameBack() throws {
        // base is killed once both run (a crash, as far as anyone can tell); its second
        // instance stays.
        try run([
            server("user", [], depends: ["base"]),
            server("base", []),
        ])
        waitFor("both running") { isRunning("user") && isRunning("base") }
        kill(state("base").pid, SIGKILL)
        waitFor("base's second instance running") { isRunning("base", instance: 2) }
        waitFor("user told base is up again") { lines("user", .stdout).contains("dependency: base up") }
        let out = lines("user", .stdout)
        let down = try XCTUnwrap(out.firstIndex(of: "dependency: base down"), logText("user"))
        let up = try XCTUnwrap(out.firstIndex(of: "dependency: base up"), logText("user"))
        XCTAssertLessThan(down, up, logText("user"))
        XCTAssertFalse(out.contains("dependency: base failed"), logText("user"))
        // The dependent was not restarted: one instance throughout, still registered.
        let user = state("user")
        XCTAssertEqual(user.instance, 1, logText("user"))
        XCTAssertEqual(user.restarts, 0, logText("user"))
        XCTAssertTrue(isRunning("user", instance: 1), "\(user)")
        // The supervisor's own record in the dependent's log, and ServerKit's structured record.
        let notes = lines("user", .supervisor)
        XCTAssertTrue(notes.contains("told: dependency base down (instance 1)"), logText("user"))
        XCTAssertTrue(notes.contains("told: dependency base up (instance 2)"), logText("user"))
        // The structured records come on the channel, read beside stdout in no fixed order.
        waitFor("ServerKit's records of both notices") {
            let structured = lines("user", .structured)
            return structured.contains("dependency base down (instance 1)") && structured.contains("dependency base up (instance 2)")
        }
    }

    func testDependentIsToldItsDependencyFailedAndIsThenStoppedInOrder() throws {
        let policy = RestartPolicy(mode: .onFailure, initialBackoff: .milliseconds(10), maximumBackoff: .milliseconds(20),
                                   intensity: .init(restarts: 2, period: .seconds(60)))
        // base's first instance is killed once both run; every later one exits at once.
        try run([
            server("user", [], depends: ["base"]),
            server("base", first: [], later: ["--exit-code", "3"], restart: policy),
        ])
        waitFor("both running") { isRunning("user") && isRunning("base") }
        kill(state("base").pid, SIGKILL)
        waitFor("base failed") { state("base").state == .failed }
        waitFor("user stopped") { state("user").pid == 0 && state("user").state == .inactive }
        let out = lines("user", .stdout)
        let down = try XCTUnwrap(out.firstIndex(of: "dependency: base down"), logText("user"))
        let up = try XCTUnwrap(out.firstIndex(of: "dependency: base up"), logText("user"))
        let failed = try XCTUnwrap(out.firstIndex(of: "dependency: base failed"), logText("user"))
        let stopping = try XCTUnwrap(out.firstIndex(of: "stopping: signal"), logText("user"))
        XCTAssertLessThan(down, up, logText("user"))
        XCTAssertLessThan(up, failed, logText("user"))
        // Told first, then stopped in order (SIGTERM, an orderly exit), not killed.
        XCTAssertLessThan(failed, stopping, logText("user"))
        let user = state("user")
        XCTAssertEqual(user.restarts, 0, logText("user"))
        XCTAssertTrue(user.lastExit.hasPrefix("stopped on request"), user.lastExit)
        XCTAssertTrue(lines("user", .supervisor).contains { $0.hasPrefix("told: dependency base failed") }, logText("user"))
        XCTAssertTrue(logText("base").contains("not restarting; stopping user"), logText("base"))
    }
}
