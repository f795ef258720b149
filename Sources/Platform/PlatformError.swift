import SystemPackage

/// Everything the platform layer can refuse, each with what happened and what to do next.
public enum PlatformError: Error, Equatable, CustomStringConvertible {
    /// No IOMMU groups exist: the kernel runs without an IOMMU.
    case iommuDisabled
    /// A sysfs entry or device node for this function does not exist.
    case deviceNotFound(PCIAddress)
    /// The function is still driven by a kernel driver.
    case boundToKernelDriver(PCIAddress, driver: String)
    /// The function is bound to vfio-pci but another member of its group is not.
    case groupNotViable(group: Int, blockers: [GroupMember])
    /// The user may not open the VFIO (or UIO) node.
    case permissionDenied(path: String)
    /// The VFIO driver stack is missing (no /dev/vfio/vfio).
    case vfioUnavailable(String)
    /// Pinning this much DMA memory would exceed RLIMIT_MEMLOCK.
    case memlockTooLow(needed: Int, limit: UInt64)
    /// The device has no such BAR, or it is not memory-mapped.
    case noSuchBAR(index: Int, available: [Int])
    /// The device offers no interrupts of this kind, or fewer vectors than asked.
    case interruptsUnavailable(kind: String, requested: Int, available: Int)
    /// The IOVA space given to the allocator is used up.
    case iovaExhausted(requested: Int)
    /// No DMA memory could be had.
    case outOfDMAMemory(requested: Int, reason: String)
    /// A sysfs value that could not be parsed.
    case malformedSysfs(path: String, value: String)
    /// An access outside a region (config space, BAR, DMA buffer).
    case outOfRange(what: String, offset: Int, size: Int, limit: Int)
    /// A system call failed in a way no case above describes.
    case systemCall(String, Errno)

    public struct GroupMember: Equatable, Sendable, CustomStringConvertible {
        public var address: PCIAddress
        public var driver: String?
        public init(address: PCIAddress, driver: String?) {
            self.address = address
            self.driver = driver
        }
        public var description: String { "\(address) (\(driver.map { "bound to \($0)" } ?? "no driver"))" }
    }

    public var description: String {
        switch self {
        case .iommuDisabled:
            return "the IOMMU is disabled: /sys/kernel/iommu_groups is empty. Enable VT-d/AMD-Vi in the firmware and boot "
                + "with intel_iommu=on (Intel) or amd_iommu=on (AMD) on the kernel command line; without an IOMMU use "
                + "the UIO backend (Scripts/bind.sh --uio), which gives no DMA protection."
        case .deviceNotFound(let address):
            return "no PCI function \(address) (no /sys/bus/pci/devices/\(address)); list functions with `serverctl devices` or `lspci -D`."
        case .boundToKernelDriver(let address, let driver):
            return "\(address) is bound to the kernel driver \(driver); give it to vfio-pci with `sudo ./Scripts/bind.sh \(address)`."
        case .groupNotViable(let group, let blockers):
            return "IOMMU group \(group) is not viable: every function in it must be bound to vfio-pci (or no driver), but "
                + blockers.map(\.description).joined(separator: ", ")
                + ". Bind the whole group with `sudo ./Scripts/bind.sh --group <BDF>`."
        case .permissionDenied(let path):
            return "permission denied opening \(path): run as root, or add your user to the limitless group "
                + "(`sudo usermod -aG limitless $USER`) after Scripts/bind.sh has given the node to that group."
        case .vfioUnavailable(let why):
            return "VFIO is not available: \(why). Load it with `sudo modprobe vfio-pci`."
        case .memlockTooLow(let needed, let limit):
            return "pinning \(needed) bytes of DMA memory exceeds RLIMIT_MEMLOCK (\(limit) bytes): raise it with "
                + "`ulimit -l unlimited` (as root), LimitMEMLOCK= in a systemd unit, or memlock in /etc/security/limits.conf."
        case .noSuchBAR(let index, let available):
            return "BAR \(index) does not exist or is not memory-mapped on this device; memory BARs present: "
                + (available.isEmpty ? "none" : available.map(String.init).joined(separator: ", ")) + "."
        case .interruptsUnavailable(let kind, let requested, let available):
            return "\(kind) interrupts: asked for \(requested) vector(s), the device offers \(available)."
        case .iovaExhausted(let requested):
            return "no free I/O virtual address range of \(requested) bytes: release DMA buffers or use a larger IOVA window."
        case .outOfDMAMemory(let requested, let reason):
            return "could not allocate \(requested) bytes of DMA memory: \(reason)."
        case .malformedSysfs(let path, let value):
            return "unexpected value in \(path): \"\(value)\"."
        case .outOfRange(let what, let offset, let size, let limit):
            return "\(what): access of \(size) bytes at offset \(offset) is outside its \(limit) bytes."
        case .systemCall(let call, let errno):
            return "\(call) failed: \(errno) (errno \(errno.rawValue))."
        }
    }
}
