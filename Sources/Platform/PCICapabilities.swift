/// The capability lists of a function's config space: the standard list from the pointer at
/// 0x34 (PCI 3.0 section 6.7) and the extended list from 0x100 (PCIe Base 4.0 section 7.6).
/// Config space comes from hardware we do not trust to be well-formed: walks are bounded and stop
/// at loops, misaligned pointers and pointers outside the space, recording why.
public struct PCICapabilities: Sendable {
    public struct Entry: Equatable, Sendable {
        public var id: UInt16
        public var offset: Int
        public var extended: Bool
    }

    public var standard: [Entry] = []
    public var extended: [Entry] = []
    /// Why a walk stopped early, if it did.
    public var problems: [String] = []

    public var msi: MSICapability?
    public var msix: MSIXCapability?
    public var express: PCIExpressCapability?
    public var powerManagement: PowerManagementCapability?

    /// Standard capability IDs (PCI Code and ID Assignment Specification, section 2).
    public enum ID {
        public static let powerManagement: UInt16 = 0x01
        public static let msi: UInt16 = 0x05
        public static let vendorSpecific: UInt16 = 0x09
        public static let pciExpress: UInt16 = 0x10
        public static let msix: UInt16 = 0x11
    }

    public static func name(ofStandard id: UInt16) -> String {
        switch id {
        case 0x01: "Power Management"
        case 0x05: "MSI"
        case 0x09: "Vendor Specific"
        case 0x10: "PCI Express"
        case 0x11: "MSI-X"
        case 0x12: "SATA"
        case 0x13: "Advanced Features"
        default: "ID 0x" + hex(id, width: 2)
        }
    }

    public static func name(ofExtended id: UInt16) -> String {
        switch id {
        case 0x0001: "Advanced Error Reporting"
        case 0x0003: "Device Serial Number"
        case 0x000B: "Vendor Specific Extended"
        case 0x000D: "ACS"
        case 0x000E: "ARI"
        case 0x0010: "SR-IOV"
        case 0x0018: "LTR"
        case 0x001E: "L1 PM Substates"
        default: "extended ID 0x" + hex(id, width: 4)
        }
    }

    public init() {}

    /// Reads both lists and decodes the capabilities drivers need.
    public init(reading config: some ConfigSpace) throws {
        let status = try config.read16(PCIConfig.status)
        if status & PCIConfig.Status.capabilitiesList != 0 {
            var pointer = Int(try config.read8(PCIConfig.capabilitiesPointer) & 0xFC)
            var seen = Set<Int>()
            // 48 entries of 4 bytes fill the 192 bytes after the header: more means a loop.
            while pointer != 0 {
                guard pointer >= 0x40, pointer + 2 <= min(config.size, 256) else {
                    problems.append("capability pointer 0x\(hex(pointer, width: 2)) outside 0x40...0xFF"); break
                }
                guard seen.insert(pointer).inserted, seen.count <= 48 else {
                    problems.append("capability list loops at 0x\(hex(pointer, width: 2))"); break
                }
                let id = UInt16(try config.read8(pointer))
                standard.append(Entry(id: id, offset: pointer, extended: false))
                pointer = Int(try config.read8(pointer + 1) & 0xFC)
            }
        }
        if config.size > PCIConfig.extendedCapabilitiesStart {
            var pointer = PCIConfig.extendedCapabilitiesStart
            var seen = Set<Int>()
            while pointer != 0 {
                guard pointer >= 0x100, pointer + 4 <= config.size, pointer % 4 == 0 else {
                    problems.append("extended capability pointer 0x\(hex(pointer, width: 3)) invalid"); break
                }
                guard seen.insert(pointer).inserted else {
                    problems.append("extended capability list loops at 0x\(hex(pointer, width: 3))"); break
                }
                let header = try config.read32(pointer)
                // An all-zero (or all-ones, device gone) header at 0x100 means no extended list.
                if header == 0 || header == 0xFFFF_FFFF { break }
                extended.append(Entry(id: UInt16(header & 0xFFFF), offset: pointer, extended: true))
                pointer = Int(header >> 20) & 0xFFC
            }
        }
        for entry in standard {
            // A capability whose registers run past the standard space is malformed: say so and
            // leave it undecoded rather than fail the whole walk.
            do {
                switch entry.id {
                case ID.msi: msi = try MSICapability(config: config, offset: entry.offset)
                case ID.msix: msix = try MSIXCapability(config: config, offset: entry.offset)
                case ID.pciExpress: express = try PCIExpressCapability(config: config, offset: entry.offset)
                case ID.powerManagement: powerManagement = try PowerManagementCapability(config: config, offset: entry.offset)
                default: break
                }
            } catch {
                problems.append("\(Self.name(ofStandard: entry.id)) capability at 0x\(hex(entry.offset, width: 2)) is truncated: \(error)")
            }
        }
    }
}

/// MSI capability (PCI 3.0 section 6.8.1).
public struct MSICapability: Equatable, Sendable {
    public var offset: Int
    public var enabled: Bool
    /// Vectors the function can request: 1, 2, 4, 8, 16 or 32.
    public var vectorsCapable: Int
    public var is64Bit: Bool
    public var perVectorMasking: Bool

    init(config: some ConfigSpace, offset: Int) throws {
        let control = try config.read16(offset + 2)
        self.offset = offset
        enabled = control & 1 != 0
        vectorsCapable = 1 << min(Int((control >> 1) & 0x7), 5)
        is64Bit = control & (1 << 7) != 0
        perVectorMasking = control & (1 << 8) != 0
    }
}

/// MSI-X capability (PCI 3.0 section 6.8.2): the table and pending-bit array live in BARs.
public struct MSIXCapability: Equatable, Sendable {
    public var offset: Int
    public var enabled: Bool
    public var functionMasked: Bool
    public var tableSize: Int
    public var tableBAR: Int
    public var tableOffset: UInt32
    public var pendingBitArrayBAR: Int
    public var pendingBitArrayOffset: UInt32

    init(config: some ConfigSpace, offset: Int) throws {
        let control = try config.read16(offset + 2)
        let table = try config.read32(offset + 4)
        let pba = try config.read32(offset + 8)
        self.offset = offset
        enabled = control & (1 << 15) != 0
        functionMasked = control & (1 << 14) != 0
        tableSize = Int(control & 0x7FF) + 1
        tableBAR = Int(table & 0x7)
        tableOffset = table & ~0x7
        pendingBitArrayBAR = Int(pba & 0x7)
        pendingBitArrayOffset = pba & ~0x7
    }
}

/// PCI Express capability (PCIe Base 4.0 section 7.5.3).
public struct PCIExpressCapability: Equatable, Sendable {
    public var offset: Int
    public var version: Int
    /// 0 endpoint, 1 legacy endpoint, 4 root port, 5 upstream, 6 downstream port, 9 RC integrated endpoint...
    public var deviceType: Int
    public var functionLevelReset: Bool
    public var maxLinkSpeed: Int
    public var maxLinkWidth: Int
    public var linkSpeed: Int
    public var linkWidth: Int

    init(config: some ConfigSpace, offset: Int) throws {
        let capabilities = try config.read16(offset + 2)
        let deviceCapabilities = try config.read32(offset + 4)
        let linkCapabilities = try config.read32(offset + 0x0C)
        let linkStatus = try config.read16(offset + 0x12)
        self.offset = offset
        version = Int(capabilities & 0xF)
        deviceType = Int((capabilities >> 4) & 0xF)
        functionLevelReset = deviceCapabilities & (1 << 28) != 0
        maxLinkSpeed = Int(linkCapabilities & 0xF)
        maxLinkWidth = Int((linkCapabilities >> 4) & 0x3F)
        linkSpeed = Int(linkStatus & 0xF)
        linkWidth = Int((linkStatus >> 4) & 0x3F)
    }

    /// Link speed as the spec names it (2.5 GT/s per lane for generation 1, and so on).
    public static func speedName(_ code: Int) -> String {
        switch code {
        case 1: "2.5GT/s"
        case 2: "5GT/s"
        case 3: "8GT/s"
        case 4: "16GT/s"
        case 5: "32GT/s"
        case 6: "64GT/s"
        default: "unknown"
        }
    }
}

/// Power Management capability (PCI Bus Power Management Interface 1.2, section 3.2).
public struct PowerManagementCapability: Equatable, Sendable {
    public var offset: Int
    public var version: Int
    /// Current power state: 0 = D0 ... 3 = D3hot.
    public var powerState: Int
    public var supportsD1: Bool
    public var supportsD2: Bool
    public var noSoftResetOnD3hot: Bool

    init(config: some ConfigSpace, offset: Int) throws {
        let capabilities = try config.read16(offset + 2)
        let controlStatus = try config.read16(offset + 4)
        self.offset = offset
        version = Int(capabilities & 0x7)
        supportsD1 = capabilities & (1 << 9) != 0
        supportsD2 = capabilities & (1 << 10) != 0
        powerState = Int(controlStatus & 0x3)
        noSoftResetOnD3hot = controlStatus & (1 << 3) != 0
    }
}
