import Glibc
import Platform

/// For tests of anything that reads sysfs (Platform, the supervisor's device capabilities).
/// A sysfs tree in a temporary directory, shaped like the kernel's: devices with identity files,
/// a `driver` symlink into /sys/bus/pci/drivers, an `iommu_group` symlink into
/// /sys/kernel/iommu_groups, and the group's `devices` links back.
public final class FakeSysfs {
    public let root: String

    public init() {
        var template = Array("/tmp/limitless-sysfs-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        root = String(cString: made!)
        makeDirectory("bus/pci/devices")
        makeDirectory("bus/pci/drivers")
        makeDirectory("kernel/iommu_groups")
    }

    deinit { _ = system("rm -rf '\(root)'") }

    public var sysfs: Sysfs { Sysfs(root: root) }

    public func makeDirectory(_ relative: String) {
        var path = root
        for component in relative.split(separator: "/") {
            path += "/" + component
            mkdir(path, 0o755)
        }
    }

    public func writeFile(_ relative: String, _ contents: String) {
        let fd = open(root + "/" + relative, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        precondition(fd >= 0, "cannot write \(relative)")
        _ = contents.withCString { write(fd, $0, strlen($0)) }
        close(fd)
    }

    public func writeBytes(_ relative: String, _ bytes: [UInt8]) {
        let fd = open(root + "/" + relative, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }

    public func link(_ relative: String, to target: String) {
        unlink(root + "/" + relative)
        symlink(target, root + "/" + relative)
    }

    /// Adds a function. `config` defaults to a header with the IDs and class filled in.
    @discardableResult
    public func addFunction(_ address: String, vendor: UInt16, device: UInt16, classCode: UInt32,
                     driver: String? = nil, group: Int? = nil, numaNode: Int = -1,
                     resources: [String] = ["0x00000000fe000000 0x00000000fe003fff 0x0000000000140204"],
                     config: [UInt8]? = nil) -> String {
        let directory = "bus/pci/devices/\(address)"
        makeDirectory(directory)
        writeFile(directory + "/vendor", "0x\(hex(vendor, width: 4))\n")
        writeFile(directory + "/device", "0x\(hex(device, width: 4))\n")
        writeFile(directory + "/class", "0x\(hex(classCode, width: 6))\n")
        writeFile(directory + "/subsystem_vendor", "0x1af4\n")
        writeFile(directory + "/subsystem_device", "0x1100\n")
        writeFile(directory + "/revision", "0x02\n")
        writeFile(directory + "/irq", "0\n")
        writeFile(directory + "/numa_node", "\(numaNode)\n")
        let lines = resources + Array(repeating: "0x0000000000000000 0x0000000000000000 0x0000000000000000", count: 13 - resources.count)
        writeFile(directory + "/resource", lines.joined(separator: "\n") + "\n")
        var header = config ?? [UInt8](repeating: 0, count: 256)
        if config == nil {
            header[0] = UInt8(vendor & 0xFF); header[1] = UInt8(vendor >> 8)
            header[2] = UInt8(device & 0xFF); header[3] = UInt8(device >> 8)
            header[9] = UInt8(classCode & 0xFF); header[10] = UInt8((classCode >> 8) & 0xFF); header[11] = UInt8(classCode >> 16)
        }
        writeBytes(directory + "/config", header)
        if let driver {
            makeDirectory("bus/pci/drivers/\(driver)")
            link(directory + "/driver", to: "../../../bus/pci/drivers/\(driver)")
        }
        if let group {
            makeDirectory("kernel/iommu_groups/\(group)/devices")
            link(directory + "/iommu_group", to: "../../../kernel/iommu_groups/\(group)")
            link("kernel/iommu_groups/\(group)/devices/\(address)", to: "../../../../bus/pci/devices/\(address)")
        }
        return root + "/" + directory
    }
}
