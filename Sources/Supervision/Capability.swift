/// A right the supervisor grants a server. Each stands for file descriptors the supervisor opens
/// (a VFIO device fd, an eventfd, a memfd, a socket to another server) and passes to the server;
/// a server that was not granted a capability never holds the descriptor, so it cannot use it.
///
/// The names follow the seed. Two carry a device label (`CAP_MMIO_NVME0`, `CAP_IRQ_NVME0`): the
/// label names one of the server's `device` lines, so the grant says which device's BARs or
/// interrupts the server gets.
public enum Capability: Hashable, Comparable, Sendable, CustomStringConvertible {
    case pciConfig
    case mmio(device: String)
    case irq(device: String)
    case dmaAlloc
    case deviceCreate
    case blockRead
    case blockWrite
    case pageCache
    case inodeCreate
    case acpiRead
    case acpiExecute
    case cpuFrequency
    case powerState

    /// The capabilities without a device label, by their configuration names.
    public static let plain: [String: Capability] = [
        "CAP_PCI_CONFIG": .pciConfig, "CAP_DMA_ALLOC": .dmaAlloc, "CAP_DEVICE_CREATE": .deviceCreate,
        "CAP_BLOCK_READ": .blockRead, "CAP_BLOCK_WRITE": .blockWrite, "CAP_PAGE_CACHE": .pageCache,
        "CAP_INODE_CREATE": .inodeCreate, "CAP_ACPI_READ": .acpiRead, "CAP_ACPI_EXECUTE": .acpiExecute,
        "CAP_CPU_FREQ": .cpuFrequency, "CAP_POWER_STATE": .powerState,
    ]

    /// Every name a configuration may use, the device-labelled ones shown with `<DEV>`.
    public static let knownNames: [String] = plain.keys.sorted() + ["CAP_IRQ_<DEV>", "CAP_MMIO_<DEV>"]

    static let mmioPrefix = "CAP_MMIO_"
    static let irqPrefix = "CAP_IRQ_"

    /// Parses a configuration name. Device-labelled names are accepted for any well-formed label;
    /// whether the server declares that device is checked by the parser, which knows the server.
    public init?(_ name: String) {
        if let capability = Capability.plain[name] {
            self = capability
        } else if name.hasPrefix(Capability.mmioPrefix), let label = DeviceLabel.validated(name.dropFirst(Capability.mmioPrefix.count)) {
            self = .mmio(device: label)
        } else if name.hasPrefix(Capability.irqPrefix), let label = DeviceLabel.validated(name.dropFirst(Capability.irqPrefix.count)) {
            self = .irq(device: label)
        } else {
            return nil
        }
    }

    /// The device label of `CAP_MMIO_<DEV>` and `CAP_IRQ_<DEV>`, nil for the others.
    public var device: String? {
        switch self {
        case .mmio(let device), .irq(let device): return device
        default: return nil
        }
    }

    public var description: String {
        switch self {
        case .pciConfig: return "CAP_PCI_CONFIG"
        case .mmio(let device): return Capability.mmioPrefix + device
        case .irq(let device): return Capability.irqPrefix + device
        case .dmaAlloc: return "CAP_DMA_ALLOC"
        case .deviceCreate: return "CAP_DEVICE_CREATE"
        case .blockRead: return "CAP_BLOCK_READ"
        case .blockWrite: return "CAP_BLOCK_WRITE"
        case .pageCache: return "CAP_PAGE_CACHE"
        case .inodeCreate: return "CAP_INODE_CREATE"
        case .acpiRead: return "CAP_ACPI_READ"
        case .acpiExecute: return "CAP_ACPI_EXECUTE"
        case .cpuFrequency: return "CAP_CPU_FREQ"
        case .powerState: return "CAP_POWER_STATE"
        }
    }

    public static func < (lhs: Capability, rhs: Capability) -> Bool { lhs.description < rhs.description }
}

/// Device labels (`NVME0`, `XHCI0`) become part of capability names, so they are upper-case
/// letters, digits and underscores, starting with a letter, at most 32 characters.
enum DeviceLabel {
    static func isValid<S: StringProtocol>(_ text: S) -> Bool {
        guard let first = text.utf8.first, (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(first), text.utf8.count <= 32
        else { return false }
        return text.utf8.allSatisfy {
            (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains($0) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0)
                || $0 == UInt8(ascii: "_")
        }
    }

    /// The label as a String when it is valid.
    static func validated<S: StringProtocol>(_ text: S) -> String? { isValid(text) ? String(text) : nil }
}
