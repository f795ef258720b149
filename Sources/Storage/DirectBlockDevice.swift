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

    /// The host pointer behind a device range, if one live mapping covers it.
    private func translate(_ dma: DMABuffer) throws(BlockDeviceError) -> UnsafeMutableRawPointer {
        for mapping in clientMappings where dma.deviceAddress >= mapping.deviceAddress
            && dma.deviceAddress + UInt64(dma.size) <= mapping.deviceAddress + UInt64(mapping.size) {
            return mapping.address + Int(dma.deviceAddress - mapping.deviceAddress)
        }
        throw BlockDeviceError(.EIO, "DMA to unmapped device address 0x\(String(dma.deviceAddress, radix: 16))")
    }

    public func read(nsid: UInt32, lba: UInt64, blocks: Int, dma: DMABuffer) throws(BlockDeviceError) {
        let target = try translate(dma)
        try read(nsid: nsid, lba: lba, blocks: blocks, into: UnsafeMutableRawBufferPointer(start: target, count: dma.size))
        directTransfers += 1
    }

    public func write(nsid: UInt32, lba: UInt64, blocks: Int, dma: DMABuffer) throws(BlockDeviceError) {
        let source = try translate(dma)
        try write(nsid: nsid, lba: lba, blocks: blocks, from: UnsafeRawBufferPointer(start: source, count: dma.size))
        directTransfers += 1
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

    @discardableResult
    public func reapCompleted(_ body: (UInt64, IPCStatus) -> Void) -> Int {
        queue.reap { completion in
            let status: IPCStatus = completion.status.isSuccess ? .ok : (completion.status.isLBAOutOfRange ? .ERANGE : .EIO)
            body(completion.tag, status)
        }
    }
}

extension MemoryBlockDevice: QueuedBlockDevice {
    /// The RAM device completes a command at submission; `reapCompleted` hands the results out,
    /// like a device that is very fast. 64 commands at most in flight.
    public var freeCommandSlots: Int { 64 - queuedCompletions.count }
    public var commandsInFlight: Int { queuedCompletions.count }
    public var maximumCommandBytes: Int { 128 << 10 }
    public func beginBatch() { batchDepth += 1 }
    public func endBatch() { batchDepth -= 1; batches += 1 }

    public func submit(write: Bool, nsid: UInt32, lba: UInt64, blocks: Int, dma: DMABuffer, tag: UInt64) throws(BlockDeviceError) {
        guard freeCommandSlots > 0 else { throw BlockDeviceError(.EBUSY, "queue full") }
        var status = IPCStatus.ok
        do throws(BlockDeviceError) {
            if write { try self.write(nsid: nsid, lba: lba, blocks: blocks, dma: dma) } else { try read(nsid: nsid, lba: lba, blocks: blocks, dma: dma) }
        } catch {
            status = error.status
        }
        queuedCompletions.append((tag, status))
    }

    @discardableResult
    public func reapCompleted(_ body: (UInt64, IPCStatus) -> Void) -> Int {
        let count = queuedCompletions.count
        for (tag, status) in queuedCompletions { body(tag, status) }
        queuedCompletions.removeAll(keepingCapacity: true)
        return count
    }
}
