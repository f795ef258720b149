import CLimitless
import Synchronization

/// A seccomp program built before it is needed (`ServerRuntime.prepareSeccompFilter`): a
/// standby instance builds its filter while it waits, and after its activation only installs
/// it. Used only for exactly the policy it was built for.
enum PreparedSeccompProgram {
    private struct Prepared: @unchecked Sendable {
        /// What it was built from (`ServerRuntime.prepareSeccompFilter`), when it was built from
        /// capability names: then `base` is the policy those names make.
        var inputs: (capabilities: [String], extra: [String], base: SeccompPolicy, notifying: Bool)?
        var policy: SeccompPolicy
        var program: [sock_filter]
    }

    private static let prepared = Mutex<Prepared?>(nil)

    /// Builds and keeps the program for `policy` (replacing any kept before). A policy that
    /// cannot be built is not kept: `program(for:)` reports the error when it is needed.
    static func prepare(_ policy: SeccompPolicy) {
        guard let program = try? policy.program() else { return }
        prepared.withLock { $0 = Prepared(policy: policy, program: program) }
    }

    /// The same for `notifying ?? base`, remembering the capability names and extra system
    /// calls `base` was made of (`notifying`: its supervisor-notifying form, if any), so that `prepared(capabilities:extra:)` finds it by those
    /// alone.
    static func prepare(notifying: SeccompPolicy?, base: SeccompPolicy, capabilities: [String], extra: [String]) {
        let policy = notifying ?? base
        guard let program = try? policy.program() else { return }
        prepared.withLock { $0 = Prepared(inputs: (capabilities, extra, base, notifying != nil), policy: policy, program: program) }
    }

    /// The policies and program prepared from exactly these capability names and extra system
    /// calls: after a standby's activation the filter is installed without building the policy
    /// again (about 0.7 ms of the restart under TCG, issue 4).
    static func prepared(capabilities: [String], extra: [String]) -> Match? {
        guard let kept = prepared.withLock({ $0 }), let inputs = kept.inputs,
              inputs.capabilities == capabilities, inputs.extra == extra else { return nil }
        return Match(base: inputs.base, notifying: inputs.notifying ? kept.policy : nil, program: kept.program)
    }

    /// A program found by `prepared(capabilities:extra:)`: for `notifying` (the policy that puts
    /// VFIO requests to the supervisor) when there is one, else for `base`.
    struct Match: @unchecked Sendable {
        var base: SeccompPolicy
        var notifying: SeccompPolicy?
        var program: [sock_filter]
    }

    /// The prepared program when it was built for `policy`, else a new one.
    static func program(for policy: SeccompPolicy) throws(ServerKitError) -> [sock_filter] {
        if let kept = prepared.withLock({ $0 }), kept.policy == policy { return kept.program }
        return try policy.program()
    }

    /// Whether a program is prepared for `policy` (tests).
    static func isPrepared(for policy: SeccompPolicy) -> Bool {
        prepared.withLock { $0?.policy == policy }
    }
}
