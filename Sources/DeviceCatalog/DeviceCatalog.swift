import Platform

/// Which Limitless server drives which PCI function: the supported-device table the supervisor
/// and `serverctl devices` consult. Matches go from the most specific (vendor and device) to the
/// least (base class).
public struct DeviceCatalog: Sendable {
    public struct Entry: Sendable, Equatable {
        public enum Match: Sendable, Equatable {
            case ids(vendor: UInt16, device: UInt16)
            /// Class code (base, subclass, programming interface) under a mask.
            case classCode(UInt32, mask: UInt32)
        }
        public var match: Match
        public var server: String
        public var driver: String
        /// False for servers that do not exist yet: listed so users see what is coming.
        public var available: Bool

        func matches(_ function: PCIFunctionInfo) -> Bool {
            switch match {
            case .ids(let vendor, let device): function.vendorID == vendor && function.deviceID == device
            case .classCode(let code, let mask): function.classCode & mask == code & mask
            }
        }

        var specificity: Int {
            switch match {
            case .ids: 100
            case .classCode(_, let mask): mask.nonzeroBitCount
            }
        }
    }

    public var entries: [Entry]

    public init(entries: [Entry] = DeviceCatalog.builtIn) { self.entries = entries }

    public static let builtIn: [Entry] = [
        Entry(match: .classCode(0x01_08_02, mask: 0xFF_FF_FF), server: "storage_server", driver: "NVMe", available: true),
        Entry(match: .classCode(0x0C_03_30, mask: 0xFF_FF_FF), server: "usb_server", driver: "xHCI", available: true),
        Entry(match: .ids(vendor: 0x8086, device: 0x10D3), server: "network_server", driver: "e1000e (82574)", available: false),
        Entry(match: .classCode(0x03_00_00, mask: 0xFF_00_00), server: "graphics_server", driver: "display", available: false),
        Entry(match: .classCode(0x04_03_00, mask: 0xFF_FF_00), server: "audio_server", driver: "HD Audio", available: false),
    ]

    /// The best match for a function, if any server would drive it.
    public func entry(for function: PCIFunctionInfo) -> Entry? {
        entries.filter { $0.matches(function) }.max { $0.specificity < $1.specificity }
    }
}

/// How ready a function is for Limitless, in words a user can act on.
public enum BindingState: Equatable, Sendable {
    case vfio
    case uio
    case kernel(String)
    case unbound

    public init(driver: String?) {
        switch driver {
        case "vfio-pci": self = .vfio
        case "uio_pci_generic": self = .uio
        case nil: self = .unbound
        case let other?: self = .kernel(other)
        }
    }

    public var summary: String {
        switch self {
        case .vfio: "vfio-pci"
        case .uio: "uio"
        case .kernel(let driver): driver
        case .unbound: "-"
        }
    }
}
