import Platform

/// Host Controller Capability Registers (xHCI 1.2 section 5.3, table 5-9), offsets from BAR0.
public enum XHCICapabilityRegister {
    /// CAPLENGTH (7:0) and HCIVERSION (31:16) share the first dword; read it whole, since not
    /// every implementation decodes byte accesses.
    public static let capLengthAndVersion = 0x00
    public static let hcsParams1 = 0x04
    public static let hcsParams2 = 0x08
    public static let hcsParams3 = 0x0C
    public static let hccParams1 = 0x10
    /// Doorbell Offset (5.3.7): bits 31:2, dword aligned.
    public static let dbOff = 0x14
    /// Runtime Register Space Offset (5.3.8): bits 31:5, 32-byte aligned.
    public static let rtsOff = 0x18
    public static let hccParams2 = 0x1C
}

/// Host Controller Operational Registers (5.4, table 5-18), offsets from CAPLENGTH.
public enum XHCIOperationalRegister {
    public static let usbCmd = 0x00
    public static let usbSts = 0x04
    public static let pageSize = 0x08
    public static let dnCtrl = 0x14
    /// Command Ring Control, 64-bit (5.4.5).
    public static let crcr = 0x18
    /// Device Context Base Address Array Pointer, 64-bit (5.4.6).
    public static let dcbaap = 0x30
    public static let config = 0x38
    /// Port register set n (1-based) at 400h + 10h * (n - 1) (5.4.8); PORTSC is its first dword.
    public static func portSC(_ port: Int) -> Int { 0x400 + 0x10 * (port - 1) }
}

/// USBCMD bits (5.4.1).
public enum XHCIUSBCMD {
    public static let runStop: UInt32 = 1 << 0
    public static let hostControllerReset: UInt32 = 1 << 1
    public static let interrupterEnable: UInt32 = 1 << 2
    public static let hostSystemErrorEnable: UInt32 = 1 << 3
}

/// USBSTS bits (5.4.2). EINT, PCD, HSE and SRE are write-1-to-clear.
public enum XHCIUSBSTS {
    public static let hcHalted: UInt32 = 1 << 0
    public static let hostSystemError: UInt32 = 1 << 2
    public static let eventInterrupt: UInt32 = 1 << 3
    public static let portChangeDetect: UInt32 = 1 << 4
    public static let controllerNotReady: UInt32 = 1 << 11
    public static let hostControllerError: UInt32 = 1 << 12
}

/// CRCR bits (5.4.5): RCS bit 0, CS bit 1, CA bit 2, CRR bit 3, pointer 63:6.
public enum XHCICRCR {
    public static let ringCycleState: UInt64 = 1 << 0
    public static let commandStop: UInt64 = 1 << 1
    public static let commandAbort: UInt64 = 1 << 2
    public static let commandRingRunning: UInt64 = 1 << 3
}

/// Interrupter Register Set (5.5.2): at RTSOFF + 20h + 32 * interrupter.
public enum XHCIInterrupterRegister {
    public static func base(_ interrupter: Int) -> Int { 0x20 + 32 * interrupter }
    /// Interrupter Management (5.5.2.1): IP bit 0 (RW1C), IE bit 1.
    public static let iman = 0x00
    /// Interrupter Moderation (5.5.2.2): IMODI 15:0 in 250 ns units.
    public static let imod = 0x04
    /// Event Ring Segment Table Size (5.5.2.3.1).
    public static let erstsz = 0x08
    /// Event Ring Segment Table Base Address, 64-bit (5.5.2.3.2).
    public static let erstba = 0x10
    /// Event Ring Dequeue Pointer, 64-bit (5.5.2.3.3): DESI 2:0, EHB bit 3 (RW1C), pointer 63:4.
    public static let erdp = 0x18

    public static let imanPending: UInt32 = 1 << 0
    public static let imanEnable: UInt32 = 1 << 1
    public static let erdpEventHandlerBusy: UInt64 = 1 << 3
}

/// Capability registers decoded.
public struct XHCICapabilities: Equatable, Sendable, CustomStringConvertible {
    public var capLength: Int
    /// HCIVERSION as BCD, e.g. 0x0100 for 1.0.0, 0x0120 for 1.2.0.
    public var version: UInt16
    public var hcsParams1: UInt32
    public var hcsParams2: UInt32
    public var hcsParams3: UInt32
    public var hccParams1: UInt32
    public var doorbellOffset: Int
    public var runtimeOffset: Int

    public init<R: RegisterIO>(reading registers: R) {
        let first = registers.read32(XHCICapabilityRegister.capLengthAndVersion)
        capLength = Int(first & 0xFF)
        version = UInt16(truncatingIfNeeded: first >> 16)
        hcsParams1 = registers.read32(XHCICapabilityRegister.hcsParams1)
        hcsParams2 = registers.read32(XHCICapabilityRegister.hcsParams2)
        hcsParams3 = registers.read32(XHCICapabilityRegister.hcsParams3)
        hccParams1 = registers.read32(XHCICapabilityRegister.hccParams1)
        doorbellOffset = Int(registers.read32(XHCICapabilityRegister.dbOff) & ~0x3)
        runtimeOffset = Int(registers.read32(XHCICapabilityRegister.rtsOff) & ~0x1F)
    }

    /// HCSPARAMS1 (5.3.3): MaxSlots 7:0, MaxIntrs 18:8, MaxPorts 31:24.
    public var maxSlots: Int { Int(hcsParams1 & 0xFF) }
    public var maxInterrupters: Int { Int((hcsParams1 >> 8) & 0x7FF) }
    public var maxPorts: Int { Int(hcsParams1 >> 24) }
    /// HCSPARAMS2 (5.3.4): ERST Max 7:4 (as 2^n entries); Max Scratchpad Buffers Hi 25:21, Lo 31:27.
    public var eventRingSegmentTableMax: Int { 1 << Int((hcsParams2 >> 4) & 0xF) }
    public var maxScratchpadBuffers: Int { Int((hcsParams2 >> 21) & 0x1F) << 5 | Int(hcsParams2 >> 27) }
    /// HCCPARAMS1 (5.3.6): AC64 bit 0, CSZ bit 2 (64-byte contexts), xECP 31:16 (dwords).
    public var addressing64: Bool { hccParams1 & 1 != 0 }
    public var contextSize: Int { hccParams1 & (1 << 2) != 0 ? 64 : 32 }
    public var extendedCapabilitiesOffset: Int { Int(hccParams1 >> 16) * 4 }

    public var versionString: String {
        "\(version >> 8).\((version >> 4) & 0xF).\(version & 0xF)"
    }

    public var description: String {
        "xHCI \(versionString): \(maxSlots) slots, \(maxInterrupters) interrupters, \(maxPorts) ports, CAPLENGTH 0x\(String(capLength, radix: 16)), DBOFF 0x\(String(doorbellOffset, radix: 16)), RTSOFF 0x\(String(runtimeOffset, radix: 16))"
    }
}

extension RegisterIO {
    /// A 64-bit xHCI register written as two dwords, low first (xHCI 1.2 section 5.1: "low
    /// Dword-first, high-Dword second"). QEMU acts on the high write (CRCR, ERSTBA).
    @inline(__always)
    func xhciWrite64(_ offset: Int, _ value: UInt64) {
        write32(offset, UInt32(truncatingIfNeeded: value))
        write32(offset + 4, UInt32(truncatingIfNeeded: value >> 32))
    }

    @inline(__always)
    func xhciRead64(_ offset: Int) -> UInt64 {
        UInt64(read32(offset)) | UInt64(read32(offset + 4)) << 32
    }
}
