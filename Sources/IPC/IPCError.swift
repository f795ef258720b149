import SystemPackage

/// Everything the IPC transport can refuse, each with what happened and what to do next.
/// (A refused *message* is a `MessageError`; a server's answer is an `IPCStatus` in the reply.)
public enum IPCError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A server name that cannot be a file name in the runtime directory.
    case invalidName(String)
    /// The socket path does not fit in sockaddr_un's 108 bytes.
    case pathTooLong(String)
    /// Nothing listens at DIR/NAME.sock.
    case serverNotFound(name: String, directory: String)
    /// No NAME.pid file in the runtime directory names this pid.
    case noServerForPID(Int32, directory: String)
    /// Another live server already listens at this path.
    case addressInUse(String)
    /// No reply within the timeout.
    case timedOut(Duration)
    /// The other side closed the connection (server stopped or crashed, or it disconnected us for
    /// repeated protocol errors).
    case disconnected
    /// Inline payload over `Message.maxInlinePayload`.
    case payloadTooLarge(Int)
    /// The server's reply failed validation.
    case badReply(MessageError)
    /// The server answered a control request (share, release) with an error status.
    case refused(MessageType, IPCStatus)
    /// A system call failed in a way no case above describes.
    case systemCall(String, Errno)

    public var description: String {
        switch self {
        case .invalidName(let name):
            return "invalid server name \"\(name)\": use 1 to 64 characters from [A-Za-z0-9._-], not starting with a dot."
        case .pathTooLong(let path):
            return "socket path \(path) is longer than the 107 bytes a Unix socket address holds; use a shorter runtime directory."
        case .serverNotFound(let name, let directory):
            return "no server \"\(name)\" listens in \(directory) (no \(directory)/\(name).sock, or nobody accepts on it); "
                + "start it, or check the runtime directory both sides use."
        case .noServerForPID(let pid, let directory):
            return "no server with pid \(pid) is registered in \(directory) (no NAME.pid file holds that pid); connect by name instead."
        case .addressInUse(let path):
            return "\(path) is in use by a running server; stop it first or choose another name."
        case .timedOut(let timeout):
            return "no reply within \(timeout); the server may be overloaded or stuck (check it with MSG_IPC_PING)."
        case .disconnected:
            return "the server closed the connection (it stopped, crashed, or dropped this client after repeated malformed messages); reconnect."
        case .payloadTooLarge(let size):
            return "inline payload of \(size) bytes exceeds \(Message.maxInlinePayload); pass it through shared memory (IPCClient.share)."
        case .badReply(let error):
            return "malformed reply from the server: \(error)"
        case .refused(let type, .ENOTCONN):
            return "the connection to the server broke (it stopped or restarted) before it answered \(type); the request was "
                + "not sent again because it was not marked idempotent, so it may or may not have taken effect: check, then retry."
        case .refused(let type, let status):
            return "the server refused \(type) with \(status)."
        case .systemCall(let call, let errno):
            return "\(call) failed: \(errno) (errno \(errno.rawValue))."
        }
    }

    /// A `ReconnectingIPCClient` request that was in flight when the connection broke and was
    /// not replayed (not idempotent): `.refused(type, .ENOTCONN)`.
    public var isNotReplayed: Bool {
        if case .refused(_, .ENOTCONN) = self { return true }
        return false
    }
}
