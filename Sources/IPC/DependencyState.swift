/// What MSG_SUPERVISOR_DEPENDENCY_STATE says about a server another one depends on (param1; the
/// dependency's name is the inline payload). Part of the supervisor channel contract
/// (`SupervisorChannel`): the supervisor sends it to every running dependent, which keeps running
/// with reduced function while the dependency is away.
public enum DependencyState: UInt64, Sendable, CustomStringConvertible {
    /// It exited (crashed, was killed, or is being restarted); requests to it fail meanwhile.
    case down = 1
    /// A new instance registered: it serves again (clients reconnect to it).
    case up = 2
    /// It exceeded its restart intensity and will not come back by itself; the dependent is
    /// stopped next (dependents first, as for any stop).
    case failed = 3

    public var description: String {
        switch self {
        case .down: "down"
        case .up: "up"
        case .failed: "failed"
        }
    }
}

/// One decoded MSG_SUPERVISOR_DEPENDENCY_STATE.
public struct DependencyNotice: Equatable, Sendable, CustomStringConvertible {
    /// The dependency's name from servers.conf.
    public var name: String
    public var state: DependencyState
    /// The dependency's instance number the notice is about (0 when unknown).
    public var instance: UInt64

    public init(name: String, state: DependencyState, instance: UInt64 = 0) {
        self.name = name
        self.state = state
        self.instance = instance
    }

    public var description: String { "dependency \(name) \(state)" + (instance > 0 ? " (instance \(instance))" : "") }

    /// The message for this notice (param1 the state, param2 the instance; the name goes inline).
    public var message: Message {
        var message = Message(type: .supervisorDependencyState, param1: state.rawValue, param2: instance)
        message.setInlineData(count: UInt32(name.utf8.count))
        return message
    }

    /// Decodes a received notice; nil when the state or name is not valid.
    public init?(message: Message, payload: UnsafeRawBufferPointer) {
        guard message.type == .supervisorDependencyState, let state = DependencyState(rawValue: message.param1),
              case .inline(let offset, let count) = message.data, count > 0, offset + count <= payload.count else { return nil }
        self.name = String(decoding: UnsafeRawBufferPointer(rebasing: payload[offset..<(offset + count)]), as: UTF8.self)
        self.state = state
        self.instance = message.param2
    }
}
