/// Names one request whose reply a handler deferred (`IPCReply.deferred`): which client slot and
/// connection it came from, and the type and sequence the reply must carry. A plain value, so a
/// handler can keep thousands in a preallocated table; `IPCServer.complete` answers it later, on
/// the serving thread. A token whose client has gone is recognised (the connection id is unique
/// for the server's lifetime) and its completion discarded.
public struct IPCReplyToken: Equatable, Sendable {
    /// The client's slot in the server's table, and that slot's generation at the request.
    let slot: Int32
    let generation: UInt32
    public let connection: UInt64
    public let type: MessageType
    public let sequence: UInt32

    init(slot: Int32, generation: UInt32, connection: UInt64, type: MessageType, sequence: UInt32) {
        self.slot = slot
        self.generation = generation
        self.connection = connection
        self.type = type
        self.sequence = sequence
    }

    /// The token of a request that cannot be answered later (a shared-memory ring, or a handler
    /// called outside an `IPCServer`): the handler must answer at once.
    public static let immediate = IPCReplyToken(slot: -1, generation: 0, connection: 0, type: .ipcError, sequence: 0)

    /// Whether the handler may return `IPCReply.deferred` for this request.
    public var canDefer: Bool { slot >= 0 }
}
