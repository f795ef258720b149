/// A mapper for fake devices in unit tests: the "device address" is the process address, so a
/// fake device model can follow the pointers a driver gives it. It records what is mapped so
/// tests can check that a driver only hands out addresses it mapped.
public final class IdentityDMAMapper: DMAMapper {
    public private(set) var mapped: [UInt64: Int] = [:]
    public var pinsMemory: Bool { false }

    public init() {}

    public func mapForDevice(_ address: UnsafeMutableRawPointer, size: Int) throws -> UInt64 {
        let deviceAddress = UInt64(UInt(bitPattern: address))
        mapped[deviceAddress] = size
        return deviceAddress
    }

    public func unmapForDevice(deviceAddress: UInt64, size: Int) throws {
        mapped[deviceAddress] = nil
    }

    /// Whether `[deviceAddress, deviceAddress + size)` lies inside one mapping.
    public func isMapped(_ deviceAddress: UInt64, size: Int) -> Bool {
        mapped.contains { deviceAddress >= $0.key && deviceAddress + UInt64(size) <= $0.key + UInt64($0.value) }
    }

    /// The process pointer for a device address (a fake device's "DMA").
    public func pointer(_ deviceAddress: UInt64) -> UnsafeMutableRawPointer? {
        UnsafeMutableRawPointer(bitPattern: UInt(deviceAddress))
    }
}
