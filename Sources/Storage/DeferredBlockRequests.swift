import IPC
import Platform

/// Message-path requests on the device queue, waiting for their command's completion to be
/// answered (`IPCReply.deferred`), and the bounce slots their inline or shared-memory data
/// goes through.
///
/// Preallocated: `capacity` entries and the bounce slots (`slotBytes` each, carved from the
/// device's bounce buffer) sit on free stacks, so taking and returning one allocates nothing. A
/// command's tag is `tagBit | entry index`; ring commands (`BlockRing`) never set `tagBit`.
struct DeferredBlockRequests {
    struct Entry {
        var token: IPCReplyToken
        /// The reply on success (params; payloadCount is set from `replyBytes`).
        var reply: IPCReply
        /// The bounce slot used, or -1 (zero copy, flush, trim).
        var slot: Int32
        /// A read through a bounce slot: where its data goes at completion (a shared region,
        /// kept mapped by `IPCServer` while the answer is outstanding), or nil for inline data.
        var copyOut: UnsafeMutableRawPointer?
        /// A read: bytes of data to copy out or send inline; 0 otherwise.
        var replyBytes: Int
        var inlineReply: Bool
    }

    static let tagBit: UInt64 = 1 << 63
    /// The largest inline payload: one bounce slot holds any inline request's data.
    static let slotBytes = Message.maxInlinePayload

    let bounce: DMABuffer
    private var entries: [Entry]
    private var freeEntries: [Int32]
    private var freeSlots: [Int32]
    let capacity: Int
    let slotCount: Int

    init(bounce: DMABuffer, capacity: Int) {
        self.bounce = bounce
        self.capacity = capacity
        slotCount = bounce.size / Self.slotBytes
        entries = Array(repeating: Entry(token: .immediate, reply: .ok, slot: -1, copyOut: nil, replyBytes: 0,
                                         inlineReply: false), count: capacity)
        freeEntries = (0..<Int32(capacity)).reversed()
        freeSlots = (0..<Int32(slotCount)).reversed()
    }

    var inFlight: Int { capacity - freeEntries.count }
    var freeBounceSlots: Int { freeSlots.count }
    var hasRoom: Bool { !freeEntries.isEmpty }

    mutating func takeSlot() -> Int32? { freeSlots.popLast() }

    func slotBuffer(_ slot: Int32, bytes: Int) -> DMABuffer {
        let offset = Int(slot) * Self.slotBytes
        return DMABuffer(address: bounce.address + offset, deviceAddress: bounce.deviceAddress + UInt64(offset), size: bytes)
    }

    /// Files a request; returns its device tag. `hasRoom` must hold.
    mutating func add(_ entry: Entry) -> UInt64 {
        let index = freeEntries.removeLast()
        entries[Int(index)] = entry
        return Self.tagBit | UInt64(index)
    }

    /// The request with device tag `tag`, if it is one.
    func entry(tag: UInt64) -> Entry? {
        let index = Int(tag & 0xFFFF_FFFF)
        guard tag & Self.tagBit != 0, index < capacity else { return nil }
        return entries[index]
    }

    /// Frees the request with device tag `tag` and its bounce slot (once its data is used, or
    /// when its submission failed).
    mutating func release(tag: UInt64) {
        let index = Int(tag & 0xFFFF_FFFF)
        if entries[index].slot >= 0 { freeSlots.append(entries[index].slot) }
        entries[index].slot = -1
        freeEntries.append(Int32(index))
    }

}
