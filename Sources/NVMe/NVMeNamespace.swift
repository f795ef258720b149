/// An active namespace of the NVM command set as the I/O path needs it: its block size and
/// size, with the LBA range check every request passes before anything is submitted.
public struct NVMeNamespace: Equatable, Sendable, CustomStringConvertible {
    public let id: UInt32
    /// Bytes per logical block (the LBA format in use).
    public let blockSize: Int
    /// Namespace Size in logical blocks: valid LBAs are 0..<blockCount.
    public let blockCount: UInt64
    /// DLFEAT (Identify Namespace byte 33).
    public let deallocateFeatures: UInt8

    public init(id: UInt32, blockSize: Int, blockCount: UInt64, deallocateFeatures: UInt8 = 0) {
        precondition(blockSize >= 512 && blockSize & (blockSize - 1) == 0, "block size must be a power of two >= 512")
        self.id = id
        self.blockSize = blockSize
        self.blockCount = blockCount
        self.deallocateFeatures = deallocateFeatures
    }

    /// From Identify Namespace; nil for an inactive namespace or one with metadata interleaved
    /// (not supported by this driver).
    public init?(identity: NVMeNamespaceIdentity) {
        guard identity.isActive, identity.blockSize >= 512, identity.format.metadataSize == 0 else { return nil }
        self.init(id: identity.namespaceID, blockSize: identity.blockSize, blockCount: identity.size,
                  deallocateFeatures: identity.deallocateFeatures)
    }

    public var capacityBytes: UInt64 { blockCount &* UInt64(blockSize) }

    /// What reading a deallocated block returns (DLFEAT bits 2:0).
    public enum DeallocatedReadBehavior: Sendable, Equatable {
        case notReported, zeroes, ones
    }

    public var deallocatedReads: DeallocatedReadBehavior {
        switch deallocateFeatures & 0x7 {
        case 1: .zeroes
        case 2: .ones
        default: .notReported
        }
    }

    /// Throws `.lbaOutOfRange` unless `lba..<lba+blocks` lies inside the namespace.
    @inline(__always)
    public func checkRange(lba: UInt64, blocks: Int) throws(NVMeError) {
        guard blocks > 0, lba < blockCount, UInt64(blocks) <= blockCount - lba else {
            throw .lbaOutOfRange(namespaceID: id, lba: lba, blocks: blocks, namespaceBlocks: blockCount)
        }
    }

    public var description: String {
        "nsid \(id): \(blockCount) x \(blockSize) B (\(capacityBytes >> 20) MiB)"
    }
}
