/// Everything the e1000e driver can report, each saying what happened.
public enum E1000EError: Error, Equatable, CustomStringConvertible {
    case deviceNotResponding(register: String)
    /// CTRL.RST did not self-clear.
    case resetTimeout(waitedNanoseconds: UInt64)
    /// EERD never reported Done for a word.
    case eepromReadTimeout(word: Int)
    /// Neither RAL0/RAH0 (Address Valid) nor the EEPROM gave a usable address.
    case noMACAddress
    /// The cause cannot be routed to an MSI-X vector, or the vector does not exist.
    case invalidInterruptRoute(cause: E1000EInterruptCause, vector: Int)
    /// The test interrupt did not arrive on the vector's eventfd.
    case interruptTimeout(vector: Int, cause: E1000EInterruptCause, waitedNanoseconds: UInt64)

    public var description: String {
        switch self {
        case .deviceNotResponding(let register):
            "e1000e not responding: \(register) reads as all ones (device removed, or BAR0 not mapped)"
        case .resetTimeout(let waited):
            "e1000e software reset (CTRL.RST) did not complete within \(waited / 1_000_000) ms"
        case .eepromReadTimeout(let word):
            "e1000e EEPROM read of word \(word) (EERD) did not complete"
        case .noMACAddress:
            "e1000e has no valid MAC address in RAL0/RAH0 or the EEPROM"
        case .invalidInterruptRoute(let cause, let vector):
            "e1000e cannot route interrupt cause \(cause) to MSI-X vector \(vector) (IVAR routes RxQ0/1, TxQ0/1 and Other to vectors 0-4)"
        case .interruptTimeout(let vector, let cause, let waited):
            "e1000e MSI-X vector \(vector) did not fire within \(waited / 1_000_000) ms after ICS set cause \(cause)"
        }
    }
}

/// A MAC address, printed the usual way.
public struct MACAddress: Equatable, Hashable, Sendable, CustomStringConvertible {
    public var bytes: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8)

    public init(_ b0: UInt8, _ b1: UInt8, _ b2: UInt8, _ b3: UInt8, _ b4: UInt8, _ b5: UInt8) {
        bytes = (b0, b1, b2, b3, b4, b5)
    }

    /// From RAL (bytes 0-3, little-endian) and RAH 15:0 (bytes 4-5) (10.2.5.16-17).
    public init(ral: UInt32, rah: UInt32) {
        self.init(UInt8(truncatingIfNeeded: ral), UInt8(truncatingIfNeeded: ral >> 8), UInt8(truncatingIfNeeded: ral >> 16),
                  UInt8(truncatingIfNeeded: ral >> 24), UInt8(truncatingIfNeeded: rah), UInt8(truncatingIfNeeded: rah >> 8))
    }

    public var array: [UInt8] { [bytes.0, bytes.1, bytes.2, bytes.3, bytes.4, bytes.5] }
    public var isMulticast: Bool { bytes.0 & 1 != 0 }
    public var isZero: Bool { array.allSatisfy { $0 == 0 } }

    public static func == (lhs: Self, rhs: Self) -> Bool { lhs.array == rhs.array }
    public func hash(into hasher: inout Hasher) { hasher.combine(array) }

    public var description: String {
        array.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined(separator: ":")
    }
}
