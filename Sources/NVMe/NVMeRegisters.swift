import Platform

/// Controller registers at the start of BAR0 (NVMe Base Specification 2.0, section 3.1.3,
/// "Controller Registers"; 1.4 section 3.1). Offsets in bytes.
public enum NVMeRegister {
    /// Controller Capabilities, 64-bit (3.1.3.1). Read as two 32-bit halves: not every
    /// controller (or hypervisor) accepts 64-bit MMIO.
    public static let cap = 0x00
    /// Version (3.1.3.2).
    public static let vs = 0x08
    /// Interrupt Mask Set / Clear (3.1.3.3, 3.1.3.4): pin-based and MSI only; with MSI-X the
    /// host must not touch them.
    public static let intms = 0x0C
    public static let intmc = 0x10
    /// Controller Configuration (3.1.3.5).
    public static let cc = 0x14
    /// Controller Status (3.1.3.6).
    public static let csts = 0x1C
    /// NVM Subsystem Reset (3.1.3.7).
    public static let nssr = 0x20
    /// Admin Queue Attributes (3.1.3.8).
    public static let aqa = 0x24
    /// Admin Submission / Completion Queue Base Address, 64-bit (3.1.3.9, 3.1.3.10).
    public static let asq = 0x28
    public static let acq = 0x30
    /// First doorbell (3.1.3.x "SQ y Tail Doorbell" at 1000h + (2y * (4 << CAP.DSTRD))).
    public static let doorbellBase = 0x1000

    /// Offset of submission queue `queue`'s tail doorbell.
    @inline(__always)
    public static func submissionTailDoorbell(queue: UInt16, stride: Int) -> Int {
        doorbellBase + (2 * Int(queue)) * stride
    }

    /// Offset of completion queue `queue`'s head doorbell.
    @inline(__always)
    public static func completionHeadDoorbell(queue: UInt16, stride: Int) -> Int {
        doorbellBase + (2 * Int(queue) + 1) * stride
    }
}

/// CAP decoded (NVMe 2.0 section 3.1.3.1, figure 36).
public struct NVMeCapabilities: Equatable, Sendable, CustomStringConvertible {
    public let raw: UInt64

    public init(raw: UInt64) { self.raw = raw }

    /// Maximum Queue Entries Supported, converted from 0's based: the largest queue depth.
    public var maximumQueueEntries: Int { Int(raw & 0xFFFF) + 1 }
    /// Contiguous Queues Required.
    public var contiguousQueuesRequired: Bool { raw & (1 << 16) != 0 }
    /// Timeout (TO): worst-case time for CSTS.RDY to change after CC.EN changes, in 500 ms units.
    public var timeoutUnits: UInt8 { UInt8(truncatingIfNeeded: raw >> 24) }
    public var readyTimeoutNanoseconds: UInt64 { UInt64(max(timeoutUnits, 1)) * 500_000_000 }
    /// Doorbell Stride: doorbells are (4 << DSTRD) bytes apart.
    public var doorbellStrideBytes: Int { 4 << Int((raw >> 32) & 0xF) }
    /// NVM Subsystem Reset Supported.
    public var subsystemResetSupported: Bool { raw & (1 << 36) != 0 }
    /// Command Sets Supported (CSS), bits 44:37; bit 0 of the field is the NVM command set.
    public var commandSetsSupported: UInt8 { UInt8(truncatingIfNeeded: raw >> 37) }
    public var supportsNVMCommandSet: Bool { commandSetsSupported & 1 != 0 }
    /// Memory page size minimum / maximum, as 2^(12 + MPSMIN/MPSMAX) bytes.
    public var minimumPageSize: Int { 1 << (12 + Int((raw >> 48) & 0xF)) }
    public var maximumPageSize: Int { 1 << (12 + Int((raw >> 52) & 0xF)) }

    public var description: String {
        "CAP(MQES \(maximumQueueEntries), TO \(timeoutUnits)x500ms, DSTRD \(doorbellStrideBytes) B, CSS 0x\(String(commandSetsSupported, radix: 16)), MPS \(minimumPageSize)...\(maximumPageSize))"
    }
}

/// VS (NVMe 2.0 section 3.1.3.2): major 31:16, minor 15:8, tertiary 7:0.
public struct NVMeVersion: Equatable, Comparable, Sendable, CustomStringConvertible {
    public let raw: UInt32
    public init(raw: UInt32) { self.raw = raw }
    public init(major: Int, minor: Int, tertiary: Int = 0) {
        raw = UInt32(major) << 16 | UInt32(minor) << 8 | UInt32(tertiary)
    }
    public var major: Int { Int(raw >> 16) }
    public var minor: Int { Int((raw >> 8) & 0xFF) }
    public var tertiary: Int { Int(raw & 0xFF) }
    public var description: String { "\(major).\(minor).\(tertiary)" }
    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.raw < rhs.raw }
}

/// CC fields (NVMe 2.0 section 3.1.3.5, figure 41).
public enum NVMeCC {
    public static let enable: UInt32 = 1 << 0
    /// I/O Command Set Selected, bits 6:4; 000b = NVM command set.
    public static let commandSetNVM: UInt32 = 0 << 4
    /// Memory Page Size, bits 10:7, as 2^(12 + MPS): 0 means 4 KiB.
    public static func memoryPageSize(log2Bytes: Int) -> UInt32 { UInt32(log2Bytes - 12) << 7 }
    /// Arbitration Mechanism Selected, bits 13:11; 000b = round robin.
    public static let arbitrationRoundRobin: UInt32 = 0 << 11
    /// Shutdown Notification, bits 15:14.
    public static let shutdownMask: UInt32 = 0b11 << 14
    public static let shutdownNormal: UInt32 = 0b01 << 14
    public static let shutdownAbrupt: UInt32 = 0b10 << 14
    /// I/O Submission / Completion Queue Entry Size, bits 19:16 / 23:20, as 2^n bytes.
    public static func ioSubmissionEntrySize(log2Bytes: Int) -> UInt32 { UInt32(log2Bytes) << 16 }
    public static func ioCompletionEntrySize(log2Bytes: Int) -> UInt32 { UInt32(log2Bytes) << 20 }
}

/// CSTS fields (NVMe 2.0 section 3.1.3.6, figure 42).
public enum NVMeCSTS {
    public static let ready: UInt32 = 1 << 0
    /// Controller Fatal Status.
    public static let fatal: UInt32 = 1 << 1
    /// Shutdown Status, bits 3:2: 00b normal operation, 01b occurring, 10b complete.
    public static let shutdownStatusMask: UInt32 = 0b11 << 2
    public static let shutdownComplete: UInt32 = 0b10 << 2
    public static let subsystemResetOccurred: UInt32 = 1 << 4
    public static let processingPaused: UInt32 = 1 << 5
    /// All ones: the read did not reach the device (surprise removal, BAR not decoded).
    public static let deviceGone: UInt32 = 0xFFFF_FFFF
}

/// AQA (NVMe 2.0 section 3.1.3.8): ACQS bits 27:16, ASQS bits 11:0, both 0's based.
public enum NVMeAQA {
    public static func value(submissionEntries: Int, completionEntries: Int) -> UInt32 {
        UInt32(completionEntries - 1) << 16 | UInt32(submissionEntries - 1)
    }
}

extension RegisterIO {
    /// A 64-bit controller register read as low then high dword (NVMe 2.0 section 3.1.3:
    /// 64-bit registers may be accessed as two 32-bit accesses).
    @inline(__always)
    func nvmeRead64(_ offset: Int) -> UInt64 {
        UInt64(read32(offset)) | UInt64(read32(offset + 4)) << 32
    }

    @inline(__always)
    func nvmeWrite64(_ offset: Int, _ value: UInt64) {
        write32(offset, UInt32(truncatingIfNeeded: value))
        write32(offset + 4, UInt32(truncatingIfNeeded: value >> 32))
    }
}
