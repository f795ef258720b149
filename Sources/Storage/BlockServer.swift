import IPC

/// The block protocol's server logic (see `BlockProtocol` for the table): decodes and validates a
/// request, checks the client's access, runs it on the `BlockDevice`, and builds the reply.
/// `handle` runs on the IPC server's one thread, which is also the only user of the device.
public final class BlockServer: @unchecked Sendable {
    public let device: any BlockDevice
    public let policy: BlockAccessPolicy
    private let log: @Sendable (String) -> Void
    /// Requests served (any status), for statistics.
    public private(set) var requests: UInt64 = 0
    public private(set) var deviceErrors: UInt64 = 0

    public init(device: any BlockDevice, policy: BlockAccessPolicy = .acceptAll, log: @escaping @Sendable (String) -> Void = { _ in }) {
        self.device = device
        self.policy = policy
        self.log = log
    }

    /// An IPC server at `directory/name.sock` answering with `handle`. Call `start()` on it.
    public func makeIPCServer(name: String, directory: String) throws(IPCError) -> IPCServer {
        try IPCServer(name: name, directory: directory) { [self] message, payload, connection in
            handle(message, payload, connection.credentials.uid)
        }
    }

    public func handle(_ message: Message, _ payload: IPCPayload, _ uid: UInt32) -> IPCReply {
        requests &+= 1
        let sharedWritable: Bool
        if case .shared = message.data { sharedWritable = payload.writableData != nil } else { sharedWritable = true }
        let request: BlockRequest
        switch BlockRequestDecoder.decode(message, sharedWritable: sharedWritable, geometry: device.geometry) {
        case .failure(let status): return .error(status)
        case .success(let decoded): request = decoded
        }
        guard policy.allows(request, uid: uid) else {
            log("uid \(uid) refused \(message.type) (\(request.isWrite ? "CAP_BLOCK_WRITE" : "CAP_BLOCK_READ") not allowed)")
            return .error(.EACCES)
        }
        let geometry = device.geometry(request.nsid)!
        do throws(BlockDeviceError) {
            switch request {
            case .openNamespace:
                return IPCReply(param1: UInt64(geometry.blockSize), param2: geometry.blockCount)
            case .geometry:
                return IPCReply(param1: UInt64(geometry.blockSize), param2: geometry.blockCount,
                                param3: UInt64(BlockProtocol.maxSharedBytes))
            case .read(let nsid, let lba, let blocks, let toShared):
                let bytes = blocks * geometry.blockSize
                if toShared {
                    let target = UnsafeMutableRawBufferPointer(rebasing: payload.writableData![..<bytes])
                    try device.read(nsid: nsid, lba: lba, blocks: blocks, into: target)
                    return IPCReply(param1: UInt64(bytes))
                }
                let target = UnsafeMutableRawBufferPointer(rebasing: payload.reply[..<bytes])
                try device.read(nsid: nsid, lba: lba, blocks: blocks, into: target)
                return IPCReply(param1: UInt64(bytes), payloadCount: bytes)
            case .write(let nsid, let lba, let blocks):
                try device.write(nsid: nsid, lba: lba, blocks: blocks, from: payload.data)
                return IPCReply(param1: UInt64(payload.data.count))
            case .flush(let nsid):
                try device.flush(nsid: nsid)
                return .ok
            case .trim(let nsid, let lba, let blocks):
                try device.trim(nsid: nsid, lba: lba, blocks: blocks)
                return .ok
            }
        } catch {
            deviceErrors &+= 1
            log("\(message.type) nsid \(request.nsid) failed: \(error.detail) -> \(error.status)")
            return .error(error.status)
        }
    }
}
