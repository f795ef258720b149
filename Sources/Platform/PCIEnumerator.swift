import CPCI

/// What the system knows about one PCI function: identity from libpci, binding and placement
/// from sysfs, names from the pci.ids database.
public struct PCIFunctionInfo: Equatable, Sendable {
    public var address: PCIAddress
    public var vendorID: UInt16
    public var deviceID: UInt16
    /// Base class, subclass and programming interface, e.g. 0x010802 (NVMe).
    public var classCode: UInt32
    public var revision: UInt8
    public var subsystemVendorID: UInt16
    public var subsystemID: UInt16
    public var driver: String?
    public var iommuGroup: Int?
    public var numaNode: Int?
    public var resources: [PCIResource]
    public var vendorName: String?
    public var deviceName: String?
    public var className: String?

    public init(address: PCIAddress, vendorID: UInt16, deviceID: UInt16, classCode: UInt32, revision: UInt8 = 0,
                subsystemVendorID: UInt16 = 0, subsystemID: UInt16 = 0, driver: String? = nil, iommuGroup: Int? = nil,
                numaNode: Int? = nil, resources: [PCIResource] = [], vendorName: String? = nil,
                deviceName: String? = nil, className: String? = nil) {
        self.address = address
        self.vendorID = vendorID
        self.deviceID = deviceID
        self.classCode = classCode
        self.revision = revision
        self.subsystemVendorID = subsystemVendorID
        self.subsystemID = subsystemID
        self.driver = driver
        self.iommuGroup = iommuGroup
        self.numaNode = numaNode
        self.resources = resources
        self.vendorName = vendorName
        self.deviceName = deviceName
        self.className = className
    }

    /// `1b36:0010`, as lspci -n prints it.
    public var idPair: String { hex(vendorID, width: 4) + ":" + hex(deviceID, width: 4) }
    public var isBridge: Bool { classCode >> 8 == 0x0604 }
}

/// Enumerates PCI functions. libpci scans (with sysfs as its access method, rooted where the
/// `Sysfs` value says) and names; sysfs adds binding, IOMMU group, NUMA node and BARs.
public struct PCIEnumerator: Sendable {
    public var sysfs: Sysfs
    /// The pci.ids database; nil uses libpci's default (/usr/share/misc/pci.ids on Debian).
    public var idsFile: String?

    public init(sysfs: Sysfs = Sysfs(), idsFile: String? = nil) {
        self.sysfs = sysfs
        self.idsFile = idsFile
    }

    public struct EnumerationError: Error, CustomStringConvertible {
        public var message: String
        public var description: String { "PCI enumeration failed: \(message)" }
    }

    public func functions() throws -> [PCIFunctionInfo] {
        guard sysfs.exists(sysfs.root + "/bus/pci") else {
            throw EnumerationError(message: "\(sysfs.root)/bus/pci does not exist (is sysfs mounted?)")
        }
        guard let access = CPCI_open_and_scan(sysfs.root + "/bus/pci", idsFile) else {
            throw EnumerationError(message: String(cString: CPCI_error_message()))
        }
        defer { pci_cleanup(access) }
        var found: [PCIFunctionInfo] = []
        var device = access.pointee.devices
        while let current = device {
            device = current.pointee.next
            let flags = CPCI_FILL_IDENT | CPCI_FILL_CLASS | CPCI_FILL_CLASS_EXT | CPCI_FILL_SUBSYS
            guard CPCI_fill(current, flags) >= 0 else {
                throw EnumerationError(message: String(cString: CPCI_error_message()))
            }
            let entry = current.pointee
            let address = PCIAddress(domain: UInt32(truncatingIfNeeded: entry.domain), bus: entry.bus,
                                     device: entry.dev & 0x1F, function: entry.func & 0x7)
            let classCode = UInt32(entry.device_class) << 8 | UInt32(entry.prog_if)
            found.append(PCIFunctionInfo(
                address: address, vendorID: entry.vendor_id, deviceID: entry.device_id, classCode: classCode,
                revision: entry.rev_id, subsystemVendorID: entry.subsys_vendor_id, subsystemID: entry.subsys_id,
                driver: sysfs.driver(of: address), iommuGroup: sysfs.iommuGroup(of: address),
                numaNode: sysfs.numaNode(of: address), resources: (try? sysfs.resources(of: address)) ?? [],
                vendorName: lookup { CPCI_lookup_vendor(access, $0, $1, UInt32(entry.vendor_id)) },
                deviceName: lookup { CPCI_lookup_device(access, $0, $1, UInt32(entry.vendor_id), UInt32(entry.device_id)) },
                className: lookup { CPCI_lookup_class(access, $0, $1, UInt32(entry.device_class)) }))
        }
        return found.sorted { $0.address < $1.address }
    }

    public func function(at address: PCIAddress) throws -> PCIFunctionInfo {
        guard let info = try functions().first(where: { $0.address == address }) else {
            throw PlatformError.deviceNotFound(address)
        }
        return info
    }

    private func lookup(_ call: (UnsafeMutablePointer<CChar>, Int32) -> UnsafeMutablePointer<CChar>?) -> String? {
        var buffer = [CChar](repeating: 0, count: 256)
        let name = buffer.withUnsafeMutableBufferPointer { pointer -> String? in
            guard let result = call(pointer.baseAddress!, Int32(pointer.count)) else { return nil }
            return String(cString: result)
        }
        // Without a pci.ids entry libpci answers "Device 1234" or "Class 0c03": not a name.
        guard let name, !name.hasPrefix("Device "), !name.hasPrefix("Vendor "), !name.hasPrefix("Class ") else { return nil }
        return name
    }
}
