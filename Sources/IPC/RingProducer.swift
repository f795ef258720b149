import Atomics
import CLimitless
#if canImport(Glibc)
import Glibc
#endif

/// The writing end of one ring. Exactly one per ring (the type is not copyable, so it cannot be
/// duplicated by accident); it may move to another thread.
///
/// Per message: copy into the slot, one release store of the slot's stamp, and, when the message
/// is published, one store of the tail plus one load of the consumer's sleep word, which normally
/// hits in this core's cache. No allocation, no reference counting, no system call unless the
/// consumer announced that it sleeps.
public struct RingProducer: ~Copyable, @unchecked Sendable {
    @usableFromInline let memory: SharedRingMemory  // keeps the mapping alive; never touched per message
    @usableFromInline let header: UnsafeMutableRawPointer
    @usableFromInline let slots: UnsafeMutableRawPointer
    @usableFromInline let mask: UInt64
    @usableFromInline let capacity: UInt64
    @usableFromInline let slotSize: Int
    @usableFromInline let ring: Int
    /// Bytes of message one slot carries.
    public let payloadSize: Int
    /// Next position to fill; only this process writes the shared tail, so the private copy is the truth.
    @usableFromInline var tail: UInt64
    /// Last head read from the consumer; re-read only when the ring looks full.
    @usableFromInline var knownHead: UInt64
    /// Futex wakes issued (each a system call): with batching, at most one per flush.
    public internal(set) var wakeups = 0

    init(memory: SharedRingMemory, ring: Int) throws(RingError) {
        let layout = memory.layout
        let (head, tail) = try SharedRingMemory.indices(ring, base: memory.base, layout: layout)
        self.memory = memory
        self.header = memory.base + layout.ringOffset(ring)
        self.slots = header + RingLayout.ringHeaderSize
        self.mask = UInt64(layout.capacity - 1)
        self.capacity = UInt64(layout.capacity)
        self.slotSize = layout.slotSize
        self.ring = ring
        self.payloadSize = layout.payloadSize
        // A consumer may have read stamped slots whose tail was never published (a producer that
        // died mid-batch): continue after what it read.
        self.tail = max(tail, head)
        self.knownHead = head
    }

    /// Messages written and not yet taken by the consumer, as far as this side knows.
    @inlinable public var queued: Int { Int(tail &- knownHead) }

    /// Whether a slot is free. Reads the consumer's head only when the cached one says full, and
    /// checks it: a head that runs backwards or past the tail means a faulty peer.
    @inlinable
    public mutating func hasSpace() throws(RingError) -> Bool {
        if tail &- knownHead < capacity { return true }
        return try refreshHead()
    }

    /// The slow half of `hasSpace`: the ring looked full, so read and check the consumer's head.
    @usableFromInline
    mutating func refreshHead() throws(RingError) -> Bool {
        let head = headWord.load(ordering: .acquiring)
        guard head >= knownHead, head <= tail else {
            throw .corruptIndices(ring: RingLayout.ringName(ring), head: head, tail: tail, capacity: Int(capacity))
        }
        knownHead = head
        return tail &- head < capacity
    }

    /// Writes one message in place without publishing it: `fill` gets the slot's payload bytes.
    /// The consumer may see it at once (its stamp is set), but is not woken until `flush()`.
    /// Returns false when the ring is full.
    @inlinable
    public mutating func tryEnqueue(_ fill: (UnsafeMutableRawBufferPointer) -> Void) throws(RingError) -> Bool {
        guard try hasSpace() else { return false }
        let slot = slots + Int(truncatingIfNeeded: tail & mask) &* slotSize
        fill(UnsafeMutableRawBufferPointer(start: slot + RingLayout.stampSize, count: payloadSize))
        stamp(slot).store(tail &+ 1, ordering: .releasing)
        tail &+= 1
        return true
    }

    /// Copies `message` (at most `payloadSize` bytes; the rest of the slot is zeroed) into the next
    /// slot without waking the consumer. Returns false when the ring is full.
    @inlinable
    public mutating func tryEnqueue(_ message: UnsafeRawBufferPointer) throws(RingError) -> Bool {
        let count = message.count
        guard count <= payloadSize else { throw .messageTooLarge(size: count, limit: payloadSize) }
        return try tryEnqueue { slot in
            let destination = slot.baseAddress.unsafelyUnwrapped
            if let source = message.baseAddress { RingLayout.copy(destination, source, count: count) }
            if count < slot.count { RingLayout.zero(destination + count, count: slot.count &- count) }
        }
    }

    /// Publishes everything enqueued and wakes the consumer if, and only if, it said it sleeps:
    /// a batch of any size costs at most one wake.
    @inlinable
    public mutating func flush() {
        // Sequentially consistent store, then load: against the consumer's "set sleeping, then
        // read tail", one of the two sides must see the other (no lost wake-up). On x86 the
        // store is one xchg; the load hits in cache while the consumer is awake.
        tailWord.store(tail, ordering: .sequentiallyConsistent)
        if sleepingWord.load(ordering: .sequentiallyConsistent) != 0 {
            wakeSleeper()
        }
    }

    /// The consumer said it sleeps: take the flag and wake it (off the inlined path).
    @usableFromInline
    mutating func wakeSleeper() {
        if sleepingWord.exchange(0, ordering: .sequentiallyConsistent) != 0 {
            Futex.wakeAll(sleepingPointer)
            wakeups &+= 1
        }
    }

    /// Enqueues and publishes one message. Returns false when the ring is full.
    @inlinable
    public mutating func trySend(_ message: UnsafeRawBufferPointer) throws(RingError) -> Bool {
        guard try tryEnqueue(message) else { return false }
        flush()
        return true
    }

    /// Sends one message, waiting while the ring is full: spinning, then yielding the CPU (a full
    /// ring is back-pressure from a slow consumer, which wakes nobody). Returns false if the ring
    /// stayed full for `timeoutNanoseconds`.
    @inlinable
    public mutating func send(_ message: UnsafeRawBufferPointer, timeoutNanoseconds: UInt64 = .max) throws(RingError) -> Bool {
        if try trySend(message) { return true }
        return try sendAfterWaiting(message, timeoutNanoseconds: timeoutNanoseconds)
    }

    /// The slow half of `send`: the ring was full.
    @usableFromInline
    mutating func sendAfterWaiting(_ message: UnsafeRawBufferPointer, timeoutNanoseconds: UInt64) throws(RingError) -> Bool {
        guard try waitForSpace(timeoutNanoseconds: timeoutNanoseconds) else { return false }
        return try trySend(message)
    }

    /// Waits until a slot is free; false after `timeoutNanoseconds`. Publishes what is enqueued
    /// first, so a consumer that sleeps drains the ring.
    public mutating func waitForSpace(timeoutNanoseconds: UInt64 = .max) throws(RingError) -> Bool {
        if try hasSpace() { return true }
        flush()
        let start = CL_monotonic_ns()
        var rounds = 0
        while true {
            for _ in 0..<64 {
                CL_cpu_relax()
                if try hasSpace() { return true }
            }
            rounds &+= 1
            let elapsed = CL_monotonic_ns() &- start
            if elapsed >= timeoutNanoseconds { return try hasSpace() }
            if elapsed > 20_000 { sched_yield() }
        }
    }

    // MARK: Shared words

    @inlinable func stamp(_ slot: UnsafeMutableRawPointer) -> UnsafeAtomic<UInt64> {
        UnsafeAtomic(at: slot.assumingMemoryBound(to: UInt64.AtomicRepresentation.self))
    }
    @inlinable var tailWord: UnsafeAtomic<UInt64> {
        UnsafeAtomic(at: (header + RingLayout.tailOffset).assumingMemoryBound(to: UInt64.AtomicRepresentation.self))
    }
    @inlinable var headWord: UnsafeAtomic<UInt64> {
        UnsafeAtomic(at: (header + RingLayout.headOffset).assumingMemoryBound(to: UInt64.AtomicRepresentation.self))
    }
    @inlinable var sleepingPointer: UnsafeMutablePointer<UInt32> {
        (header + RingLayout.sleepingOffset).assumingMemoryBound(to: UInt32.self)
    }
    @inlinable var sleepingWord: UnsafeAtomic<UInt32> {
        UnsafeAtomic(at: (header + RingLayout.sleepingOffset).assumingMemoryBound(to: UInt32.AtomicRepresentation.self))
    }
}
