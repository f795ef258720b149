/// What the supervisor does when a server exits, as data (the way swift-service-lifecycle makes
/// termination behaviour a configuration value rather than flags spread through the supervisor).
///
/// A failing server is restarted after an exponentially growing pause (initial, doubled per
/// recent restart, capped at the maximum) — except an instance that had been running for at least
/// `healthyRun` before it failed: that one is restarted at once (issue 4: a crash after a long
/// healthy run is not a crash loop, and every millisecond of pause is a millisecond the device
/// goes unserved). The pause exists to keep a crash loop from spinning; a long run shows there is
/// none. The intensity limit below still counts that restart. If it has already been restarted `intensity.restarts`
/// times within the last `intensity.period`, restarting again is pointless: it is marked failed,
/// and the servers depending on it are stopped (`DependencyGraph.dependents(of:)`).
public struct RestartPolicy: Hashable, Sendable, CustomStringConvertible {
    public enum Mode: String, Hashable, Sendable, CaseIterable {
        /// Never restart; the server runs once.
        case never
        /// Restart after a non-zero exit, a signal or a missed watchdog, not after exit status 0.
        case onFailure = "on-failure"
        /// Restart after any exit the supervisor did not ask for.
        case always
    }

    /// At most `restarts` restarts within `period`; one more and the server is marked failed.
    public struct Intensity: Hashable, Sendable {
        public var restarts: Int
        public var period: Duration
        public init(restarts: Int, period: Duration) {
            self.restarts = restarts
            self.period = period
        }
    }

    public var mode: Mode
    public var initialBackoff: Duration
    public var maximumBackoff: Duration
    public var intensity: Intensity
    /// An instance that ran at least this long before failing is restarted without a pause.
    /// nil: always pause.
    public var healthyRun: Duration?

    public static let defaultInitialBackoff = Duration.milliseconds(100)
    public static let defaultMaximumBackoff = Duration.seconds(30)
    public static let defaultIntensity = Intensity(restarts: 5, period: .seconds(60))
    public static let defaultHealthyRun: Duration? = .seconds(10)

    public init(
        mode: Mode = .onFailure, initialBackoff: Duration = defaultInitialBackoff,
        maximumBackoff: Duration = defaultMaximumBackoff, intensity: Intensity = defaultIntensity,
        healthyRun: Duration? = defaultHealthyRun
    ) {
        self.mode = mode
        self.initialBackoff = initialBackoff
        self.maximumBackoff = maximumBackoff
        self.intensity = intensity
        self.healthyRun = healthyRun
    }

    /// The pause before the next restart when `recentRestarts` restarts already happened within
    /// the intensity period: initial * 2^recentRestarts, never more than the maximum.
    public func backoff(recentRestarts: Int) -> Duration {
        var pause = initialBackoff
        for _ in 0..<max(0, recentRestarts) {
            if pause >= maximumBackoff { break }
            pause = pause * 2
        }
        return min(pause, maximumBackoff)
    }

    /// The decision for one exit. `restarts` are the times of earlier restarts (any order, older
    /// ones are ignored); `now` comes from the caller's clock, so tests decide what time it is.
    /// `ranFor` is how long the instance that exited had been running (nil: unknown, as for a
    /// start that failed): at least `healthyRun` and the restart comes without a pause.
    public func decide<Instant: InstantProtocol>(
        after exit: ServerExit, restarts: [Instant], now: Instant, ranFor: Duration? = nil
    ) -> RestartDecision where Instant.Duration == Duration {
        switch (mode, exit) {
        case (_, .stopRequested):
            return .stay(reason: "stopped on request")
        case (.never, _):
            return .stay(reason: "restart policy is never; \(exit)")
        case (.onFailure, _) where !exit.isFailure:
            return .stay(reason: "\(exit); restart policy is on-failure")
        default:
            break
        }
        let recent = restarts.filter { $0 <= now && $0.duration(to: now) < intensity.period }.count
        if recent >= intensity.restarts {
            return .failed(restarts: recent, period: intensity.period)
        }
        if let healthyRun, let ranFor, ranFor >= healthyRun { return .restart(after: .zero) }
        return .restart(after: backoff(recentRestarts: recent))
    }

    public var description: String {
        var text = mode.rawValue
        if mode != .never {
            text += " backoff=\(DurationText.format(initialBackoff)) max-backoff=\(DurationText.format(maximumBackoff))"
                + " limit=\(intensity.restarts)/\(DurationText.format(intensity.period))"
            if healthyRun != Self.defaultHealthyRun { text += " healthy=\(healthyRun.map(DurationText.format) ?? "never")" }
        }
        return text
    }
}

/// How a server's process ended, as the supervisor saw it.
public enum ServerExit: Hashable, Sendable, CustomStringConvertible {
    /// It called exit with this status.
    case exited(status: Int32)
    /// A signal killed it.
    case killed(signal: Int32)
    /// It stopped reporting alive and the supervisor killed it.
    case watchdogExpired
    /// The supervisor (or an operator through it) stopped it; never restarted.
    case stopRequested

    public var isFailure: Bool {
        switch self {
        case .exited(let status): return status != 0
        case .killed, .watchdogExpired: return true
        case .stopRequested: return false
        }
    }

    public var description: String {
        switch self {
        case .exited(let status): return "exited with status \(status)"
        case .killed(let signal): return "killed by signal \(signal)"
        case .watchdogExpired: return "missed its watchdog"
        case .stopRequested: return "stopped on request"
        }
    }
}

public enum RestartDecision: Hashable, Sendable, CustomStringConvertible {
    /// Start it again after this pause.
    case restart(after: Duration)
    /// Leave it stopped; the policy does not restart this kind of exit.
    case stay(reason: String)
    /// Too many restarts too quickly: give up, and stop its dependents.
    case failed(restarts: Int, period: Duration)

    public var description: String {
        switch self {
        case .restart(let pause): return "restart after \(DurationText.format(pause))"
        case .stay(let reason): return "not restarted: \(reason)"
        case .failed(let restarts, let period):
            return "failed: \(restarts) restarts in \(DurationText.format(period)); fix the cause and start it with serverctl"
        }
    }
}

/// One server's restart history against a clock: the supervisor keeps one per server and asks it
/// after every exit. The clock is a parameter so tests can move time by hand.
public struct RestartTracker<C: Clock>: Sendable where C.Duration == Duration {
    public let policy: RestartPolicy
    public let clock: C
    /// Times of the restarts still inside the intensity period.
    public private(set) var restarts: [C.Instant] = []

    public init(policy: RestartPolicy, clock: C) {
        self.policy = policy
        self.clock = clock
    }

    /// Decides what to do about `exit`, counting a restart when the decision is to restart.
    public mutating func serverExited(_ exit: ServerExit, ranFor: Duration? = nil) -> RestartDecision {
        let now = clock.now
        let period = policy.intensity.period
        restarts.removeAll { !($0 <= now && $0.duration(to: now) < period) }
        let decision = policy.decide(after: exit, restarts: restarts, now: now, ranFor: ranFor)
        if case .restart = decision { restarts.append(now) }
        return decision
    }
}
