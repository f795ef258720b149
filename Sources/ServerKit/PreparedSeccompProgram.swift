import CLimitless
import Synchronization

/// A seccomp program built before it is needed (`ServerRuntime.prepareSeccompFilter`): a
/// standby instance builds its filter while it waits, and after its activation only installs
/// it. Used only for exactly the names, or the policy, it was built for.
enum PreparedSeccompProgram {
    /// What was built, and from what: the capability names and extra system calls, the policy
    /// they make (`base`), its form that puts VFIO requests to the supervisor (`notifying`, nil
    /// when there is nothing to put), and the program for `notifying ?? base`.
    struct Prepared: @unchecked Sendable {
        var capabilities: [String]
        var extra: [String]
        var base: SeccompPolicy
        var notifying: SeccompPolicy?
        var program: [sock_filter]

        /// The policy `program` is for.
        var policy: SeccompPolicy { notifying ?? base }
    }

    private static let kept = Mutex<Prepared?>(nil)

    /// Builds and keeps the program (replacing any kept before). A policy that cannot be built
    /// is not kept: `program(for:)` reports the error when it is needed.
    static func prepare(capabilities: [String], extra: [String], base: SeccompPolicy, notifying: SeccompPolicy?) {
        guard let program = try? (notifying ?? base).program() else { return }
        kept.withLock { $0 = Prepared(capabilities: capabilities, extra: extra, base: base, notifying: notifying, program: program) }
    }

    /// What was prepared from exactly these capability names and extra system calls: after a
    /// standby's activation the filter is installed without building the policy again (about
    /// 0.7 ms of the restart under TCG, issue 4).
    static func prepared(capabilities: [String], extra: [String]) -> Prepared? {
        guard let found = kept.withLock({ $0 }), found.capabilities == capabilities, found.extra == extra else { return nil }
        return found
    }

    /// The prepared program when it was built for `policy`, else a new one.
    static func program(for policy: SeccompPolicy) throws(ServerKitError) -> [sock_filter] {
        if let found = kept.withLock({ $0 }), found.policy == policy { return found.program }
        return try policy.program()
    }

    /// Whether a program is prepared for `policy` (tests).
    static func isPrepared(for policy: SeccompPolicy) -> Bool {
        kept.withLock { $0?.policy == policy }
    }
}
