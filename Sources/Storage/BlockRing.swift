import CLimitless
import IPC
import Platform

/// A submission/completion ring pair in a client's registered buffer: the block protocol without
/// a message per I/O. The client writes request entries and publishes the SQ tail; the server's
/// serving loop polls the tail, submits everything new to the NVMe queue under one doorbell
/// (`NVMeIOQueue.beginBatch`), and posts completion entries with the CQ tail; the client polls
/// the CQ. No system call on either side per I/O, and the data area is registered (zero copy),
/// so the device reads and writes the client's pages. The shape follows NVMe's own queues
/// (NVMe 2.0 section 3.3.1): fixed-size entries, producer-owned tail, consumer-owned head.
///
/// Attached with MSG_BLOCK_REGISTER_BUFFER, param1 = `BlockRing.registerFlag`, over the whole
/// region. Layout (little-endian; every offset is computed from `entries`, never read back from
/// shared memory after attach):
///
/// ```
/// offset                      size          written by  contents
/// 0                           8             client      magic "LMTBRING"
/// 8                           4             client      version (1)
/// 12                          4             client      entries per ring (power of two, 2...4096)
/// 64                          4             client      SQ tail (next entry the client fills)
/// 128                         4             server      SQ head (next entry the server takes)
/// 192                         4             server      CQ tail (next completion the server posts)
/// 256                         4             client      CQ head (next completion the client reads)
/// 4096                        entries * 32  client      SQ entries: opcode u8 (1 read, 2 write), 3 pad,
///                                                       nsid u32, LBA u64, blocks u32, data offset u32, tag u64
/// 4096 + entries*32 (paged)   entries * 16  server      CQ entries: tag u64, status i32 (errno, 0 ok), bytes u32
/// dataOffset (paged)          rest          both        data area: an entry's data offset counts from here
/// ```
/// The server reads each SQ entry once into locals and checks it (namespace, range, transfer
/// size, data inside the data area) before using it; a bad entry completes with an errno. It
/// takes an SQ entry only when its completion is sure to fit in the CQ.
public enum BlockRing {
    public static let magic: UInt64 = 0x474E_4952_4254_4D4C  // "LMTBRING"
    public static let version: UInt32 = 1
    /// MSG_BLOCK_REGISTER_BUFFER param1 value that attaches the region as a ring.
    public static let registerFlag: UInt64 = 1
    public static let submissionEntrySize = 32
    public static let completionEntrySize = 16
    public static let opcodeRead: UInt8 = 1
    public static let opcodeWrite: UInt8 = 2

    static let versionOffset = 8
    static let entriesOffset = 12
    static let sqTailOffset = 64
    static let sqHeadOffset = 128
    static let cqTailOffset = 192
    static let cqHeadOffset = 256
    static let page = 4096

    static func roundUp(_ value: Int) -> Int { (value + page - 1) / page * page }
    public static func submissionOffset(entries: Int) -> Int { page }
    public static func completionOffset(entries: Int) -> Int { page + roundUp(entries * submissionEntrySize) }
    public static func dataOffset(entries: Int) -> Int { completionOffset(entries: entries) + roundUp(entries * completionEntrySize) }
    public static func regionSize(entries: Int, dataBytes: Int) -> Int { dataOffset(entries: entries) + roundUp(dataBytes) }

    /// The ring size of a region whose header the client wrote, or nil if it is not a ring or
    /// does not fit in `size` bytes.
    static func validEntries(_ base: UnsafeRawPointer, size: Int) -> Int? {
        guard size >= page, CL_dma_read64(base) == magic, CL_dma_read32(base + versionOffset) == version else { return nil }
        let entries = Int(CL_dma_read32(base + entriesOffset))
        guard entries >= 2, entries <= 4096, entries & (entries - 1) == 0, dataOffset(entries: entries) < size else { return nil }
        return entries
    }
}

/// The client's end of a ring (for `limitless-storage bench --ring` and any client that wants
/// the message-free path). Single-threaded. Create, share the region (`IPCClient.share`), then
/// attach with `BlockClient.attachRing`.
public final class BlockRingClient {
    public let memory: SharedMemory
    public let entries: Int
    let base: UnsafeMutableRawPointer
    /// Where request data lives: an entry's data offset counts from here.
    public let data: UnsafeMutableRawBufferPointer
    private var sqTail: UInt32 = 0
    private var cqHead: UInt32 = 0
    private var published: UInt32 = 0
    /// Requests submitted and not yet reaped.
    public private(set) var inFlight = 0

    public init(entries: Int, dataBytes: Int) throws(IPCError) {
        precondition(entries >= 2 && entries <= 4096 && entries & (entries - 1) == 0, "ring entries: a power of two, 2 to 4096")
        self.entries = entries
        memory = try SharedMemory(size: BlockRing.regionSize(entries: entries, dataBytes: dataBytes), name: "limitless-block-ring")
        base = UnsafeMutableRawPointer(mutating: memory.bytes.baseAddress!)
        base.storeBytes(of: BlockRing.magic.littleEndian, as: UInt64.self)
        base.storeBytes(of: BlockRing.version.littleEndian, toByteOffset: BlockRing.versionOffset, as: UInt32.self)
        base.storeBytes(of: UInt32(entries).littleEndian, toByteOffset: BlockRing.entriesOffset, as: UInt32.self)
        let offset = BlockRing.dataOffset(entries: entries)
        data = UnsafeMutableRawBufferPointer(start: base + offset, count: memory.size - offset)
    }

    /// Whether another request fits (the ring holds `entries` requests in flight).
    public var hasSpace: Bool { inFlight < entries }

    /// Writes one request entry; it goes to the server at the next `publish()`.
    public func enqueue(write: Bool, nsid: UInt32, lba: UInt64, blocks: UInt32, dataOffset: UInt32, tag: UInt64) -> Bool {
        guard hasSpace else { return false }
        let entry = base + BlockRing.submissionOffset(entries: entries) + Int(sqTail & UInt32(entries - 1)) * BlockRing.submissionEntrySize
        entry.storeBytes(of: UInt64(write ? BlockRing.opcodeWrite : BlockRing.opcodeRead), as: UInt64.self)
        entry.storeBytes(of: nsid.littleEndian, toByteOffset: 4, as: UInt32.self)
        entry.storeBytes(of: lba.littleEndian, toByteOffset: 8, as: UInt64.self)
        entry.storeBytes(of: blocks.littleEndian, toByteOffset: 16, as: UInt32.self)
        entry.storeBytes(of: dataOffset.littleEndian, toByteOffset: 20, as: UInt32.self)
        entry.storeBytes(of: tag.littleEndian, toByteOffset: 24, as: UInt64.self)
        sqTail &+= 1
        inFlight += 1
        return true
    }

    /// Publishes every entry written since the last publish (one store after a fence).
    public func publish() {
        guard published != sqTail else { return }
        CL_memory_barrier()
        (base + BlockRing.sqTailOffset).storeBytes(of: sqTail.littleEndian, as: UInt32.self)
        published = sqTail
    }

    /// Reads every completion posted so far: (tag, status, bytes). Returns how many.
    @discardableResult
    public func reap(_ body: (UInt64, IPCStatus, Int) -> Void) -> Int {
        let tail = UInt32(littleEndian: CL_dma_read32(base + BlockRing.cqTailOffset))
        guard tail != cqHead else { return 0 }
        CL_memory_barrier()
        var count = 0
        while cqHead != tail {
            let entry = base + BlockRing.completionOffset(entries: entries) + Int(cqHead & UInt32(entries - 1)) * BlockRing.completionEntrySize
            let tag = UInt64(littleEndian: entry.load(as: UInt64.self))
            let status = Int32(littleEndian: entry.load(fromByteOffset: 8, as: Int32.self))
            let bytes = UInt32(littleEndian: entry.load(fromByteOffset: 12, as: UInt32.self))
            cqHead &+= 1
            inFlight -= 1
            count += 1
            body(tag, IPCStatus(rawValue: status), Int(bytes))
        }
        CL_memory_barrier()
        (base + BlockRing.cqHeadOffset).storeBytes(of: cqHead.littleEndian, as: UInt32.self)
        return count
    }
}

/// The server's view of one attached ring: indices it owns, the client tags of requests in
/// flight (by SQ position), all preallocated at attach.
final class BlockRingServerState {
    let client: UInt64
    let handle: UInt32
    /// The client's uid (access checks per request, as for messages).
    let uid: UInt32
    let entries: Int
    let base: UnsafeMutableRawPointer
    let size: Int
    /// The data area (server mapping and device addresses).
    let data: DMABuffer
    var sqHead: UInt32 = 0
    var cqTail: UInt32 = 0
    /// Requests taken from the SQ whose completions are not yet posted.
    var inFlight = 0
    private var tags: [UInt64]
    private var bytes: [UInt32]
    private var freeTagSlots: [Int]

    init(client: UInt64, handle: UInt32, uid: UInt32, entries: Int, mapping: DMABuffer) {
        self.client = client
        self.handle = handle
        self.uid = uid
        self.entries = entries
        base = mapping.address
        size = mapping.size
        let offset = BlockRing.dataOffset(entries: entries)
        data = DMABuffer(address: mapping.address + offset, deviceAddress: mapping.deviceAddress + UInt64(offset), size: mapping.size - offset)
        tags = Array(repeating: 0, count: entries)
        bytes = Array(repeating: 0, count: entries)
        freeTagSlots = Array((0..<entries).reversed())
    }

    /// Entries the client has published and the server not yet taken (nil: indices corrupt).
    func published() -> Int? {
        let tail = UInt32(littleEndian: CL_dma_read32(base + BlockRing.sqTailOffset))
        let count = Int(tail &- sqHead)
        return count <= entries ? count : nil
    }

    /// Whether the client has completions posted that it has not read yet.
    var hasUnreadCompletions: Bool {
        UInt32(littleEndian: CL_dma_read32(base + BlockRing.cqHeadOffset)) != cqTail
    }

    /// Room for completions: the CQ holds `entries`; taken requests will each post one.
    func completionRoom() -> Int {
        let head = UInt32(littleEndian: CL_dma_read32(base + BlockRing.cqHeadOffset))
        let posted = Int(cqTail &- head)
        guard posted >= 0, posted <= entries else { return 0 }
        return entries - posted - inFlight
    }

    /// Reads the SQ entry at the head into locals (the client may change shared memory at any
    /// time: it is read once) and advances the head.
    func take() -> (opcode: UInt8, nsid: UInt32, lba: UInt64, blocks: UInt32, dataOffset: UInt32, tag: UInt64) {
        let entry = base + BlockRing.submissionOffset(entries: entries) + Int(sqHead & UInt32(entries - 1)) * BlockRing.submissionEntrySize
        CL_memory_barrier()
        let result = (UInt8(truncatingIfNeeded: entry.load(as: UInt64.self)),
                      UInt32(littleEndian: entry.load(fromByteOffset: 4, as: UInt32.self)),
                      UInt64(littleEndian: entry.load(fromByteOffset: 8, as: UInt64.self)),
                      UInt32(littleEndian: entry.load(fromByteOffset: 16, as: UInt32.self)),
                      UInt32(littleEndian: entry.load(fromByteOffset: 20, as: UInt32.self)),
                      UInt64(littleEndian: entry.load(fromByteOffset: 24, as: UInt64.self)))
        sqHead &+= 1
        return result
    }

    /// Publishes the SQ head (so the client sees what was taken).
    func publishHead() {
        (base + BlockRing.sqHeadOffset).storeBytes(of: sqHead.littleEndian, as: UInt32.self)
    }

    /// Remembers a request in flight; returns its slot (for the device tag).
    func hold(tag: UInt64, bytes count: UInt32) -> Int {
        let slot = freeTagSlots.removeLast()
        tags[slot] = tag
        bytes[slot] = count
        inFlight += 1
        return slot
    }

    /// Posts the completion of a held request (slot from `hold`).
    func complete(slot: Int, status: IPCStatus) {
        let tag = tags[slot]
        let count = status.isOK ? bytes[slot] : 0
        freeTagSlots.append(slot)
        inFlight -= 1
        post(tag: tag, status: status, bytes: count)
    }

    /// Posts a completion (also for entries refused before submission). The caller made sure
    /// there is room (`completionRoom`). Publishing the tail is `publishCompletions`.
    func post(tag: UInt64, status: IPCStatus, bytes count: UInt32) {
        let entry = base + BlockRing.completionOffset(entries: entries) + Int(cqTail & UInt32(entries - 1)) * BlockRing.completionEntrySize
        entry.storeBytes(of: tag.littleEndian, as: UInt64.self)
        entry.storeBytes(of: status.rawValue.littleEndian, toByteOffset: 8, as: Int32.self)
        entry.storeBytes(of: count.littleEndian, toByteOffset: 12, as: UInt32.self)
        cqTail &+= 1
    }

    func publishCompletions() {
        CL_memory_barrier()
        (base + BlockRing.cqTailOffset).storeBytes(of: cqTail.littleEndian, as: UInt32.self)
    }
}
