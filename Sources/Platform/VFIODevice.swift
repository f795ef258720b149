import CLimitless
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A PCI function opened through VFIO: its group attached to a container, its device descriptor,
/// its mapped BARs and interrupt eventfds. Everything it opened is released when it goes away.
public final class VFIODevice: PCIDeviceAccess {
    public let address: PCIAddress
    public let container: VFIOContainer
    public let group: Int
    public let deviceFD: Int32
    public let info: DeviceInfo
    public let numaNode: Int?
    public var backendName: String { "vfio" }
    public var dmaMapper: any DMAMapper { container }
    public private(set) var config: any ConfigSpace
    let kernel: any KernelInterface
    let groupFD: Int32
    private var mappedBARs: [Int: (region: MMIORegion, mappedLength: Int)] = [:]
    private var interruptFDs: [Int32] = []
    private var interruptKind: InterruptLine.Kind?

    public struct DeviceInfo: Equatable, Sendable {
        public var flags: UInt32
        public var regionCount: Int
        public var irqCount: Int
        public var supportsReset: Bool { flags & VFIO.deviceFlagReset != 0 }
    }

    public struct RegionInfo: Equatable, Sendable {
        public var index: Int
        public var flags: UInt32
        public var size: UInt64
        public var offset: UInt64
        public var mappable: Bool { flags & VFIO.regionFlagMmap != 0 }
    }

    /// Opens `address`, checking on the way everything that commonly goes wrong and saying what
    /// to do about it. `container` lets several devices share one IOMMU address space.
    public init(address: PCIAddress, sysfs: Sysfs = Sysfs(), kernel: any KernelInterface = LinuxKernel.shared,
                container: VFIOContainer? = nil, devfs: String = "/dev") throws {
        guard sysfs.exists(sysfs.devicePath(address)) else { throw PlatformError.deviceNotFound(address) }
        guard let group = sysfs.iommuGroup(of: address) else {
            if !sysfs.iommuEnabled { throw PlatformError.iommuDisabled }
            throw PlatformError.vfioUnavailable("\(address) has no IOMMU group")
        }
        let driver = sysfs.driver(of: address)
        guard driver == "vfio-pci" else {
            throw PlatformError.boundToKernelDriver(address, driver: driver ?? "no driver (not vfio-pci)")
        }
        self.address = address
        self.group = group
        self.kernel = kernel
        self.numaNode = sysfs.numaNode(of: address)
        let container = try container ?? VFIOContainer(kernel: kernel, path: devfs + "/vfio/vfio")
        self.container = container
        let groupPath = devfs + "/vfio/\(group)"
        let groupFD = try container.attachGroup(group, path: groupPath, sysfs: sysfs)
        self.groupFD = groupFD

        var name = Array(address.description.utf8CString)
        let deviceFD: Int32
        do {
            deviceFD = try kernel.ioctl(groupFD, VFIO.Request.groupGetDeviceFD, &name)
        } catch {
            container.detachGroupIfUnused(group)
            throw PlatformError.systemCall("VFIO_GROUP_GET_DEVICE_FD \(address)", error)
        }
        self.deviceFD = deviceFD

        var deviceInfo = vfio_device_info()
        deviceInfo.argsz = UInt32(MemoryLayout<vfio_device_info>.size)
        do {
            _ = try kernel.ioctl(deviceFD, VFIO.Request.deviceGetInfo, &deviceInfo)
        } catch {
            kernel.close(deviceFD)
            container.detachGroupIfUnused(group)
            throw PlatformError.systemCall("VFIO_DEVICE_GET_INFO", error)
        }
        info = DeviceInfo(flags: deviceInfo.flags, regionCount: Int(deviceInfo.num_regions), irqCount: Int(deviceInfo.num_irqs))
        // Placeholder until the region is known; from here on every stored property is set, so
        // a throw runs deinit, which closes the device and detaches the group.
        config = InMemoryConfigSpace(size: 0)
        let configRegion = try regionInfo(Int(VFIO.configRegionIndex))
        config = FileConfigSpace(fd: deviceFD, baseOffset: Int64(configRegion.offset),
                                 size: Int(min(configRegion.size, 4096)), kernel: kernel)
    }

    /// Adopts a device descriptor opened by someone else (the supervisor hands a server its
    /// device as a capability), with the container it belongs to. The group stays with whoever
    /// opened it: `group` is only for display.
    public init(adopting deviceFD: Int32, address: PCIAddress, container: VFIOContainer, group: Int = -1,
                numaNode: Int? = nil, kernel: any KernelInterface = LinuxKernel.shared) throws {
        self.address = address
        self.container = container
        self.group = group
        self.deviceFD = deviceFD
        self.groupFD = -1
        self.kernel = kernel
        self.numaNode = numaNode
        var deviceInfo = vfio_device_info()
        deviceInfo.argsz = UInt32(MemoryLayout<vfio_device_info>.size)
        do {
            _ = try kernel.ioctl(deviceFD, VFIO.Request.deviceGetInfo, &deviceInfo)
        } catch {
            throw PlatformError.systemCall("VFIO_DEVICE_GET_INFO on an adopted descriptor (is it a VFIO device?)", error)
        }
        info = DeviceInfo(flags: deviceInfo.flags, regionCount: Int(deviceInfo.num_regions), irqCount: Int(deviceInfo.num_irqs))
        config = InMemoryConfigSpace(size: 0)
        let configRegion = try regionInfo(Int(VFIO.configRegionIndex))
        config = FileConfigSpace(fd: deviceFD, baseOffset: Int64(configRegion.offset),
                                 size: Int(min(configRegion.size, 4096)), kernel: kernel)
    }

    deinit {
        try? disableInterrupts()
        for (_, bar) in mappedBARs { kernel.munmap(bar.region.base, length: bar.mappedLength) }
        // Closing the device descriptor makes the kernel reset the function (if it can).
        kernel.close(deviceFD)
        if groupFD >= 0 { container.detachGroupIfUnused(group) }
    }

    public func regionInfo(_ index: Int) throws -> RegionInfo {
        var region = vfio_region_info()
        region.argsz = UInt32(MemoryLayout<vfio_region_info>.size)
        region.index = UInt32(index)
        do {
            _ = try kernel.ioctl(deviceFD, VFIO.Request.deviceGetRegionInfo, &region)
        } catch .invalidArgument {
            throw PlatformError.noSuchBAR(index: index, available: memoryBARs())
        } catch {
            throw PlatformError.systemCall("VFIO_DEVICE_GET_REGION_INFO \(index)", error)
        }
        return RegionInfo(index: index, flags: region.flags, size: region.size, offset: region.offset)
    }

    /// Indexes of BARs VFIO can map.
    public func memoryBARs() -> [Int] {
        (0..<6).filter { index in
            var region = vfio_region_info()
            region.argsz = UInt32(MemoryLayout<vfio_region_info>.size)
            region.index = UInt32(index)
            guard (try? kernel.ioctl(deviceFD, VFIO.Request.deviceGetRegionInfo, &region)) != nil else { return false }
            return region.size > 0 && region.flags & VFIO.regionFlagMmap != 0
        }
    }

    public func mapBAR(_ index: Int) throws -> MMIORegion {
        if let mapped = mappedBARs[index] { return mapped.region }
        guard (0..<6).contains(index) else { throw PlatformError.noSuchBAR(index: index, available: memoryBARs()) }
        let region = try regionInfo(index)
        guard region.size > 0, region.mappable else { throw PlatformError.noSuchBAR(index: index, available: memoryBARs()) }
        let pointer: UnsafeMutableRawPointer
        do {
            pointer = try kernel.mmap(length: Int(region.size), protection: PROT_READ | PROT_WRITE, flags: MAP_SHARED,
                                      fd: deviceFD, offset: Int64(region.offset))
        } catch {
            throw PlatformError.systemCall("mmap of BAR\(index)", error)
        }
        let mapped = MMIORegion(base: pointer, length: Int(region.size))
        mappedBARs[index] = (mapped, Int(region.size))
        return mapped
    }

    private func irqIndex(_ kind: InterruptLine.Kind) -> UInt32 {
        switch kind {
        case .msix: VFIO.irqIndexMSIX
        case .msi: VFIO.irqIndexMSI
        case .intx: VFIO.irqIndexINTx
        }
    }

    public func interruptVectors(_ kind: InterruptLine.Kind) throws -> Int {
        var irq = vfio_irq_info()
        irq.argsz = UInt32(MemoryLayout<vfio_irq_info>.size)
        irq.index = irqIndex(kind)
        do {
            _ = try kernel.ioctl(deviceFD, VFIO.Request.deviceGetIRQInfo, &irq)
        } catch {
            throw PlatformError.systemCall("VFIO_DEVICE_GET_IRQ_INFO \(kind.rawValue)", error)
        }
        return irq.flags & VFIO.irqInfoEventfd != 0 ? Int(irq.count) : 0
    }

    public func enableInterrupts(_ kind: InterruptLine.Kind, count: Int) throws -> [InterruptLine] {
        let available = try interruptVectors(kind)
        guard count > 0, count <= available else {
            throw PlatformError.interruptsUnavailable(kind: kind.rawValue, requested: count, available: available)
        }
        try disableInterrupts()
        var descriptors: [Int32] = []
        do {
            for _ in 0..<count { descriptors.append(try kernel.eventfd()) }
        } catch {
            descriptors.forEach(kernel.close)
            throw PlatformError.systemCall("eventfd", error)
        }
        do {
            try setIRQs(index: irqIndex(kind), flags: VFIO.irqSetDataEventfd | VFIO.irqSetActionTrigger, descriptors: descriptors)
        } catch {
            descriptors.forEach(kernel.close)
            throw error
        }
        interruptFDs = descriptors
        interruptKind = kind
        return descriptors.enumerated().map { InterruptLine(fd: $1, kind: kind, vector: $0) }
    }

    public func disableInterrupts() throws {
        guard let kind = interruptKind else { return }
        // DATA_NONE | ACTION_TRIGGER with count 0 tears down every vector of the index.
        try setIRQs(index: irqIndex(kind), flags: VFIO.irqSetDataNone | VFIO.irqSetActionTrigger, descriptors: [])
        interruptFDs.forEach(kernel.close)
        interruptFDs = []
        interruptKind = nil
    }

    public func unmaskINTx() throws {
        try setIRQs(index: VFIO.irqIndexINTx, flags: VFIO.irqSetDataNone | VFIO.irqSetActionUnmask, descriptors: [], count: 1)
    }

    /// VFIO_DEVICE_SET_IRQS: a `vfio_irq_set` header followed by one eventfd per vector.
    private func setIRQs(index: UInt32, flags: UInt32, descriptors: [Int32], count: Int? = nil) throws {
        let headerSize = MemoryLayout<vfio_irq_set>.size
        let size = headerSize + descriptors.count * 4
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
        defer { buffer.deallocate() }
        let header = buffer.bindMemory(to: vfio_irq_set.self, capacity: 1)
        header.pointee.argsz = UInt32(size)
        header.pointee.flags = flags
        header.pointee.index = index
        header.pointee.start = 0
        header.pointee.count = UInt32(count ?? descriptors.count)
        for (slot, descriptor) in descriptors.enumerated() {
            (buffer + headerSize + slot * 4).storeBytes(of: descriptor, as: Int32.self)
        }
        do {
            _ = try kernel.ioctl(deviceFD, VFIO.Request.deviceSetIRQs, buffer)
        } catch {
            throw PlatformError.systemCall("VFIO_DEVICE_SET_IRQS", error)
        }
    }

    public func reset() throws {
        guard info.supportsReset else { throw PlatformError.systemCall("VFIO_DEVICE_RESET (device offers no reset)", .notSupported) }
        do {
            _ = try kernel.ioctl(deviceFD, VFIO.Request.deviceReset, value: 0)
        } catch {
            throw PlatformError.systemCall("VFIO_DEVICE_RESET", error)
        }
    }
}

extension VFIOContainer {
    /// Opens `/dev/vfio/N`, checks the group is viable, attaches it and, on the first group, sets
    /// the IOMMU model. A group already attached is shared.
    func attachGroup(_ group: Int, path: String, sysfs: Sysfs) throws -> Int32 {
        if let attached = groups[group] {
            groups[group] = (attached.fd, attached.users + 1)
            return attached.fd
        }
        let groupFD: Int32
        do {
            groupFD = try kernel.open(path, flags: O_RDWR)
        } catch .permissionDenied {
            throw PlatformError.permissionDenied(path: path)
        } catch .noSuchFileOrDirectory {
            throw PlatformError.vfioUnavailable("\(path) does not exist although the device is bound to vfio-pci")
        } catch .resourceBusy {
            throw PlatformError.systemCall("open \(path): the group is in use by another process", .resourceBusy)
        } catch {
            throw PlatformError.systemCall("open \(path)", error)
        }
        do {
            var status = vfio_group_status()
            status.argsz = UInt32(MemoryLayout<vfio_group_status>.size)
            _ = try kernel.ioctl(groupFD, VFIO.Request.groupGetStatus, &status)
            guard status.flags & VFIO.groupFlagViable != 0 else {
                let blockers = sysfs.iommuGroupMembers(group).compactMap { member -> PlatformError.GroupMember? in
                    let driver = sysfs.driver(of: member)
                    if driver == "vfio-pci" || driver == "pcieport" || driver == "pci-stub" { return nil }
                    return PlatformError.GroupMember(address: member, driver: driver)
                }
                throw PlatformError.groupNotViable(group: group, blockers: blockers)
            }
            var containerFD = fd
            _ = try kernel.ioctl(groupFD, VFIO.Request.groupSetContainer, &containerFD)
            try setIOMMUIfNeeded()
        } catch let error as Errno {
            kernel.close(groupFD)
            throw PlatformError.systemCall("attaching VFIO group \(group)", error)
        } catch {
            kernel.close(groupFD)
            throw error
        }
        groups[group] = (groupFD, 1)
        return groupFD
    }

    func detachGroupIfUnused(_ group: Int) {
        guard let attached = groups[group] else { return }
        if attached.users > 1 {
            groups[group] = (attached.fd, attached.users - 1)
            return
        }
        _ = try? kernel.ioctl(attached.fd, VFIO.Request.groupUnsetContainer, nil)
        kernel.close(attached.fd)
        groups[group] = nil
    }
}
