import CLimitless
import Platform

/// A producer ring the driver fills and the controller consumes: the command ring, and later
/// transfer rings (xHCI 1.2 section 4.9.2 "Transfer Ring Management", 4.9.3 "Command Ring
/// Management"). One segment whose last slot is a Link TRB back to the start with Toggle Cycle
/// set, so each pass around the ring flips the Producer Cycle State (4.9.2.2, 4.11.5.1).
///
/// TRBs are written in place in DMA memory; the cycle bit (which hands a TRB to the controller)
/// is written last, after a barrier.
public struct XHCIProducerRing {
    public let segment: DMABuffer
    /// TRB slots including the Link TRB.
    public let capacity: Int
    public private(set) var enqueueIndex = 0
    /// The cycle bit value that marks a TRB as valid for the controller (starts at 1; the
    /// ring memory starts zeroed, so nothing is valid until written).
    public private(set) var producerCycle = true
    /// How many times the ring has wrapped through its Link TRB.
    public private(set) var wraps = 0

    /// `capacity` TRBs, 16 to 4096 (one segment must not cross a 64 KiB boundary, table 6-1).
    public init(capacity: Int, allocator: DMAAllocator) throws(XHCIError) {
        precondition(capacity >= 2 && capacity <= 4096, "a ring segment holds 2 to 4096 TRBs")
        self.capacity = capacity
        let bytes = capacity * XHCITRB.size
        do {
            // Aligned to its own (power of two) size, it cannot cross a 64 KiB boundary.
            var alignment = 64
            while alignment < bytes { alignment <<= 1 }
            segment = try allocator.allocate(size: bytes, alignment: max(alignment, 4096))
        } catch {
            throw .dmaAllocationFailed(what: "TRB ring (\(capacity) TRBs)", reason: "\(error)")
        }
        // The Link TRB is written now with cycle 0 (not yet valid) and handed over on first wrap.
        let link = XHCITRB.link(to: segment.deviceAddress, toggleCycle: true)
        let entry = segment.address + (capacity - 1) * XHCITRB.size
        link.writeBody(to: entry)
        entry.storeBytes(of: link.control.littleEndian, toByteOffset: 12, as: UInt32.self)
    }

    /// The device address of the slot the next TRB goes to.
    public var enqueueDeviceAddress: UInt64 { segment.deviceAddress + UInt64(enqueueIndex * XHCITRB.size) }

    /// Writes `trb` with the current cycle bit and returns its device address (which a Command
    /// Completion or Transfer Event points back at). On reaching the Link TRB, gives it to the
    /// controller and flips the producer cycle state.
    @discardableResult
    public mutating func enqueue(_ trb: XHCITRB) -> UInt64 {
        let address = enqueueDeviceAddress
        let entry = segment.address + enqueueIndex * XHCITRB.size
        trb.writeBody(to: entry)
        CL_memory_barrier()
        let control = (trb.control & ~1) | (producerCycle ? 1 : 0)
        entry.storeBytes(of: control.littleEndian, toByteOffset: 12, as: UInt32.self)
        enqueueIndex += 1
        if enqueueIndex == capacity - 1 {
            let link = segment.address + enqueueIndex * XHCITRB.size
            let linkControl = UInt32(XHCITRBType.link.rawValue) << 10 | XHCITRB.toggleCycle | (producerCycle ? 1 : 0)
            CL_memory_barrier()
            link.storeBytes(of: linkControl.littleEndian, toByteOffset: 12, as: UInt32.self)
            enqueueIndex = 0
            producerCycle.toggle()
            wraps += 1
        }
        return address
    }
}

/// The event ring of one interrupter: a single segment described by a one-entry Event Ring
/// Segment Table (xHCI 1.2 section 4.9.4 "Event Ring Management", 6.5 "Event Ring Segment
/// Table"). The controller produces; the driver consumes by the Consumer Cycle State and
/// reports progress through ERDP.
public struct XHCIEventRing {
    public let segment: DMABuffer
    /// The ERST: one 16-byte entry (ring segment base 63:6, segment size 15:0 in TRBs).
    public let segmentTable: DMABuffer
    public let capacity: Int
    public private(set) var dequeueIndex = 0
    public private(set) var consumerCycle = true
    public private(set) var wraps = 0

    /// `capacity` TRBs, 16 to 4096 (6.5: segment size; QEMU rejects others).
    public init(capacity: Int, allocator: DMAAllocator) throws(XHCIError) {
        precondition(capacity >= 16 && capacity <= 4096, "an event ring segment holds 16 to 4096 TRBs")
        self.capacity = capacity
        do {
            segment = try allocator.allocate(size: capacity * XHCITRB.size, alignment: 65536)
            segmentTable = try allocator.allocate(size: 64, alignment: 64)
        } catch {
            throw .dmaAllocationFailed(what: "event ring (\(capacity) TRBs)", reason: "\(error)")
        }
        segmentTable.address.storeBytes(of: segment.deviceAddress.littleEndian, toByteOffset: 0, as: UInt64.self)
        segmentTable.address.storeBytes(of: UInt32(capacity).littleEndian, toByteOffset: 8, as: UInt32.self)
        segmentTable.address.storeBytes(of: UInt32(0), toByteOffset: 12, as: UInt32.self)
    }

    /// The ERDP value for the current dequeue position (pointer bits 63:4; DESI 0 for one segment).
    public var dequeueDeviceAddress: UInt64 { segment.deviceAddress + UInt64(dequeueIndex * XHCITRB.size) }

    /// The next event if the controller has written one (its cycle bit equals the consumer
    /// cycle state), consumed. ERDP is not written; see `XHCIController.acknowledgeEvents`.
    @inline(__always)
    public mutating func nextEvent() -> XHCITRB? {
        let entry = segment.address + dequeueIndex * XHCITRB.size
        let control = CL_dma_read32(entry + 12)
        guard (control & 1 != 0) == consumerCycle else { return nil }
        CL_memory_barrier()
        let trb = XHCITRB(parameter: CL_dma_read64(entry), status: CL_dma_read32(entry + 8), control: control)
        dequeueIndex += 1
        if dequeueIndex == capacity {
            dequeueIndex = 0
            consumerCycle.toggle()
            wraps += 1
        }
        return trb
    }
}
