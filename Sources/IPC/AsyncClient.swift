import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// `IPCClient` for async/await: `send`, `receive` and `sendReceive` suspend instead of blocking.
/// A socket that is not ready is handed to `IPCReactor`, whose own thread waits for it, so no
/// thread of the cooperative pool is ever blocked; timeouts are deadlines the reactor enforces.
///
/// One task at a time, like `IPCClient` (it is not Sendable: keep it in one task or actor).
/// Errors are `IPCError`, or `CancellationError` when the task is cancelled while waiting (a
/// request already sent then has its reply kept for a later `receive`). Shared-memory rings are
/// not used here: waiting on a ring means spinning or a futex sleep, both of which hold a thread.
public final class AsyncIPCClient {
    /// The synchronous client underneath (for `share`, `release` and the like, which block
    /// briefly).
    public let client: IPCClient

    public init(_ client: IPCClient) {
        self.client = client
    }

    /// Connects to `DIR/NAME.sock` (connect(2) on a Unix socket does not wait for the server).
    public static func connect(name: String, directory: String = IPCRuntime.defaultDirectory) throws(IPCError) -> AsyncIPCClient {
        AsyncIPCClient(try IPCClient.connect(name: name, directory: directory))
    }

    /// Sends one request without waiting for its reply; returns its sequence number. Suspends
    /// while the socket buffer is full, at most `timeout` (nil: no limit).
    @discardableResult
    public func send(_ message: Message, payload: [UInt8] = [], timeout: Duration? = .seconds(10)) async throws -> UInt32 {
        let deadline = Self.deadline(timeout)
        while true {
            let sequence = try payload.withUnsafeBytes { (bytes) throws(IPCError) -> UInt32? in
                try client.trySendNow(message, payload: bytes)
            }
            if let sequence { return sequence }
            try await waitFor(.writable, deadline: deadline, timeout: timeout)
        }
    }

    /// The next reply (a stashed one first), waiting at most `timeout` (nil: no limit).
    public func receive(timeout: Duration? = .seconds(10)) async throws -> IPCClient.Reply {
        try await reply(sequence: nil, timeout: timeout)
    }

    /// Sends a request and waits for its reply (replies to other requests that arrive first are
    /// kept for `receive`). A non-OK status is the server's answer and is returned, not thrown.
    public func sendReceive(_ message: Message, payload: [UInt8] = [], timeout: Duration? = .seconds(10)) async throws -> IPCClient.Reply {
        let deadline = Self.deadline(timeout)
        let sequence = try await send(message, payload: payload, timeout: timeout)
        let left = deadline.map { Duration.nanoseconds(max(0, $0 - monotonicNanoseconds())) }
        return try await reply(sequence: sequence, timeout: left)
    }

    // MARK: Plumbing

    private func reply(sequence: UInt32?, timeout: Duration?) async throws -> IPCClient.Reply {
        if let (message, payload) = client.takeStashed(sequence: sequence) {
            return IPCClient.Reply(message: message, payload: Array(payload))
        }
        let deadline = Self.deadline(timeout)
        while true {
            while let (message, count) = try client.receiveAvailable() {
                if sequence == nil || message.sequence == sequence {
                    return IPCClient.Reply(message: message, payload: Array(client.receivedPayload(count)))
                }
                client.stash(message, payloadCount: count)
            }
            try await waitFor(.readable, deadline: deadline, timeout: timeout)
        }
    }

    private func waitFor(_ interest: IPCReactor.Interest, deadline: Int64?, timeout: Duration?) async throws {
        if let deadline, monotonicNanoseconds() >= deadline { throw IPCError.timedOut(timeout ?? .zero) }
        let ready = await IPCReactor.shared.wait(client.fd, for: interest, deadline: deadline)
        try Task.checkCancellation()
        if !ready, let deadline, monotonicNanoseconds() >= deadline { throw IPCError.timedOut(timeout ?? .zero) }
    }

    private static func deadline(_ timeout: Duration?) -> Int64? {
        timeout.map { monotonicNanoseconds() + $0.nanoseconds }
    }
}
