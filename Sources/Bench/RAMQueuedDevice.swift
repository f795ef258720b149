import IPC
import Platform
import Storage

/// A RAM `QueuedBlockDevice` for the allocation probe: one namespace, commands completed at
/// submission and handed out by `reapCompleted`, like a very fast device. Every table is
/// preallocated (Storage's `MemoryBlockDevice` records each command's kind in a growing array,
/// which would count as the server's allocations). Device addresses are host addresses (an
/// identity IOMMU), so a `DMABuffer` names its memory directly.
final class RAMQueuedDevice: QueuedBlockDevice {
    private let nsid: UInt32
    private let blockGeometry: BlockGeometry
    private let storage: UnsafeMutableRawBufferPointer
    private let bounce: UnsafeMutableRawBufferPointer
    /// Completions not yet reaped: (tag, status), `pending` of them.
    private let completions: UnsafeMutablePointer<(UInt64, IPCStatus)>
    private var pending = 0
    static let queueDepth = 64

    init(geometry: BlockGeometry, nsid: UInt32) {
        self.nsid = nsid
        blockGeometry = geometry
        storage = .allocate(byteCount: Int(geometry.capacityBytes), alignment: 4096)
        storage.initializeMemory(as: UInt8.self, repeating: 0)
        bounce = .allocate(byteCount: 2 << 20, alignment: 4096)
        completions = .allocate(capacity: Self.queueDepth)
    }

    deinit {
        storage.deallocate()
        bounce.deallocate()
        completions.deallocate()
    }

    // BlockDevice (the blocking path)
    var namespaceIDs: [UInt32] { [nsid] }
    func geometry(_ nsid: UInt32) -> BlockGeometry? { nsid == self.nsid ? blockGeometry : nil }

    private func range(_ nsid: UInt32, _ lba: UInt64, _ blocks: Int) throws(BlockDeviceError) -> UnsafeMutableRawBufferPointer {
        guard nsid == self.nsid else { throw BlockDeviceError(.ENOENT, "nsid \(nsid)") }
        guard blocks > 0, lba < blockGeometry.blockCount, UInt64(blocks) <= blockGeometry.blockCount - lba else {
            throw BlockDeviceError(.ERANGE, "LBA \(lba) + \(blocks) past \(blockGeometry.blockCount)")
        }
        let start = Int(lba) * blockGeometry.blockSize
        return UnsafeMutableRawBufferPointer(rebasing: storage[start..<(start + blocks * blockGeometry.blockSize)])
    }

    func read(nsid: UInt32, lba: UInt64, blocks: Int, into buffer: UnsafeMutableRawBufferPointer) throws(BlockDeviceError) {
        let source = try range(nsid, lba, blocks)
        buffer.baseAddress!.copyMemory(from: source.baseAddress!, byteCount: source.count)
    }

    func write(nsid: UInt32, lba: UInt64, blocks: Int, from buffer: UnsafeRawBufferPointer) throws(BlockDeviceError) {
        let target = try range(nsid, lba, blocks)
        target.baseAddress!.copyMemory(from: buffer.baseAddress!, byteCount: target.count)
    }

    func flush(nsid: UInt32) throws(BlockDeviceError) {}

    func trim(nsid: UInt32, lba: UInt64, blocks: Int) throws(BlockDeviceError) {
        try range(nsid, lba, blocks).initializeMemory(as: UInt8.self, repeating: 0)
    }

    // DirectBlockDevice
    func mapClientMemory(_ memory: UnsafeMutableRawBufferPointer) throws(BlockDeviceError) -> DMABuffer {
        guard let base = memory.baseAddress else { throw BlockDeviceError(.EINVAL, "empty buffer") }
        return DMABuffer(address: base, deviceAddress: UInt64(UInt(bitPattern: base)), size: memory.count)
    }

    func unmapClientMemory(_ mapping: DMABuffer) throws(BlockDeviceError) {}

    func read(nsid: UInt32, lba: UInt64, blocks: Int, dma: DMABuffer) throws(BlockDeviceError) {
        try read(nsid: nsid, lba: lba, blocks: blocks, into: UnsafeMutableRawBufferPointer(start: dma.address, count: dma.size))
    }

    func write(nsid: UInt32, lba: UInt64, blocks: Int, dma: DMABuffer) throws(BlockDeviceError) {
        try write(nsid: nsid, lba: lba, blocks: blocks, from: UnsafeRawBufferPointer(start: dma.address, count: dma.size))
    }

    // QueuedBlockDevice
    var freeCommandSlots: Int { Self.queueDepth - pending }
    var commandsInFlight: Int { pending }
    var maximumCommandBytes: Int { 128 << 10 }
    func beginBatch() {}
    func endBatch() {}

    func submit(write: Bool, nsid: UInt32, lba: UInt64, blocks: Int, dma: DMABuffer, tag: UInt64) throws(BlockDeviceError) {
        try accept(tag) { () throws(BlockDeviceError) in
            if write { try self.write(nsid: nsid, lba: lba, blocks: blocks, dma: dma) } else { try read(nsid: nsid, lba: lba, blocks: blocks, dma: dma) }
        }
    }

    func submitFlush(nsid: UInt32, tag: UInt64) throws(BlockDeviceError) {
        try accept(tag) { () throws(BlockDeviceError) in try flush(nsid: nsid) }
    }

    func submitTrim(nsid: UInt32, lba: UInt64, blocks: Int, tag: UInt64) throws(BlockDeviceError) -> Bool {
        try accept(tag) { () throws(BlockDeviceError) in try trim(nsid: nsid, lba: lba, blocks: blocks) }
        return true
    }

    /// Runs the command now; its status waits for `reapCompleted`.
    private func accept(_ tag: UInt64, _ command: () throws(BlockDeviceError) -> Void) throws(BlockDeviceError) {
        guard pending < Self.queueDepth else { throw BlockDeviceError(.EBUSY, "queue full") }
        var status = IPCStatus.ok
        do throws(BlockDeviceError) { try command() } catch { status = error.status }
        completions[pending] = (tag, status)
        pending += 1
    }

    @discardableResult
    func reapCompleted(_ body: (UInt64, IPCStatus) -> Void) -> Int {
        let count = pending
        for index in 0..<count { body(completions[index].0, completions[index].1) }
        pending = 0
        return count
    }

    var bounceBuffer: DMABuffer {
        DMABuffer(address: bounce.baseAddress!, deviceAddress: UInt64(UInt(bitPattern: bounce.baseAddress!)), size: bounce.count)
    }
    var completionDescriptor: Int32? { nil }
    func consumeCompletionSignal() {}
}
