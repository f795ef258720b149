/// What an `IPCServer` runs on each request, as an object: the server keeps it alive with one
/// reference taken at start-up and calls it per request without touching its reference count
/// (a stored closure's context is retained around every call, once per request).
///
/// Called on the serving thread, and with `IPCServer.Configuration.maxRings` above 0 also on
/// each ring's thread at the same time, so it must be safe for that.
public protocol IPCRequestHandler: AnyObject, Sendable {
    /// Answers one request (see `IPCServer.Handler` for the arguments and `IPCReply` for the
    /// answer, `.deferred` included).
    func handle(_ request: Message, _ payload: IPCPayload, _ connection: IPCConnection) -> IPCReply

    /// Called on the serving thread on every wakeup, after reading and before serving queued
    /// messages: where a handler that defers answers collects its completions and calls
    /// `IPCServer.complete`. Does nothing unless the handler implements it.
    func pollCompletions()
}

extension IPCRequestHandler {
    public func pollCompletions() {}
}

/// The closure form of a handler (`IPCServer.Handler`) as an `IPCRequestHandler`, for servers
/// whose requests are not a hot path.
final class ClosureRequestHandler: IPCRequestHandler {
    private let body: IPCServer.Handler

    init(_ body: @escaping IPCServer.Handler) {
        self.body = body
    }

    func handle(_ request: Message, _ payload: IPCPayload, _ connection: IPCConnection) -> IPCReply {
        body(request, payload, connection)
    }
}

/// A handler held once and called without reference counting: `owner` keeps it alive for as
/// long as this value exists; `call` borrows it. The dispatch goes through a base class' method
/// rather than the protocol existential so that `Unmanaged` (which wants a class type) can hold
/// it.
struct UnretainedRequestHandler: @unchecked Sendable {
    private let owner: RequestDispatch
    /// A plain word: copy it into a local before a closure uses it, so that the closure captures
    /// no reference (capturing `self` to reach it retained `self` around every call).
    let call: BorrowedRequestHandler

    init<Handler: IPCRequestHandler>(_ handler: Handler) {
        owner = TypedRequestDispatch(handler)
        call = BorrowedRequestHandler(object: Unmanaged.passUnretained(owner))
    }
}

/// Calls a handler some `UnretainedRequestHandler` keeps alive: the load of an unmanaged
/// reference is a plain word, and `_withUnsafeGuaranteedRef` tells the optimizer the object
/// outlives the call, so neither retains.
struct BorrowedRequestHandler: @unchecked Sendable {
    fileprivate let object: Unmanaged<RequestDispatch>

    @inline(__always)
    func handle(_ request: Message, _ payload: IPCPayload, _ connection: IPCConnection) -> IPCReply {
        object._withUnsafeGuaranteedRef { $0.handle(request, payload, connection) }
    }

    @inline(__always)
    func pollCompletions() {
        object._withUnsafeGuaranteedRef { $0.pollCompletions() }
    }
}

/// The non-generic face of `TypedRequestDispatch` (what `Unmanaged` holds).
class RequestDispatch: @unchecked Sendable {
    func handle(_ request: Message, _ payload: IPCPayload, _ connection: IPCConnection) -> IPCReply {
        preconditionFailure("RequestDispatch.handle is overridden")
    }

    func pollCompletions() {}
}

/// Calls a handler of a known type: a direct call (specialized per handler type), its object
/// borrowed the same way.
private final class TypedRequestDispatch<Handler: IPCRequestHandler>: RequestDispatch, @unchecked Sendable {
    private let handler: Handler
    private let borrowed: Unmanaged<Handler>

    init(_ handler: Handler) {
        self.handler = handler
        borrowed = Unmanaged.passUnretained(handler)
    }

    override func handle(_ request: Message, _ payload: IPCPayload, _ connection: IPCConnection) -> IPCReply {
        borrowed._withUnsafeGuaranteedRef { $0.handle(request, payload, connection) }
    }

    override func pollCompletions() {
        borrowed._withUnsafeGuaranteedRef { $0.pollCompletions() }
    }
}
