import SystemPackage

/// What can stop a benchmark, each with what to do next.
public enum BenchError: Error, CustomStringConvertible {
    /// A system call failed.
    case systemCall(String, Errno)
    /// The peer process exited badly or did not answer.
    case peerFailed(role: String, status: Int32)
    /// The peer stopped answering within the deadline.
    case peerTimedOut(role: String, seconds: Double)
    /// Unknown hidden role (only the benchmark itself passes --role).
    case unknownRole(String)
    /// The allocation probe's server answered wrongly, or the probe cannot count.
    case probe(String)

    public var description: String {
        switch self {
        case .systemCall(let call, let errno):
            return "\(call) failed: \(errno) (errno \(errno.rawValue))."
        case .peerFailed(let role, let status):
            return "the \(role) peer process failed (exit status \(status)); run `limitless-bench ipc` again, and if it "
                + "repeats run the peer alone with `limitless-bench ipc --role \(role) ...` to see its error."
        case .peerTimedOut(let role, let seconds):
            return "the \(role) peer did not answer within \(seconds) s: the machine may be overloaded; retry with "
                + "fewer --round-trips / --messages."
        case .unknownRole(let role):
            return "unknown peer role \"\(role)\": --role is internal to the benchmark; leave it out."
        case .probe(let problem):
            return "limitless-bench alloc: \(problem)."
        }
    }
}
