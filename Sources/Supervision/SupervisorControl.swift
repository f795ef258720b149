import CLimitless
import Glibc
import IPC

/// Control calls from other threads (serverctl through the control socket, tests): they take the
/// lock, change intent, and wake the loop.
extension Supervisor {
    // MARK: Control (any thread)

    public enum ControlFailure: Error, Equatable, Sendable, CustomStringConvertible {
        case unknownServer(String, suggestion: String?)
        case timedOut(String)
        /// grant / revoke: a name that is no capability, or a device label the server has no
        /// device line for; the text says which and why.
        case invalidCapability(String)

        public var description: String {
            switch self {
            case .invalidCapability(let text): return text
            case .unknownServer(let name, let suggestion):
                return "no server named \(name) in the configuration" + (suggestion.map { "; did you mean \($0)?" } ?? "")
            case .timedOut(let text): return text
            }
        }
    }

    func lookup(_ name: String) throws(ControlFailure) -> ServerProcess {
        guard let server = byName[name] else {
            throw .unknownServer(name, suggestion: Suggestion.closest(to: name, among: configuration.servers.map(\.name)))
        }
        return server
    }

    public func statuses() -> [ServerStatus] {
        lock.locked {
            let now = CheckpointStore.now()
            return servers.map { $0.status(now: now) }
        }
    }

    public func status(of name: String) throws(ControlFailure) -> ServerStatus {
        let server = try lookup(name)
        return lock.locked { server.status(now: CheckpointStore.now()) }
    }

    /// Wants `name` and everything it depends on; clears a failed state and its restart history.
    public func start(_ name: String) throws(ControlFailure) {
        _ = try lookup(name)
        lock.locked {
            var pending = [name]
            while let next = pending.popLast() {
                guard let server = byName[next], !server.wanted || server.state == .failed else { continue }
                server.wanted = true
                if server.state == .failed {
                    server.state = .inactive
                    server.tracker = RestartTracker(policy: server.configuration.restart, clock: ContinuousClock())
                }
                pending += server.configuration.dependencies
            }
        }
        wake()
    }

    /// Stops `name` and what depends on it (dependents first), and waits up to `timeout` for them
    /// to exit.
    public func stop(_ name: String, timeout: Duration? = nil) throws(ControlFailure) {
        _ = try lookup(name)
        let affected = lock.locked {
            let affected = [name] + configuration.dependencies.dependents(of: name)
            for other in affected { byName[other]?.wanted = false }
            return affected
        }
        wake()
        let limit = timeout ?? options.stopGracePeriod * (affected.count + 1) + .seconds(2)
        let stopped = waitUntil(limit) { affected.allSatisfy { !(self.byName[$0]?.isAlive ?? false) } }
        if !stopped { throw .timedOut("\(name) has not stopped yet; it is still being stopped (see serverctl status \(name))") }
    }

    /// Stops `name` (not its dependents) and starts it again at once; waits up to `timeout` for
    /// the new instance to be running.
    public func restart(_ name: String, timeout: Duration? = nil) throws(ControlFailure) {
        let server = try lookup(name)
        let before = lock.locked {
            if server.isAlive {
                server.restartRequested = true
            } else {
                server.wanted = true
                if server.state == .failed {
                    server.state = .inactive
                    server.tracker = RestartTracker(policy: server.configuration.restart, clock: ContinuousClock())
                }
            }
            return server.instance
        }
        wake()
        let limit = timeout ?? options.stopGracePeriod + options.startTimeout + .seconds(2)
        let running = waitUntil(limit) { server.instance > before && server.state == .running }
        if !running { throw .timedOut("\(name) was restarted but is not running yet (see serverctl status \(name))") }
    }

    /// Polls `condition` under the lock every 10 ms until it holds or `timeout` passes.
    func waitUntil(_ timeout: Duration, _ condition: () -> Bool) -> Bool {
        let deadline = ContinuousClock.now + timeout
        while true {
            if lock.locked(condition) { return true }
            if ContinuousClock.now >= deadline || lock.locked({ finished }) { return false }
            usleep(10_000)
        }
    }

    static func signalName(_ signal: Int32) -> String {
        switch signal {
        case SIGHUP: "SIGHUP"
        case SIGINT: "SIGINT"
        case SIGQUIT: "SIGQUIT"
        case SIGILL: "SIGILL"
        case SIGABRT: "SIGABRT"
        case SIGBUS: "SIGBUS"
        case SIGFPE: "SIGFPE"
        case SIGKILL: "SIGKILL"
        case SIGSEGV: "SIGSEGV"
        case SIGPIPE: "SIGPIPE"
        case SIGTERM: "SIGTERM"
        case SIGTRAP: "SIGTRAP"
        default: "signal \(signal)"
        }
    }
}
