import Atomics
import CLimitless
#if canImport(Glibc)
import Glibc
#endif

/// The reading end of one ring. Exactly one per ring; it may move to another thread.
///
/// The consumer learns that slot `head` is filled from the slot's own stamp (== head + 1), so it
/// polls the very cache line it then reads. It keeps its head privately and only publishes it;
/// slot addresses come from `head & mask` with the mask fixed at attach, so nothing the peer
/// writes later can send a read outside the ring.
public struct RingConsumer: ~Copyable, @unchecked Sendable {
    @usableFromInline let memory: SharedRingMemory  // keeps the mapping alive; never touched per message
    @usableFromInline let header: UnsafeMutableRawPointer
    @usableFromInline let slots: UnsafeMutableRawPointer
    @usableFromInline let mask: UInt64
    @usableFromInline let capacity: UInt64
    @usableFromInline let slotSize: Int
    @usableFromInline let ring: Int
    /// Bytes of message one slot carries.
    public let payloadSize: Int
    /// Next position to read.
    @usableFromInline var head: UInt64
    /// Times this consumer went to sleep in the kernel (futex waits).
    public private(set) var sleeps = 0

    init(memory: SharedRingMemory, ring: Int) throws(RingError) {
        let layout = memory.layout
        let (head, _) = try SharedRingMemory.indices(ring, base: memory.base, layout: layout)
        self.memory = memory
        self.header = memory.base + layout.ringOffset(ring)
        self.slots = header + RingLayout.ringHeaderSize
        self.mask = UInt64(layout.capacity - 1)
        self.capacity = UInt64(layout.capacity)
        self.slotSize = layout.slotSize
        self.ring = ring
        self.payloadSize = layout.payloadSize
        self.head = head
    }

    /// Whether the next message is there. One load of a line the producer writes.
    @inlinable public var hasMessage: Bool {
        stamp(currentSlot).load(ordering: .acquiring) == head &+ 1
    }

    /// Messages published (flushed) and not yet read, from the producer's tail, which is checked:
    /// a tail more than one capacity from our head is an error.
    public func pending() throws(RingError) -> Int {
        let tail = tailWord.load(ordering: .acquiring)
        guard RingLayout.plausible(head: head, tail: tail, capacity: capacity) else {
            throw .corruptIndices(ring: RingLayout.ringName(ring), head: head, tail: tail, capacity: Int(capacity))
        }
        return tail > head ? Int(tail - head) : 0
    }

    /// Reads the next message in place, if there is one, and frees its slot. The bytes are shared
    /// memory the peer can still write: copy what must not change under you (or use
    /// `tryReceive(into:)`), and validate before trusting.
    @inlinable
    public mutating func tryReceive<Result>(_ body: (UnsafeRawBufferPointer) -> Result) -> Result? {
        let slot = currentSlot
        guard stamp(slot).load(ordering: .acquiring) == head &+ 1 else { return nil }
        let result = body(UnsafeRawBufferPointer(start: slot + RingLayout.stampSize, count: payloadSize))
        head &+= 1
        // Release: our reads of the slot happen before the producer may reuse it.
        headWord.store(head, ordering: .releasing)
        return result
    }

    /// Copies the next message (the first `buffer.count` bytes of the payload, at most
    /// `payloadSize`) into `buffer` and frees its slot. Returns false when the ring is empty.
    @inlinable
    public mutating func tryReceive(into buffer: UnsafeMutableRawBufferPointer) -> Bool {
        let slot = currentSlot
        guard stamp(slot).load(ordering: .acquiring) == head &+ 1 else { return false }
        if let destination = buffer.baseAddress {
            RingLayout.copy(destination, slot + RingLayout.stampSize, count: min(buffer.count, payloadSize))
        }
        head &+= 1
        headWord.store(head, ordering: .releasing)
        return true
    }

    /// Waits for a message: spins for `policy.spinNanoseconds`, then announces that it sleeps
    /// and sleeps on the futex until the producer wakes it. Returns false after
    /// `timeoutNanoseconds` without a message. Throws if the producer's tail is impossible.
    @inlinable
    public mutating func waitForMessage(policy: RingWaitPolicy = .adaptive, timeoutNanoseconds: UInt64 = .max) throws(RingError) -> Bool {
        if hasMessage { return true }
        return try waitForMessageSlowly(policy: policy, timeoutNanoseconds: timeoutNanoseconds)
    }

    /// The waiting half of `waitForMessage`, out of line: spin, then sleep.
    @usableFromInline
    mutating func waitForMessageSlowly(policy: RingWaitPolicy, timeoutNanoseconds: UInt64) throws(RingError) -> Bool {
        // A reply from a peer on another core usually lands within a few hundred cycles: look
        // for it before paying for the first clock read.
        if policy.spinNanoseconds > 0 {
            for _ in 0..<256 {
                CL_cpu_relax()
                if hasMessage { return true }
            }
        }
        let start = CL_monotonic_ns()
        let spinLimit = min(policy.spinNanoseconds, timeoutNanoseconds)
        // Spin phase: read the clock once per 64 pauses (a vDSO call, no system call).
        while CL_monotonic_ns() &- start < spinLimit {
            for _ in 0..<64 {
                CL_cpu_relax()
                if hasMessage { return true }
            }
        }
        // Sleep phase.
        while true {
            let elapsed = CL_monotonic_ns() &- start
            if elapsed >= timeoutNanoseconds { return hasMessage }
            // Announce, then re-check through the tail: the producer stores its tail and then reads
            // this word (both sequentially consistent), so either it sees 1 and wakes us, or we
            // see its tail here and do not sleep.
            sleepingWord.store(1, ordering: .sequentiallyConsistent)
            if hasMessage {  // enqueued before we announced, flush still to come
                sleepingWord.store(0, ordering: .relaxed)
                return true
            }
            if try published() {
                sleepingWord.store(0, ordering: .relaxed)
                if hasMessage { return true }
                // Tail says published but the stamp is not there yet: a moment's spin settles it.
                CL_cpu_relax()
                continue
            }
            sleeps &+= 1
            _ = Futex.wait(sleepingPointer, expected: 1,
                           timeoutNanoseconds: min(policy.sleepSliceNanoseconds, timeoutNanoseconds - elapsed))
            sleepingWord.store(0, ordering: .relaxed)
            if hasMessage { return true }
        }
    }

    /// Waits for the next message (see `waitForMessage`) and copies it into `buffer`.
    @inlinable
    public mutating func receive(into buffer: UnsafeMutableRawBufferPointer, policy: RingWaitPolicy = .adaptive,
                                 timeoutNanoseconds: UInt64 = .max) throws(RingError) -> Bool {
        guard try waitForMessage(policy: policy, timeoutNanoseconds: timeoutNanoseconds) else { return false }
        return tryReceive(into: buffer)
    }

    // MARK: Shared words

    /// Whether the tail says something is there; the tail is checked, a peer may write anything.
    private func published() throws(RingError) -> Bool {
        let tail = tailWord.load(ordering: .sequentiallyConsistent)
        guard RingLayout.plausible(head: head, tail: tail, capacity: capacity) else {
            throw .corruptIndices(ring: RingLayout.ringName(ring), head: head, tail: tail, capacity: Int(capacity))
        }
        return tail > head
    }
    @inlinable var currentSlot: UnsafeMutableRawPointer { slots + Int(truncatingIfNeeded: head & mask) &* slotSize }
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
