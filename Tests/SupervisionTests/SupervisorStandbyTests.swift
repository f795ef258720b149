import Glibc
import IPC
import XCTest

@testable import Supervision

/// Standby instances (`standby yes`) with the real supervisor and real `limitless-testserver`
/// processes: what the standby holds before activation, that it is the one activated at a
/// SIGKILL (same pid) and gets the capability descriptors and the checkpoint, that another
/// standby follows, that a dead standby means a normal spawn, and that stop stops both.
extension SupervisorIntegrationTests {
    /// A test server with a standby. Instance 1 saves a checkpoint (`first`); the standby and
    /// every later instance run with `later` (no LIMITLESS_INSTANCE at the standby's exec).
    func standbyServer(_ name: String, capabilities: Set<Capability> = [], later: [String] = []) -> ServerConfiguration {
        var configuration = server(name, first: ["--save-checkpoint", "warm"], later: later)
        configuration.standby = true
        configuration.capabilities = capabilities
        return configuration
    }

    /// The open descriptors of `pid` and what each is (readlink of /proc/PID/fd/N).
    func descriptors(of pid: Int32) -> [Int32: String] {
        guard let directory = opendir("/proc/\(pid)/fd") else { return [:] }
        defer { closedir(directory) }
        var result: [Int32: String] = [:]
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            guard let fd = Int32(name) else { continue }
            var buffer = [CChar](repeating: 0, count: 4096)
            let count = readlink("/proc/\(pid)/fd/\(fd)", &buffer, buffer.count - 1)
            result[fd] = count > 0 ? String(decoding: buffer.prefix(count).map { UInt8(bitPattern: $0) }, as: UTF8.self) : "?"
        }
        return result
    }

    func readyStandby(_ name: String, not excluded: Int32 = 0) -> Int32? {
        let status = state(name)
        return status.standbyPID > 0 && status.standbyReady && status.standbyPID != excluded ? status.standbyPID : nil
    }

    func testStandbyIsActivatedAtASIGKILLWithTheCapabilitiesAndCheckpoint() throws {
        let granted = directory.path + "/acpi-table"
        let file = open(granted, O_CREAT | O_RDWR | O_CLOEXEC, 0o600)
        XCTAssertGreaterThanOrEqual(file, 0)
        defer { close(file) }
        try run([standbyServer("hot", capabilities: [Capability("CAP_ACPI_READ")!])]) { options in
            options.capabilityDescriptors = { _ in ["CAP_ACPI_READ": file] }
        }
        waitFor("instance 1 running and a ready standby") { isRunning("hot", instance: 1) && readyStandby("hot") != nil }
        let first = state("hot")
        let standbyPID = first.standbyPID
        XCTAssertNotEqual(standbyPID, first.pid)

        // Before activation the standby holds stdin/stdout/stderr and its channel, nothing else:
        // no checkpoint, no capability.
        let held = descriptors(of: standbyPID)
        XCTAssertEqual(held.keys.sorted(), [0, 1, 2, 3], "\(held)")
        XCTAssertTrue(held[3]?.hasPrefix("socket:") ?? false, "\(held)")
        XCTAssertFalse(held.values.contains(granted), "\(held)")
        let active = descriptors(of: first.pid)
        XCTAssertEqual(active[5], granted, "\(active)")

        XCTAssertEqual(kill(first.pid, SIGKILL), 0)
        waitFor("instance 2 registered") { isRunning("hot", instance: 2) }
        let second = state("hot")
        XCTAssertEqual(second.pid, standbyPID, "the standby is the new instance\n" + logText("hot"))
        XCTAssertEqual(second.restarts, 1)
        XCTAssertTrue(second.lastExit.contains("SIGKILL"), second.lastExit)
        XCTAssertEqual(second.capabilities, ["CAP_ACPI_READ=5"])
        // Descriptors where a fresh instance has them: the checkpoint memfd at 4, the capability at 5.
        let now = descriptors(of: standbyPID)
        XCTAssertEqual(now[5], granted, "\(now)")
        XCTAssertTrue(now[4]?.hasPrefix("/memfd:") ?? false, "\(now)")
        waitFor("the activated instance's lines") { lines("hot", .stdout).contains("registered: hot instance 2") }
        let out = lines("hot", .stdout)
        XCTAssertTrue(out.contains("checkpoint: warm"), logText("hot"))
        XCTAssertTrue(out.contains("capabilities: CAP_ACPI_READ"), logText("hot"))
        XCTAssertTrue(lines("hot", .supervisor).contains { $0.hasPrefix("instance 2 activated standby pid \(standbyPID) ") }, logText("hot"))
        XCTAssertFalse(lines("hot", .supervisor).contains { $0.hasPrefix("instance 2 started as pid") }, logText("hot"))

        // Another standby follows, and takes over the next time too.
        waitFor("a second standby") { readyStandby("hot", not: standbyPID) != nil }
        let next = state("hot").standbyPID
        XCTAssertNotEqual(next, standbyPID)
        XCTAssertEqual(kill(standbyPID, SIGKILL), 0)
        waitFor("instance 3 registered") { isRunning("hot", instance: 3) }
        XCTAssertEqual(state("hot").pid, next, logText("hot"))
        XCTAssertEqual(state("hot").restarts, 2)
    }

    /// CAP_PAGE_CACHE at a standby's activation: the same memfd the killed instance held (same
    /// inode), where a fresh instance would have it; the standby held none before.
    func testAnActivatedStandbyGetsTheSamePageCacheMemfd() throws {
        var configuration = standbyServer("hot", capabilities: [.pageCache])
        configuration.pageCacheLogSize = 256 << 10
        try run([configuration])
        waitFor("instance 1 running and a ready standby") { isRunning("hot", instance: 1) && readyStandby("hot") != nil }
        let first = state("hot")
        func memfdInode(_ pid: Int32) -> UInt64? {
            var status = stat()
            return stat("/proc/\(pid)/fd/5", &status) == 0 ? UInt64(status.st_ino) : nil
        }
        XCTAssertTrue(descriptors(of: first.pid)[5]?.contains("limitless-page-cache:hot") ?? false, "\(descriptors(of: first.pid))")
        XCTAssertFalse(descriptors(of: first.standbyPID).values.contains { $0.contains("limitless-page-cache") })
        let inode = try XCTUnwrap(memfdInode(first.pid))
        XCTAssertEqual(kill(first.pid, SIGKILL), 0)
        waitFor("instance 2 registered") { isRunning("hot", instance: 2) }
        XCTAssertEqual(state("hot").pid, first.standbyPID, "the standby is the new instance\n" + logText("hot"))
        XCTAssertEqual(state("hot").capabilities, ["CAP_PAGE_CACHE=5"])
        XCTAssertEqual(memfdInode(first.standbyPID), inode, "\(descriptors(of: first.standbyPID))")
    }

    /// A standby is told the capability names it will get (not the descriptors) and started with
    /// LD_BIND_NOW=1 and, under a root supervisor, at nice 19; its activation gives it the
    /// supervisor's priority back. A block provider's standby takes the tokens its activation
    /// announced before it serves.
    func testAStandbyIsPreparedAtLowPriorityAndGetsItsPriorityAndTokensAtActivation() throws {
        var store = standbyServer("store")
        store.capabilities = [.blockRead]
        var client = server("client", [], depends: ["store"])
        client.capabilities = [.blockRead]
        try run([store, client])
        waitFor("the store with a ready standby, the client") {
            isRunning("store", instance: 1) && readyStandby("store") != nil && isRunning("client")
        }
        let standbyPID = state("store").standbyPID
        let environment = (try? String(contentsOfFile: "/proc/\(standbyPID)/environ", encoding: .utf8)) ?? ""
        let variables = environment.split(separator: "\0").map(String.init)
        XCTAssertTrue(variables.contains("LIMITLESS_STANDBY_CAPABILITIES=CAP_BLOCK_READ"), "\(variables)")
        XCTAssertTrue(variables.contains("LD_BIND_NOW=1"), "\(variables)")
        errno = 0
        let ownNice = getpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0)
        if geteuid() == 0 {
            XCTAssertEqual(getpriority(__priority_which_t(PRIO_PROCESS.rawValue), id_t(standbyPID)), 19)
        }

        XCTAssertEqual(kill(state("store").pid, SIGKILL), 0)
        waitFor("store instance 2 registered") { isRunning("store", instance: 2) }
        XCTAssertEqual(state("store").pid, standbyPID, logText("store"))
        XCTAssertEqual(getpriority(__priority_which_t(PRIO_PROCESS.rawValue), id_t(standbyPID)), ownNice)
        waitFor("the activated instance's lines") { lines("store", .stdout).contains("registered: store instance 2") }
        // The standby's lines: the client's token, then "block tokens taken" (before serving).
        let out = lines("store", .stdout)
        let taken = try XCTUnwrap(out.lastIndex(of: "block tokens taken"), logText("store"))
        let token = try XCTUnwrap(out.lastIndex { $0.hasPrefix("block token: client rights 1 ") }, logText("store"))
        XCTAssertLessThan(token, taken, logText("store"))
        XCTAssertGreaterThan(token, try XCTUnwrap(out.firstIndex(of: "registered: store instance 1")), logText("store"))
    }

    /// A supervisor with a ready standby waits in epoll: the time the standby was due to start
    /// is not the loop's next deadline once it has started (it was, and the loop spun with a
    /// zero timeout for as long as the standby lived, taking a CPU from the servers).
    func testTheLoopSleepsWhileAStandbyWaits() throws {
        let supervisor = try run([standbyServer("idle")])
        waitFor("instance 1 running and a ready standby") { isRunning("idle", instance: 1) && readyStandby("idle") != nil }
        let timeouts = (0..<5).map { _ -> Int32 in
            usleep(20_000)
            return supervisor.lock.locked { supervisor.nextTimeout() }
        }
        XCTAssertTrue(timeouts.allSatisfy { $0 > 0 }, "epoll timeouts \(timeouts) ms\n" + logText("idle"))
    }

    func testADeadStandbyMeansANormalSpawn() throws {
        try run([standbyServer("cold")])
        waitFor("instance 1 running and a ready standby") { isRunning("cold", instance: 1) && readyStandby("cold") != nil }
        let first = state("cold")
        XCTAssertEqual(kill(first.standbyPID, SIGKILL), 0)
        waitFor("the dead standby noticed") { state("cold").standbyPID == 0 }
        XCTAssertTrue(lines("cold", .supervisor).contains { $0.hasPrefix("standby pid \(first.standbyPID) exited before activation") },
                      logText("cold"))
        // The next standby waits out its pause (1 s): the restart now spawns.
        XCTAssertEqual(kill(first.pid, SIGKILL), 0)
        waitFor("instance 2 registered") { isRunning("cold", instance: 2) }
        let second = state("cold")
        XCTAssertNotEqual(second.pid, first.standbyPID)
        XCTAssertTrue(lines("cold", .supervisor).contains { $0.hasPrefix("instance 2 started as pid \(second.pid) ") }, logText("cold"))
        waitFor("the lines of the spawned instance") { lines("cold", .stdout).contains("registered: cold instance 2") }
        XCTAssertTrue(lines("cold", .stdout).contains("checkpoint: warm"), logText("cold"))
        // And a standby comes back after the pause.
        waitFor("a standby again") { readyStandby("cold") != nil }
    }

    func testAHungStandbyIsReplacedAndNeverActivated() throws {
        try run([standbyServer("stuck", later: ["--stall-as-standby"])]) { options in
            options.startTimeout = .seconds(4)
        }
        waitFor("instance 1 running and a standby") { isRunning("stuck", instance: 1) && state("stuck").standbyPID > 0 }
        let first = state("stuck")
        XCTAssertFalse(first.standbyReady)
        // Its output is the server's, marked as the standby's.
        waitFor("the standby's line") { lines("stuck", .stdout).contains("standby pid \(first.standbyPID): stalling as a standby") }
        waitFor("the hung standby killed") {
            lines("stuck", .supervisor).contains { $0.hasPrefix("standby pid \(first.standbyPID) did not reach its activation point within 4s; killed") }
        }
        waitFor("another standby after the pause") { state("stuck").standbyPID > 0 && state("stuck").standbyPID != first.standbyPID }
        let second = state("stuck").standbyPID
        // The restart finds it not ready: it is killed and a fresh instance spawned.
        XCTAssertEqual(kill(first.pid, SIGKILL), 0)
        waitFor("instance 2 registered") { isRunning("stuck", instance: 2) }
        XCTAssertNotEqual(state("stuck").pid, second)
        let notes = lines("stuck", .supervisor)
        XCTAssertTrue(notes.contains("standby pid \(second) is not ready yet; starting a fresh instance"), logText("stuck"))
        XCTAssertTrue(notes.contains { $0.hasPrefix("instance 2 started as pid \(state("stuck").pid) ") }, logText("stuck"))
        waitFor("the unready standby gone") { kill(second, 0) != 0 && errno == ESRCH }
    }

    /// The real and effective uid of `pid` (/proc/PID/status).
    func uids(of pid: Int32) -> [uid_t] {
        guard let file = fopen("/proc/\(pid)/status", "r") else { return [] }
        defer { fclose(file) }
        var line = [CChar](repeating: 0, count: 512)
        while fgets(&line, Int32(line.count), file) != nil {
            let text = String(cString: line)
            if text.hasPrefix("Uid:") { return text.dropFirst(4).split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).prefix(2).compactMap { uid_t($0) } }
        }
        return []
    }

    func testTheStandbyRunsAsTheServersUser() throws {
        guard geteuid() == 0, let entry = getpwnam("nobody") else { throw XCTSkip("needs root and a user nobody") }
        let nobody = entry.pointee.pw_uid
        var configuration = standbyServer("low")
        configuration.user = "nobody"
        try run([configuration])
        waitFor("instance 1 running and a ready standby") { isRunning("low", instance: 1) && readyStandby("low") != nil }
        let first = state("low")
        XCTAssertEqual(uids(of: first.pid), [nobody, nobody])
        XCTAssertEqual(uids(of: first.standbyPID), [nobody, nobody], "the standby runs as the server's user")
        XCTAssertEqual(kill(first.pid, SIGKILL), 0)
        waitFor("instance 2 registered") { isRunning("low", instance: 2) }
        XCTAssertEqual(state("low").pid, first.standbyPID)
        XCTAssertEqual(uids(of: first.standbyPID), [nobody, nobody])
    }

    func testStopAndRestartStopTheStandbyToo() throws {
        try run([standbyServer("pair")])
        waitFor("instance 1 running and a ready standby") { isRunning("pair", instance: 1) && readyStandby("pair") != nil }
        let first = state("pair")

        // restart: the standby is stopped with the server (a new binary is picked up), and the
        // new instance is spawned, not the old standby.
        try supervisor!.restart("pair")
        waitFor("instance 2 registered") { isRunning("pair", instance: 2) }
        XCTAssertNotEqual(state("pair").pid, first.standbyPID)
        waitFor("the old standby gone") { kill(first.standbyPID, 0) != 0 && errno == ESRCH }
        XCTAssertTrue(lines("pair", .supervisor).contains("standby pid \(first.standbyPID) stopped with the server"), logText("pair"))
        waitFor("a new standby") { readyStandby("pair", not: first.standbyPID) != nil }

        let second = state("pair")
        try supervisor!.stop("pair")
        waitFor("pair inactive") { state("pair").state == .inactive }
        waitFor("both processes gone") {
            (kill(second.pid, 0) != 0 && errno == ESRCH) && (kill(second.standbyPID, 0) != 0 && errno == ESRCH)
        }
        XCTAssertEqual(state("pair").standbyPID, 0)
        XCTAssertEqual(state("pair").pid, 0)
        XCTAssertEqual(state("pair").restarts, 0)
    }
}
