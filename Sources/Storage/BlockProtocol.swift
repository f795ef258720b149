import IPC

/// The block protocol `storage_server` speaks on `RUNTIME_DIR/NAME.sock` (IPC messages of the
/// 0x02xx range, `MessageType.block…`). Every request names a namespace in param1; every reply
/// carries an errno-style status (`IPCStatus`). Data moves either inline (the request's or the
/// reply's payload, at most `BlockProtocol.maxInlineBytes` = 64 KiB) or through a shared-memory
/// region the client shared earlier (`IPCClient.share`) and names with `Message.setSharedData`.
///
/// | Message                    | param1 | param2 | param3 | data (request)                                   | reply on success                                                |
/// |----------------------------|--------|--------|--------|--------------------------------------------------|-----------------------------------------------------------------|
/// | MSG_BLOCK_OPEN_NAMESPACE   | nsid   | -      | -      | none                                             | ok; param1 block size, param2 block count                       |
/// | MSG_BLOCK_GEOMETRY         | nsid   | -      | -      | none                                             | ok; param1 block size, param2 block count, param3 max bytes per request (shared) |
/// | MSG_BLOCK_READ             | nsid   | LBA    | blocks | none: data comes back inline (≤ 64 KiB); or a shared, writable region of ≥ blocks × block size | ok; inline: payload = the blocks; shared: the blocks are in the region, param1 = bytes |
/// | MSG_BLOCK_WRITE            | nsid   | LBA    | blocks | exactly blocks × block size, inline or shared    | ok; param1 = bytes written                                      |
/// | MSG_BLOCK_FLUSH            | nsid   | -      | -      | none                                             | ok (everything acknowledged before is on stable media)          |
/// | MSG_BLOCK_TRIM             | nsid   | LBA    | blocks | none                                             | ok (the range is deallocated; reads return what DLFEAT says)    |
/// | MSG_BLOCK_REGISTER_BUFFER  | 0 or 1 | -      | -      | shared: the region (range) to register: writable, page aligned, whole pages; param1 1: the region is a `BlockRing` | ok; param1 = the share handle, param2 = bytes registered |
/// | MSG_BLOCK_UNREGISTER_BUFFER| handle | -      | -      | none                                             | ok (the pages are unmapped from the device)                      |
/// | MSG_BLOCK_PRESENT_CAPABILITY | -    | -      | -      | none; one descriptor (SCM_RIGHTS): a CAP_BLOCK_READ or CAP_BLOCK_WRITE token from the supervisor | ok; param1 = the connection's rights now (`BlockRights`: 1 read, 2 write) |
///
/// Access: capabilities are descriptors. The supervisor gives each server granted CAP_BLOCK_READ
/// or CAP_BLOCK_WRITE a token (a sealed memfd) and tells the block provider which token stands
/// for which right (`BlockCapabilityTokens`). A client presents its tokens once per connection
/// (MSG_BLOCK_PRESENT_CAPABILITY); from then on the connection has exactly the rights of the
/// tokens it presented, re-checked per request, so a revoke takes effect on its next request.
/// A connection that presents nothing is judged by its uid (`BlockAccessPolicy`; storage_server
/// admits root only unless `--allow-uid` says otherwise). Present errors: EACCES (not a token
/// this server knows, or revoked), EINVAL (no descriptor).
///
/// Zero copy: after MSG_BLOCK_REGISTER_BUFFER the server has the client's pages mapped in the
/// device's IOMMU domain (VFIO_IOMMU_MAP_DMA on its own mapping of the memfd, once). A read or
/// write whose shared data (handle, offset, count) lies inside a registered range then moves data
/// between the device and those pages directly: the PRPs point at the client buffer's IOVAs, no
/// bounce buffer, no copy; the reply's param2 is 1 (0 when the data was copied). Registrations
/// belong to the connection: another client's requests never use them. They end with
/// MSG_BLOCK_UNREGISTER_BUFFER, when the client vanishes (its process exits, or its connection
/// closes: the serving loop sweeps at once when the connection count drops, and every second),
/// or when the server stops; each end unmaps. Unregister before releasing the share
/// (MSG_IPC_RELEASE): until then the IOMMU keeps the old pages pinned and reachable.
/// With param1 = 1 (`BlockRing.registerFlag`) the region holds a submission/completion ring
/// pair and a data area (`BlockRing` has the layout): the server polls it, and requests and
/// completions travel through shared memory with no message per I/O.
/// Registration errors: EINVAL (no shared region, read-only, not whole pages), EEXIST (already
/// registered), ENOSPC (the server's table is full), ENOMEM (the IOMMU mapping failed), ENOTSUP
/// (the device cannot map client memory: UIO), EBADF (unregister of an unknown handle).
///
/// Errors (reply status):
/// - `ENOENT`: nsid is not an active namespace.
/// - `EINVAL`: blocks = 0; data of the wrong size (write) or a shared region too small (read);
///   a read's shared region that is write-sealed.
/// - `ERANGE` (34): LBA + blocks runs past the end of the namespace (checked before anything is
///   submitted; also when the device itself reports LBA Out of Range).
/// - `EMSGSIZE`: an inline read of more than 64 KiB, or a request over
///   `BlockProtocol.maxSharedBytes` (send larger transfers as several requests).
/// - `EACCES`: the connection lacks the capability: CAP_BLOCK_READ for open/geometry/read,
///   CAP_BLOCK_WRITE for write/flush/trim (its presented tokens, or without tokens its uid; see
///   `BlockAccessPolicy`). The server logs which capability was missing.
/// - `EIO`: the device failed the command (the NVMe status is logged by the server).
/// - `EBADF`: an unknown shared-memory handle (answered by the IPC layer).
/// - `ENOSYS`: a message type this server does not serve.
///
/// Inline and plain shared data goes through the server's DMA bounce buffer (a copy each way);
/// registered buffers do not (zero copy, above).
public enum BlockProtocol {
    /// The largest inline data of one message (a read's reply or a write's request).
    public static let maxInlineBytes = Message.maxInlinePayload
    /// The largest transfer one request may ask for through shared memory.
    public static let maxSharedBytes = 8 << 20
}

/// One namespace as clients see it.
public struct BlockGeometry: Equatable, Sendable {
    public var blockSize: Int
    public var blockCount: UInt64
    public init(blockSize: Int, blockCount: UInt64) {
        self.blockSize = blockSize
        self.blockCount = blockCount
    }
    public var capacityBytes: UInt64 { blockCount &* UInt64(blockSize) }
}

/// Where a request's data is (or where a read's data should go).
public enum BlockDataPlace: Equatable, Sendable {
    case none
    case inline(count: Int)
    case shared(count: Int)
}

/// A decoded and validated block request.
public enum BlockRequest: Equatable, Sendable {
    case openNamespace(nsid: UInt32)
    case geometry(nsid: UInt32)
    case read(nsid: UInt32, lba: UInt64, blocks: Int, toShared: Bool)
    case write(nsid: UInt32, lba: UInt64, blocks: Int)
    case flush(nsid: UInt32)
    case trim(nsid: UInt32, lba: UInt64, blocks: Int)

    public var nsid: UInt32 {
        switch self {
        case .openNamespace(let n), .geometry(let n), .flush(let n): n
        case .read(let n, _, _, _), .write(let n, _, _), .trim(let n, _, _): n
        }
    }

    /// Whether the request changes the device (needs CAP_BLOCK_WRITE rather than CAP_BLOCK_READ).
    public var isWrite: Bool {
        switch self {
        case .write, .flush, .trim: true
        default: false
        }
    }
}

/// Request decoding and validation as pure functions: no device, no socket.
public enum BlockRequestDecoder {
    /// Decodes `type`/params/data against the namespaces `geometry` knows. Returns the request or
    /// the status to reply with.
    public static func decode(type: MessageType, param1: UInt64, param2: UInt64, param3: UInt64,
                              data: BlockDataPlace, sharedWritable: Bool = true,
                              geometry: (UInt32) -> BlockGeometry?) -> Result<BlockRequest, IPCStatus> {
        guard type.rawValue >= 0x0200, type.rawValue <= 0x0205 else { return .failure(.ENOSYS) }
        guard param1 > 0, param1 <= UInt64(UInt32.max), let namespace = geometry(UInt32(param1)) else {
            return .failure(.ENOENT)
        }
        let nsid = UInt32(param1)
        switch type {
        case .blockOpenNamespace:
            return .success(.openNamespace(nsid: nsid))
        case .blockGeometry:
            return .success(.geometry(nsid: nsid))
        case .blockFlush:
            return .success(.flush(nsid: nsid))
        default:
            break
        }
        // A ranged request: LBA in param2, blocks in param3.
        let lba = param2
        guard param3 > 0 else { return .failure(.EINVAL) }
        guard lba < namespace.blockCount, param3 <= namespace.blockCount - lba else { return .failure(.ERANGE) }
        let blocks = Int(param3)  // <= blockCount, which fits
        if type == .blockTrim {
            return .success(.trim(nsid: nsid, lba: lba, blocks: blocks))
        }
        let (bytes, overflow) = UInt64(blocks).multipliedReportingOverflow(by: UInt64(namespace.blockSize))
        switch type {
        case .blockRead:
            switch data {
            case .none, .inline:
                guard !overflow, bytes <= UInt64(BlockProtocol.maxInlineBytes) else { return .failure(.EMSGSIZE) }
                return .success(.read(nsid: nsid, lba: lba, blocks: blocks, toShared: false))
            case .shared(let count):
                guard !overflow, bytes <= UInt64(BlockProtocol.maxSharedBytes) else { return .failure(.EMSGSIZE) }
                guard sharedWritable, UInt64(count) >= bytes else { return .failure(.EINVAL) }
                return .success(.read(nsid: nsid, lba: lba, blocks: blocks, toShared: true))
            }
        case .blockWrite:
            let count: Int
            switch data {
            case .none: count = 0
            case .inline(let c): count = c
            case .shared(let c):
                guard !overflow, bytes <= UInt64(BlockProtocol.maxSharedBytes) else { return .failure(.EMSGSIZE) }
                count = c
            }
            guard !overflow, UInt64(count) == bytes else { return .failure(.EINVAL) }
            return .success(.write(nsid: nsid, lba: lba, blocks: blocks))
        default:
            return .failure(.ENOSYS)
        }
    }

    /// The same for a message as the IPC server hands it over.
    public static func decode(_ message: Message, sharedWritable: Bool,
                              geometry: (UInt32) -> BlockGeometry?) -> Result<BlockRequest, IPCStatus> {
        let place: BlockDataPlace
        switch message.data {
        case .none: place = .none
        case .inline(_, let count): place = .inline(count: count)
        case .shared(_, _, let count): place = .shared(count: count)
        }
        return decode(type: message.type, param1: message.param1, param2: message.param2, param3: message.param3,
                      data: place, sharedWritable: sharedWritable, geometry: geometry)
    }
}

/// Who may use the server without presenting capability tokens: `CAP_BLOCK_READ` (open,
/// geometry, read) and `CAP_BLOCK_WRITE` (write, flush, trim) are checked per request against
/// the client's uid from SO_PEERCRED. storage_server uses `rootOnly` unless told otherwise
/// (an administrator's `limitless-storage`); servers prove their rights with tokens instead.
public struct BlockAccessPolicy: Equatable, Sendable {
    public enum Rule: Equatable, Sendable {
        case anyone
        case uids(Set<UInt32>)
        func allows(_ uid: UInt32) -> Bool {
            switch self {
            case .anyone: true
            case .uids(let set): set.contains(uid)
            }
        }
    }

    public var readers: Rule
    public var writers: Rule

    public init(readers: Rule = .anyone, writers: Rule = .anyone) {
        self.readers = readers
        self.writers = writers
    }

    public static let acceptAll = BlockAccessPolicy()
    public static let rootOnly = BlockAccessPolicy(readers: .uids([0]), writers: .uids([0]))

    public func allows(_ request: BlockRequest, uid: UInt32) -> Bool {
        request.isWrite ? writers.allows(uid) : readers.allows(uid)
    }
}
