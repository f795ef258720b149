import Glibc

/// Where a server is in its life, as the supervisor and `serverctl` name it.
public enum ServerState: String, Hashable, Sendable, CaseIterable {
    /// Not running and not wanted (never started, stopped on request, or exited for good).
    case inactive
    /// Wanted, waiting for a dependency to be running.
    case waiting
    /// Spawned; waiting for its MSG_SUPERVISOR_REGISTER.
    case starting
    /// Registered (or running, when registration is not required).
    case running
    /// SIGTERM sent; SIGKILL follows after the grace period.
    case stopping
    /// Exited; restarting after the backoff pause.
    case backoff
    /// Restarted too often: given up until an operator starts it again.
    case failed
}

/// The supervisor's record of one server: its configuration, the current instance, and what
/// survives instances (restart history, checkpoint store, counters). Touched only under the
/// supervisor's lock.
final class ServerProcess {
    let configuration: ServerConfiguration
    let index: Int
    var tracker: RestartTracker<ContinuousClock>
    /// Created at the first start and kept: every instance gets the same memfd.
    var checkpoint: CheckpointStore?
    /// CAP_PAGE_CACHE's memfd, created at the first start with the grant and kept likewise.
    var pageCacheLog: PageCacheLog?

    var state: ServerState = .inactive
    /// The operator's (or the configuration's) intent: keep it running.
    var wanted = false
    /// Stop it, then start it again at once (serverctl restart).
    var restartRequested = false

    // The current instance.
    var pid: pid_t = 0
    var instance = 0
    var startedAt: Int64 = 0  // wall clock, for display
    var startedMonotonic: ContinuousClock.Instant?
    var registered = false
    var lastHeartbeat: ContinuousClock.Instant?
    var channel: Int32 = -1
    var stdout: Int32 = -1
    var stderr: Int32 = -1
    /// pidfd of the running instance, watched for its exit; -1 where the kernel has none.
    var exitNotifier: Int32 = -1
    var stdoutBuffer: [UInt8] = []
    var stderrBuffer: [UInt8] = []
    /// The listener of the instance's seccomp filter (`Supervisor+SeccompNotifications`), -1: none;
    /// the requests decided so far (logged once each).
    var seccompListener: Int32 = -1
    var seccompDecisions: Set<String> = []
    var capabilities: [(name: String, fd: Int32)] = []
    /// Deadlines: registration (starting), SIGKILL (stopping), next start (backoff).
    var deadline: ContinuousClock.Instant?
    var killSent = false
    /// Why the supervisor killed it, which the exit status alone does not say.
    var exitOverride: (exit: ServerExit, text: String)?
    /// The exit was asked for (stop, restart, shutdown): never counted as a failure.
    var stopRequested = false

    // Changed at run time (serverctl grant / revoke); kept across instances, so a server
    // restarted for not confirming a revoke starts without the capability.
    var grantedAtRuntime: Set<Capability> = []
    var revokedAtRuntime: Set<Capability> = []
    /// Revokes sent to the running instance and not yet confirmed, with their deadlines.
    var pendingRevokes: [String: ContinuousClock.Instant] = [:]

    // The standby instance (`standby yes`), started while this one runs; activated at a restart.
    var standby: StandbyInstance?
    var standbyGeneration = 0
    /// Standbys that failed in a row (exited, hung) and when the next may start.
    var standbyFailures = 0
    var standbyRetryAt: ContinuousClock.Instant?

    /// Its listening socket, held across instances (`SupervisorListeners`); nil: not held.
    var listener: HeldListener?

    // Across instances.
    var restarts = 0
    var lastExit: String?
    var checkpointSequence: UInt64?
    var checkpointSavedAt: Int64?

    init(configuration: ServerConfiguration, index: Int) {
        self.configuration = configuration
        self.index = index
        self.tracker = RestartTracker(policy: configuration.restart, clock: ContinuousClock())
    }

    var name: String { configuration.name }

    /// The configuration with the capabilities as granted now (configured, plus run-time grants,
    /// minus run-time revokes): what an instance starts with.
    var effectiveConfiguration: ServerConfiguration {
        var effective = configuration
        effective.capabilities = configuration.capabilities.union(grantedAtRuntime).subtracting(revokedAtRuntime)
        return effective
    }
    var isAlive: Bool { pid > 0 }

    func status(now: Int64) -> ServerStatus {
        ServerStatus(
            name: name, path: configuration.path, state: state, pid: pid, instance: instance,
            startedAt: isAlive ? startedAt : 0, restarts: restarts, lastExit: lastExit ?? "", registered: registered,
            lastHeartbeat: lastHeartbeat.map { now - Int64(($0.duration(to: .now)).nanosecondsValue) } ?? 0,
            checkpointSequence: checkpointSequence ?? 0, checkpointSavedAt: checkpointSavedAt ?? 0,
            devices: configuration.devices.map(\.description),
            capabilities: capabilities.isEmpty
                ? effectiveConfiguration.capabilities.sorted().map { "\($0)=-1" }
                : capabilities.map { "\($0.name)=\($0.fd)" },
            dependencies: configuration.dependencies,
            standbyPID: standby.map { $0.killedBecause == nil ? $0.pid : 0 } ?? 0, standbyReady: standby?.ready ?? false)
    }
}

extension Duration {
    /// The whole duration in nanoseconds (clamped to Int64).
    var nanosecondsValue: Int64 {
        let (seconds, attoseconds) = components
        let (scaled, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return seconds < 0 ? .min : .max }
        return scaled + attoseconds / 1_000_000_000
    }
}
