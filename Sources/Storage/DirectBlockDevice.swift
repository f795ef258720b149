import IPC
import NVMe
import Platform

/// A block device that can move data straight between the medium and memory it mapped for DMA
/// (zero copy): the registered client buffers of `MSG_BLOCK_REGISTER_BUFFER`. The server maps a
/// client's shared region once (`mapClientMemory`), then every read or write naming a range of it
/// hands the device that range's device address; no bounce buffer, no copy.
///
/// Same thread rule as `BlockDevice`: one caller (the IPC server's thread).
public protocol DirectBlockDevice: BlockDevice {
    /// Makes `memory` (page aligned, whole pages, writable) reachable by the device; the result
    /// carries the device address (an IOVA under VFIO) for `read`/`write(…, dma:)`.
    func mapClientMemory(_ memory: UnsafeMutableRawBufferPointer) throws(BlockDeviceError) -> DMABuffer
    /// Undoes `mapClientMemory`: afterwards the device can no longer reach those pages.
    func unmapClientMemory(_ mapping: DMABuffer) throws(BlockDeviceError)
    /// Reads straight into `dma` (a slice of a mapping: exactly blocks × block size).
    func read(nsid: UInt32, lba: UInt64, blocks: Int, dma: DMABuffer) throws(BlockDeviceError)
    /// Writes straight from `dma`.
    func write(nsid: UInt32, lba: UInt64, blocks: Int, dma: DMABuffer) throws(BlockDeviceError)
}

extension NVMeBlockDevice: DirectBlockDevice {
    /// VFIO_IOMMU_MAP_DMA on the server's mapping of the client's pages (the same physical
    /// pages the client sees, MAP_SHARED): the kernel pins them and the IOMMU translates the
    /// returned IOVA range to them, so PRPs (NVMe 2.0 section 4.1.1, "Physical Region Page
    /// Entry and List") built on that range make the controller read and write client memory.
    public func mapClientMemory(_ memory: UnsafeMutableRawBufferPointer) throws(BlockDeviceError) -> DMABuffer {
        guard let mapper = clientMapper else {
            throw BlockDeviceError(.ENOTSUP, "no DMA mapper for client memory (zero copy needs VFIO)")
        }
        guard let base = memory.baseAddress else { throw BlockDeviceError(.EINVAL, "empty buffer") }
        do {
            let deviceAddress = try mapper.mapForDevice(base, size: memory.count)
            return DMABuffer(address: base, deviceAddress: deviceAddress, size: memory.count)
        } catch {
            throw BlockDeviceError(.ENOMEM, "mapping \(memory.count) bytes of client memory for DMA: \(error)")
        }
    }

    public func unmapClientMemory(_ mapping: DMABuffer) throws(BlockDeviceError) {
        guard let mapper = clientMapper else { throw BlockDeviceError(.ENOTSUP, "no DMA mapper") }
        do {
            try mapper.unmapForDevice(deviceAddress: mapping.deviceAddress, size: mapping.size)
        } catch {
            throw BlockDeviceError(.EIO, "unmapping client memory at IOVA 0x\(String(mapping.deviceAddress, radix: 16)): \(error)")
        }
    }

    public func read(nsid: UInt32, lba: UInt64, blocks: Int, dma: DMABuffer) throws(BlockDeviceError) {
        let namespace = try namespace(nsid)
        do throws(NVMeError) {
            try queue.read(namespace, lba: lba, blocks: blocks, into: dma)
        } catch {
            throw mapped(error, "zero-copy read nsid \(nsid) LBA \(lba) x \(blocks)")
        }
    }

    public func write(nsid: UInt32, lba: UInt64, blocks: Int, dma: DMABuffer) throws(BlockDeviceError) {
        let namespace = try namespace(nsid)
        do throws(NVMeError) {
            try queue.write(namespace, lba: lba, blocks: blocks, from: dma)
        } catch {
            throw mapped(error, "zero-copy write nsid \(nsid) LBA \(lba) x \(blocks)")
        }
    }
}

extension MemoryBlockDevice: DirectBlockDevice {
    /// A fake IOMMU: each mapping gets its own device address range far from any pointer, and a
    /// direct transfer is refused unless its device address lies inside a live mapping, so tests
    /// see that the server only hands the device what it mapped, and nothing after unmapping.
    public func mapClientMemory(_ memory: UnsafeMutableRawBufferPointer) throws(BlockDeviceError) -> DMABuffer {
        guard let base = memory.baseAddress, memory.count > 0 else { throw BlockDeviceError(.EINVAL, "empty buffer") }
        if let message = failNextMapping {
            failNextMapping = nil
            throw BlockDeviceError(.ENOMEM, message)
        }
        nextDeviceAddress += 1 << 32
        let mapping = DMABuffer(address: base, deviceAddress: nextDeviceAddress, size: memory.count)
        clientMappings.append(mapping)
        return mapping
    }

    public func unmapClientMemory(_ mapping: DMABuffer) throws(BlockDeviceError) {
        guard let index = clientMappings.firstIndex(of: mapping) else {
            throw BlockDeviceError(.EIO, "unmapping device address 0x\(String(mapping.deviceAddress, radix: 16)) that is not mapped")
        }
        clientMappings.remove(at: index)
    }

    /// The host pointer behind a device range, if one live mapping (or the bounce buffer)
    /// covers it; a transfer through a client mapping counts in `directTransfers`.
    private func translate(_ dma: DMABuffer) throws(BlockDeviceError) -> UnsafeMutableRawPointer {
        for mapping in clientMappings where dma.deviceAddress >= mapping.deviceAddress
            && dma.deviceAddress + UInt64(dma.size) <= mapping.deviceAddress + UInt64(mapping.size) {
            directTransfers += 1
            return mapping.address + Int(dma.deviceAddress - mapping.deviceAddress)
        }
        let bounce = bounceMemory
        if dma.deviceAddress >= bounce.deviceAddress, dma.deviceAddress + UInt64(dma.size) <= bounce.deviceAddress + UInt64(bounce.size) {
            return bounce.address + Int(dma.deviceAddress - bounce.deviceAddress)
        }
        throw BlockDeviceError(.EIO, "DMA to unmapped device address 0x\(String(dma.deviceAddress, radix: 16))")
    }

    public func read(nsid: UInt32, lba: UInt64, blocks: Int, dma: DMABuffer) throws(BlockDeviceError) {
        let target = try translate(dma)
        try read(nsid: nsid, lba: lba, blocks: blocks, into: UnsafeMutableRawBufferPointer(start: target, count: dma.size))
    }

    public func write(nsid: UInt32, lba: UInt64, blocks: Int, dma: DMABuffer) throws(BlockDeviceError) {
        let source = try translate(dma)
        try write(nsid: nsid, lba: lba, blocks: blocks, from: UnsafeRawBufferPointer(start: source, count: dma.size))
    }
}

/// A `DirectBlockDevice` that can also keep many commands in flight without blocking: what the
/// ring path (`BlockRing`) needs to take every published request, submit them all under one
/// doorbell, and post completions as they come. Tags are the caller's.
public protocol QueuedBlockDevice: DirectBlockDevice {
    /// Commands that may be submitted right now.
    var freeCommandSlots: Int { get }
    var commandsInFlight: Int { get }
    /// The largest transfer one command may move.
    var maximumCommandBytes: Int { get }
    /// Between these, submissions are written but the device hears of them once, at `endBatch`.
    func beginBatch()
    func endBatch()
    /// Submits one read or write straight to or from `dma` (inside a client mapping). The range
    /// must be valid and fit one command.
    func submit(write: Bool, nsid: UInt32, lba: UInt64, blocks: Int, dma: DMABuffer, tag: UInt64) throws(BlockDeviceError)
    /// Every completion so far, without waiting: (tag, status). Returns how many.
    @discardableResult
    func reapCompleted(_ body: (UInt64, IPCStatus) -> Void) -> Int
    /// Submits a Flush of `nsid` (NVM command set 3.2.2): it covers the writes that completed
    /// before it was submitted, so a caller that wants it to cover more waits for them first.
    func submitFlush(nsid: UInt32, tag: UInt64) throws(BlockDeviceError)
    /// Submits a trim of the range as one command; false (nothing submitted) when that is not
    /// possible (the caller then uses the blocking `trim`).
    func submitTrim(nsid: UInt32, lba: UInt64, blocks: Int, tag: UInt64) throws(BlockDeviceError) -> Bool
    /// DMA memory the device owns for copies (the message path's bounce buffer), whole pages.
    var bounceBuffer: DMABuffer { get }
    /// A descriptor that becomes readable when completions are posted (an MSI-X eventfd), or
    /// nil when the queue must be polled.
    var completionDescriptor: Int32? { get }
    /// Clears `completionDescriptor`'s readiness (before reaping, so none is missed).
    func consumeCompletionSignal()
}

extension NVMeBlockDevice: QueuedBlockDevice {
    public var freeCommandSlots: Int { queue.freeSlotCount }
    public var commandsInFlight: Int { queue.outstanding }
    public var maximumCommandBytes: Int { min(queue.maximumTransferBytes, 65536 * 512) }
    public func beginBatch() { queue.beginBatch() }
    public func endBatch() { queue.endBatch() }

    public func submit(write: Bool, nsid: UInt32, lba: UInt64, blocks: Int, dma: DMABuffer, tag: UInt64) throws(BlockDeviceError) {
        let namespace = try namespace(nsid)
        do throws(NVMeError) {
            try queue.submitTransfer(opcode: write ? NVMeIOOpcode.write : NVMeIOOpcode.read, namespace: namespace, lba: lba,
                                     blocks: blocks, data: dma.deviceAddress, tag: tag)
        } catch {
            throw mapped(error, "ring \(write ? "write" : "read") nsid \(nsid) LBA \(lba) x \(blocks)")
        }
    }

    public func submitFlush(nsid: UInt32, tag: UInt64) throws(BlockDeviceError) {
        let namespace = try namespace(nsid)
        do throws(NVMeError) { try queue.submit(.flush(namespaceID: namespace.id), tag: tag) } catch {
            throw mapped(error, "flush nsid \(nsid)")
        }
    }

    /// Dataset Management with one range (ONCS bit 2), else one Write Zeroes (bit 3) of at
    /// most 65536 blocks.
    public func submitTrim(nsid: UInt32, lba: UInt64, blocks: Int, tag: UInt64) throws(BlockDeviceError) -> Bool {
        let namespace = try namespace(nsid)
        let identity = controller.identity
        do throws(NVMeError) {
            if identity?.supportsDatasetManagement ?? false, blocks <= Int(UInt32.max) {
                try queue.submitDeallocate(namespace: namespace, lba: lba, blocks: blocks, tag: tag)
                return true
            }
            if identity?.supportsWriteZeroes ?? false, blocks <= 65536 {
                try namespace.checkRange(lba: lba, blocks: blocks)
                try queue.submit(.writeZeroes(namespaceID: namespace.id, lba: lba, blocks: blocks), tag: tag, blocks: blocks)
                return true
            }
        } catch {
            throw mapped(error, "trim nsid \(nsid) LBA \(lba) x \(blocks)")
        }
        return false
    }

    public var bounceBuffer: DMABuffer { bounce }
    /// Nil when the queue polls (`storage_server --poll`): the serving loop polls too.
    public var completionDescriptor: Int32? { queue.polling ? nil : queue.interrupt?.fd }
    public func consumeCompletionSignal() { _ = queue.interrupt?.consume() }

    @discardableResult
    public func reapCompleted(_ body: (UInt64, IPCStatus) -> Void) -> Int {
        queue.reap { completion in
            let status: IPCStatus = completion.status.isSuccess ? .ok : (completion.status.isLBAOutOfRange ? .ERANGE : .EIO)
            // The client gets an errno; the log keeps the NVMe status behind it.
            if let error = completion.error { log("\(error) -> \(status)") }
            body(completion.tag, status)
        }
    }
}

extension MemoryBlockDevice: QueuedBlockDevice {
    /// The RAM device completes a command at submission; `reapCompleted` hands the results out,
    /// like a device that is very fast. 64 commands at most in flight. With `holdCompletions`
    /// it is a slow device instead: commands wait (data not yet moved) until the test finishes
    /// them with `finishHeld`, in any order.
    public var freeCommandSlots: Int { 64 - queuedCompletions.count - held.count }
    public var commandsInFlight: Int { queuedCompletions.count + held.count }
    public var maximumCommandBytes: Int { 128 << 10 }
    public func beginBatch() { batchDepth += 1 }
    public func endBatch() { batchDepth -= 1; batches += 1 }

    public func submit(write: Bool, nsid: UInt32, lba: UInt64, blocks: Int, dma: DMABuffer, tag: UInt64) throws(BlockDeviceError) {
        try accept(HeldCommand(tag: tag, kind: write ? .write : .read, nsid: nsid, lba: lba, blocks: blocks, dma: dma))
    }

    public func submitFlush(nsid: UInt32, tag: UInt64) throws(BlockDeviceError) {
        guard geometry(nsid) != nil else { throw BlockDeviceError(.ENOENT, "nsid \(nsid)") }
        try accept(HeldCommand(tag: tag, kind: .flush, nsid: nsid, lba: 0, blocks: 0, dma: nil))
    }

    public func submitTrim(nsid: UInt32, lba: UInt64, blocks: Int, tag: UInt64) throws(BlockDeviceError) -> Bool {
        try accept(HeldCommand(tag: tag, kind: .trim, nsid: nsid, lba: lba, blocks: blocks, dma: nil))
        return true
    }

    public var bounceBuffer: DMABuffer { bounceMemory }
    public var completionDescriptor: Int32? { nil }
    public func consumeCompletionSignal() {}

    private func accept(_ command: HeldCommand) throws(BlockDeviceError) {
        guard freeCommandSlots > 0 else { throw BlockDeviceError(.EBUSY, "queue full") }
        if let message = failNext {
            failNext = nil
            throw BlockDeviceError(.EIO, message)
        }
        if holdCompletions { held.append(command) } else { run(command) }
    }

    /// Runs held command `index` now (moving its data) and posts its completion.
    public func finishHeld(at index: Int) {
        run(held.remove(at: index))
    }

    private func run(_ command: HeldCommand) {
        ranKinds.append(command.kind)
        var status = IPCStatus.ok
        do throws(BlockDeviceError) {
            switch command.kind {
            case .read: try read(nsid: command.nsid, lba: command.lba, blocks: command.blocks, dma: command.dma!)
            case .write: try write(nsid: command.nsid, lba: command.lba, blocks: command.blocks, dma: command.dma!)
            case .flush: try flush(nsid: command.nsid)
            case .trim: try trim(nsid: command.nsid, lba: command.lba, blocks: command.blocks)
            }
        } catch {
            status = error.status
        }
        queuedCompletions.append((command.tag, status))
    }

    @discardableResult
    public func reapCompleted(_ body: (UInt64, IPCStatus) -> Void) -> Int {
        for _ in 0..<min(finishOnReap, held.count) { finishHeld(at: held.count - 1) }
        let count = queuedCompletions.count
        for (tag, status) in queuedCompletions { body(tag, status) }
        queuedCompletions.removeAll(keepingCapacity: true)
        return count
    }
}
