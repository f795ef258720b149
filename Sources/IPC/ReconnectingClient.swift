#if canImport(Glibc)
import Glibc
#endif

/// A client that survives its server's restarts: when the connection breaks (the server crashed,
/// was restarted by the supervisor, or closed us), it connects again by the server's name, with
/// backoff, until `Options.reconnectDeadline`.
///
/// What happens to the request in flight depends on what the caller said about it:
/// - never delivered (sendmsg failed with EPIPE/ECONNRESET: the server never saw it): sent again
///   on the new connection, whatever it is;
/// - delivered but unanswered, `idempotent: true` (a read, a stat, a ping): sent again;
/// - delivered but unanswered, not idempotent (a write, a rename): not replayed, since it may
///   have taken effect; the call throws `IPCError.refused(type, .ENOTCONN)` (`isNotReplayed`),
///   whose description says so. The next call uses the new connection.
/// Every request thus ends in a reply or a thrown error; none vanishes. When the server does not
/// come back by the deadline, the call throws what the last connect attempt threw
/// (`serverNotFound`, usually).
///
/// Not thread-safe, like `IPCClient`: one thread (or actor) at a time. The reply forms mirror
/// `IPCClient.sendReceive`; the `into:` form allocates nothing while the connection holds.
public final class ReconnectingIPCClient {
    public struct Options: Sendable {
        /// How long one request may spend reconnecting before it fails.
        public var reconnectDeadline: Duration = .seconds(30)
        /// The first pause between connect attempts; doubled after each, up to `maximumBackoff`.
        public var initialBackoff: Duration = .milliseconds(5)
        public var maximumBackoff: Duration = .milliseconds(250)
        public init() {}
    }

    public let name: String
    public let directory: String
    /// Read at each break, so it may be changed between requests.
    public var options: Options
    /// The current connection; nil between a break and the next request.
    public private(set) var client: IPCClient?
    /// Connections made after the first.
    public private(set) var reconnects = 0
    /// Requests sent again after a break (never delivered, or idempotent).
    public private(set) var replays = 0
    /// Called with each new connection after a break, before any request is replayed on it (to
    /// share memory again, say: handles do not survive the server). A throw from it fails the
    /// request that was reconnecting.
    public var onReconnect: ((IPCClient) throws(IPCError) -> Void)?

    /// Connects to `DIR/NAME.sock`, waiting up to `options.reconnectDeadline` for the server to
    /// appear (it may be starting, or restarting, right now).
    public init(name: String, directory: String = IPCRuntime.defaultDirectory, options: Options = Options()) throws(IPCError) {
        self.name = name
        self.directory = directory
        self.options = options
        client = try connect(deadline: monotonicNanoseconds() + options.reconnectDeadline.nanoseconds)
    }

    /// Sends a request and waits for its reply, across a server restart (see the type's notes on
    /// what is replayed). Thrown: transport failures that a reconnect does not cure, `.timedOut`,
    /// and `.refused(type, .ENOTCONN)` for an unanswered request that is not idempotent.
    public func sendReceive(_ message: Message, payload: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0),
                            idempotent: Bool, timeout: Duration? = .seconds(10)) throws(IPCError) -> IPCClient.Reply {
        try perform(message, payload: payload, idempotent: idempotent, viaRing: { (client) throws(IPCError) -> IPCClient.Reply? in
            try client.ringSendReceive(message, payload: payload, timeout: timeout)
        }) { (client, sequence) throws(IPCError) -> IPCClient.Reply in
            try client.awaitReply(sequence: sequence, timeout: timeout)
        }
    }

    /// The allocation-free form (as `IPCClient.sendReceive(_:payload:into:timeout:)`).
    public func sendReceive(_ message: Message, payload: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0),
                            into reply: UnsafeMutableRawBufferPointer, idempotent: Bool,
                            timeout: Duration? = .seconds(10)) throws(IPCError) -> (Message, Int) {
        try perform(message, payload: payload, idempotent: idempotent, viaRing: { (client) throws(IPCError) -> (Message, Int)? in
            try client.ringSendReceive(message, payload: payload, into: reply, timeout: timeout)
        }) { (client, sequence) throws(IPCError) -> (Message, Int) in
            try client.awaitReply(sequence: sequence, into: reply, timeout: timeout)
        }
    }

    /// MSG_IPC_PING, idempotent by nature.
    public func ping(timeout: Duration? = .seconds(10)) throws(IPCError) {
        let reply = try sendReceive(Message(type: .ipcPing), idempotent: true, timeout: timeout)
        guard reply.status.isOK else { throw .refused(.ipcPing, reply.status) }
    }

    /// Closes the connection; the next request connects again.
    public func disconnect() {
        client = nil
    }

    // MARK: Plumbing

    /// Sends `message` and waits for its reply with `awaitReply`, reconnecting on a break. A
    /// break while sending means the server never got the message (a SEQPACKET datagram is
    /// queued whole or not at all), so it is sent again whatever it is; a break while waiting
    /// replays only an idempotent request.
    ///
    /// With a shared-memory ring attached (`IPCClient.attachRing`, say from `onReconnect`), a
    /// request that fits a slot goes over the ring; a break there cannot tell "not delivered"
    /// from "not answered", so it counts as the latter.
    private func perform<T>(_ message: Message, payload: UnsafeRawBufferPointer, idempotent: Bool,
                            viaRing: (IPCClient) throws(IPCError) -> T?,
                            _ awaitReply: (IPCClient, UInt32) throws(IPCError) -> T) throws(IPCError) -> T {
        var deadline: Int64?  // set at the first break: this request's reconnect budget
        while true {
            let client: IPCClient
            if let current = self.client {
                client = current
            } else {
                let limit = deadline ?? monotonicNanoseconds() + options.reconnectDeadline.nanoseconds
                // A server that accepts and drops us again and again must not keep us forever.
                if deadline != nil && monotonicNanoseconds() >= limit { throw .disconnected }
                deadline = limit
                client = try reconnect(deadline: limit)
            }
            if client.isRingAttached {
                do throws(IPCError) {
                    if let reply = try viaRing(client) { return reply }
                } catch .disconnected {
                    self.client = nil
                    if !idempotent { throw .refused(message.type, .ENOTCONN) }
                    replays += 1
                    continue
                }
            }
            let sequence: UInt32
            do throws(IPCError) {
                sequence = try client.send(message, payload: payload)
            } catch .disconnected {
                self.client = nil
                replays += 1
                continue
            }
            do throws(IPCError) {
                return try awaitReply(client, sequence)
            } catch .disconnected {
                self.client = nil
                if !idempotent { throw .refused(message.type, .ENOTCONN) }
                replays += 1
            }
        }
    }

    private func reconnect(deadline: Int64) throws(IPCError) -> IPCClient {
        let client = try connect(deadline: deadline)
        reconnects += 1
        self.client = client
        do throws(IPCError) {
            try onReconnect?(client)
        } catch {
            self.client = nil
            throw error
        }
        return client
    }

    /// Connect attempts with doubling pauses until one succeeds or `deadline` passes. Only
    /// "nobody listens there" (no socket file yet, or a stale one: ENOENT, ECONNREFUSED) is
    /// worth waiting out; a bad name or path is thrown at once.
    private func connect(deadline: Int64) throws(IPCError) -> IPCClient {
        var pause = options.initialBackoff.nanoseconds
        while true {
            do throws(IPCError) {
                return try IPCClient.connect(name: name, directory: directory)
            } catch .serverNotFound(let name, let directory) {
                let left = deadline - monotonicNanoseconds()
                if left <= 0 { throw .serverNotFound(name: name, directory: directory) }
                let nap = min(pause, left)
                var request = timespec(tv_sec: Int(nap / 1_000_000_000), tv_nsec: Int(nap % 1_000_000_000))
                _ = nanosleep(&request, nil)
                pause = min(pause * 2, options.maximumBackoff.nanoseconds)
            }
        }
    }
}
