import IPC
import Platform

/// Why a block device operation failed: the status the client gets, and what to log.
public struct BlockDeviceError: Error, Equatable, CustomStringConvertible {
    public var status: IPCStatus
    public var detail: String
    public init(_ status: IPCStatus, _ detail: String) {
        self.status = status
        self.detail = detail
    }
    public var description: String { "\(status): \(detail)" }
}

/// What the block server needs of a device: namespaces, and blocking read / write / flush /
/// trim. `NVMeBlockDevice` is the real one, `MemoryBlockDevice` a RAM fake. Called from one
/// thread (the IPC server's); ranges are already validated against `geometry`.
public protocol BlockDevice: AnyObject {
    /// Active namespace IDs, ascending.
    var namespaceIDs: [UInt32] { get }
    func geometry(_ nsid: UInt32) -> BlockGeometry?
    func read(nsid: UInt32, lba: UInt64, blocks: Int, into buffer: UnsafeMutableRawBufferPointer) throws(BlockDeviceError)
    func write(nsid: UInt32, lba: UInt64, blocks: Int, from buffer: UnsafeRawBufferPointer) throws(BlockDeviceError)
    func flush(nsid: UInt32) throws(BlockDeviceError)
    func trim(nsid: UInt32, lba: UInt64, blocks: Int) throws(BlockDeviceError)
}

/// A RAM block device (tests, and a stand-in where no controller exists). Trimmed blocks read
/// back as zeroes. `failNext` makes the next operation fail with EIO.
public final class MemoryBlockDevice: BlockDevice {
    private var storage: [UInt32: (geometry: BlockGeometry, bytes: UnsafeMutableRawBufferPointer)] = [:]
    public var failNext: String?
    public private(set) var flushes = 0
    public private(set) var trims = 0
    /// Fake IOMMU state for `DirectBlockDevice` (zero copy): live client mappings, the next
    /// device address handed out, transfers done straight to or from a mapping, and a one-shot
    /// mapping failure.
    public internal(set) var clientMappings: [DMABuffer] = []
    var nextDeviceAddress: UInt64 = 0x10_0000_0000
    public internal(set) var directTransfers = 0
    public var failNextMapping: String?
    /// `QueuedBlockDevice` state: completions not yet reaped, and batches ended.
    var queuedCompletions: [(UInt64, IPCStatus)] = []
    var batchDepth = 0
    public internal(set) var batches = 0
    /// Commands a held (`holdCompletions`) device has accepted but not finished.
    public var holdCompletions = false
    public internal(set) var held: [HeldCommand] = []
    /// With `holdCompletions`: each reap first finishes this many held commands, newest first
    /// (late and out of order, yet a caller that polls makes progress).
    public var finishOnReap = 0
    /// The kinds of the commands the queue ran, in the order it ran them.
    public internal(set) var ranKinds: [HeldCommand.Kind] = []
    /// The fake's bounce buffer: a device range of its own that the fake IOMMU translates.
    let bounceMemory: DMABuffer
    public struct HeldCommand {
        public enum Kind: Sendable { case read, write, flush, trim }
        public var tag: UInt64
        public var kind: Kind
        public var nsid: UInt32
        public var lba: UInt64
        public var blocks: Int
        var dma: DMABuffer?
    }

    public init(namespaces: [UInt32: BlockGeometry]) {
        for (nsid, geometry) in namespaces {
            let bytes = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(geometry.capacityBytes), alignment: 64)
            bytes.initializeMemory(as: UInt8.self, repeating: 0)
            storage[nsid] = (geometry, bytes)
        }
        let bounce = UnsafeMutableRawPointer.allocate(byteCount: 2 << 20, alignment: 4096)
        bounceMemory = DMABuffer(address: bounce, deviceAddress: 0x8_0000_0000, size: 2 << 20)
    }

    deinit {
        for (_, entry) in storage { entry.bytes.deallocate() }
        bounceMemory.address.deallocate()
    }

    public var namespaceIDs: [UInt32] { storage.keys.sorted() }
    public func geometry(_ nsid: UInt32) -> BlockGeometry? { storage[nsid]?.geometry }

    private func range(_ nsid: UInt32, _ lba: UInt64, _ blocks: Int) throws(BlockDeviceError) -> UnsafeMutableRawBufferPointer {
        if let message = failNext {
            failNext = nil
            throw BlockDeviceError(.EIO, message)
        }
        guard let entry = storage[nsid] else { throw BlockDeviceError(.ENOENT, "nsid \(nsid)") }
        guard blocks > 0, lba < entry.geometry.blockCount, UInt64(blocks) <= entry.geometry.blockCount - lba else {
            throw BlockDeviceError(.ERANGE, "LBA \(lba) + \(blocks) past \(entry.geometry.blockCount)")
        }
        let start = Int(lba) * entry.geometry.blockSize
        return UnsafeMutableRawBufferPointer(rebasing: entry.bytes[start..<(start + blocks * entry.geometry.blockSize)])
    }

    public func read(nsid: UInt32, lba: UInt64, blocks: Int, into buffer: UnsafeMutableRawBufferPointer) throws(BlockDeviceError) {
        let source = try range(nsid, lba, blocks)
        buffer.baseAddress!.copyMemory(from: source.baseAddress!, byteCount: source.count)
    }

    public func write(nsid: UInt32, lba: UInt64, blocks: Int, from buffer: UnsafeRawBufferPointer) throws(BlockDeviceError) {
        let target = try range(nsid, lba, blocks)
        target.baseAddress!.copyMemory(from: buffer.baseAddress!, byteCount: target.count)
    }

    public func flush(nsid: UInt32) throws(BlockDeviceError) {
        if let message = failNext {
            failNext = nil
            throw BlockDeviceError(.EIO, message)
        }
        flushes += 1
    }

    public func trim(nsid: UInt32, lba: UInt64, blocks: Int) throws(BlockDeviceError) {
        let target = try range(nsid, lba, blocks)
        target.initializeMemory(as: UInt8.self, repeating: 0)
        trims += 1
    }
}
