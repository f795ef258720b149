/// One client as a handler sees it: a plain value (no reference count touched per message).
/// `credentials` were read from the socket when the server accepted it (SO_PEERCRED).
public struct IPCConnection: Equatable, Hashable, Sendable {
    /// Unique for the server's lifetime (never reused, unlike descriptors and pids).
    public let id: UInt64
    public let credentials: PeerCredentials
}

/// What a handler gets besides the header. Every view is valid only during the handler call.
public struct IPCPayload {
    /// All inline bytes after the header.
    public let inline: UnsafeRawBufferPointer
    /// The bytes `data_ptr`/`data_size` name: a range of `inline`, or of a shared-memory region
    /// the client shared earlier (checked: handle known, range inside the region). Empty if none.
    public let data: UnsafeRawBufferPointer
    /// The same bytes, writable, when they lie in a shared region the client left writable (a
    /// read request's target buffer). Nil for inline data and for write-sealed regions.
    public let writableData: UnsafeMutableRawBufferPointer?
    /// Where the handler may put up to `Message.maxInlinePayload` bytes of reply payload; say
    /// how many in `IPCReply.payloadCount`.
    public let reply: UnsafeMutableRawBufferPointer
    /// The descriptor that came with a message of a type in
    /// `IPCServer.Configuration.descriptorMessages` (-1: none). The server closes it after the
    /// handler returns: dup it to keep it.
    public var descriptor: Int32 = -1
    /// What to pass to `IPCServer.complete` when the handler answers later (`IPCReply.deferred`);
    /// `.immediate` where that is not possible.
    public let replyToken: IPCReplyToken

    public init(inline: UnsafeRawBufferPointer, data: UnsafeRawBufferPointer, writableData: UnsafeMutableRawBufferPointer?,
                reply: UnsafeMutableRawBufferPointer, replyToken: IPCReplyToken = .immediate, descriptor: Int32 = -1) {
        self.inline = inline
        self.data = data
        self.writableData = writableData
        self.reply = reply
        self.replyToken = replyToken
        self.descriptor = descriptor
    }
}

/// A handler's answer. The server builds the reply header from it: same type and sequence as the
/// request, flag `.reply`, this status and params, and `payloadCount` bytes of `IPCPayload.reply`
/// as inline data at offset 0.
public struct IPCReply: Equatable, Sendable {
    public var status: IPCStatus
    public var param1: UInt64
    public var param2: UInt64
    public var param3: UInt64
    public var payloadCount: Int
    /// Set only by `.deferred`.
    public private(set) var isDeferred = false

    public init(status: IPCStatus = .ok, param1: UInt64 = 0, param2: UInt64 = 0, param3: UInt64 = 0, payloadCount: Int = 0) {
        self.status = status
        self.param1 = param1
        self.param2 = param2
        self.param3 = param3
        self.payloadCount = payloadCount
    }

    public static let ok = IPCReply()
    public static func error(_ status: IPCStatus) -> IPCReply { IPCReply(status: status) }

    /// "I will answer later": the server sends nothing now and counts the request against the
    /// client's `maxDeferredPerClient`; the handler keeps `IPCPayload.replyToken` and calls
    /// `IPCServer.complete` with it exactly once. Only when `replyToken.canDefer`.
    public static let deferred: IPCReply = {
        var reply = IPCReply()
        reply.isDeferred = true
        return reply
    }()
}

/// Codes an error reply carries in param1 when the server refused a message for reasons beyond
/// `MessageError` (whose codes are 1...7).
public enum IPCRefusal {
    /// A reply (flag .reply) was sent to a server.
    public static let replySentToServer: UInt64 = 8
    /// Descriptors came with a message other than MSG_IPC_SHARE (or a type in the server's
    /// `descriptorMessages`), or more than one with it.
    public static let unexpectedDescriptors: UInt64 = 9
    /// MSG_IPC_SHARE without a descriptor.
    public static let missingDescriptor: UInt64 = 10
    /// The datagram was longer than `Message.maxDatagramSize` (cut by the kernel, not decoded).
    public static let oversized: UInt64 = 2
    /// The client's queue was full (status EBUSY): the request was not run.
    public static let busy: UInt64 = 11
    /// The server has no room for another client (status EBUSY, then the connection is closed).
    public static let serverFull: UInt64 = 12
    /// On a shared-memory ring, with status EMSGSIZE: the reply did not fit a ring slot and was
    /// sent on the socket instead (`IPCClient` reads it there). Reserved: handlers do not use it.
    public static let replyOnSocket: UInt64 = 13
}
