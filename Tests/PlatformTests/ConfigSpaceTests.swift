import XCTest
@testable import Platform

final class ConfigSpaceTests: XCTestCase {
    /// An NVMe-like function: PM at 0x40, MSI at 0x50, PCIe at 0x70, MSI-X at 0xB0; AER and
    /// Device Serial Number in extended space.
    static func nvmeLikeConfig() -> InMemoryConfigSpace {
        let config = InMemoryConfigSpace(size: 4096)
        func put16(_ offset: Int, _ value: UInt16) { config.bytes[offset] = UInt8(value & 0xFF); config.bytes[offset + 1] = UInt8(value >> 8) }
        func put32(_ offset: Int, _ value: UInt32) { put16(offset, UInt16(value & 0xFFFF)); put16(offset + 2, UInt16(value >> 16)) }
        put16(0x00, 0x1B36); put16(0x02, 0x0010)
        put16(0x06, PCIConfig.Status.capabilitiesList)
        put32(0x08, 0x0108_0202)              // class 010802, revision 2
        config.bytes[0x34] = 0x40
        config.bytes[0x3D] = 1               // INTA#
        config.bytes[0x40] = 0x01; config.bytes[0x41] = 0x50; put16(0x42, 0x0603); put16(0x44, 0x0008)
        config.bytes[0x50] = 0x05; config.bytes[0x51] = 0x70; put16(0x52, (1 << 7) | (2 << 1))
        config.bytes[0x70] = 0x10; config.bytes[0x71] = 0xB0; put16(0x72, 0x0002)
        put32(0x74, 1 << 28); put32(0x7C, 0x0000_0043); put16(0x82, 0x0041)
        config.bytes[0xB0] = 0x11; config.bytes[0xB1] = 0x00; put16(0xB2, 0x003F)
        put32(0xB4, 0x0000_2000); put32(0xB8, 0x0000_3000)
        put32(0x100, 0x1401_0001)            // AER, next 0x140
        put32(0x140, 0x0001_0003)            // DSN, end
        return config
    }

    func testReadsHeaderLittleEndian() throws {
        let header = try Self.nvmeLikeConfig().header()
        XCTAssertEqual(header.vendorID, 0x1B36)
        XCTAssertEqual(header.deviceID, 0x0010)
        XCTAssertEqual(header.classCode, 0x01_08_02)
        XCTAssertEqual(header.revision, 2)
        XCTAssertEqual(header.interruptPin, 1)
    }

    func testWalksStandardAndExtendedCapabilities() throws {
        let capabilities = try PCICapabilities(reading: Self.nvmeLikeConfig())
        XCTAssertEqual(capabilities.standard.map(\.id), [0x01, 0x05, 0x10, 0x11])
        XCTAssertEqual(capabilities.extended.map(\.id), [0x0001, 0x0003])
        XCTAssertEqual(capabilities.problems, [])
        let msix = try XCTUnwrap(capabilities.msix)
        XCTAssertEqual(msix.tableSize, 64)
        XCTAssertEqual(msix.tableBAR, 0)
        XCTAssertEqual(msix.tableOffset, 0x2000)
        XCTAssertEqual(msix.pendingBitArrayOffset, 0x3000)
        XCTAssertFalse(msix.enabled)
        let msi = try XCTUnwrap(capabilities.msi)
        XCTAssertEqual(msi.vectorsCapable, 4)
        XCTAssertTrue(msi.is64Bit)
        let express = try XCTUnwrap(capabilities.express)
        XCTAssertTrue(express.functionLevelReset)
        XCTAssertEqual(express.maxLinkWidth, 4)
        XCTAssertEqual(express.linkSpeed, 1)
        XCTAssertEqual(capabilities.powerManagement?.powerState, 0)
        XCTAssertEqual(capabilities.powerManagement?.noSoftResetOnD3hot, true)
    }

    func testCapabilityLoopStopsWithAProblem() throws {
        let config = Self.nvmeLikeConfig()
        config.bytes[0xB1] = 0x40  // MSI-X points back at PM
        let capabilities = try PCICapabilities(reading: config)
        XCTAssertEqual(capabilities.standard.count, 4)
        XCTAssertEqual(capabilities.problems.count, 1)
        XCTAssertTrue(capabilities.problems[0].contains("loops"), capabilities.problems[0])
    }

    func testPointerIntoHeaderIsRefused() throws {
        let config = Self.nvmeLikeConfig()
        config.bytes[0x34] = 0x10
        let capabilities = try PCICapabilities(reading: config)
        XCTAssertTrue(capabilities.standard.isEmpty)
        XCTAssertEqual(capabilities.problems.count, 1)
    }

    func testTruncatedCapabilityIsAProblemNotAFailure() throws {
        let config = InMemoryConfigSpace(bytes: Array(Self.nvmeLikeConfig().bytes[0..<256]))
        config.bytes[0xB1] = 0xF8               // MSI-X -> a second MSI-X at 0xF8 whose table field is past 0xFF
        config.bytes[0xF8] = 0x11; config.bytes[0xF9] = 0x00
        let capabilities = try PCICapabilities(reading: config)
        XCTAssertEqual(capabilities.standard.map(\.offset), [0x40, 0x50, 0x70, 0xB0, 0xF8])
        XCTAssertEqual(capabilities.problems.count, 1)
        XCTAssertTrue(capabilities.problems[0].contains("truncated"), capabilities.problems[0])
        XCTAssertEqual(capabilities.msix?.offset, 0xB0, "the well-formed MSI-X capability is still decoded")
    }

    func testExtendedLoopStops() throws {
        let config = Self.nvmeLikeConfig()
        config.bytes[0x142] = 0x00; config.bytes[0x143] = 0x10  // DSN next -> 0x100
        let capabilities = try PCICapabilities(reading: config)
        XCTAssertEqual(capabilities.extended.count, 2)
        XCTAssertTrue(capabilities.problems.contains { $0.contains("loops") })
    }

    func testConventionalSpaceHasNoExtendedList() throws {
        let full = Self.nvmeLikeConfig()
        let conventional = InMemoryConfigSpace(bytes: Array(full.bytes[0..<256]))
        XCTAssertEqual(try PCICapabilities(reading: conventional).extended, [])
    }

    func testOutOfRangeAccessIsAnError() {
        let config = InMemoryConfigSpace(size: 256)
        XCTAssertThrowsError(try config.read32(254))
        XCTAssertThrowsError(try config.write16(-1, 0))
    }

    func testBusMasterSetsAndClearsOnlyItsBit() throws {
        let config = Self.nvmeLikeConfig()
        try config.write16(PCIConfig.command, PCIConfig.Command.interruptDisable)
        try config.setBusMaster(true)
        XCTAssertEqual(try config.read16(PCIConfig.command),
                       PCIConfig.Command.interruptDisable | PCIConfig.Command.busMaster | PCIConfig.Command.memorySpace)
        try config.setBusMaster(false)
        XCTAssertEqual(try config.read16(PCIConfig.command) & PCIConfig.Command.busMaster, 0)
    }
}
