/// Where everything sits in a ring pair's memfd. Both processes compute offsets from the two
/// numbers here (validated), never from offsets stored in shared memory, so a hostile header can
/// make attach fail but cannot point us outside the mapping.
///
/// ```
/// offset                          size   written by  contents
/// 0                               4096   creator     pair header: magic "LMTRPAIR", version, slot size, capacity, ring count
/// 4096 + k*ringStride             128    creator     ring k header: magic "LMTRING0", version, slot size, capacity, k
///   +128                          128    producer    tail: next position to fill (published after the slot)
///   +256                          128    consumer    head: next position to read (the producer reads it only when full)
///   +384                          128    both        consumer-sleeping futex word (1: asleep, wake me)
///   +512 + i*slotSize             slot   producer    slot i: stamp (UInt64, position + 1 once filled), payload
/// ```
/// Ring 0 carries requests (client to server), ring 1 responses (server to client).
/// Producer and consumer words sit 128 bytes apart: the adjacent-line prefetcher fetches lines in
/// pairs, so 64-byte separation would still bounce one index's line on the other side's writes.
///
/// Each slot carries its own stamp so the consumer learns "filled" and reads the message from the
/// same cache line: one line moves between cores per message, the same as the bare cache-line
/// ping-pong floor. Polling a separate tail index would move two lines (tail, then slot).
public struct RingLayout: Equatable, Sendable {
    /// Bytes per slot, a power of two from 16 to 4096, stamp included.
    public let slotSize: Int
    /// Slots per ring, a power of two from 2 to 2^20.
    public let capacity: Int

    /// Bytes of message a slot carries: the slot minus its 8-byte stamp.
    @inlinable public var payloadSize: Int { slotSize - Self.stampSize }

    public init(slotSize: Int = 64, capacity: Int = 1024) throws(RingError) {
        func bad(_ reason: String) -> RingError { .invalidLayout(slotSize: slotSize, capacity: capacity, reason: reason) }
        guard slotSize >= 16, slotSize <= 4096, slotSize & (slotSize - 1) == 0 else {
            throw bad("the slot size must be a power of two from 16 to 4096 bytes")
        }
        guard capacity >= 2, capacity <= 1 << 20, capacity & (capacity - 1) == 0 else {
            throw bad("the capacity must be a power of two from 2 to 1048576 slots")
        }
        guard capacity * slotSize <= 256 << 20 else { throw bad("a ring may hold at most 256 MiB of slots") }
        self.slotSize = slotSize
        self.capacity = capacity
    }

    /// Bytes from one ring's header to the next (page-rounded).
    public var ringStride: Int { (Self.ringHeaderSize + capacity * slotSize + Self.pageSize - 1) / Self.pageSize * Self.pageSize }
    /// Bytes the memfd must have.
    public var totalSize: Int { Self.pairHeaderSize + Self.ringCount * ringStride }
    /// Where ring `index` (0: requests, 1: responses) starts.
    public func ringOffset(_ index: Int) -> Int { Self.pairHeaderSize + index * ringStride }

    // Constants of the format (version 1).
    static let version: UInt32 = 1
    static let pairMagic: UInt64 = 0x5249_4150_5254_4D4C  // "LMTRPAIR" in memory order
    static let ringMagic: UInt64 = 0x3047_4E49_5254_4D4C  // "LMTRING0" in memory order
    static let ringCount = 2
    static let pageSize = 4096
    static let pairHeaderSize = 4096
    @inlinable static var ringHeaderSize: Int { 512 }
    @inlinable static var stampSize: Int { 8 }

    // Header fields (pair header and ring header share the first 20 bytes).
    static let magicOffset = 0          // UInt64
    static let versionOffset = 8        // UInt32
    static let slotSizeOffset = 12      // UInt32
    static let capacityOffset = 16      // UInt32
    static let ringCountOffset = 20     // UInt32, pair header: ring count; ring header: ring index
    // Ring header, one 128-byte block per writer.
    @inlinable static var tailOffset: Int { 128 }         // UInt64
    @inlinable static var headOffset: Int { 256 }         // UInt64
    @inlinable static var sleepingOffset: Int { 384 }     // UInt32 futex word

    /// Whether a head and a tail read from shared memory can both be right: they are at most one
    /// capacity apart, either way (see `SharedRingMemory.indices`).
    @inlinable
    static func plausible(head: UInt64, tail: UInt64, capacity: UInt64) -> Bool {
        tail >= head ? tail - head <= capacity : head - tail <= capacity
    }

    /// Copies `count` bytes between a caller's buffer and a slot. Messages that fit a cache line
    /// (the usual 64-byte slot carries 56 bytes) move as 8-byte words, inlined into the caller,
    /// instead of a call to memmove; larger ones use memmove. The buffers never overlap.
    @inlinable @inline(__always)
    static func copy(_ destination: UnsafeMutableRawPointer, _ source: UnsafeRawPointer, count: Int) {
        guard count <= 64 else {
            destination.copyMemory(from: source, byteCount: count)
            return
        }
        var offset = 0
        while offset &+ 8 <= count {
            destination.storeBytes(of: source.loadUnaligned(fromByteOffset: offset, as: UInt64.self),
                                   toByteOffset: offset, as: UInt64.self)
            offset &+= 8
        }
        while offset < count {
            destination.storeBytes(of: source.load(fromByteOffset: offset, as: UInt8.self), toByteOffset: offset, as: UInt8.self)
            offset &+= 1
        }
    }

    /// Zeroes `count` bytes of a slot (the tail a short message leaves), by words when small.
    @inlinable @inline(__always)
    static func zero(_ destination: UnsafeMutableRawPointer, count: Int) {
        guard count <= 64 else {
            destination.initializeMemory(as: UInt8.self, repeating: 0, count: count)
            return
        }
        var offset = 0
        while offset &+ 8 <= count {
            destination.storeBytes(of: 0 as UInt64, toByteOffset: offset, as: UInt64.self)
            offset &+= 8
        }
        while offset < count {
            destination.storeBytes(of: 0 as UInt8, toByteOffset: offset, as: UInt8.self)
            offset &+= 1
        }
    }

    @usableFromInline
    static func ringName(_ index: Int) -> String { index == 0 ? "request" : "response" }
}
