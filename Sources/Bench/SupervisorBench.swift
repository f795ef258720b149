import CLimitless
import Supervision
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// `limitless-bench supervisor`: how long a crashed server is out of service. The benchmark runs
/// the real `Supervisor` (in this process) over the real `limitless-testserver`, SIGKILLs the
/// running instance N times and reads, from the supervisor's own log records (timestamped as the
/// loop handles each event), when the exit was seen, when the new instance was spawned and when
/// its MSG_SUPERVISOR_REGISTER arrived. Beside it, in the same run, a plain posix_spawn of the
/// same binary until its first line on stdout, so the supervisor's share is visible. Each
/// supervised row is measured without and with a standby instance (servers.conf `standby yes`:
/// the restart activates a pre-started process instead of spawning one), side by side.
/// Figures are printed, never asserted.
public struct SupervisorBench {
    public struct Options: Sendable {
        public var trials = 30
        /// The test server; nil: `limitless-testserver` next to this executable.
        public var serverPath: String?
        /// Poll intervals to run the supervised trials with (the supervisor's default first).
        public var pollIntervals: [Duration] = [Supervisor.Options().pollInterval, .milliseconds(5)]
        public init() {}
    }

    public let options: Options
    public init(options: Options) { self.options = options }

    /// The target from the issue: crash to serving again under 50 ms.
    static let targetMilliseconds = 50.0

    public func run() throws(BenchError) {
        let server = options.serverPath ?? Self.siblingExecutable("limitless-testserver")
        guard access(server, X_OK) == 0 else {
            throw .systemCall("finding the test server at \(server) (build it: swift build -c release --product limitless-testserver; or pass --server)",
                              Errno(rawValue: ENOENT))
        }
        print("limitless-bench supervisor: \(options.trials) trials per row; server \(server)")
        print("restart policy: on-failure, backoff 0 (initial and maximum), no intensity limit in reach; start timeout 30 s")
        print("")
        print(Self.row("", ["p50 ms", "p99 ms", "min ms", "max ms"]))

        // The floors: plain fork+exec (posix_spawn) until the first line on stdout.
        let echo = try (0..<options.trials).map { _ throws(BenchError) in try Self.spawnToFirstLine("/bin/echo", ["ready"]) }
        print(Self.row("posix_spawn /bin/echo -> first line", Self.figures(echo)))
        let plain = try (0..<options.trials).map { _ throws(BenchError) in
            try Self.spawnToFirstLine(server, ["--print-checkpoint", "--no-serve"])
        }
        print(Self.row("posix_spawn testserver -> first line", Self.figures(plain)))

        var bestCrashToRegister = Double.infinity
        var sideBySide: [String] = []
        for interval in options.pollIntervals {
            var medians: [Double] = []
            for standby in [false, true] {
                let result = try supervised(server: server, pollInterval: interval, standby: standby)
                let label = interval == Supervisor.Options().pollInterval ? " (default)" : ""
                print("supervised, loop poll interval \(Self.milliseconds(interval)) ms\(label), " + (standby ? "standby yes:" : "standby no:"))
                print(Self.row("  SIGKILL -> exit seen by supervisor", Self.figures(result.exitSeen)))
                print(Self.row(standby ? "  SIGKILL -> standby activated" : "  SIGKILL -> new instance spawned", Self.figures(result.spawned)))
                print(Self.row("  SIGKILL -> REGISTER received", Self.figures(result.registered)))
                print(Self.row(standby ? "  activation -> REGISTER (init, serve)" : "  spawn -> REGISTER (exec, init, serve)",
                               Self.figures(zip(result.registered, result.spawned).map { $0 - $1 })))
                bestCrashToRegister = min(bestCrashToRegister, Self.percentile(result.registered, 0.5))
                medians.append(Self.percentile(result.registered, 0.5))
            }
            sideBySide.append("poll \(Self.milliseconds(interval)) ms: standby no \(Self.format(medians[0])) ms, standby yes "
                + "\(Self.format(medians[1])) ms (\(Self.format(medians[0] / medians[1]))x)")
        }
        print("")
        print("SIGKILL -> REGISTER p50: " + sideBySide.joined(separator: "; "))
        print("target: crash to serving again < \(Int(Self.targetMilliseconds)) ms; best p50 above \(Self.format(bestCrashToRegister)) ms "
              + (bestCrashToRegister < Self.targetMilliseconds ? "(within)" : "(over)"))
        print("(REGISTER received = the supervisor's record of it, just before it replies; the server serves its endpoint before registering.)")
    }

    // MARK: Supervised

    struct Supervised {
        var exitSeen: [Double] = []
        var spawned: [Double] = []
        var registered: [Double] = []
    }

    private func supervised(server: String, pollInterval: Duration, standby: Bool) throws(BenchError) -> Supervised {
        var template = Array("/tmp/limitless-bench-supervisor-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw .systemCall("mkdtemp", Errno(rawValue: errno))
        }
        let directory = String(cString: made)
        defer {
            for name in ["bench.sock", "bench.pid"] { unlink(directory + "/" + name) }
            rmdir(directory)
        }
        let policy = RestartPolicy(mode: .onFailure, initialBackoff: .zero, maximumBackoff: .zero,
                                   intensity: .init(restarts: 1_000_000, period: .seconds(1)))
        var supervisorOptions = Supervisor.Options()
        supervisorOptions.runtimeDirectory = directory
        supervisorOptions.startTimeout = .seconds(30)
        supervisorOptions.pollInterval = pollInterval
        supervisorOptions.checkpointCapacity = 4096
        let supervisor: Supervisor
        do {
            var bench = ServerConfiguration(name: "bench", path: server, arguments: [], restart: policy)
            bench.standby = standby
            let configuration = try SupervisorConfiguration(servers: [bench])
            supervisor = try Supervisor(configuration: configuration, options: supervisorOptions, logs: try LogStore(LogStore.Configuration()))
        } catch {
            throw .systemCall("setting up the supervisor: \(error)", Errno(rawValue: EINVAL))
        }
        supervisor.start()
        defer { supervisor.shutdown() }

        var result = Supervised()
        for _ in 0..<options.trials {
            let running = try waitForRegistered(supervisor, standby: standby)
            let instance = running.instance
            let killedAt = CheckpointStore.now()
            guard kill(running.pid, SIGKILL) == 0 else { throw .systemCall("kill(\(running.pid), SIGKILL)", Errno(rawValue: errno)) }
            let next = instance + 1
            let wanted = ["instance \(instance) killed by signal",
                          standby ? "instance \(next) activated standby pid \(running.standbyPID) " : "instance \(next) started as pid",
                          "instance \(next) registered"]
            var found: [Int64?] = [nil, nil, nil]
            let deadline = CL_monotonic_ns() + 30_000_000_000
            while found.contains(where: { $0 == nil }) {
                for record in supervisor.logs.records(server: "bench", since: killedAt) where record.stream == .supervisor {
                    for (index, prefix) in wanted.enumerated() where found[index] == nil && record.text.hasPrefix(prefix) {
                        found[index] = record.timestamp
                    }
                }
                if CL_monotonic_ns() > deadline {
                    throw .peerTimedOut(role: "supervised testserver instance \(next)", seconds: 30)
                }
                usleep(1000)
            }
            result.exitSeen.append(Double(found[0]! - killedAt) / 1e6)
            result.spawned.append(Double(found[1]! - killedAt) / 1e6)
            result.registered.append(Double(found[2]! - killedAt) / 1e6)
        }
        return result
    }

    /// The running instance, registered; with `standby`, once its standby is ready too.
    private func waitForRegistered(_ supervisor: Supervisor, standby: Bool) throws(BenchError) -> ServerStatus {
        let deadline = CL_monotonic_ns() + 30_000_000_000
        while true {
            if let status = supervisor.statuses().first, status.state == .running, status.registered, status.pid > 0,
               !standby || status.standbyReady {
                return status
            }
            if CL_monotonic_ns() > deadline {
                throw .peerTimedOut(role: "supervised testserver (\(supervisor.statuses().first?.lastExit ?? "?"))", seconds: 30)
            }
            usleep(1000)
        }
    }

    // MARK: Plain spawn

    /// posix_spawn `path arguments` with stdout a pipe and stderr /dev/null, in an environment
    /// without the supervisor's variables (the test server runs standalone); milliseconds until
    /// its first complete line arrives.
    static func spawnToFirstLine(_ path: String, _ arguments: [String]) throws(BenchError) -> Double {
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else { throw .systemCall("pipe", Errno(rawValue: errno)) }
        for end in ends { _ = CL_fcntl_int(end, F_SETFD, FD_CLOEXEC) }
        defer { close(ends[0]) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, ends[1], 1)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        let environment: [UnsafeMutablePointer<CChar>?] = [strdup("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"), nil]
        defer { (argv + environment).forEach { free($0) } }
        var pid: pid_t = 0
        let started = CL_monotonic_ns()
        let spawned = posix_spawn(&pid, path, &actions, nil, argv, environment)
        close(ends[1])
        guard spawned == 0 else { throw .systemCall("posix_spawn(\(path))", Errno(rawValue: spawned)) }
        var byte: UInt8 = 0
        var finished: UInt64 = 0
        while true {
            let count = read(ends[0], &byte, 1)
            if count < 0 && errno == EINTR { continue }
            finished = CL_monotonic_ns()
            if count <= 0 || byte == 0x0A { break }
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return Double(finished - started) / 1e6
    }

    static func siblingExecutable(_ name: String) -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let count = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        let own = count > 0 ? String(decoding: buffer.prefix(count).map { UInt8(bitPattern: $0) }, as: UTF8.self) : "."
        let directory = own.lastIndex(of: "/").map { String(own[..<$0]) } ?? "."
        return directory + "/" + name
    }

    // MARK: Figures

    static func percentile(_ values: [Double], _ fraction: Double) -> Double {
        guard !values.isEmpty else { return .nan }
        let sorted = values.sorted()
        return sorted[min(sorted.count - 1, Int((Double(sorted.count - 1) * fraction).rounded()))]
    }

    static func figures(_ values: [Double]) -> [String] {
        [percentile(values, 0.5), percentile(values, 0.99), values.min() ?? .nan, values.max() ?? .nan].map(format)
    }

    static func format(_ value: Double) -> String {
        guard value.isFinite else { return "-" }
        let hundredths = Int((value * 100).rounded())
        let fraction = hundredths % 100
        return "\(hundredths / 100).\(fraction < 10 ? "0" : "")\(fraction)"
    }

    static func milliseconds(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        let value = Double(seconds) * 1000 + Double(attoseconds) / 1e15
        return value == value.rounded() ? String(Int(value)) : format(value)
    }

    static func row(_ label: String, _ columns: [String]) -> String {
        label + String(repeating: " ", count: max(1, 42 - label.count))
            + columns.map { String(repeating: " ", count: max(0, 9 - $0.count)) + $0 }.joined()
    }
}
