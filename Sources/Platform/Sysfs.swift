#if canImport(Glibc)
import Glibc
#endif

/// Reading Linux's sysfs (and procfs) as text. The root is a parameter so tests run against a
/// tree they build in a temporary directory; sysfs values are input like any other and a
/// malformed one is reported, not trusted.
public struct Sysfs: Sendable {
    /// Normally "/sys".
    public var root: String

    public init(root: String = "/sys") { self.root = root }

    public var pciDevices: String { root + "/bus/pci/devices" }

    public func devicePath(_ address: PCIAddress) -> String { pciDevices + "/" + address.description }

    /// The file's contents without the trailing newline, or nil if it cannot be read.
    public func readText(_ path: String, limit: Int = 65536) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: limit)
        var total = 0
        while total < limit {
            let count = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress! + total, limit - total) }
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { break }
            total += count
        }
        var text = String(decoding: bytes[0..<total], as: UTF8.self)
        while text.last == "\n" { text.removeLast() }
        return text
    }

    /// Parses a hexadecimal sysfs value such as `0x1b36`.
    public func readHex(_ path: String) throws -> UInt64 {
        guard let text = readText(path) else { throw PlatformError.malformedSysfs(path: path, value: "(unreadable)") }
        let digits = text.hasPrefix("0x") ? text.dropFirst(2) : Substring(text)
        guard let value = UInt64(digits, radix: 16) else { throw PlatformError.malformedSysfs(path: path, value: text) }
        return value
    }

    /// The last path component a symlink points to (`driver` -> `vfio-pci`), or nil.
    public func linkTarget(_ path: String) -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let count = readlink(path, &buffer, buffer.count - 1)
        guard count > 0 else { return nil }
        let target = String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return target.split(separator: "/").last.map(String.init)
    }

    /// Names in a directory, sorted; empty if it does not exist.
    public func entries(_ path: String) -> [String] {
        guard let directory = opendir(path) else { return [] }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    public func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    // MARK: PCI function attributes

    public func functionAddresses() -> [PCIAddress] {
        entries(pciDevices).compactMap(PCIAddress.init).sorted()
    }

    public func driver(of address: PCIAddress) -> String? { linkTarget(devicePath(address) + "/driver") }

    public func iommuGroup(of address: PCIAddress) -> Int? {
        linkTarget(devicePath(address) + "/iommu_group").flatMap { Int($0) }
    }

    /// NUMA node of the function; nil where the platform does not say (sysfs shows -1).
    public func numaNode(of address: PCIAddress) -> Int? {
        guard let text = readText(devicePath(address) + "/numa_node"), let node = Int(text), node >= 0 else { return nil }
        return node
    }

    /// True when the kernel has IOMMU groups, i.e. an IOMMU is enabled.
    public var iommuEnabled: Bool { !entries(root + "/kernel/iommu_groups").isEmpty }

    public func iommuGroupMembers(_ group: Int) -> [PCIAddress] {
        entries(root + "/kernel/iommu_groups/\(group)/devices").compactMap(PCIAddress.init).sorted()
    }

    /// `/dev/uioN` names of a function bound to a UIO driver.
    public func uioNames(of address: PCIAddress) -> [String] { entries(devicePath(address) + "/uio") }

    /// BARs from the `resource` file: one line per resource, "start end flags" in hex
    /// (lines 0-5 are BARs, 6 the expansion ROM).
    public func resources(of address: PCIAddress) throws -> [PCIResource] {
        let path = devicePath(address) + "/resource"
        guard let text = readText(path) else { return [] }
        var resources: [PCIResource] = []
        for (index, line) in text.split(separator: "\n").enumerated() where index < 6 {
            let fields = line.split(separator: " ")
            guard fields.count == 3,
                  let start = UInt64(fields[0].dropFirst(2), radix: 16),
                  let end = UInt64(fields[1].dropFirst(2), radix: 16),
                  let flags = UInt64(fields[2].dropFirst(2), radix: 16)
            else { throw PlatformError.malformedSysfs(path: path, value: String(line)) }
            guard start != 0 || end != 0 else { continue }
            guard end >= start else { throw PlatformError.malformedSysfs(path: path, value: String(line)) }
            resources.append(PCIResource(index: index, start: start, size: end - start + 1, flags: flags))
        }
        return resources
    }
}

/// One BAR as sysfs reports it.
public struct PCIResource: Equatable, Sendable {
    public var index: Int
    public var start: UInt64
    public var size: UInt64
    /// IORESOURCE_* flags from include/linux/ioport.h.
    public var flags: UInt64

    public init(index: Int, start: UInt64, size: UInt64, flags: UInt64) {
        self.index = index
        self.start = start
        self.size = size
        self.flags = flags
    }

    public var isMemory: Bool { flags & 0x200 != 0 }        // IORESOURCE_MEM
    public var isIO: Bool { flags & 0x100 != 0 }            // IORESOURCE_IO
    public var isPrefetchable: Bool { flags & 0x2000 != 0 }  // IORESOURCE_PREFETCH
    public var is64Bit: Bool { flags & 0x100000 != 0 }      // IORESOURCE_MEM_64
}
