import Glibc
import IPC
import XCTest

@testable import Supervision

/// The supervisor with real child processes: `/bin/sh -c` scripts, and a small Python server that
/// speaks the supervisor channel (REGISTER, heartbeats, checkpoint notes) on descriptor 3.
/// Every wait is a condition polled with a generous deadline; nothing asserts on a fixed sleep.
final class SupervisorTests: XCTestCase {
    /// The Python side of the contract: `server.py MODE [ARG]`.
    static let serverScript = """
        import os, socket, struct, sys, time
        name = os.environ["LIMITLESS_SERVER_NAME"]
        instance = int(os.environ["LIMITLESS_INSTANCE"])
        mode = sys.argv[1]
        channel = socket.socket(fileno=3)
        def send(kind, param1=0, payload=b""):
            channel.send(struct.pack("<IiIIIIQQQQIi", kind, 0, 0, 0, 0, instance, param1, 0, 0, 0, len(payload), 0) + payload)
        if mode == "order":
            with open(sys.argv[2], "a") as f: f.write(name + "\\n")
            time.sleep(0.2)
        if mode == "checkpoint":
            size = os.fstat(4).st_size
            if instance == 1:
                os.pwrite(4, b"state-from-instance-1", size - 64)
                send(0x0503, 1)
                print("saved", flush=True)
                sys.exit(1)
            print("restored " + os.pread(4, 21, size - 64).decode(), flush=True)
        if mode == "pagecache":
            grants = dict(item.split("=") for item in os.environ.get("LIMITLESS_CAPABILITIES", "").split(",") if item)
            memfds = [os.readlink("/proc/self/fd/" + fd) for fd in os.listdir("/proc/self/fd") if os.path.islink("/proc/self/fd/" + fd)]
            count = len([target for target in memfds if "limitless-page-cache" in target])
            fd = int(grants.get("CAP_PAGE_CACHE", "-1"))
            if fd < 0:
                print("no page cache; page-cache memfds %d" % count, flush=True)
            else:
                size = os.fstat(fd).st_size
                try:
                    os.ftruncate(fd, size * 2)
                    grow = "grew"
                except OSError:
                    grow = "sealed"
                print("page cache: size %d, %s, holds %r, page-cache memfds %d" % (size, grow, os.pread(fd, 19, 4096).rstrip(bytes(1)).decode(), count), flush=True)
                if instance == 1:
                    os.pwrite(fd, b"log-from-instance-1", 4096)
                    sys.exit(1)
        send(0x0500, instance)
        print("hello from %s instance %d" % (name, instance), flush=True)
        print("a line on stderr", file=sys.stderr, flush=True)
        while True:
            time.sleep(0.05)
            if mode != "hang": send(0x0501)
        """

    var directory: TemporaryDirectory!
    var supervisor: Supervisor?

    override func setUpWithError() throws {
        guard access("/usr/bin/python3", X_OK) == 0 || access("/bin/sh", X_OK) == 0 else { throw XCTSkip("no /bin/sh") }
        directory = try TemporaryDirectory()
        let fd = open(directory.path + "/server.py", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        _ = Self.serverScript.withCString { write(fd, $0, strlen($0)) }
        close(fd)
    }

    override func tearDown() {
        supervisor?.shutdown()
        supervisor = nil
        directory = nil
    }

    var python: String {
        for candidate in ["/usr/bin/python3", "/usr/local/bin/python3"] where access(candidate, X_OK) == 0 { return candidate }
        return "/usr/bin/env"
    }

    func pythonServer(_ name: String, _ mode: String, _ extra: [String] = [], depends: [String] = [],
                      restart: RestartPolicy = RestartPolicy(), watchdog: Duration? = nil) -> ServerConfiguration {
        let arguments = (python == "/usr/bin/env" ? ["python3"] : []) + [directory.path + "/server.py", mode] + extra
        return ServerConfiguration(name: name, path: python, arguments: arguments, restart: restart, dependencies: depends,
                                   watchdogInterval: watchdog)
    }

    func shellServer(_ name: String, _ script: String, depends: [String] = [], restart: RestartPolicy = RestartPolicy()) -> ServerConfiguration {
        ServerConfiguration(name: name, path: "/bin/sh", arguments: ["-c", script], restart: restart, dependencies: depends)
    }

    @discardableResult
    func run(_ servers: [ServerConfiguration], registration: Bool = true, grace: Duration = .seconds(5)) throws -> Supervisor {
        var options = Supervisor.Options()
        options.runtimeDirectory = directory.path
        options.requireRegistration = registration
        options.stopGracePeriod = grace
        options.startTimeout = .seconds(20)
        options.checkpointCapacity = 4096
        let supervisor = try Supervisor(configuration: try SupervisorConfiguration(servers: servers), options: options,
                                        logs: try LogStore(LogStore.Configuration()))
        self.supervisor = supervisor
        supervisor.start()
        return supervisor
    }

    func waitFor(_ what: String, timeout: Duration = .seconds(30), _ condition: () throws -> Bool) rethrows {
        let deadline = ContinuousClock.now + timeout
        while try !condition() {
            if ContinuousClock.now >= deadline {
                XCTFail("timed out waiting for \(what): \(supervisor?.statuses().map { "\($0.name) \($0.state) \($0.lastExit)" } ?? [])")
                return
            }
            usleep(20_000)
        }
    }

    func state(_ name: String) -> ServerStatus { try! supervisor!.status(of: name) }

    func logText(_ name: String) -> String { supervisor!.logs.records(server: name).map(\.text).joined(separator: "\n") }

    // MARK: Tests

    func testStartsInDependencyOrderAfterEachRegisters() throws {
        let order = directory.path + "/order"
        try run([
            pythonServer("c", "order", [order], depends: ["a"]),
            pythonServer("a", "order", [order], depends: ["b"]),
            pythonServer("b", "order", [order]),
        ])
        waitFor("all running") { ["a", "b", "c"].allSatisfy { state($0).state == .running && state($0).registered } }
        XCTAssertEqual(LogStore.readWhole(order), "b\na\nc\n")
        // A dependent's instance started only after its dependency had registered.
        XCTAssertLessThan(state("b").startedAt, state("a").startedAt)
        XCTAssertLessThan(state("a").startedAt, state("c").startedAt)
    }

    func testOutputReachesTheLogStore() throws {
        try run([pythonServer("talker", "serve")])
        waitFor("both lines logged") {
            let records = supervisor!.logs.records(server: "talker")
            return records.contains { $0.stream == .stdout && $0.text == "hello from talker instance 1" }
                && records.contains { $0.stream == .stderr && $0.text == "a line on stderr" }
        }
    }

    func testExitedServerIsRestartedWithBackoff() throws {
        let policy = RestartPolicy(mode: .onFailure, initialBackoff: .milliseconds(50), maximumBackoff: .seconds(1),
                                   intensity: .init(restarts: 10, period: .seconds(60)))
        try run([shellServer("flaky", "echo started; exit 3", restart: policy)], registration: false)
        waitFor("three restarts") { state("flaky").restarts >= 3 }
        XCTAssertEqual(state("flaky").lastExit, "exited with status 3")
        let text = logText("flaky")
        XCTAssertTrue(text.contains("restarting in 50ms"), text)
        XCTAssertTrue(text.contains("restarting in 100ms"), text)
        XCTAssertTrue(text.contains("restarting in 200ms"), text)
    }

    func testAServerThatRanHealthyIsRestartedWithoutThePause() throws {
        // A 5 s backoff that must not apply: each instance runs 0.4 s, past healthy=200ms.
        let policy = RestartPolicy(mode: .onFailure, initialBackoff: .seconds(5), maximumBackoff: .seconds(5),
                                   intensity: .init(restarts: 10, period: .seconds(60)), healthyRun: .milliseconds(200))
        try run([shellServer("steady", "sleep 0.4; exit 3", restart: policy)], registration: false)
        waitFor("the second instance") { state("steady").instance >= 2 }
        let text = logText("steady")
        XCTAssertTrue(text.contains("restarting now (it ran "), text)
        XCTAssertFalse(text.contains("restarting in 5s"), text)
        XCTAssertTrue(text.contains("instance 2 started as pid "), text)
        XCTAssertTrue(text.contains("(spawned in "), text)
    }

    func testAServerThatDiesAtOnceStillWaitsTheBackoff() throws {
        let policy = RestartPolicy(mode: .onFailure, initialBackoff: .milliseconds(300), maximumBackoff: .seconds(1),
                                   intensity: .init(restarts: 10, period: .seconds(60)), healthyRun: .seconds(30))
        try run([shellServer("crasher", "exit 3", restart: policy)], registration: false)
        waitFor("a restart") { state("crasher").restarts >= 1 }
        XCTAssertTrue(logText("crasher").contains("restarting in 300ms"), logText("crasher"))
        XCTAssertFalse(logText("crasher").contains("restarting now"), logText("crasher"))
    }

    func testIntensityLimitMarksFailedAndStopsDependents() throws {
        let policy = RestartPolicy(mode: .onFailure, initialBackoff: .milliseconds(10), maximumBackoff: .milliseconds(20),
                                   intensity: .init(restarts: 2, period: .seconds(60)))
        try run([
            shellServer("base", "sleep 0.3; kill -SEGV $$", restart: policy),
            shellServer("user", "exec sleep 1000", depends: ["base"]),
        ], registration: false)
        waitFor("user running") { state("user").state == .running }
        waitFor("base failed") { state("base").state == .failed }
        waitFor("user stopped") { state("user").pid == 0 && state("user").state == .inactive }
        XCTAssertEqual(state("base").restarts, 2)
        XCTAssertTrue(state("base").lastExit.contains("SIGSEGV"), state("base").lastExit)
        XCTAssertTrue(logText("base").contains("stopping user"), logText("base"))
    }

    func testWatchdogKillsAHungServer() throws {
        let policy = RestartPolicy(mode: .onFailure, initialBackoff: .milliseconds(10), maximumBackoff: .milliseconds(10),
                                   intensity: .init(restarts: 10, period: .seconds(60)))
        try run([pythonServer("hung", "hang", restart: policy, watchdog: .milliseconds(300))])
        waitFor("a watchdog restart") { state("hung").restarts >= 1 }
        XCTAssertTrue(state("hung").lastExit.contains("watchdog"), state("hung").lastExit)
        waitFor("the next instance registered") { state("hung").instance >= 2 }
    }

    func testServerIgnoringSIGTERMGetsSIGKILLAfterGrace() throws {
        try run([shellServer("stubborn", "trap '' TERM; echo ready; while :; do sleep 0.05; done")],
                registration: false, grace: .milliseconds(500))
        waitFor("running and trapping") { logText("stubborn").contains("ready") }
        let started = ContinuousClock.now
        try supervisor!.stop("stubborn")
        XCTAssertGreaterThanOrEqual(ContinuousClock.now - started, .milliseconds(500))
        XCTAssertEqual(state("stubborn").pid, 0)
        XCTAssertTrue(state("stubborn").lastExit.contains("SIGKILL"), state("stubborn").lastExit)
        XCTAssertTrue(logText("stubborn").contains("sending SIGKILL"))
    }

    func testCheckpointMemfdIsPassedToTheNextInstance() throws {
        let policy = RestartPolicy(mode: .onFailure, initialBackoff: .milliseconds(10), maximumBackoff: .milliseconds(10),
                                   intensity: .init(restarts: 5, period: .seconds(60)))
        try run([pythonServer("keeper", "checkpoint", restart: policy)])
        waitFor("the second instance registered") { state("keeper").instance == 2 && state("keeper").state == .running }
        XCTAssertTrue(logText("keeper").contains("restored state-from-instance-1"), logText("keeper"))
        XCTAssertEqual(state("keeper").checkpointSequence, 1)
    }

    /// CAP_PAGE_CACHE: one memfd per granted server, of the configured size, sealed against
    /// growing, created once and handed to every instance (what the first wrote, the second
    /// reads); a server without the grant holds none.
    func testPageCacheMemfdIsCreatedOnceAndKeptAcrossRestarts() throws {
        let policy = RestartPolicy(mode: .onFailure, initialBackoff: .milliseconds(10), maximumBackoff: .milliseconds(10),
                                   intensity: .init(restarts: 5, period: .seconds(60)))
        var granted = pythonServer("vfs", "pagecache", restart: policy)
        granted.capabilities = [.pageCache]
        granted.pageCacheLogSize = 256 << 10
        let other = pythonServer("other", "pagecache")
        try run([granted, other])
        waitFor("the second instance registered") { state("vfs").instance == 2 && state("vfs").state == .running }
        waitFor("the other server registered") { state("other").state == .running }
        let lines = logText("vfs").split(separator: "\n").filter { $0.hasPrefix("page cache:") }
        XCTAssertEqual(lines, ["page cache: size 262144, sealed, holds '', page-cache memfds 1",
                               "page cache: size 262144, sealed, holds 'log-from-instance-1', page-cache memfds 1"], logText("vfs"))
        XCTAssertTrue(logText("other").contains("no page cache; page-cache memfds 0"), logText("other"))
    }

    func testShutdownStopsEverythingAndContractEnvironment() throws {
        try run([shellServer("env", "echo \"$LIMITLESS_SERVER_NAME $LIMITLESS_INSTANCE $LIMITLESS_RUNTIME_DIR\"; "
                             + "ls /proc/$$/fd | sort -n | tr '\\n' ' '; echo; exec sleep 1000")], registration: false)
        waitFor("environment printed") { logText("env").contains("env 1 \(directory.path)") }
        waitFor("descriptors listed") { supervisor!.logs.records(server: "env").count >= 3 }
        let fds = supervisor!.logs.records(server: "env").first { $0.text.hasPrefix("0 ") }?.text ?? ""
        // 0-2, the channel (3), the checkpoint (4), and the one ls itself opens.
        XCTAssertTrue(fds.hasPrefix("0 1 2 3 4 "), fds)
        supervisor!.shutdown()
        XCTAssertEqual(state("env").pid, 0)
        XCTAssertEqual(state("env").state, .inactive)
    }

    // MARK: Control

    func testAuthorization() {
        let authorization = ControlAuthorization(adminGroupID: 990)
        XCTAssertTrue(authorization.mayControl(uid: 0, gid: 0, supplementaryGroups: []))
        XCTAssertFalse(authorization.mayControl(uid: 1000, gid: 1000, supplementaryGroups: [27, 100]))
        XCTAssertTrue(authorization.mayControl(uid: 1000, gid: 990, supplementaryGroups: []))
        XCTAssertTrue(authorization.mayControl(uid: 1000, gid: 1000, supplementaryGroups: [27, 990]))
        XCTAssertFalse(ControlAuthorization(adminGroupID: nil).mayControl(uid: 1000, gid: 990, supplementaryGroups: [990]))
        XCTAssertEqual(ControlAuthorization.parseGroups(statusFile: "Name:\tx\nGroups:\t4 24 990 \nNSpid:\t1\n"), [4, 24, 990])
    }

    func testControlRefusesNonAdminAndServesRoot() throws {
        let supervisor = try run([shellServer("svc", "exec sleep 1000")], registration: false, grace: .seconds(2))
        waitFor("running") { state("svc").state == .running }
        let authorization = ControlAuthorization(adminGroupID: 990)
        let stranger = PeerCredentials(pid: getpid(), uid: 1000, gid: 1000)
        for command in [ControlCommand.stop, .restart, .start] {
            let answer = ControlServer.respond(command: command.rawValue, name: "svc", credentials: stranger,
                                               supervisor: supervisor, authorization: authorization)
            XCTAssertEqual(answer.status, .EACCES, "\(command)")
        }
        XCTAssertEqual(ControlServer.respond(command: ControlCommand.status.rawValue, name: "svc", credentials: stranger,
                                             supervisor: supervisor, authorization: authorization).status, .ok)
        XCTAssertEqual(ControlServer.respond(command: ControlCommand.status.rawValue, name: "svx", credentials: stranger,
                                             supervisor: supervisor, authorization: authorization).status, .ENOENT)
        XCTAssertEqual(state("svc").state, .running)

        // Through the socket, as whoever runs the tests.
        let control = try ControlServer(supervisor: supervisor, directory: directory.path, authorization: authorization)
        control.start()
        defer { control.stop() }
        let client = try ControlClient(directory: directory.path)
        let listed = try client.statuses(.list)
        XCTAssertEqual(listed.map(\.name), ["svc"])
        XCTAssertGreaterThan(listed[0].pid, 0)
        let response = try client.send(.stop, name: "svc")
        if getuid() == 0 {
            XCTAssertEqual(response.status, .ok, response.text)
            XCTAssertEqual(state("svc").pid, 0)
            XCTAssertEqual(try client.send(.start, name: "svc").status, .ok)
            waitFor("running again") { state("svc").state == .running }
        } else {
            XCTAssertEqual(response.status, .EACCES)
        }
        let logs = try client.logs(name: "svc", last: 1, since: nil)
        XCTAssertEqual(logs.records.count, 1)
        XCTAssertThrowsError(try ControlClient(directory: directory.path + "/nowhere")) { error in
            XCTAssertTrue("\(error)".hasPrefix("no supervisor at \(directory.path)/nowhere/supervisor.sock: start it with"), "\(error)")
        }
    }

    // MARK: Formatting

    func testStatusLineRoundTripsAndFormats() {
        let status = ServerStatus(
            name: "storage_server", path: "/system/servers/drivers/storage_server", state: .running, pid: 4242, instance: 3,
            startedAt: 1_000_000_000_000, restarts: 2, lastExit: "killed by signal 11 (SIGSEGV)", registered: true,
            lastHeartbeat: 1_060_000_000_000, checkpointSequence: 12, checkpointSavedAt: 1_059_000_000_000,
            devices: ["NVME0 0000:00:03.0"], capabilities: ["CAP_DMA_ALLOC=-1", "CAP_MMIO_NVME0=5"], dependencies: [])
        XCTAssertEqual(ServerStatus(encoded: Substring(status.encoded)), status)
        var withStandby = status
        withStandby.standbyPID = 4250
        withStandby.standbyReady = true
        XCTAssertEqual(ServerStatus(encoded: Substring(withStandby.encoded)), withStandby)
        // A supervisor without standbys sends 15 fields.
        let old = status.encoded.split(separator: "\t", omittingEmptySubsequences: false).prefix(15).joined(separator: "\t")
        XCTAssertEqual(ServerStatus(encoded: Substring(old)), status)
        XCTAssertTrue(ControlFormatting.status(withStandby, now: 1_062_000_000_000).contains("  Standby: pid 4250 (ready to take over)"))
        XCTAssertTrue(ControlFormatting.json(withStandby).contains("\"standby_pid\":4250,\"standby_ready\":true"))
        XCTAssertTrue(ControlFormatting.list([withStandby], now: 1_062_000_000_000).contains("4242 (standby 4250)"))
        let now: Int64 = 1_062_000_000_000
        let text = ControlFormatting.status(status, now: now)
        XCTAssertTrue(text.hasPrefix("● storage_server - /system/servers/drivers/storage_server\n"), text)
        XCTAssertTrue(text.contains("    State: running since 1970-01-01T00:16:40Z; 1m 2s ago"), text)
        XCTAssertTrue(text.contains("      PID: 4242 (instance 3)"), text)
        XCTAssertTrue(text.contains(" Restarts: 2 (last exit: killed by signal 11 (SIGSEGV))"), text)
        XCTAssertTrue(text.contains("   Device: NVME0 0000:00:03.0"), text)
        XCTAssertTrue(text.contains("     Caps: CAP_DMA_ALLOC, CAP_MMIO_NVME0 fd 5"), text)
        XCTAssertTrue(text.contains("Checkpoint: #12, 3.0s ago"), text)

        let list = ControlFormatting.list([status, ServerStatus(name: "usb", path: "/u", state: .failed, restarts: 5)], now: now)
        XCTAssertEqual(list, """
            NAME            STATE    PID   UPTIME  RESTARTS  LAST EXIT
            storage_server  running  4242  1m 2s   2         killed by signal 11 (SIGSEGV)
            usb             failed   -     -       5         -

            2 servers, 1 running.

            """)
        XCTAssertEqual(ControlFormatting.capabilities(status), "CAP_DMA_ALLOC       granted (no descriptor)\nCAP_MMIO_NVME0      fd 5\n")
        let json = ControlFormatting.json(status)
        XCTAssertTrue(json.contains("\"capabilities\":{\"CAP_DMA_ALLOC\":null,\"CAP_MMIO_NVME0\":5}"), json)
        XCTAssertTrue(json.contains("\"pid\":4242"), json)
        XCTAssertEqual(ControlFormatting.string("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"")
    }

    func testLogFormatting() {
        let records = [LogRecord(timestamp: 1_000_000_000_123_000_000, server: "vfs", stream: .stderr, level: .warning, text: "disk slow"),
                       LogRecord(timestamp: 1_000_000_001_000_000_000, server: "vfs", stream: .stdout, level: .info, text: "ok")]
        XCTAssertEqual(ControlFormatting.logs(records, omitted: 3), """
            -- 3 older lines not shown; ask for fewer with -n --
            2001-09-09 01:46:40.123 vfs[stderr] warning: disk slow
            2001-09-09 01:46:41.000 vfs[stdout]: ok

            """)
        XCTAssertEqual(ControlFormatting.logs([]), "-- no log lines --\n")
        XCTAssertEqual(ControlFormatting.duration(12_000_000), "12ms")
        XCTAssertEqual(ControlFormatting.duration(3_723_000_000_000), "1h 2m")
    }
}
