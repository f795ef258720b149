/// PCI configuration space: 256 bytes (conventional) or 4 KiB (PCI Express). Multi-byte fields
/// are little-endian (PCI Local Bus Specification 3.0, section 6.1).
public protocol ConfigSpace {
    /// Bytes addressable: 256 or 4096.
    var size: Int { get }
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) throws
    func write(_ bytes: UnsafeRawBufferPointer, at offset: Int) throws
}

extension ConfigSpace {
    private func checkRange(_ offset: Int, _ count: Int) throws {
        guard offset >= 0, offset + count <= size else {
            throw PlatformError.outOfRange(what: "PCI config space", offset: offset, size: count, limit: size)
        }
    }

    private func readInteger<T: FixedWidthInteger>(_ offset: Int, as: T.Type) throws -> T {
        try checkRange(offset, MemoryLayout<T>.size)
        var value: T = 0
        try withUnsafeMutableBytes(of: &value) { try read(into: $0, at: offset) }
        return T(littleEndian: value)
    }

    private func writeInteger<T: FixedWidthInteger>(_ offset: Int, _ value: T) throws {
        try checkRange(offset, MemoryLayout<T>.size)
        var little = value.littleEndian
        try withUnsafeBytes(of: &little) { try write($0, at: offset) }
    }

    public func read8(_ offset: Int) throws -> UInt8 { try readInteger(offset, as: UInt8.self) }
    public func read16(_ offset: Int) throws -> UInt16 { try readInteger(offset, as: UInt16.self) }
    public func read32(_ offset: Int) throws -> UInt32 { try readInteger(offset, as: UInt32.self) }
    public func write8(_ offset: Int, _ value: UInt8) throws { try writeInteger(offset, value) }
    public func write16(_ offset: Int, _ value: UInt16) throws { try writeInteger(offset, value) }
    public func write32(_ offset: Int, _ value: UInt32) throws { try writeInteger(offset, value) }

    /// The identity fields of the type 0/1 header.
    public func header() throws -> PCIHeader {
        PCIHeader(
            vendorID: try read16(PCIConfig.vendorID),
            deviceID: try read16(PCIConfig.deviceID),
            command: try read16(PCIConfig.command),
            status: try read16(PCIConfig.status),
            revision: try read8(PCIConfig.revisionID),
            classCode: try read32(PCIConfig.revisionID) >> 8,
            headerType: try read8(PCIConfig.headerType) & 0x7F,
            subsystemVendorID: try read16(PCIConfig.subsystemVendorID),
            subsystemID: try read16(PCIConfig.subsystemID),
            interruptPin: try read8(PCIConfig.interruptPin))
    }

    /// Sets or clears Bus Master Enable (command register bit 2): without it the device cannot
    /// DMA; clearing it is how a dead driver's device is stopped from writing memory.
    public func setBusMaster(_ enabled: Bool) throws {
        var command = try read16(PCIConfig.command)
        command = enabled ? command | PCIConfig.Command.busMaster : command & ~PCIConfig.Command.busMaster
        command |= PCIConfig.Command.memorySpace
        try write16(PCIConfig.command, command)
    }
}

/// Offsets and bits of the configuration header (PCI Local Bus Specification 3.0, section 6.2).
public enum PCIConfig {
    public static let vendorID = 0x00
    public static let deviceID = 0x02
    public static let command = 0x04
    public static let status = 0x06
    public static let revisionID = 0x08
    public static let headerType = 0x0E
    public static let bar0 = 0x10
    public static let subsystemVendorID = 0x2C
    public static let subsystemID = 0x2E
    public static let capabilitiesPointer = 0x34
    public static let interruptLine = 0x3C
    public static let interruptPin = 0x3D
    public static let extendedCapabilitiesStart = 0x100

    public enum Command {
        public static let ioSpace: UInt16 = 1 << 0
        public static let memorySpace: UInt16 = 1 << 1
        public static let busMaster: UInt16 = 1 << 2
        public static let interruptDisable: UInt16 = 1 << 10
    }
    public enum Status {
        public static let interruptStatus: UInt16 = 1 << 3
        public static let capabilitiesList: UInt16 = 1 << 4
    }
}

public struct PCIHeader: Equatable, Sendable {
    public var vendorID: UInt16
    public var deviceID: UInt16
    public var command: UInt16
    public var status: UInt16
    public var revision: UInt8
    /// Base class, subclass and programming interface: 0x010802 is an NVMe controller.
    public var classCode: UInt32
    public var headerType: UInt8
    public var subsystemVendorID: UInt16
    public var subsystemID: UInt16
    public var interruptPin: UInt8
}

/// Config space read and written through a file descriptor at a base offset: the VFIO config
/// region, or sysfs's `config` file.
public struct FileConfigSpace: ConfigSpace {
    public let fd: Int32
    public let baseOffset: Int64
    public let size: Int
    public let kernel: any KernelInterface

    public init(fd: Int32, baseOffset: Int64, size: Int, kernel: any KernelInterface) {
        self.fd = fd
        self.baseOffset = baseOffset
        self.size = size
        self.kernel = kernel
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) throws {
        let count = try kernel.pread(fd, buffer, offset: baseOffset + Int64(offset))
        guard count == buffer.count else {
            throw PlatformError.outOfRange(what: "PCI config space read", offset: offset, size: buffer.count, limit: offset + count)
        }
    }

    public func write(_ bytes: UnsafeRawBufferPointer, at offset: Int) throws {
        let count = try kernel.pwrite(fd, bytes, offset: baseOffset + Int64(offset))
        guard count == bytes.count else {
            throw PlatformError.outOfRange(what: "PCI config space write", offset: offset, size: bytes.count, limit: offset + count)
        }
    }
}

/// Config space held in memory: a snapshot, or the config space of a fake device in tests.
public final class InMemoryConfigSpace: ConfigSpace {
    public var bytes: [UInt8]
    public var size: Int { bytes.count }

    public init(bytes: [UInt8]) { self.bytes = bytes }
    public init(size: Int = 256) { self.bytes = [UInt8](repeating: 0, count: size) }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) throws {
        guard offset >= 0, offset + buffer.count <= bytes.count else {
            throw PlatformError.outOfRange(what: "PCI config space", offset: offset, size: buffer.count, limit: bytes.count)
        }
        for index in 0..<buffer.count { buffer[index] = bytes[offset + index] }
    }

    public func write(_ source: UnsafeRawBufferPointer, at offset: Int) throws {
        guard offset >= 0, offset + source.count <= bytes.count else {
            throw PlatformError.outOfRange(what: "PCI config space", offset: offset, size: source.count, limit: bytes.count)
        }
        for index in 0..<source.count { bytes[offset + index] = source[index] }
    }
}
