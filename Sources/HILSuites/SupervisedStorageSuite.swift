import Platform
import Storage
#if canImport(Glibc)
import Glibc
#endif

/// The storage server under the supervisor: `limitless-supervisor` (next to limitless-hil) started
/// as a child with a servers.conf naming `storage_server` for the NVMe function, so the supervisor
/// opens the VFIO container and device and hands them over as CAP_DMA_ALLOC / CAP_MMIO_NVME0 /
/// CAP_IRQ_NVME0 / CAP_PCI_CONFIG. Then as a client: seeded writes on both namespaces read back;
/// the server SIGKILLed `kills` times and brought back by the supervisor each time, every
/// acknowledged write read back; then stopped with SIGSTOP (heartbeats stop) so the supervisor's
/// watchdog kills it, and it comes back with the data intact; `serverctl status` counts the
/// restarts and names the watchdog; SIGTERM to the supervisor stops everything with exit 0.
///
/// Issue 4's benchmark is printed, never asserted: for each restart, the phases from the
/// supervisor's log records and the server's own start-up line (`RestartTimeline`), their medians,
/// and beside them a plain fork + exec + exit of `storage_server --help` measured in the same run.
/// The probe that decides "answering" retries every `probeIntervalMicroseconds` (a connect and a
/// geometry request), so it adds at most that to the figure.
public struct SupervisedStorageSuite {
    public struct Options {
        public var device = PCIAddress("0000:00:03.0")!
        /// Directory holding limitless-supervisor, storage_server and serverctl; default: this
        /// executable's.
        public var binaryDirectory: String?
        public var seed: UInt64 = 0x5355_5045_5256_4953
        public var startTimeoutMilliseconds = 60_000
        public var restartTimeoutMilliseconds = 30_000
        public var stopTimeoutMilliseconds = 30_000
        /// SIGKILLs in a row (the median of their restart times is the figure).
        public var kills = 5
        /// The servers.conf `restart` options. `healthy=1s`: an instance that ran a second
        /// restarts without a pause (the suite lets each one run that long before killing it);
        /// the limit leaves room for every kill and the watchdog case. The environment variable
        /// LIMITLESS_HIL_RESTART_OPTIONS replaces it (e.g. `healthy=never` for the old policy).
        public var restartOptions = "backoff=100ms limit=10/60s healthy=1s"
        public var healthyRunMilliseconds = 1_000
        public var probeIntervalMicroseconds: UInt32 = 1_000
        /// servers.conf `standby yes`: every restart must be the standby taking over (its pid
        /// becomes the server's), and the timeline shows its activation instead of a fork + exec.
        public var standby = false
        /// servers.conf `listen` (socket activation: the supervisor holds storage.sock and a
        /// probe connecting while the server is down waits in its backlog); false, `listen no`:
        /// storage_server binds its own, as before, for a comparison in the same boot.
        public var listen = true
        /// How long a restart waits for the standby to be ready before the kill.
        public var standbyReadyTimeoutMilliseconds = 30_000
        public init() {}
    }

    public var options: Options
    public init(options: Options) { self.options = options }

    typealias Child = StorageServerSuite.Child
    typealias Acknowledged = StorageServerSuite.Acknowledged

    public func run(report: SuiteReport) {
        var template = Array("/tmp/limitless-supervised-hil-XXXXXX".utf8CString)
        let directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        let binaries = options.binaryDirectory ?? Self.executableDirectory()
        let supervisorPath = binaries + "/limitless-supervisor"
        let serverPath = binaries + "/storage_server"
        let serverctlPath = binaries + "/serverctl"
        let configPath = directory + "/servers.conf"
        var helperOptions = StorageServerSuite.Options()
        helperOptions.seed = options.seed
        let helper = StorageServerSuite(options: helperOptions)
        var supervisor = Child(pid: -1)
        var serverPID: Int32 = 0
        defer {
            if supervisor.pid > 0 {
                _ = kill(supervisor.pid, SIGKILL)
                _ = supervisor.wait()
            }
            if serverPID > 0 && kill(serverPID, 0) == 0 { _ = kill(serverPID, SIGKILL) }
            Self.removeTree(directory)
        }

        let restartOptions = getenv("LIMITLESS_HIL_RESTART_OPTIONS").map { String(cString: $0) } ?? options.restartOptions
        report.check("write servers.conf and check it") {
            for path in [supervisorPath, serverPath, serverctlPath] {
                try expect(access(path, X_OK) == 0, "\(path) is not there (build it: swift build -c release)")
            }
            let text = """
                start_server storage \(serverPath) --runtime-dir \(directory)
                    device NVME0 \(options.device)
                    capabilities CAP_PCI_CONFIG CAP_MMIO_NVME0 CAP_IRQ_NVME0 CAP_DMA_ALLOC CAP_BLOCK_READ CAP_BLOCK_WRITE
                    restart on-failure \(restartOptions)
                    watchdog 2s
                    standby \(options.standby ? "yes" : "no")
                    listen \(options.listen ? "yes" : "no")

                """
            try Self.writeFile(configPath, text)
            let (status, output) = try Self.capture([supervisorPath, "--config", configPath, "--check"])
            try expect(status == 0, "--check exit \(status): \(output)")
            return configPath
        }

        var client: BlockClient?
        report.check("start limitless-supervisor; storage answers") {
            let arguments = [supervisorPath, "--config", configPath, "--runtime-dir", directory, "--log-dir", directory + "/logs"]
            supervisor = try Self.spawn(arguments)
            let clock = MonotonicClock()
            let start = clock.now()
            client = try waitForAnswer(directory: directory, supervisor: supervisor, since: start,
                                       timeoutMilliseconds: options.startTimeoutMilliseconds)
            return "supervisor pid \(supervisor.pid), \(directory)/storage.sock answering after \((clock.now() - start) / 1_000_000) ms"
        }
        guard let first = client else { return }

        var firstStatus: ServerJSON?
        report.check("serverctl status: running, registered, granted the device") {
            let status = try serverctlStatus(serverctlPath, directory: directory)
            firstStatus = status
            try expect(status.text("state") == "running", "state \(status.text("state") ?? "nil"): \(status.raw)")
            try expect(status.raw.contains("\"registered\":true"), "not registered: \(status.raw)")
            guard let pid = status.number("pid"), pid > 0 else { throw CheckFailure("no pid: \(status.raw)") }
            try expect(kill(Int32(pid), 0) == 0, "pid \(pid) is not alive")
            for capability in ["CAP_MMIO_NVME0", "CAP_DMA_ALLOC", "CAP_IRQ_NVME0", "CAP_PCI_CONFIG"] {
                try expect(status.raw.contains("\"\(capability)\":"), "\(capability) missing: \(status.raw)")
            }
            serverPID = Int32(pid)
            return "pid \(pid), restarts \(status.number("restarts") ?? -1)"
        }

        var geometries: [UInt32: BlockGeometry] = [:]
        report.check("geometry of nsid 1 and 2") {
            for nsid in [UInt32(1), 2] {
                geometries[nsid] = try first.geometry(nsid).get()
            }
            return geometries.sorted { $0.key < $1.key }.map { "nsid \($0.key): \($0.value.blockSize) B x \($0.value.blockCount)" }
                .joined(separator: ", ")
        }
        guard geometries.count == 2 else { return }

        let acknowledged = helper.writeSeededRanges(first, geometries: geometries, variantBase: 8, report: report)
        guard serverPID > 0, firstStatus != nil else { return }

        var restarted: BlockClient?
        var timelines: [RestartTimeline] = []
        for round in 1...max(1, options.kills) {
            let name = "SIGKILL \(round) of \(options.kills): the supervisor brings the server back answering"
            var ok = false
            report.check(name) {
                // Long enough a run that the restart policy's healthy=... applies (no pause).
                usleep(UInt32(options.healthyRunMilliseconds) * 1000 + 100_000)
                client = nil
                restarted = nil
                let (pid, milliseconds, timeline) = try restart(directory: directory, supervisor: supervisor, serverctl: serverctlPath,
                                                                oldPID: serverPID, signal: SIGKILL) { restarted = $0 }
                let old = serverPID
                serverPID = pid
                timelines.append(timeline)
                report.note("kill \(round) (ms after SIGKILL): \(timeline.line)")
                ok = true
                return "pid \(old) killed, new pid \(pid) answering \(milliseconds) ms after SIGKILL"
            }
            if !ok { return }
        }
        guard let second = restarted else { return }

        report.check("crash to serving: median over the kills, beside a plain fork + exec") {
            try expect(timelines.count == options.kills, "\(timelines.count) timelines")
            var spawns: [Int64] = [], execs: [Int64] = []
            for _ in 0..<5 {
                let (exec, exit) = try Self.timeSpawn([serverPath, "--help"])
                execs.append(exec)
                spawns.append(exit)
            }
            let answering = RestartTimeline.median(timelines.compactMap { $0.offset("answering") })
            let spawn = RestartTimeline.median(spawns)
            let mode = (options.standby ? "standby yes" : "standby no") + (options.listen ? "" : ", listen no")
            report.note("[\(mode)] median phases (ms after SIGKILL, \(timelines.count) kills): \(RestartTimeline.medians(timelines))")
            report.note("[\(mode)] SIGKILL -> answering: p50 \(RestartTimeline.milliseconds(answering)) ms over \(timelines.count) kills "
                + "(each: \(timelines.compactMap { $0.offset("answering") }.map(RestartTimeline.milliseconds).joined(separator: ", ")) ms); "
                + "fork + exec + exit of storage_server --help: p50 \(RestartTimeline.milliseconds(spawn)) ms "
                + "(each: \(spawns.map(RestartTimeline.milliseconds).joined(separator: ", ")) ms); "
                + "of which posix_spawn until exec done: p50 \(RestartTimeline.milliseconds(RestartTimeline.median(execs))) ms")
            return "\(mode): p50 \(RestartTimeline.milliseconds(answering)) ms crash -> serving; plain fork+exec+exit of the binary "
                + "\(RestartTimeline.milliseconds(spawn)) ms"
        }

        report.check("every acknowledged write read back after the restarts") {
            for item in acknowledged {
                try helper.verify(second, item, blockSize: geometries[item.nsid]!.blockSize)
            }
            return "\(acknowledged.count) ranges, \(acknowledged.map { $0.blocks * geometries[$0.nsid]!.blockSize }.reduce(0, +)) bytes"
        }

        report.check("serverctl status: restarts \(options.kills), last exit SIGKILL, running again") {
            let status = try serverctlStatus(serverctlPath, directory: directory)
            try expect(status.number("restarts") == Int64(options.kills),
                       "restarts \(status.number("restarts").map(String.init) ?? "nil"): \(status.raw)")
            let lastExit = status.text("last_exit") ?? ""
            try expect(lastExit.contains("SIGKILL"), "last exit \"\(lastExit)\": \(status.raw)")
            try expect(status.text("state") == "running", "state \(status.text("state") ?? "nil")")
            try expect(status.number("pid") == Int64(serverPID), "pid \(status.number("pid").map(String.init) ?? "nil"), expected \(serverPID)")
            return "restarts \(options.kills), last exit \"\(lastExit)\""
        }

        // The watchdog (issue 4, "detect exit, signal and watchdog timeout"): a stopped process
        // sends no heartbeats; the supervisor must kill it (SIGKILL works on a stopped process)
        // and bring it back serving.
        var watched: BlockClient?
        report.check("SIGSTOP the server: the watchdog kills it and it comes back answering") {
            restarted = nil
            let (pid, milliseconds, timeline) = try restart(directory: directory, supervisor: supervisor, serverctl: serverctlPath,
                                                            oldPID: serverPID, signal: SIGSTOP) { watched = $0 }
            let old = serverPID
            serverPID = pid
            report.note("watchdog (ms after SIGSTOP): \(timeline.line)")
            guard let fired = timeline.offset("watchdog fired"), let answering = timeline.offset("answering") else {
                throw CheckFailure("no watchdog record in the supervisor's log: \(timeline.line)")
            }
            report.note("watchdog detection -> answering: \(RestartTimeline.milliseconds(answering - fired)) ms")
            return "pid \(old) stopped, watchdog fired \(RestartTimeline.milliseconds(fired)) ms later, new pid \(pid) answering "
                + "\(milliseconds) ms after SIGSTOP (\(RestartTimeline.milliseconds(answering - fired)) ms after detection)"
        }
        guard let third = watched else { return }

        report.check("every acknowledged write read back after the watchdog restart") {
            for item in acknowledged {
                try helper.verify(third, item, blockSize: geometries[item.nsid]!.blockSize)
            }
            return "\(acknowledged.count) ranges"
        }

        report.check("serverctl status: restarts \(options.kills + 1), last exit the watchdog, running again") {
            let status = try serverctlStatus(serverctlPath, directory: directory)
            try expect(status.number("restarts") == Int64(options.kills + 1),
                       "restarts \(status.number("restarts").map(String.init) ?? "nil"): \(status.raw)")
            let lastExit = status.text("last_exit") ?? ""
            try expect(lastExit.contains("watchdog"), "last exit \"\(lastExit)\": \(status.raw)")
            try expect(status.text("state") == "running", "state \(status.text("state") ?? "nil")")
            return "restarts \(options.kills + 1), last exit \"\(lastExit)\""
        }

        report.check("serverctl list shows storage") {
            let (code, output) = try Self.capture([serverctlPath, "list", "--runtime-dir", directory])
            try expect(code == 0, "serverctl list exit \(code): \(output)")
            try expect(output.contains("storage"), "no storage in: \(output)")
            return output.split(separator: "\n").last.map { String($0).trimmingSpaces } ?? ""
        }

        report.check("SIGTERM the supervisor: exit 0, the server gone") {
            watched = nil
            try expect(kill(supervisor.pid, SIGTERM) == 0, "kill: errno \(errno)")
            let clock = MonotonicClock()
            let deadline = clock.now() + UInt64(options.stopTimeoutMilliseconds) * 1_000_000
            var raw: Int32 = 0
            while true {
                let result = waitpid(supervisor.pid, &raw, WNOHANG)
                if result == supervisor.pid { break }
                if result < 0 && errno != EINTR { throw CheckFailure("waitpid: errno \(errno)") }
                if clock.now() > deadline { throw CheckFailure("the supervisor did not exit within \(options.stopTimeoutMilliseconds) ms") }
                usleep(20_000)
            }
            supervisor.pid = -1
            let status = Child.Status(raw: raw)
            try expect(status.exitCode == 0, "supervisor \(status)")
            // The server was the supervisor's child and reaped by it; allow a moment regardless.
            var alive = true
            for _ in 0..<100 {
                if kill(serverPID, 0) != 0 && errno == ESRCH { alive = false; break }
                usleep(20_000)
            }
            try expect(!alive, "server pid \(serverPID) still exists")
            try expect(access(directory + "/storage.sock", F_OK) != 0, "storage.sock is still there")
            return "supervisor exit 0, server pid \(serverPID) gone, socket removed"
        }
    }

    // MARK: Helpers

    /// Sends `signal` to the server, waits until a new instance answers, and reads the restart's
    /// timeline from the supervisor's log. Returns the new pid and the milliseconds from the
    /// signal to the first answer; `answered` gets the client that answered.
    func restart(directory: String, supervisor: Child, serverctl: String, oldPID: Int32, signal: Int32,
                 answered: (BlockClient) -> Void) throws -> (Int32, UInt64, RestartTimeline) {
        let standbyPID = options.standby ? try waitForStandby(serverctl, directory: directory) : 0
        let clock = MonotonicClock()
        let origin = RestartTimeline.realtimeNow()
        let sentAt = clock.now()
        try expect(kill(oldPID, signal) == 0, "kill \(oldPID): errno \(errno)")
        var connectedAt: Int64?
        let client = try waitForAnswer(directory: directory, supervisor: supervisor, since: sentAt,
                                       timeoutMilliseconds: options.restartTimeoutMilliseconds, notPID: oldPID) { connectedAt = $0 }
        let answeredAt = RestartTimeline.realtimeNow()
        let milliseconds = (clock.now() - sentAt) / 1_000_000
        answered(client)
        let status = try serverctlStatus(serverctl, directory: directory)
        guard let pid = status.number("pid"), pid > 0 else { throw CheckFailure("no pid after restart: \(status.raw)") }
        try expect(Int32(pid) != oldPID, "same pid \(pid) after the signal")
        if options.standby { try expect(pid == standbyPID, "pid \(pid) after the signal, not the standby's \(standbyPID)") }
        try expect(kill(oldPID, 0) != 0, "old pid \(oldPID) still exists")
        let (code, output) = try Self.capture([serverctl, "logs", "storage", "--json", "-n", "200", "--runtime-dir", directory])
        try expect(code == 0, "serverctl logs exit \(code): \(output)")
        let timeline = RestartTimeline(records: RestartTimeline.records(output), origin: origin, newPID: pid, answered: answeredAt,
                                       connected: connectedAt)
        return (Int32(pid), milliseconds, timeline)
    }

    /// The pid of the server's standby once it is ready (servers.conf `standby yes`).
    func waitForStandby(_ serverctl: String, directory: String) throws -> Int64 {
        let clock = MonotonicClock()
        let deadline = clock.now() + UInt64(options.standbyReadyTimeoutMilliseconds) * 1_000_000
        while true {
            let status = try serverctlStatus(serverctl, directory: directory)
            if let pid = status.number("standby_pid"), status.raw.contains("\"standby_ready\":true") { return pid }
            if clock.now() > deadline {
                throw CheckFailure("no ready standby within \(options.standbyReadyTimeoutMilliseconds) ms: \(status.raw)")
            }
            usleep(20_000)
        }
    }

    /// Nanoseconds until posix_spawn returned (glibc returns once the child has exec'd) and until
    /// the child exited, output discarded: what a plain fork and exec of the binary costs on this
    /// machine, for comparison with a restart.
    static func timeSpawn(_ arguments: [String]) throws -> (exec: Int64, exit: Int64) {
        let null = open("/dev/null", O_WRONLY)
        defer { close(null) }
        let clock = MonotonicClock()
        let start = clock.now()
        let child = try spawn(arguments, stdoutFD: null)
        let execed = Int64(clock.now() - start)
        let status = child.wait()
        let elapsed = Int64(clock.now() - start)
        try expect(status.exitCode == 0, "\(arguments.joined(separator: " ")): \(status)")
        return (execed, elapsed)
    }

    /// Polls until `storage.sock` answers a geometry request (from a server other than `notPID`).
    /// `connected` gets the CLOCK_REALTIME ns of the connect that got the answer (with the
    /// supervisor holding the socket, that connect succeeds while the server is still down).
    func waitForAnswer(directory: String, supervisor: Child, since start: UInt64, timeoutMilliseconds: Int,
                       notPID: Int32 = 0, connected: (Int64) -> Void = { _ in }) throws -> BlockClient {
        let clock = MonotonicClock()
        let deadline = start + UInt64(timeoutMilliseconds) * 1_000_000
        while clock.now() < deadline {
            var raw: Int32 = 0
            if waitpid(supervisor.pid, &raw, WNOHANG) == supervisor.pid {
                throw CheckFailure("limitless-supervisor exited: \(Child.Status(raw: raw))")
            }
            if notPID == 0 || kill(notPID, 0) != 0,
               let client = try? BlockClient.connect(name: "storage", directory: directory) {
                let connectedAt = RestartTimeline.realtimeNow()
                client.timeout = .seconds(5)
                if let result = try? client.geometry(1), case .success = result {
                    connected(connectedAt)
                    client.timeout = .seconds(30)
                    return client
                }
            }
            usleep(options.probeIntervalMicroseconds)
        }
        throw CheckFailure("no answer on \(directory)/storage.sock within \(timeoutMilliseconds) ms")
    }

    /// `serverctl status storage --json`, one JSON object.
    struct ServerJSON {
        var raw: String

        /// What follows the first occurrence of `needle`.
        func after(_ needle: String) -> Substring? {
            let text = Array(raw.utf8), pattern = Array(needle.utf8)
            guard !pattern.isEmpty, text.count >= pattern.count else { return nil }
            for start in 0...(text.count - pattern.count) where text[start..<(start + pattern.count)].elementsEqual(pattern) {
                return Substring(String(decoding: text[(start + pattern.count)...], as: UTF8.self))
            }
            return nil
        }

        /// A numeric field (`"pid":123`); nil when absent or null.
        func number(_ key: String) -> Int64? {
            guard let rest = after("\"\(key)\":") else { return nil }
            let digits = rest.prefix { $0 == "-" || $0.isNumber }
            return Int64(digits)
        }

        /// A string field, unescaped enough for comparisons.
        func text(_ key: String) -> String? {
            guard let rest = after("\"\(key)\":\"") else { return nil }
            var result = ""
            var escaped = false
            for character in rest {
                if escaped { result.append(character); escaped = false; continue }
                if character == "\\" { escaped = true; continue }
                if character == "\"" { return result }
                result.append(character)
            }
            return nil
        }
    }

    func serverctlStatus(_ serverctl: String, directory: String) throws -> ServerJSON {
        let (code, output) = try Self.capture([serverctl, "status", "storage", "--json", "--runtime-dir", directory])
        try expect(code == 0, "serverctl status exit \(code): \(output)")
        return ServerJSON(raw: output.trimmingSpaces)
    }

    static func spawn(_ arguments: [String], stdoutFD: Int32 = -1) throws -> Child {
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if stdoutFD >= 0 {
            posix_spawn_file_actions_adddup2(&actions, stdoutFD, 1)
            posix_spawn_file_actions_adddup2(&actions, stdoutFD, 2)
        }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, arguments[0], &actions, nil, &argv, environ)
        guard spawned == 0 else { throw CheckFailure("posix_spawn \(arguments[0]): errno \(spawned)") }
        return Child(pid: pid)
    }

    /// Runs a command to completion; its exit code (or -signal) and stdout + stderr.
    static func capture(_ arguments: [String]) throws -> (Int32, String) {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw CheckFailure("pipe: errno \(errno)") }
        let child: Child
        do {
            child = try spawn(arguments, stdoutFD: fds[1])
        } catch {
            close(fds[0]); close(fds[1])
            throw error
        }
        close(fds[1])
        var output: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(fds[0], $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { break }
            output += buffer[..<count]
        }
        close(fds[0])
        let status = child.wait()
        return (status.exitCode ?? -(status.signal ?? 1), String(decoding: output, as: UTF8.self))
    }

    static func writeFile(_ path: String, _ text: String) throws {
        guard let file = fopen(path, "w") else { throw CheckFailure("open \(path): errno \(errno)") }
        defer { fclose(file) }
        try expect(fputs(text, file) >= 0, "write \(path): errno \(errno)")
    }

    static func executableDirectory() -> String {
        let sibling = StorageServerSuite.siblingPath("x")
        return sibling.hasSuffix("/x") ? String(sibling.dropLast(2)) : "."
    }

    /// Removes the temporary directory (files one level down and in logs/).
    static func removeTree(_ path: String) {
        guard let dir = opendir(path) else { return }
        var entries: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            if name != "." && name != ".." { entries.append(name) }
        }
        closedir(dir)
        for name in entries {
            let full = path + "/" + name
            if unlink(full) != 0 { removeTree(full) }
        }
        _ = rmdir(path)
    }
}

extension String {
    fileprivate var trimmingSpaces: String {
        var text = Substring(self)
        while let last = text.last, last.isWhitespace { text = text.dropLast() }
        while let first = text.first, first.isWhitespace { text = text.dropFirst() }
        return String(text)
    }
}
