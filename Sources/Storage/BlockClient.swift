import IPC

/// A client of the block protocol (`BlockProtocol`), over one `IPCClient` connection. Replies'
/// statuses are returned, not thrown; transport failures throw `IPCError`.
public final class BlockClient {
    public let connection: IPCClient
    public var timeout: Duration = .seconds(30)

    public init(connection: IPCClient) { self.connection = connection }

    public static func connect(name: String, directory: String) throws(IPCError) -> BlockClient {
        BlockClient(connection: try IPCClient.connect(name: name, directory: directory))
    }

    /// Connects and presents `tokens` (this process's CAP_BLOCK_READ / CAP_BLOCK_WRITE
    /// descriptors). A refused token is not an error here: the requests it would have allowed
    /// are answered EACCES, and the server logs why.
    public static func connect(name: String, directory: String, presenting tokens: [Int32]) throws(IPCError) -> BlockClient {
        let client = try connect(name: name, directory: directory)
        for token in tokens { _ = try client.present(token: token) }
        return client
    }

    /// MSG_BLOCK_PRESENT_CAPABILITY: sends the token descriptor (SCM_RIGHTS); on success the
    /// connection's rights now.
    public func present(token: Int32) throws(IPCError) -> Result<BlockRights, IPCStatus> {
        let reply = try connection.sendReceive(Message(type: .blockPresentCapability), descriptor: token, timeout: timeout)
        guard reply.status.isOK else { return .failure(reply.status) }
        return .success(BlockRights(rawValue: reply.message.param1))
    }

    public func openNamespace(_ nsid: UInt32) throws(IPCError) -> Result<BlockGeometry, IPCStatus> {
        let reply = try connection.sendReceive(Message(type: .blockOpenNamespace, param1: UInt64(nsid)), timeout: timeout)
        guard reply.status.isOK else { return .failure(reply.status) }
        return .success(BlockGeometry(blockSize: Int(reply.message.param1), blockCount: reply.message.param2))
    }

    public func geometry(_ nsid: UInt32) throws(IPCError) -> Result<BlockGeometry, IPCStatus> {
        let reply = try connection.sendReceive(Message(type: .blockGeometry, param1: UInt64(nsid)), timeout: timeout)
        guard reply.status.isOK else { return .failure(reply.status) }
        return .success(BlockGeometry(blockSize: Int(reply.message.param1), blockCount: reply.message.param2))
    }

    /// Inline read: the blocks come back in the reply's payload.
    public func read(_ nsid: UInt32, lba: UInt64, blocks: UInt64) throws(IPCError) -> Result<[UInt8], IPCStatus> {
        let reply = try connection.sendReceive(Message(type: .blockRead, param1: UInt64(nsid), param2: lba, param3: blocks), timeout: timeout)
        guard reply.status.isOK else { return .failure(reply.status) }
        return .success(reply.payload)
    }

    /// Read into `count` bytes at `offset` of the shared region `handle` (from `IPCClient.share`).
    public func read(_ nsid: UInt32, lba: UInt64, blocks: UInt64, sharedHandle handle: UInt32, offset: UInt32 = 0,
                     count: UInt32) throws(IPCError) -> IPCStatus {
        var message = Message(type: .blockRead, param1: UInt64(nsid), param2: lba, param3: blocks)
        message.setSharedData(handle: handle, offset: offset, count: count)
        return try connection.sendReceive(message, timeout: timeout).status
    }

    /// Inline write of `data` (exactly blocks × block size, at most 64 KiB).
    public func write(_ nsid: UInt32, lba: UInt64, blocks: UInt64, data: UnsafeRawBufferPointer) throws(IPCError) -> IPCStatus {
        var message = Message(type: .blockWrite, param1: UInt64(nsid), param2: lba, param3: blocks)
        message.setInlineData(count: UInt32(data.count))
        return try connection.sendReceive(message, payload: data, timeout: timeout).status
    }

    /// Write from `count` bytes at `offset` of the shared region `handle`.
    public func write(_ nsid: UInt32, lba: UInt64, blocks: UInt64, sharedHandle handle: UInt32, offset: UInt32 = 0,
                      count: UInt32) throws(IPCError) -> IPCStatus {
        var message = Message(type: .blockWrite, param1: UInt64(nsid), param2: lba, param3: blocks)
        message.setSharedData(handle: handle, offset: offset, count: count)
        return try connection.sendReceive(message, timeout: timeout).status
    }

    public func flush(_ nsid: UInt32) throws(IPCError) -> IPCStatus {
        try connection.sendReceive(Message(type: .blockFlush, param1: UInt64(nsid)), timeout: timeout).status
    }

    public func trim(_ nsid: UInt32, lba: UInt64, blocks: UInt64) throws(IPCError) -> IPCStatus {
        try connection.sendReceive(Message(type: .blockTrim, param1: UInt64(nsid), param2: lba, param3: blocks), timeout: timeout).status
    }

    // MARK: Registered buffers (zero copy)

    /// Registers `count` bytes at `offset` of the shared region `handle` (from
    /// `IPCClient.share`; writable, page aligned, whole pages) for zero copy: the server maps
    /// those pages for the device once. Afterwards reads and writes naming ranges of `handle`
    /// (`read`/`write(…, sharedHandle:…)`) move data between the device and this memory with no
    /// copy. Returns the registered handle (the same `handle`).
    public func registerBuffer(sharedHandle handle: UInt32, offset: UInt32 = 0, count: UInt32) throws(IPCError) -> Result<UInt32, IPCStatus> {
        var message = Message(type: .blockRegisterBuffer)
        message.setSharedData(handle: handle, offset: offset, count: count)
        let reply = try connection.sendReceive(message, timeout: timeout)
        guard reply.status.isOK else { return .failure(reply.status) }
        return .success(UInt32(truncatingIfNeeded: reply.message.param1))
    }

    /// Ends a registration: the server unmaps the pages from the device. Release the shared
    /// region itself (`IPCClient.release`) only after this.
    public func unregisterBuffer(sharedHandle handle: UInt32) throws(IPCError) -> IPCStatus {
        try connection.sendReceive(Message(type: .blockUnregisterBuffer, param1: UInt64(handle)), timeout: timeout).status
    }

    /// Attaches a `BlockRingClient`'s region (shared as `handle`, the whole region) as a ring:
    /// registered for zero copy like `registerBuffer`, and polled by the server's loop from then
    /// on. End it with `unregisterBuffer(sharedHandle:)`.
    public func attachRing(sharedHandle handle: UInt32, count: UInt32) throws(IPCError) -> Result<UInt32, IPCStatus> {
        var message = Message(type: .blockRegisterBuffer, param1: BlockRing.registerFlag)
        message.setSharedData(handle: handle, offset: 0, count: count)
        let reply = try connection.sendReceive(message, timeout: timeout)
        guard reply.status.isOK else { return .failure(reply.status) }
        return .success(UInt32(truncatingIfNeeded: reply.message.param1))
    }
}
