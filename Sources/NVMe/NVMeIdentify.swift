/// Identify Controller data structure, the parts the driver uses (NVMe 2.0 section 5.17.2.1,
/// figure 275). Parsed from the 4 KiB page the controller DMAs to us.
public struct NVMeControllerIdentity: Equatable, Sendable {
    /// PCI Vendor ID, bytes 1:0.
    public var vendorID: UInt16
    /// Serial Number, bytes 23:04, ASCII, space padded (trimmed here).
    public var serialNumber: String
    /// Model Number, bytes 63:24.
    public var modelNumber: String
    /// Firmware Revision, bytes 71:64.
    public var firmwareRevision: String
    /// Maximum Data Transfer Size, byte 77: 2^MDTS units of CAP.MPSMIN; 0 = no limit.
    public var maximumDataTransferSizeExponent: UInt8
    /// Controller ID, bytes 79:78.
    public var controllerID: UInt16
    /// Version, bytes 83:80 (0 on 1.0 controllers).
    public var version: NVMeVersion
    /// RTD3 Entry Latency, bytes 91:88, in microseconds: a bound on shutdown time; 0 = not reported.
    public var rtd3EntryLatencyMicroseconds: UInt32
    /// Number of Namespaces, bytes 519:516: the largest valid NSID.
    public var numberOfNamespaces: UInt32
    /// Submission / Completion Queue Entry Size, bytes 512 / 513: required (3:0) and maximum (7:4), log2.
    public var submissionEntrySizes: UInt8
    public var completionEntrySizes: UInt8
    /// Optional NVM Command Support (ONCS), bytes 521:520: bit 2 Dataset Management, bit 3
    /// Write Zeroes.
    public var optionalCommands: UInt16

    public var supportsDatasetManagement: Bool { optionalCommands & (1 << 2) != 0 }
    public var supportsWriteZeroes: Bool { optionalCommands & (1 << 3) != 0 }

    public init(page: UnsafeRawPointer) {
        func u8(_ offset: Int) -> UInt8 { page.load(fromByteOffset: offset, as: UInt8.self) }
        func u16(_ offset: Int) -> UInt16 { UInt16(littleEndian: page.loadUnaligned(fromByteOffset: offset, as: UInt16.self)) }
        func u32(_ offset: Int) -> UInt32 { UInt32(littleEndian: page.loadUnaligned(fromByteOffset: offset, as: UInt32.self)) }
        vendorID = u16(0)
        serialNumber = NVMeControllerIdentity.ascii(page, 4..<24)
        modelNumber = NVMeControllerIdentity.ascii(page, 24..<64)
        firmwareRevision = NVMeControllerIdentity.ascii(page, 64..<72)
        maximumDataTransferSizeExponent = u8(77)
        controllerID = u16(78)
        version = NVMeVersion(raw: u32(80))
        rtd3EntryLatencyMicroseconds = u32(88)
        submissionEntrySizes = u8(512)
        completionEntrySizes = u8(513)
        numberOfNamespaces = u32(516)
        optionalCommands = u16(520)
    }

    /// The largest transfer in bytes one command may move, or nil for no limit.
    public func maximumDataTransferSize(minimumPageSize: Int) -> Int? {
        maximumDataTransferSizeExponent == 0 ? nil : minimumPageSize << Int(maximumDataTransferSizeExponent)
    }

    /// An ASCII field with trailing spaces and NULs removed.
    static func ascii(_ page: UnsafeRawPointer, _ range: Range<Int>) -> String {
        var bytes = UnsafeRawBufferPointer(start: page + range.lowerBound, count: range.count)[...]
        while let last = bytes.last, last == 0x20 || last == 0 { bytes = bytes.dropLast() }
        while let first = bytes.first, first == 0x20 { bytes = bytes.dropFirst() }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// Identify Namespace data structure for the NVM command set, the parts the driver uses (NVM
/// Command Set Specification 1.0, section 4.1.5.1, figure 97; NVMe 1.4 figure 245).
public struct NVMeNamespaceIdentity: Equatable, Sendable {
    public var namespaceID: UInt32
    /// Namespace Size (NSZE), bytes 7:0, in logical blocks.
    public var size: UInt64
    /// Namespace Capacity (NCAP), bytes 15:8.
    public var capacity: UInt64
    /// Namespace Utilization (NUSE), bytes 23:16.
    public var utilization: UInt64
    /// Number of LBA Formats (NLBAF), byte 25, converted from 0's based.
    public var formatCount: Int
    /// Index of the LBA format in use: FLBAS bits 3:0, with bits 6:5 as the high bits (2.0).
    public var formatIndex: Int
    /// The LBA format in use (LBAF table at byte 128, 4 bytes each).
    public var format: LBAFormat
    /// Deallocate Logical Block Features (DLFEAT), byte 33: bits 2:0 what a read of a
    /// deallocated block returns (000b not reported, 001b zeroes, 010b ones), bit 3 Write
    /// Zeroes may deallocate.
    public var deallocateFeatures: UInt8

    public struct LBAFormat: Equatable, Sendable {
        /// Metadata Size, bits 15:0.
        public var metadataSize: Int
        /// LBA Data Size, bits 23:16, as a power of two.
        public var dataSizeExponent: Int
        /// Relative Performance, bits 25:24 (0 best).
        public var relativePerformance: Int
        public var blockSize: Int { dataSizeExponent == 0 ? 0 : 1 << dataSizeExponent }

        public init(raw: UInt32) {
            metadataSize = Int(raw & 0xFFFF)
            dataSizeExponent = Int((raw >> 16) & 0xFF)
            relativePerformance = Int((raw >> 24) & 0x3)
        }
    }

    /// Bytes per logical block in the format in use.
    public var blockSize: Int { format.blockSize }
    /// An inactive namespace's structure is all zeroes.
    public var isActive: Bool { size != 0 }
    public var sizeInBytes: UInt64 { size &* UInt64(blockSize) }

    public init(namespaceID: UInt32, page: UnsafeRawPointer) {
        func u64(_ offset: Int) -> UInt64 { UInt64(littleEndian: page.loadUnaligned(fromByteOffset: offset, as: UInt64.self)) }
        self.namespaceID = namespaceID
        size = u64(0)
        capacity = u64(8)
        utilization = u64(16)
        formatCount = Int(page.load(fromByteOffset: 25, as: UInt8.self)) + 1
        let flbas = page.load(fromByteOffset: 26, as: UInt8.self)
        formatIndex = Int(flbas & 0xF) | Int((flbas >> 5) & 0x3) << 4
        let raw = UInt32(littleEndian: page.loadUnaligned(fromByteOffset: 128 + 4 * formatIndex, as: UInt32.self))
        format = LBAFormat(raw: raw)
        deallocateFeatures = page.load(fromByteOffset: 33, as: UInt8.self)
    }
}
