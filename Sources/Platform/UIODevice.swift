import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A PCI function driven through uio_pci_generic, for machines without an IOMMU.
///
/// Limits, by construction of UIO (Documentation/driver-api/uio-howto.rst):
/// - no DMA protection: the device can write any physical memory, so a driver bug can corrupt
///   the kernel; only for trusted drivers on machines where VFIO is impossible;
/// - INTx only (uio_pci_generic offers no MSI or MSI-X);
/// - DMA addresses are physical addresses looked up in /proc/self/pagemap, which needs root
///   (CAP_SYS_ADMIN) and memory that is locked and physically contiguous (huge pages for
///   anything over 4 KiB);
/// - BARs are mapped from sysfs `resourceN` files, config space read from sysfs `config`.
public final class UIODevice: PCIDeviceAccess {
    public let address: PCIAddress
    public let uioName: String
    public let numaNode: Int?
    public var backendName: String { "uio" }
    public let config: any ConfigSpace
    public let dmaMapper: any DMAMapper
    let kernel: any KernelInterface
    let sysfs: Sysfs
    let uioFD: Int32
    let configFD: Int32
    private var mappedBARs: [Int: MMIORegion] = [:]

    public init(address: PCIAddress, sysfs: Sysfs = Sysfs(), kernel: any KernelInterface = LinuxKernel.shared,
                devfs: String = "/dev", procfs: String = "/proc") throws {
        guard sysfs.exists(sysfs.devicePath(address)) else { throw PlatformError.deviceNotFound(address) }
        let driver = sysfs.driver(of: address)
        guard driver == "uio_pci_generic", let name = sysfs.uioNames(of: address).first else {
            throw PlatformError.boundToKernelDriver(address, driver: driver ?? "no driver (not uio_pci_generic)")
        }
        self.address = address
        self.sysfs = sysfs
        self.kernel = kernel
        self.uioName = name
        self.numaNode = sysfs.numaNode(of: address)
        let nodePath = devfs + "/" + name
        let configPath = sysfs.devicePath(address) + "/config"
        do {
            uioFD = try kernel.open(nodePath, flags: O_RDWR)
        } catch .permissionDenied {
            throw PlatformError.permissionDenied(path: nodePath)
        } catch {
            throw PlatformError.systemCall("open \(nodePath)", error)
        }
        do {
            configFD = try kernel.open(configPath, flags: O_RDWR)
        } catch {
            kernel.close(uioFD)
            throw error == .permissionDenied ? PlatformError.permissionDenied(path: configPath)
                : PlatformError.systemCall("open \(configPath)", error)
        }
        // Unprivileged readers of sysfs config see only the first 64 bytes; root sees it all.
        var stats = stat()
        let size = fstat(configFD, &stats) == 0 && stats.st_size >= 4096 ? 4096 : 256
        config = FileConfigSpace(fd: configFD, baseOffset: 0, size: size, kernel: kernel)
        dmaMapper = PagemapMapper(path: procfs + "/self/pagemap", kernel: kernel)
    }

    deinit {
        for (_, region) in mappedBARs { kernel.munmap(region.base, length: region.length) }
        kernel.close(configFD)
        kernel.close(uioFD)
    }

    public func mapBAR(_ index: Int) throws -> MMIORegion {
        if let mapped = mappedBARs[index] { return mapped }
        let resources = try sysfs.resources(of: address)
        let memoryBARs = resources.filter(\.isMemory).map(\.index)
        guard let resource = resources.first(where: { $0.index == index }), resource.isMemory else {
            throw PlatformError.noSuchBAR(index: index, available: memoryBARs)
        }
        let path = sysfs.devicePath(address) + "/resource\(index)"
        let fd: Int32
        do {
            fd = try kernel.open(path, flags: O_RDWR | O_SYNC)
        } catch {
            throw error == .permissionDenied ? PlatformError.permissionDenied(path: path) : PlatformError.systemCall("open \(path)", error)
        }
        defer { kernel.close(fd) }
        let pointer: UnsafeMutableRawPointer
        do {
            pointer = try kernel.mmap(length: Int(resource.size), protection: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd: fd, offset: 0)
        } catch {
            throw PlatformError.systemCall("mmap \(path)", error)
        }
        let region = MMIORegion(base: pointer, length: Int(resource.size))
        mappedBARs[index] = region
        return region
    }

    public func interruptVectors(_ kind: InterruptLine.Kind) throws -> Int {
        guard kind == .intx else { return 0 }
        return try config.read8(PCIConfig.interruptPin) != 0 ? 1 : 0
    }

    public func enableInterrupts(_ kind: InterruptLine.Kind, count: Int) throws -> [InterruptLine] {
        let available = try interruptVectors(kind)
        guard count == 1, available == 1 else {
            throw PlatformError.interruptsUnavailable(kind: kind.rawValue + " (UIO offers INTx only)", requested: count, available: available)
        }
        try unmaskINTx()
        return [InterruptLine(uioFD: uioFD, configFD: configFD)]
    }

    /// Masks INTx at the device (command register Interrupt Disable).
    public func disableInterrupts() throws {
        let command = try config.read16(PCIConfig.command)
        try config.write16(PCIConfig.command, command | PCIConfig.Command.interruptDisable)
    }

    /// uio_pci_generic has no irqcontrol (a write to /dev/uioN fails with ENOSYS): it sets
    /// Interrupt Disable when INTx fires, and user space clears it to unmask.
    public func unmaskINTx() throws {
        let command = try config.read16(PCIConfig.command)
        try config.write16(PCIConfig.command, command & ~PCIConfig.Command.interruptDisable)
    }

    public func reset() throws {
        let path = sysfs.devicePath(address) + "/reset"
        let fd: Int32
        do {
            fd = try kernel.open(path, flags: O_WRONLY)
        } catch {
            throw PlatformError.systemCall("open \(path) (the device offers no reset?)", error)
        }
        defer { kernel.close(fd) }
        do {
            _ = try Array("1".utf8).withUnsafeBytes { try kernel.write(fd, $0) }
        } catch {
            throw PlatformError.systemCall("write \(path)", error as? Errno ?? .ioError)
        }
    }
}

/// Physical addresses from /proc/self/pagemap (Documentation/admin-guide/mm/pagemap.rst): one
/// 64-bit entry per virtual page, bit 63 "present", bits 0-54 the page frame number. Without
/// CAP_SYS_ADMIN the kernel reports frame 0, which is refused here.
public final class PagemapMapper: DMAMapper {
    let path: String
    let kernel: any KernelInterface
    public var pinsMemory: Bool { true }
    static let pageSize = 4096

    public init(path: String = "/proc/self/pagemap", kernel: any KernelInterface = LinuxKernel.shared) {
        self.path = path
        self.kernel = kernel
    }

    public func physicalAddress(of address: UnsafeRawPointer) throws -> UInt64 {
        let fd: Int32
        do {
            fd = try kernel.open(path, flags: O_RDONLY)
        } catch {
            throw PlatformError.systemCall("open \(path)", error)
        }
        defer { kernel.close(fd) }
        let virtual = UInt64(UInt(bitPattern: address))
        var entry: UInt64 = 0
        let count = try withUnsafeMutableBytes(of: &entry) { buffer throws(Errno) in
            try kernel.pread(fd, buffer, offset: Int64(virtual / UInt64(Self.pageSize) * 8))
        }
        guard count == 8, entry & (1 << 63) != 0 else {
            throw PlatformError.outOfDMAMemory(requested: Self.pageSize, reason: "page at 0x\(hex(virtual, width: 1)) is not present")
        }
        let frame = entry & ((1 << 55) - 1)
        guard frame != 0 else {
            throw PlatformError.permissionDenied(path: path + " (physical addresses need root for the UIO backend)")
        }
        return frame * UInt64(Self.pageSize) + virtual % UInt64(Self.pageSize)
    }

    public func mapForDevice(_ address: UnsafeMutableRawPointer, size: Int) throws -> UInt64 {
        // Locked pages are not moved or swapped, so their physical addresses stay valid.
        guard mlock(address, size) == 0 else {
            throw PlatformError.systemCall("mlock", Errno(rawValue: errno))
        }
        let first = try physicalAddress(of: address)
        var offset = Self.pageSize - Int(first % UInt64(Self.pageSize))
        while offset < size {
            guard try physicalAddress(of: address + offset) == first + UInt64(offset) else {
                munlock(address, size)
                throw PlatformError.outOfDMAMemory(requested: size, reason: "memory is not physically contiguous; "
                    + "UIO needs huge pages (echo 64 > /proc/sys/vm/nr_hugepages)")
            }
            offset += Self.pageSize
        }
        return first
    }

    public func unmapForDevice(deviceAddress: UInt64, size: Int) throws {}
}

/// Which kernel interface opens a device.
public enum PCIBackend: String, Sendable, CaseIterable {
    case vfio, uio, auto
}

/// Opens `address` through the backend it is bound to (`auto`), or the one asked for.
public func openPCIDevice(_ address: PCIAddress, backend: PCIBackend = .auto, sysfs: Sysfs = Sysfs(),
                          container: VFIOContainer? = nil) throws -> any PCIDeviceAccess {
    switch backend {
    case .vfio: return try VFIODevice(address: address, sysfs: sysfs, container: container)
    case .uio: return try UIODevice(address: address, sysfs: sysfs)
    case .auto:
        guard sysfs.exists(sysfs.devicePath(address)) else { throw PlatformError.deviceNotFound(address) }
        if sysfs.driver(of: address) == "uio_pci_generic" { return try UIODevice(address: address, sysfs: sysfs) }
        return try VFIODevice(address: address, sysfs: sysfs, container: container)
    }
}
