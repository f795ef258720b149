import Glibc
import IPC
import XCTest

@testable import Supervision

/// The real supervisor running the real `limitless-testserver` (ServerKit on the server's side),
/// found next to the test bundle (`swift build --build-tests` builds it). Skipped when absent.
/// Every wait is a condition polled with a generous deadline; nothing asserts on exact timing.
final class SupervisorIntegrationTests: XCTestCase {
    var directory: TemporaryDirectory!
    var supervisor: Supervisor?
    var testServer = ""

    /// The directory of the running test binary (/proc/self/exe), where SwiftPM puts the products.
    static func productsDirectory() -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let count = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard count > 0 else { return "" }
        let path = String(decoding: buffer.prefix(count).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard let slash = path.lastIndex(of: "/") else { return "" }
        return String(path[..<slash])
    }

    override func setUpWithError() throws {
        let candidate = Self.productsDirectory() + "/limitless-testserver"
        guard access(candidate, X_OK) == 0 else {
            throw XCTSkip("no limitless-testserver at \(candidate): build it with `swift build --build-tests`")
        }
        guard access("/bin/sh", X_OK) == 0 else { throw XCTSkip("no /bin/sh for the per-instance wrapper") }
        testServer = candidate
        directory = try TemporaryDirectory()
    }

    override func tearDown() {
        supervisor?.shutdown()
        supervisor = nil
        directory = nil
    }

    // MARK: Helpers

    static let quickRestarts = RestartPolicy(mode: .onFailure, initialBackoff: .milliseconds(10), maximumBackoff: .milliseconds(50),
                                             intensity: .init(restarts: 10, period: .seconds(60)))

    /// The test server with `arguments` on every instance.
    func server(_ name: String, _ arguments: [String], depends: [String] = [], restart: RestartPolicy = quickRestarts,
                watchdog: Duration? = nil) -> ServerConfiguration {
        ServerConfiguration(name: name, path: testServer, arguments: arguments, restart: restart, dependencies: depends,
                            watchdogInterval: watchdog)
    }

    /// The test server with `first` on instance 1 and `later` on every later one: a /bin/sh
    /// wrapper that execs it (same pid, descriptors 3 and 4 inherited as they are).
    func server(_ name: String, first: [String], later: [String], restart: RestartPolicy = quickRestarts) -> ServerConfiguration {
        func quoted(_ words: [String]) -> String { words.map { "'\($0)'" }.joined(separator: " ") }
        let script = "if [ \"$LIMITLESS_INSTANCE\" = 1 ]; then exec \"$0\" \(quoted(first)); else exec \"$0\" \(quoted(later)); fi"
        return ServerConfiguration(name: name, path: "/bin/sh", arguments: ["-c", script, testServer], restart: restart)
    }

    @discardableResult
    func run(_ servers: [ServerConfiguration], grace: Duration = .seconds(5), logs: LogStore.Configuration = .init(),
             configure: (inout Supervisor.Options) -> Void = { _ in }) throws -> Supervisor {
        var options = Supervisor.Options()
        options.runtimeDirectory = directory.path
        options.stopGracePeriod = grace
        options.startTimeout = .seconds(30)  // a Swift binary's start on a loaded two-core machine
        options.checkpointCapacity = 4096
        configure(&options)
        let supervisor = try Supervisor(configuration: try SupervisorConfiguration(servers: servers), options: options,
                                        logs: try LogStore(logs))
        self.supervisor = supervisor
        supervisor.start()
        return supervisor
    }

    func waitFor(_ what: String, timeout: Duration = .seconds(60), _ condition: () throws -> Bool) rethrows {
        let deadline = ContinuousClock.now + timeout
        while try !condition() {
            if ContinuousClock.now >= deadline {
                XCTFail("timed out waiting for \(what): \(supervisor?.statuses().map { "\($0.name) \($0.state) #\($0.instance) \($0.lastExit)" } ?? [])"
                        + "\n" + (supervisor?.statuses().map { logText($0.name) }.joined(separator: "\n---\n") ?? ""))
                return
            }
            usleep(20_000)
        }
    }

    func state(_ name: String) -> ServerStatus { try! supervisor!.status(of: name) }

    func logText(_ name: String) -> String {
        supervisor!.logs.records(server: name).map { "[\($0.stream)] \($0.text)" }.joined(separator: "\n")
    }

    func lines(_ name: String, _ stream: LogStream) -> [String] {
        supervisor!.logs.records(server: name).filter { $0.stream == stream }.map(\.text)
    }

    func isRunning(_ name: String, instance: Int? = nil) -> Bool {
        let status = state(name)
        return status.state == .running && status.registered && (instance.map { status.instance == $0 } ?? true)
    }

    // MARK: (a) checkpoint across a crash

    func testCheckpointSurvivesASegfault() throws {
        try run([server("keeper", first: ["--save-checkpoint", "hello", "--crash-after-ms", "100"], later: [])])
        waitFor("the second instance running") { isRunning("keeper", instance: 2) }
        waitFor("the second instance's restore line") { lines("keeper", .stdout).contains("checkpoint: hello") }
        // Its stdout is read beside its channel, in no fixed order: wait for the line itself.
        waitFor("the second instance's registered line") { lines("keeper", .stdout).contains("registered: keeper instance 2") }
        let out = lines("keeper", .stdout)
        XCTAssertEqual(out.first, "checkpoint: none", logText("keeper"))
        XCTAssertTrue(out.contains("checkpoint saved: sequence 1"), logText("keeper"))
        XCTAssertTrue(out.contains("crashing: signal \(SIGSEGV)"), logText("keeper"))
        XCTAssertTrue(out.contains("registered: keeper instance 2"), logText("keeper"))
        // Order: saved by instance 1 before the crash, read back by instance 2.
        XCTAssertLessThan(out.firstIndex(of: "crashing: signal \(SIGSEGV)")!, out.firstIndex(of: "checkpoint: hello")!)
        let status = state("keeper")
        XCTAssertEqual(status.restarts, 1)
        XCTAssertTrue(status.lastExit.contains("SIGSEGV"), status.lastExit)
        XCTAssertEqual(status.checkpointSequence, 1)
    }

    // MARK: (b) watchdog

    func testWatchdogKillsAHungTestServerAndRestartsIt() throws {
        try run([server("hung", ["--hang-after-ms", "200"], watchdog: .milliseconds(500))])
        waitFor("a watchdog restart") { state("hung").restarts >= 1 }
        XCTAssertTrue(state("hung").lastExit.contains("watchdog"), state("hung").lastExit)
        waitFor("the next instance registered") { state("hung").instance >= 2 && state("hung").registered }
        // Its stdout is read beside its channel, in no fixed order: wait for the line itself.
        waitFor("the next instance's registered line") { lines("hung", .stdout).contains("registered: hung instance 2") }
        let text = logText("hung")
        XCTAssertTrue(text.contains("[stdout] hanging"), text)
        XCTAssertTrue(text.contains("no heartbeat within 500ms (watchdog)"), text)
        XCTAssertTrue(text.contains("[stdout] registered: hung instance 2"), text)
    }

    // MARK: (c) SIGTERM ignored

    func testIgnoredSIGTERMIsFollowedBySIGKILLAfterGrace() throws {
        try run([server("stubborn", ["--ignore-sigterm"])], grace: .milliseconds(500))
        waitFor("registered, SIGTERM ignored") { isRunning("stubborn") && lines("stubborn", .stdout).contains("registered: stubborn instance 1") }
        let started = ContinuousClock.now
        try supervisor!.stop("stubborn", timeout: .seconds(60))
        XCTAssertGreaterThanOrEqual(ContinuousClock.now - started, .milliseconds(500))  // a lower bound only
        let status = state("stubborn")
        XCTAssertEqual(status.pid, 0)
        XCTAssertEqual(status.state, .inactive)
        XCTAssertEqual(status.restarts, 0)
        XCTAssertTrue(status.lastExit.contains("SIGKILL"), status.lastExit)
        XCTAssertTrue(logText("stubborn").contains("did not stop within 500ms of SIGTERM; sending SIGKILL"), logText("stubborn"))
        XCTAssertFalse(lines("stubborn", .stdout).contains { $0.hasPrefix("stopping:") }, logText("stubborn"))
    }

    // MARK: (d) intensity limit

    func testIntensityLimitMarksFailedAndStopsTheDependent() throws {
        let policy = RestartPolicy(mode: .onFailure, initialBackoff: .milliseconds(10), maximumBackoff: .milliseconds(20),
                                   intensity: .init(restarts: 2, period: .seconds(60)))
        try run([
            server("user", [], depends: ["base"]),
            server("base", ["--exit-code", "3", "--exit-after-ms", "10"], restart: policy),
        ])
        waitFor("base failed") { state("base").state == .failed }
        // The dependent was started once base first registered (same loop pass), then stopped.
        waitFor("user stopped") { state("user").pid == 0 && state("user").state == .inactive }
        let base = state("base")
        XCTAssertEqual(base.restarts, 2)
        XCTAssertEqual(base.instance, 3)
        XCTAssertEqual(base.lastExit, "exited with status 3")
        XCTAssertEqual(lines("base", .stdout).filter { $0 == "exiting: code 3" }.count, 3, logText("base"))
        XCTAssertTrue(logText("base").contains("failed: 2 restarts in 1m; not restarting; stopping user"), logText("base"))
        let user = state("user")
        XCTAssertGreaterThanOrEqual(user.instance, 1, logText("user"))
        XCTAssertEqual(user.restarts, 0)
        // It stays stopped: nothing restarts it while base is failed.
        usleep(300_000)
        XCTAssertEqual(state("user").pid, 0)
        XCTAssertEqual(state("base").state, .failed)
    }

    // MARK: (e) log flood

    func testLogFloodNeitherStallsTheSupervisorNorGrowsTheLogStore() throws {
        let logs = LogStore.Configuration()
        try run([
            server("flood", ["--flood-log", "50000"]),
            server("bystander", [], watchdog: .seconds(10)),
        ], logs: logs)
        let store = supervisor!.logs
        var slowest = Duration.zero
        var last = LogStore.Statistics(records: -1, bytes: 0, evicted: 0, dropped: 0)
        var quietSince = ContinuousClock.now
        // Until the flood is over (its closing stdout line, unless the store's flood limit dropped
        // that too) and its records have stopped arriving for a second; the supervisor answers
        // control calls all along.
        waitFor("the flood to pass through") {
            let asked = ContinuousClock.now
            _ = supervisor!.statuses()
            slowest = max(slowest, ContinuousClock.now - asked)
            let now = store.statistics(server: "flood")
            if now != last {
                last = now
                quietSince = .now
                return false
            }
            let over = now.dropped > 0 || lines("flood", .stdout).contains { $0.hasPrefix("flood: ") }
            return over && ContinuousClock.now - quietSince >= .seconds(1)
        }
        XCTAssertLessThan(slowest, .seconds(5), "a status call waited \(slowest) during the flood")
        let statistics = store.statistics(server: "flood")
        XCTAssertLessThanOrEqual(statistics.bytes, logs.memoryLimit)
        // Every flood line is accounted for: in the store, dropped or evicted by it, or dropped by
        // the server itself when the channel was full (reported in "dropped N log records" records,
        // and the not yet reported rest in "flood: 50000 lines, N dropped").
        let records = store.records(server: "flood")
        let stored = records.filter { $0.stream == .structured && $0.text.hasPrefix("flood line ") }.count
        let summary = lines("flood", .stdout).first { $0.hasPrefix("flood: ") }
        let serverDropped = summary.flatMap { line in
            line.split(separator: " ").dropLast().last.flatMap { Int($0) }
        } ?? 0
        XCTAssertTrue(summary != nil || statistics.dropped > 0, logText("flood"))
        // ServerKit reports its drops ("dropped N log records: the supervisor channel was full")
        // with the next record that gets through.
        let reported = records.compactMap { record -> Int? in
            guard record.stream == .structured, record.text.hasPrefix("dropped "),
                  record.text.hasSuffix("log records: the supervisor channel was full") else { return nil }
            return Int(record.text.split(separator: " ")[1])
        }.reduce(0, +)
        if statistics.evicted == 0 {  // evicted drop reports would hide how many lines they stood for
            XCTAssertGreaterThanOrEqual(stored + reported + serverDropped + statistics.dropped, 50_000,
                                        "stored \(stored), reported dropped by the server \(reported), not yet reported \(serverDropped), \(statistics)")
        }
        XCTAssertGreaterThan(statistics.dropped + statistics.evicted + reported + serverDropped, 0, "\(statistics)")
        // Still supervising: the bystander's heartbeats were seen, and an orderly stop works.
        XCTAssertTrue(isRunning("bystander"), "\(state("bystander"))")
        XCTAssertEqual(state("bystander").restarts, 0, state("bystander").lastExit)
        XCTAssertTrue(isRunning("flood"), "\(state("flood"))")
        try supervisor!.stop("flood", timeout: .seconds(60))
        XCTAssertEqual(state("flood").pid, 0)
        XCTAssertEqual(state("flood").restarts, 0)
        XCTAssertTrue(state("flood").lastExit.hasPrefix("stopped on request"), state("flood").lastExit)
        if statistics.dropped > 0 {
            // Reported once lines flow again (the stop's "stopping: signal" line) or at flush.
            store.flush()
            XCTAssertTrue(lines("flood", .supervisor).contains { $0.contains("lines dropped: more than") }, logText("flood"))
        }
    }

    // MARK: (f) corrupt checkpoint

    func testCorruptCheckpointMakesTheNextInstanceStartFresh() throws {
        try run([server("fragile", first: ["--save-checkpoint", "hello", "--corrupt-checkpoint", "--exit-code", "1"], later: [])])
        waitFor("the second instance running") { isRunning("fragile", instance: 2) }
        waitFor("the fresh-start line") { lines("fragile", .stdout).contains { $0.hasPrefix("checkpoint corrupt: starting fresh") } }
        let out = lines("fragile", .stdout)
        XCTAssertTrue(out.contains("checkpoint saved: sequence 1"), logText("fragile"))
        XCTAssertTrue(out.contains("checkpoint corrupted"), logText("fragile"))
        XCTAssertFalse(out.contains("checkpoint: hello"), logText("fragile"))
        // ServerKit also says so on the structured channel, as an error.
        waitFor("the structured record") {
            supervisor!.logs.records(server: "fragile").contains {
                $0.stream == .structured && $0.level == .error && $0.text.hasPrefix("checkpoint corrupt: starting fresh (")
            }
        }
        XCTAssertEqual(state("fragile").lastExit, "exited with status 1")
    }
}
