import CLimitless
import Synchronization

/// A seccomp program built before it is needed (`ServerRuntime.prepareSeccompFilter`): a
/// standby instance builds its filter while it waits, and after its activation only installs
/// it. Used only for exactly the policy it was built for.
enum PreparedSeccompProgram {
    private struct Prepared: @unchecked Sendable {
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
