import Glibc
import IPC
import XCTest
@testable import Supervision

/// `serverctl stats`: /proc parsing, the wire form, and the answer for a real child process.
final class ServerStatisticsTests: XCTestCase {
    func testStatFieldsAreCountedFromTheLastParenthesis() throws {
        // A command name may hold spaces and parentheses; proc(5) field 3 follows the last ')'.
        let stat = "4242 (evil) (name x) S 1 4242 4242 0 -1 4194560 120 0 7 0 250 125 0 0 20 0 3 0 100 1000000 300 "
        let status = "Name:\tevil\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\nVmLck:\t      64 kB\nThreads:\t3\n"
            + "voluntary_ctxt_switches:\t11\nnonvoluntary_ctxt_switches:\t2\n"
        let sample = try XCTUnwrap(ProcessSample.parse(stat: stat, status: status, clockTicksPerSecond: 100))
        XCTAssertEqual(sample.majorFaults, 7)
        XCTAssertEqual(sample.userCPU, 2_500_000_000)
        XCTAssertEqual(sample.systemCPU, 1_250_000_000)
        XCTAssertEqual(sample.threads, 3)
        XCTAssertEqual(sample.residentBytes, 1024 * 1024)
        XCTAssertEqual(sample.peakResidentBytes, 2048 * 1024)
        XCTAssertEqual(sample.lockedBytes, 64 * 1024)
        XCTAssertEqual(sample.voluntarySwitches, 11)
        XCTAssertEqual(sample.involuntarySwitches, 2)
        XCTAssertNil(ProcessSample.parse(stat: "4242 (cut short", status: status, clockTicksPerSecond: 100))
        XCTAssertNil(ProcessSample.parse(stat: "4242 (x) S 1 2", status: status, clockTicksPerSecond: 100))
    }

    func testThisProcessCanBeSampledAndAGoneOneCannot() throws {
        let sample = try XCTUnwrap(ProcessSample.read(pid: getpid()))
        XCTAssertGreaterThanOrEqual(sample.threads, 1)
        XCTAssertGreaterThan(sample.residentBytes, 0)
        XCTAssertGreaterThanOrEqual(sample.peakResidentBytes, sample.residentBytes)
        XCTAssertGreaterThanOrEqual(sample.openDescriptors, 3)
        XCTAssertNil(ProcessSample.read(pid: 0))
        XCTAssertNil(ProcessSample.read(pid: getpid(), procRoot: "/nonexistent"))
    }

    func testWireFormRoundTripsWithAndWithoutAProcess() throws {
        let status = ServerStatus(name: "storage", path: "/x/storage_server", state: .running, pid: 77, instance: 2, startedAt: 5,
                                  restarts: 1)
        var process = ProcessSample()
        process.userCPU = 12_345_678
        process.systemCPU = 9
        process.threads = 4
        process.residentBytes = 3 << 20
        process.peakResidentBytes = 4 << 20
        process.lockedBytes = 2 << 20
        process.openDescriptors = 9
        process.majorFaults = 1
        process.voluntarySwitches = 100
        process.involuntarySwitches = 3
        var statistics = ServerStatistics(status: status, process: process, logs: nil)
        statistics.logRecords = 10
        statistics.logBytes = 700
        statistics.logDropped = 2
        statistics.logEvicted = 1
        XCTAssertEqual(ServerStatistics(encoded: statistics.encoded), statistics)
        let stopped = ServerStatistics(status: ServerStatus(name: "vfs", path: "/x/vfs", state: .inactive), process: nil, logs: nil)
        XCTAssertEqual(ServerStatistics(encoded: stopped.encoded), stopped)
        XCTAssertNil(ServerStatistics(encoded: "garbage"))
        let text = ControlFormatting.statistics(statistics, now: 5 + 3_000_000_000)
        XCTAssertTrue(text.contains("CPU: 12.3 ms (user 12.3 ms, system 0.0 ms)"), text)
        XCTAssertTrue(text.contains("Memory: 3.0M (peak 4.0M, locked 2.0M)"), text)
        XCTAssertTrue(text.contains("Descriptors: 9"), text)
        XCTAssertTrue(ControlFormatting.statistics(stopped, now: 0).contains("Process: not running"))
        XCTAssertTrue(ControlFormatting.json(statistics).contains("\"memory_locked\":2097152"))
    }

    func testTheSupervisorAnswersStatsForARunningServer() throws {
        let directory = try TemporaryDirectory()
        var options = Supervisor.Options()
        options.runtimeDirectory = directory.path
        options.requireRegistration = false
        options.stopGracePeriod = .seconds(2)
        let server = ServerConfiguration(name: "svc", path: "/bin/sh", arguments: ["-c", "exec sleep 1000"])
        let supervisor = try Supervisor(configuration: try SupervisorConfiguration(servers: [server]), options: options,
                                        logs: try LogStore(LogStore.Configuration()))
        supervisor.start()
        defer { supervisor.shutdown() }
        let deadline = ContinuousClock.now + .seconds(30)
        while (try? supervisor.status(of: "svc"))?.state != .running && ContinuousClock.now < deadline { usleep(10_000) }
        let answer = ControlServer.respond(command: ControlCommand.stats.rawValue, name: "svc",
                                           credentials: PeerCredentials(pid: getpid(), uid: 1000, gid: 1000),
                                           supervisor: supervisor, authorization: ControlAuthorization(adminGroupID: nil))
        XCTAssertEqual(answer.status, .ok, answer.text)
        let statistics = try XCTUnwrap(ServerStatistics(encoded: answer.text))
        XCTAssertEqual(statistics.status.name, "svc")
        let process = try XCTUnwrap(statistics.process, "a running server has process figures")
        XCTAssertEqual(process.threads, 1, "sleep is single-threaded")
        XCTAssertGreaterThan(process.residentBytes, 0)
        XCTAssertGreaterThanOrEqual(process.openDescriptors, 3)
        XCTAssertEqual(ControlServer.respond(command: ControlCommand.stats.rawValue, name: "nope",
                                             credentials: PeerCredentials(pid: getpid(), uid: 1000, gid: 1000),
                                             supervisor: supervisor, authorization: ControlAuthorization(adminGroupID: nil)).status, .ENOENT)
    }
}
