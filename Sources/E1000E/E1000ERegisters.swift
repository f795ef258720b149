/// Registers of the Intel 82574 GbE controller used here (82574 datasheet rev 3.x, section
/// 10.2 "Register Descriptions", table 10-2 "Register Summary"). Offsets in BAR0 (memory).
public enum E1000ERegister {
    /// Device Control (10.2.2.1).
    public static let ctrl = 0x0000
    /// Device Status (10.2.2.2).
    public static let status = 0x0008
    /// EEPROM/Flash Control (10.2.2.3).
    public static let eecd = 0x0010
    /// EEPROM Read (10.2.2.4).
    public static let eerd = 0x0014
    /// Extended Device Control (10.2.2.6).
    public static let ctrlExt = 0x0018
    /// MDI Control (10.2.2.7).
    public static let mdic = 0x0020
    /// Interrupt Cause Read (10.2.4.1).
    public static let icr = 0x00C0
    /// Interrupt Throttling (10.2.4.2).
    public static let itr = 0x00C4
    /// Interrupt Cause Set (10.2.4.3): writing a 1 sets the cause, as if the event happened.
    public static let ics = 0x00C8
    /// Interrupt Mask Set/Read (10.2.4.4).
    public static let ims = 0x00D0
    /// Interrupt Mask Clear (10.2.4.5).
    public static let imc = 0x00D8
    /// Extended Interrupt Auto Clear (10.2.4.6; MSI-X).
    public static let eiac = 0x00DC
    /// Interrupt Acknowledge Auto-Mask (10.2.4.7).
    public static let iam = 0x00E0
    /// Interrupt Vector Allocation Registers (10.2.4.9; MSI-X).
    public static let ivar = 0x00E4
    /// MSI-X vector n's throttling register EITR (10.2.4.10): 0x000E8 + 4n.
    public static func eitr(_ vector: Int) -> Int { 0x00E8 + 4 * vector }
    /// Receive / Transmit Control (10.2.5.1, 10.2.6.1).
    public static let rctl = 0x0100
    public static let tctl = 0x0400
    /// Receive Address Low / High, entry n at 0x5400 + 8n (10.2.5.16, 10.2.5.17).
    public static func ral(_ entry: Int) -> Int { 0x5400 + 8 * entry }
    public static func rah(_ entry: Int) -> Int { 0x5404 + 8 * entry }
    /// MSI-X PBA Clear (10.2.4.11).
    public static let pbaclr = 0x5B68
}

/// CTRL bits (10.2.2.1).
public enum E1000ECTRL {
    public static let fullDuplex: UInt32 = 1 << 0
    /// GIO Master Disable: stops the device's DMA before a reset (5.2.3.3 / 10.2.2.1).
    public static let gioMasterDisable: UInt32 = 1 << 2
    public static let autoSpeedDetect: UInt32 = 1 << 5
    public static let setLinkUp: UInt32 = 1 << 6
    /// Device Reset: self-clearing software reset of the MAC (10.2.2.1, bit 26).
    public static let reset: UInt32 = 1 << 26
    public static let phyReset: UInt32 = 1 << 31
}

/// STATUS bits (10.2.2.2).
public enum E1000ESTATUS {
    public static let fullDuplex: UInt32 = 1 << 0
    public static let linkUp: UInt32 = 1 << 1
    /// Speed 7:6: 00 10 Mb/s, 01 100 Mb/s, 1x 1000 Mb/s.
    public static let speedShift: UInt32 = 6
    public static let gioMasterEnable: UInt32 = 1 << 19
}

/// EECD bits (10.2.2.3).
public enum E1000EEECD {
    public static let present: UInt32 = 1 << 8
    /// NVM auto-read done: set when the hardware finished loading from the NVM after reset.
    public static let autoReadDone: UInt32 = 1 << 9
}

/// EERD layout (10.2.2.4): Start bit 0, Done bit 1, Address 15:2 (word address), Data 31:16.
public enum E1000EEERD {
    public static let start: UInt32 = 1 << 0
    public static let done: UInt32 = 1 << 1
    public static func read(word: Int) -> UInt32 { UInt32(word) << 2 | start }
    public static func data(_ value: UInt32) -> UInt16 { UInt16(truncatingIfNeeded: value >> 16) }
}

/// CTRL_EXT bits (10.2.2.6).
public enum E1000ECTRLEXT {
    /// Extended Interrupt Auto Mask Enable (MSI-X): IAM applied on the vector's write.
    public static let eiame: UInt32 = 1 << 24
    /// Interrupt Acknowledge Auto-mask Enable.
    public static let iame: UInt32 = 1 << 27
    /// Driver loaded (firmware hand-off).
    public static let driverLoaded: UInt32 = 1 << 28
    /// PBA Support: with MSI-X, writing IMS clears the vectors' pending bits (Linux e1000e
    /// sets it in MSI-X mode).
    public static let pbaSupport: UInt32 = 1 << 31
}

/// RAH bits (10.2.5.17): Address Valid bit 31.
public enum E1000ERAH {
    public static let addressValid: UInt32 = 1 << 31
}

/// Interrupt causes: bits of ICR, ICS, IMS, IMC (10.2.4.1-10.2.4.5 share one layout).
public struct E1000EInterruptCause: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let transmitDescriptorWriteBack = Self(rawValue: 1 << 0)
    public static let transmitQueueEmpty = Self(rawValue: 1 << 1)
    public static let linkStatusChange = Self(rawValue: 1 << 2)
    public static let receiveDescriptorMinimumThreshold = Self(rawValue: 1 << 4)
    public static let receiverOverrun = Self(rawValue: 1 << 6)
    public static let receiverTimer = Self(rawValue: 1 << 7)
    public static let mdioAccessComplete = Self(rawValue: 1 << 9)
    // The MSI-X causes (10.2.4.1 bits 24:20): the only ones IVAR routes to a vector.
    public static let rxQueue0 = Self(rawValue: 1 << 20)
    public static let rxQueue1 = Self(rawValue: 1 << 21)
    public static let txQueue0 = Self(rawValue: 1 << 22)
    public static let txQueue1 = Self(rawValue: 1 << 23)
    /// "Other" (bit 24): link status change, receiver overrun, MDIO and management causes
    /// arrive on the vector IVAR.OTHER names in MSI-X mode.
    public static let other = Self(rawValue: 1 << 24)
    /// INT_ASSERTED (bit 31): some enabled cause is pending.
    public static let asserted = Self(rawValue: 1 << 31)

    public static let msixCauses: Self = [.rxQueue0, .rxQueue1, .txQueue0, .txQueue1, .other]

    /// The IVAR field (10.2.4.9) for an MSI-X cause: bits 3:0 RxQ0, 7:4 RxQ1, 11:8 TxQ0, 15:12
    /// TxQ1, 19:16 Other; nil for causes IVAR does not route.
    public var ivarShift: Int? {
        switch self {
        case .rxQueue0: 0
        case .rxQueue1: 4
        case .txQueue0: 8
        case .txQueue1: 12
        case .other: 16
        default: nil
        }
    }

    public var description: String { "0x" + String(rawValue, radix: 16) }
}

/// IVAR (10.2.4.9): per cause a 4-bit field, vector 2:0 and valid bit 3; bit 31 asks for an
/// interrupt on every descriptor write-back.
public enum E1000EIVAR {
    public static let entryValid: UInt32 = 1 << 3
    public static let interruptOnAllWriteBacks: UInt32 = 1 << 31
    /// The 82574 has 5 MSI-X vectors.
    public static let vectorCount = 5

    public static func entry(vector: Int) -> UInt32 { UInt32(vector & 0x7) | entryValid }
}
