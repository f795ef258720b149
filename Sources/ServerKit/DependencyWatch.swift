import IPC
import Synchronization

/// What a server knows about the servers it depends on, from the supervisor's
/// MSG_SUPERVISOR_DEPENDENCY_STATE notices: the last state of each, handlers to call, and a
/// stream for servers written with async/await. The supervisor does not stop a dependent when a
/// dependency crashes; the dependent keeps serving what it can and learns here when the
/// dependency is back (then its clients reconnect, see `ReconnectingIPCClient`).
final class DependencyWatch: Sendable {
    private struct State {
        var latest: [String: DependencyState] = [:]
        var handlers: [@Sendable (DependencyNotice) -> Void] = []
    }

    private let state = Mutex(State())
    let stream: AsyncStream<DependencyNotice>
    private let continuation: AsyncStream<DependencyNotice>.Continuation

    init() {
        // The newest 64: a server that never reads the stream loses old notices, not memory.
        (stream, continuation) = AsyncStream.makeStream(of: DependencyNotice.self, bufferingPolicy: .bufferingNewest(64))
    }

    deinit { continuation.finish() }

    func addHandler(_ handler: @escaping @Sendable (DependencyNotice) -> Void) {
        state.withLock { $0.handlers.append(handler) }
    }

    func latest(_ name: String) -> DependencyState? {
        state.withLock { $0.latest[name] }
    }

    /// Records a notice and hands it to the handlers (outside the lock: a handler may call back).
    func deliver(_ notice: DependencyNotice) {
        let handlers = state.withLock { state in
            state.latest[notice.name] = notice.state
            return state.handlers
        }
        for handler in handlers { handler(notice) }
        continuation.yield(notice)
    }
}

extension ServerRuntime {
    /// Calls `handler` (on the thread that runs `register`, `pollSupervisor` or
    /// `runUntilStopped`) for every dependency notice: a dependency went down, came back up, or
    /// failed for good (then this server is stopped next). Every notice is also logged.
    public func onDependencyChange(_ handler: @escaping @Sendable (DependencyNotice) -> Void) {
        dependencies.addHandler(handler)
    }

    /// The same notices as an async sequence (the newest 64 are kept for a slow reader).
    public var dependencyNotices: AsyncStream<DependencyNotice> { dependencies.stream }

    /// The last state the supervisor reported for `name`; nil before any notice (a dependency is
    /// running when this server starts, since the supervisor starts dependents after it).
    public func dependencyState(_ name: String) -> DependencyState? {
        dependencies.latest(name)
    }
}
