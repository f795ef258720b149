/// A 64-byte submission queue entry (NVMe 2.0 section 4.2, "Submission Queue Entry", figure 88).
/// A plain value: builders fill it in on the stack and the queue copies it into DMA memory in
/// place, so issuing a command allocates nothing.
public struct NVMeCommand: Equatable, Sendable {
    /// CDW0 bits 7:0.
    public var opcode: UInt8
    /// CDW0 bits 15:8: fused operation (1:0) and PSDT (7:6; 00b = PRPs).
    public var flags: UInt8 = 0
    /// CDW0 bits 31:16; the queue assigns it on submission.
    public var commandID: UInt16 = 0
    public var namespaceID: UInt32 = 0
    public var cdw2: UInt32 = 0
    public var cdw3: UInt32 = 0
    public var metadataPointer: UInt64 = 0
    /// Data pointer: PRP entry 1 and 2 (section 4.3).
    public var prp1: UInt64 = 0
    public var prp2: UInt64 = 0
    public var cdw10: UInt32 = 0
    public var cdw11: UInt32 = 0
    public var cdw12: UInt32 = 0
    public var cdw13: UInt32 = 0
    public var cdw14: UInt32 = 0
    public var cdw15: UInt32 = 0

    public static let size = 64

    public init(opcode: UInt8, namespaceID: UInt32 = 0, prp1: UInt64 = 0, prp2: UInt64 = 0,
                cdw10: UInt32 = 0, cdw11: UInt32 = 0, cdw12: UInt32 = 0,
                cdw13: UInt32 = 0, cdw14: UInt32 = 0, cdw15: UInt32 = 0) {
        self.opcode = opcode
        self.namespaceID = namespaceID
        self.prp1 = prp1
        self.prp2 = prp2
        self.cdw10 = cdw10
        self.cdw11 = cdw11
        self.cdw12 = cdw12
        self.cdw13 = cdw13
        self.cdw14 = cdw14
        self.cdw15 = cdw15
    }

    /// Writes the entry, little-endian, at `entry` (64 bytes of a submission queue).
    @inline(__always)
    public func write(to entry: UnsafeMutableRawPointer) {
        let cdw0 = UInt32(opcode) | UInt32(flags) << 8 | UInt32(commandID) << 16
        entry.storeBytes(of: cdw0.littleEndian, toByteOffset: 0, as: UInt32.self)
        entry.storeBytes(of: namespaceID.littleEndian, toByteOffset: 4, as: UInt32.self)
        entry.storeBytes(of: cdw2.littleEndian, toByteOffset: 8, as: UInt32.self)
        entry.storeBytes(of: cdw3.littleEndian, toByteOffset: 12, as: UInt32.self)
        entry.storeBytes(of: metadataPointer.littleEndian, toByteOffset: 16, as: UInt64.self)
        entry.storeBytes(of: prp1.littleEndian, toByteOffset: 24, as: UInt64.self)
        entry.storeBytes(of: prp2.littleEndian, toByteOffset: 32, as: UInt64.self)
        entry.storeBytes(of: cdw10.littleEndian, toByteOffset: 40, as: UInt32.self)
        entry.storeBytes(of: cdw11.littleEndian, toByteOffset: 44, as: UInt32.self)
        entry.storeBytes(of: cdw12.littleEndian, toByteOffset: 48, as: UInt32.self)
        entry.storeBytes(of: cdw13.littleEndian, toByteOffset: 52, as: UInt32.self)
        entry.storeBytes(of: cdw14.littleEndian, toByteOffset: 56, as: UInt32.self)
        entry.storeBytes(of: cdw15.littleEndian, toByteOffset: 60, as: UInt32.self)
    }

    /// Reads an entry back (fake devices and diagnostics).
    public init(reading entry: UnsafeRawPointer) {
        let cdw0 = UInt32(littleEndian: entry.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
        func dword(_ offset: Int) -> UInt32 { UInt32(littleEndian: entry.loadUnaligned(fromByteOffset: offset, as: UInt32.self)) }
        func qword(_ offset: Int) -> UInt64 { UInt64(littleEndian: entry.loadUnaligned(fromByteOffset: offset, as: UInt64.self)) }
        self.init(opcode: UInt8(truncatingIfNeeded: cdw0), namespaceID: dword(4), prp1: qword(24), prp2: qword(32),
                  cdw10: dword(40), cdw11: dword(44), cdw12: dword(48), cdw13: dword(52), cdw14: dword(56), cdw15: dword(60))
        flags = UInt8(truncatingIfNeeded: cdw0 >> 8)
        commandID = UInt16(truncatingIfNeeded: cdw0 >> 16)
        cdw2 = dword(8)
        cdw3 = dword(12)
        metadataPointer = qword(16)
    }
}

/// Admin command opcodes (NVMe 2.0 section 5, figure 138 "Opcodes for Admin Commands").
public enum NVMeAdminOpcode {
    public static let deleteIOSubmissionQueue: UInt8 = 0x00
    public static let createIOSubmissionQueue: UInt8 = 0x01
    public static let getLogPage: UInt8 = 0x02
    public static let deleteIOCompletionQueue: UInt8 = 0x04
    public static let createIOCompletionQueue: UInt8 = 0x05
    public static let identify: UInt8 = 0x06
    public static let abort: UInt8 = 0x08
    public static let setFeatures: UInt8 = 0x09
    public static let getFeatures: UInt8 = 0x0A
    public static let asynchronousEventRequest: UInt8 = 0x0C
}

/// NVM command set I/O opcodes (NVM Command Set Specification 1.0, section 3, figure 17).
public enum NVMeIOOpcode {
    public static let flush: UInt8 = 0x00
    public static let write: UInt8 = 0x01
    public static let read: UInt8 = 0x02
    public static let writeZeroes: UInt8 = 0x08
    public static let datasetManagement: UInt8 = 0x09
}

/// Identify CNS values (NVMe 2.0 section 5.17.1, figure 273).
public enum NVMeIdentifyCNS {
    public static let namespace: UInt8 = 0x00
    public static let controller: UInt8 = 0x01
    public static let activeNamespaceList: UInt8 = 0x02
}

/// Feature identifiers (NVMe 2.0 section 5.27.1, figure 317).
public enum NVMeFeature {
    public static let arbitration: UInt8 = 0x01
    public static let powerManagement: UInt8 = 0x02
    public static let interruptCoalescing: UInt8 = 0x08
    public static let numberOfQueues: UInt8 = 0x07
    public static let asynchronousEventConfiguration: UInt8 = 0x0B
}

// MARK: - Builders

extension NVMeCommand {
    /// Identify (NVMe 2.0 section 5.17): CDW10 CNS bits 7:0, CNTID bits 31:16. Returns a 4 KiB
    /// data structure to `prp1` (one page: no PRP2 needed when `prp1` is page aligned).
    public static func identify(cns: UInt8, namespaceID: UInt32 = 0, controllerID: UInt16 = 0,
                                prp1: UInt64, prp2: UInt64 = 0) -> NVMeCommand {
        NVMeCommand(opcode: NVMeAdminOpcode.identify, namespaceID: namespaceID, prp1: prp1, prp2: prp2,
                    cdw10: UInt32(cns) | UInt32(controllerID) << 16)
    }

    /// Identify Controller data structure (CNS 01h, section 5.17.2.1).
    public static func identifyController(prp1: UInt64) -> NVMeCommand {
        identify(cns: NVMeIdentifyCNS.controller, prp1: prp1)
    }

    /// Identify Namespace data structure for the NVM command set (CNS 00h; NVM Command Set
    /// Specification section 4.1.5.1).
    public static func identifyNamespace(_ namespaceID: UInt32, prp1: UInt64) -> NVMeCommand {
        identify(cns: NVMeIdentifyCNS.namespace, namespaceID: namespaceID, prp1: prp1)
    }

    /// Active Namespace ID list (CNS 02h): up to 1024 NSIDs greater than `after`, ascending.
    public static func identifyActiveNamespaces(after namespaceID: UInt32 = 0, prp1: UInt64) -> NVMeCommand {
        identify(cns: NVMeIdentifyCNS.activeNamespaceList, namespaceID: namespaceID, prp1: prp1)
    }

    /// Create I/O Completion Queue (section 5.4): CDW10 QSIZE 31:16 (0's based), QID 15:0;
    /// CDW11 IV 31:16, IEN bit 1, PC bit 0. `prp1` is the physically contiguous queue base.
    public static func createIOCompletionQueue(id: UInt16, entries: Int, prp1: UInt64,
                                               interruptVector: UInt16 = 0, interruptsEnabled: Bool = true) -> NVMeCommand {
        NVMeCommand(opcode: NVMeAdminOpcode.createIOCompletionQueue, prp1: prp1,
                    cdw10: UInt32(entries - 1) << 16 | UInt32(id),
                    cdw11: UInt32(interruptVector) << 16 | (interruptsEnabled ? 1 << 1 : 0) | 1)
    }

    /// Create I/O Submission Queue (section 5.5): CDW10 QSIZE 31:16, QID 15:0; CDW11 CQID
    /// 31:16, QPRIO 2:1, PC bit 0.
    public static func createIOSubmissionQueue(id: UInt16, entries: Int, prp1: UInt64,
                                               completionQueueID: UInt16, priority: UInt8 = 0) -> NVMeCommand {
        NVMeCommand(opcode: NVMeAdminOpcode.createIOSubmissionQueue, prp1: prp1,
                    cdw10: UInt32(entries - 1) << 16 | UInt32(id),
                    cdw11: UInt32(completionQueueID) << 16 | UInt32(priority & 0b11) << 1 | 1)
    }

    /// Delete I/O Submission / Completion Queue (sections 5.7, 5.6): CDW10 QID 15:0.
    public static func deleteIOSubmissionQueue(id: UInt16) -> NVMeCommand {
        NVMeCommand(opcode: NVMeAdminOpcode.deleteIOSubmissionQueue, cdw10: UInt32(id))
    }

    public static func deleteIOCompletionQueue(id: UInt16) -> NVMeCommand {
        NVMeCommand(opcode: NVMeAdminOpcode.deleteIOCompletionQueue, cdw10: UInt32(id))
    }

    /// Set Features (section 5.27): CDW10 FID 7:0 (SV bit 31 not set); `value` is CDW11.
    public static func setFeatures(_ feature: UInt8, value: UInt32) -> NVMeCommand {
        NVMeCommand(opcode: NVMeAdminOpcode.setFeatures, cdw10: UInt32(feature), cdw11: value)
    }

    /// Get Features (section 5.15): CDW10 SEL 10:8 (000b current), FID 7:0.
    public static func getFeatures(_ feature: UInt8) -> NVMeCommand {
        NVMeCommand(opcode: NVMeAdminOpcode.getFeatures, cdw10: UInt32(feature))
    }

    /// Set Features, Number of Queues (section 5.27.1.5): CDW11 NCQR 31:16, NSQR 15:0, both
    /// 0's based. The completion's DW0 holds what was allocated (NCQA/NSQA, same layout).
    public static func setNumberOfQueues(submission: Int, completion: Int) -> NVMeCommand {
        setFeatures(NVMeFeature.numberOfQueues, value: UInt32(completion - 1) << 16 | UInt32(submission - 1))
    }

    /// Read / Write (NVM Command Set Specification sections 3.2.4, 3.2.6): CDW10-11 SLBA,
    /// CDW12 NLB 15:0 (0's based).
    public static func read(namespaceID: UInt32, lba: UInt64, blocks: Int, prp1: UInt64, prp2: UInt64 = 0) -> NVMeCommand {
        NVMeCommand(opcode: NVMeIOOpcode.read, namespaceID: namespaceID, prp1: prp1, prp2: prp2,
                    cdw10: UInt32(truncatingIfNeeded: lba), cdw11: UInt32(truncatingIfNeeded: lba >> 32),
                    cdw12: UInt32(blocks - 1) & 0xFFFF)
    }

    public static func write(namespaceID: UInt32, lba: UInt64, blocks: Int, prp1: UInt64, prp2: UInt64 = 0) -> NVMeCommand {
        NVMeCommand(opcode: NVMeIOOpcode.write, namespaceID: namespaceID, prp1: prp1, prp2: prp2,
                    cdw10: UInt32(truncatingIfNeeded: lba), cdw11: UInt32(truncatingIfNeeded: lba >> 32),
                    cdw12: UInt32(blocks - 1) & 0xFFFF)
    }

    public static func flush(namespaceID: UInt32) -> NVMeCommand {
        NVMeCommand(opcode: NVMeIOOpcode.flush, namespaceID: namespaceID)
    }

    /// Write Zeroes (NVM Command Set Specification section 3.2.8): CDW10-11 SLBA, CDW12 NLB
    /// 15:0 (0's based), DEAC bit 25 (deallocate if the namespace can). No data transfer.
    public static func writeZeroes(namespaceID: UInt32, lba: UInt64, blocks: Int, deallocate: Bool = false) -> NVMeCommand {
        NVMeCommand(opcode: NVMeIOOpcode.writeZeroes, namespaceID: namespaceID,
                    cdw10: UInt32(truncatingIfNeeded: lba), cdw11: UInt32(truncatingIfNeeded: lba >> 32),
                    cdw12: UInt32(blocks - 1) & 0xFFFF | (deallocate ? 1 << 25 : 0))
    }

    /// Dataset Management (NVM Command Set Specification section 3.2.3): CDW10 NR 7:0 (number of
    /// ranges, 0's based), CDW11 AD bit 2 (deallocate). PRP1 points at `ranges` 16-byte range
    /// descriptors (context attributes, length in blocks, starting LBA; figure 40).
    public static func datasetManagement(namespaceID: UInt32, ranges: Int, deallocate: Bool, prp1: UInt64, prp2: UInt64 = 0) -> NVMeCommand {
        NVMeCommand(opcode: NVMeIOOpcode.datasetManagement, namespaceID: namespaceID, prp1: prp1, prp2: prp2,
                    cdw10: UInt32(ranges - 1) & 0xFF, cdw11: deallocate ? 1 << 2 : 0)
    }
}
