/// A 16-byte completion queue entry (NVMe 2.0 section 4.2.1, "Common Completion Queue Entry",
/// figure 89): DW0 command specific, DW1 reserved / command specific, DW2 SQ head pointer 15:0
/// and SQ identifier 31:16, DW3 command identifier 15:0, phase tag bit 16, status 31:17.
public struct NVMeCompletion: Equatable, Sendable {
    public var result: UInt32
    public var dword1: UInt32
    public var submissionQueueHead: UInt16
    public var submissionQueueID: UInt16
    public var commandID: UInt16
    public var phase: Bool
    public var status: NVMeStatus

    public static let size = 16

    public init(result: UInt32 = 0, dword1: UInt32 = 0, submissionQueueHead: UInt16, submissionQueueID: UInt16,
                commandID: UInt16, phase: Bool, status: NVMeStatus) {
        self.result = result
        self.dword1 = dword1
        self.submissionQueueHead = submissionQueueHead
        self.submissionQueueID = submissionQueueID
        self.commandID = commandID
        self.phase = phase
        self.status = status
    }

    /// Decodes the four dwords of an entry.
    public init(dwords dw0: UInt32, _ dw1: UInt32, _ dw2: UInt32, _ dw3: UInt32) {
        self.init(result: dw0, dword1: dw1,
                  submissionQueueHead: UInt16(truncatingIfNeeded: dw2), submissionQueueID: UInt16(truncatingIfNeeded: dw2 >> 16),
                  commandID: UInt16(truncatingIfNeeded: dw3), phase: dw3 & (1 << 16) != 0,
                  status: NVMeStatus(raw: UInt16(truncatingIfNeeded: dw3 >> 17)))
    }

    /// DW3 as a device writes it (fake devices).
    public var dword3: UInt32 { UInt32(commandID) | (phase ? 1 << 16 : 0) | UInt32(status.raw) << 17 }
    public var dword2: UInt32 { UInt32(submissionQueueHead) | UInt32(submissionQueueID) << 16 }
}

/// The 15-bit Status field (NVMe 2.0 section 4.2.3, figure 92): SC bits 7:0, SCT bits 10:8,
/// CRD bits 12:11, More bit 13, DNR bit 14 (bits 31:17 of DW3, shifted down).
public struct NVMeStatus: Equatable, Hashable, Sendable, CustomStringConvertible {
    public let raw: UInt16

    public init(raw: UInt16) { self.raw = raw & 0x7FFF }
    public init(type: NVMeStatusCodeType, code: UInt8, doNotRetry: Bool = false) {
        self.init(raw: UInt16(code) | UInt16(type.rawValue) << 8 | (doNotRetry ? 1 << 14 : 0))
    }

    public static let success = NVMeStatus(raw: 0)
    public static let invalidOpcode = NVMeStatus(type: .generic, code: 0x01, doNotRetry: true)
    public static let invalidField = NVMeStatus(type: .generic, code: 0x02, doNotRetry: true)
    public static let dataTransferError = NVMeStatus(type: .generic, code: 0x04)
    public static let internalError = NVMeStatus(type: .generic, code: 0x06)
    public static let invalidNamespace = NVMeStatus(type: .generic, code: 0x0B, doNotRetry: true)
    public static let prpOffsetInvalid = NVMeStatus(type: .generic, code: 0x13, doNotRetry: true)
    public static let lbaOutOfRange = NVMeStatus(type: .generic, code: 0x80, doNotRetry: true)
    public static let unrecoveredReadError = NVMeStatus(type: .mediaAndDataIntegrity, code: 0x81)
    public static let commandAbortedSQDeletion = NVMeStatus(type: .generic, code: 0x08)

    /// The device reported LBA Out of Range (NVM command set, figure 94 code 80h).
    public var isLBAOutOfRange: Bool { matches(.lbaOutOfRange) }
    /// A Media and Data Integrity Error (section 4.2.3.3): the data itself is bad or unreachable.
    public var isMediaError: Bool { codeType == .mediaAndDataIntegrity }

    public var code: UInt8 { UInt8(truncatingIfNeeded: raw) }
    public var codeType: NVMeStatusCodeType { NVMeStatusCodeType(rawValue: UInt8((raw >> 8) & 0x7)) ?? .vendorSpecific }
    public var commandRetryDelay: UInt8 { UInt8((raw >> 11) & 0x3) }
    public var more: Bool { raw & (1 << 13) != 0 }
    public var doNotRetry: Bool { raw & (1 << 14) != 0 }
    public var isSuccess: Bool { code == 0 && codeType == .generic }

    /// Same SCT and SC, ignoring CRD/M/DNR.
    public func matches(_ other: NVMeStatus) -> Bool { code == other.code && codeType == other.codeType }

    /// The specification's name for the status, when it is a common one.
    public var name: String? {
        switch (codeType, code) {
        // Generic Command Status (section 4.2.3.1, figure 94).
        case (.generic, 0x00): "Successful Completion"
        case (.generic, 0x01): "Invalid Command Opcode"
        case (.generic, 0x02): "Invalid Field in Command"
        case (.generic, 0x03): "Command ID Conflict"
        case (.generic, 0x04): "Data Transfer Error"
        case (.generic, 0x05): "Commands Aborted due to Power Loss Notification"
        case (.generic, 0x06): "Internal Error"
        case (.generic, 0x07): "Command Abort Requested"
        case (.generic, 0x08): "Command Aborted due to SQ Deletion"
        case (.generic, 0x0B): "Invalid Namespace or Format"
        case (.generic, 0x0C): "Command Sequence Error"
        case (.generic, 0x0D): "Invalid SGL Segment Descriptor"
        case (.generic, 0x13): "PRP Offset Invalid"
        case (.generic, 0x80): "LBA Out of Range"
        case (.generic, 0x81): "Capacity Exceeded"
        case (.generic, 0x82): "Namespace Not Ready"
        // Command Specific Status (section 4.2.3.2, figure 95).
        case (.commandSpecific, 0x00): "Completion Queue Invalid"
        case (.commandSpecific, 0x01): "Invalid Queue Identifier"
        case (.commandSpecific, 0x02): "Invalid Queue Size"
        case (.commandSpecific, 0x03): "Abort Command Limit Exceeded"
        case (.commandSpecific, 0x05): "Asynchronous Event Request Limit Exceeded"
        case (.commandSpecific, 0x08): "Invalid Interrupt Vector"
        case (.commandSpecific, 0x09): "Invalid Log Page"
        case (.commandSpecific, 0x0A): "Invalid Format"
        case (.commandSpecific, 0x0C): "Invalid Queue Deletion"
        case (.commandSpecific, 0x0D): "Feature Identifier Not Saveable"
        case (.commandSpecific, 0x0E): "Feature Not Changeable"
        // Media and Data Integrity Errors (section 4.2.3.3, figure 96).
        case (.mediaAndDataIntegrity, 0x80): "Write Fault"
        case (.mediaAndDataIntegrity, 0x81): "Unrecovered Read Error"
        case (.mediaAndDataIntegrity, 0x82): "End-to-end Guard Check Error"
        case (.mediaAndDataIntegrity, 0x85): "Compare Failure"
        case (.mediaAndDataIntegrity, 0x86): "Access Denied"
        // Path Related Status (section 4.2.3.4).
        case (.pathRelated, 0x00): "Internal Path Error"
        case (.pathRelated, 0x60): "Command Aborted By Host"
        default: nil
        }
    }

    public var description: String {
        let hex = "SCT \(codeType.rawValue) SC 0x\(String(code, radix: 16, uppercase: true))"
        return (name.map { "\($0) (\(hex))" } ?? hex) + (doNotRetry ? ", do not retry" : "")
    }
}

/// Status Code Type (NVMe 2.0 section 4.2.3, figure 93).
public enum NVMeStatusCodeType: UInt8, Sendable {
    case generic = 0
    case commandSpecific = 1
    case mediaAndDataIntegrity = 2
    case pathRelated = 3
    case vendorSpecific = 7
}
