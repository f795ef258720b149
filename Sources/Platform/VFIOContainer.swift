import CLimitless
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Translates process memory into addresses a device can DMA to. VFIO maps through the IOMMU;
/// UIO can only look physical addresses up; tests use a fake.
public protocol DMAMapper: AnyObject {
    /// Makes `size` bytes at `address` reachable by the device; returns the device-visible address.
    func mapForDevice(_ address: UnsafeMutableRawPointer, size: Int) throws -> UInt64
    func unmapForDevice(deviceAddress: UInt64, size: Int) throws
    /// Whether mapping pins memory against RLIMIT_MEMLOCK.
    var pinsMemory: Bool { get }
}

/// A VFIO container: one IOMMU address space, shared by the groups attached to it.
/// (Documentation/driver-api/vfio.rst: open the container, check the API version and the type 1
/// extension, attach a group, then set the IOMMU model, then map DMA.)
public final class VFIOContainer: DMAMapper {
    public let fd: Int32
    let kernel: any KernelInterface
    public private(set) var iommuModel: UInt?
    public private(set) var iova: IOVAAllocator
    /// Mappings in place; type 1 allows 65,535 per container by default (dma_entry_limit).
    public private(set) var mappingCount = 0
    public private(set) var mappedBytes = 0
    public var pinsMemory: Bool { true }
    /// Attached groups: descriptor and how many open devices use it.
    var groups: [Int: (fd: Int32, users: Int)] = [:]

    public init(kernel: any KernelInterface = LinuxKernel.shared, path: String = "/dev/vfio/vfio",
                iova: IOVAAllocator = IOVAAllocator()) throws {
        self.kernel = kernel
        self.iova = iova
        do {
            fd = try kernel.open(path, flags: O_RDWR)
        } catch .noSuchFileOrDirectory {
            throw PlatformError.vfioUnavailable("\(path) does not exist")
        } catch .permissionDenied {
            throw PlatformError.permissionDenied(path: path)
        } catch {
            throw PlatformError.systemCall("open \(path)", error)
        }
        do {
            let version = try kernel.ioctl(fd, VFIO.Request.getAPIVersion, value: 0)
            guard version == VFIO.apiVersion else {
                kernel.close(fd)
                throw PlatformError.vfioUnavailable("unknown VFIO API version \(version)")
            }
            guard try kernel.ioctl(fd, VFIO.Request.checkExtension, value: VFIO.type1v2IOMMU) > 0
                || kernel.ioctl(fd, VFIO.Request.checkExtension, value: VFIO.type1IOMMU) > 0 else {
                kernel.close(fd)
                throw PlatformError.vfioUnavailable("the type 1 IOMMU driver is missing (modprobe vfio_iommu_type1)")
            }
        } catch let error as Errno {
            kernel.close(fd)
            throw PlatformError.systemCall("VFIO container setup", error)
        }
    }

    /// Adopts a container descriptor opened by someone else — the supervisor, which opened the
    /// container, attached the group and set the IOMMU model, and passed the descriptor as a
    /// capability. The container's mappings are shared with every holder of the descriptor;
    /// `iova` must be a window this process alone allocates from (the supervisor gives each
    /// server its own container, so the default window is safe there).
    public init(adopting fd: Int32, kernel: any KernelInterface = LinuxKernel.shared,
                iova: IOVAAllocator = IOVAAllocator()) {
        self.fd = fd
        self.kernel = kernel
        self.iova = iova
        self.iommuModel = VFIO.type1v2IOMMU
    }

    deinit {
        for (_, group) in groups { kernel.close(group.fd) }
        kernel.close(fd)
    }

    /// Chooses the IOMMU model; VFIO allows this only once a group is attached.
    func setIOMMUIfNeeded() throws {
        guard iommuModel == nil else { return }
        for model in [VFIO.type1v2IOMMU, VFIO.type1IOMMU] {
            if (try? kernel.ioctl(fd, VFIO.Request.checkExtension, value: model)) ?? 0 > 0 {
                do {
                    _ = try kernel.ioctl(fd, VFIO.Request.setIOMMU, value: model)
                } catch {
                    throw PlatformError.systemCall("VFIO_SET_IOMMU", error)
                }
                iommuModel = model
                let ranges = usableIOVARanges()
                if !ranges.isEmpty { iova.restrict(to: ranges) }
                return
            }
        }
        throw PlatformError.vfioUnavailable("no type 1 IOMMU model")
    }

    /// The IOVA ranges the IOMMU accepts (VFIO_IOMMU_GET_INFO's IOVA-range capability, Linux
    /// 5.4 and later); empty when the kernel does not say.
    func usableIOVARanges() -> [IOVAAllocator.Range] {
        let size = 4096
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        let info = buffer.bindMemory(to: vfio_iommu_type1_info.self, capacity: 1)
        info.pointee.argsz = UInt32(size)
        guard (try? kernel.ioctl(fd, VFIO.Request.iommuGetInfo, buffer)) != nil,
              info.pointee.flags & VFIO.iommuInfoCaps != 0 else { return [] }
        var offset = Int(info.pointee.cap_offset)
        var hops = 0
        // Capability chain: {u16 id, u16 version, u32 next}; offsets are from the start of info.
        while offset >= MemoryLayout<vfio_iommu_type1_info>.size, offset + 16 <= size, hops < 32 {
            let id = buffer.load(fromByteOffset: offset, as: UInt16.self)
            let next = Int(buffer.load(fromByteOffset: offset + 4, as: UInt32.self))
            if id == VFIO.iommuCapIOVARange {
                let count = Int(buffer.load(fromByteOffset: offset + 8, as: UInt32.self))
                var ranges: [IOVAAllocator.Range] = []
                for index in 0..<count where offset + 16 + (index + 1) * 16 <= size {
                    let start = buffer.load(fromByteOffset: offset + 16 + index * 16, as: UInt64.self)
                    let end = buffer.load(fromByteOffset: offset + 24 + index * 16, as: UInt64.self)
                    if end > start { ranges.append(IOVAAllocator.Range(start: start, size: end - start &+ 1)) }
                }
                return ranges
            }
            if next == 0 { break }
            offset = next
            hops += 1
        }
        return []
    }

    public func mapForDevice(_ address: UnsafeMutableRawPointer, size: Int) throws -> UInt64 {
        precondition(iommuModel != nil, "attach a group before mapping DMA")
        let deviceAddress = try iova.allocate(size: UInt64(size), alignment: size >= 1 << 21 ? 1 << 21 : 4096)
        var map = vfio_iommu_type1_dma_map()
        map.argsz = UInt32(MemoryLayout<vfio_iommu_type1_dma_map>.size)
        map.flags = VFIO.dmaMapRead | VFIO.dmaMapWrite
        map.vaddr = UInt64(UInt(bitPattern: address))
        map.iova = deviceAddress
        map.size = UInt64(size)
        do {
            _ = try kernel.ioctl(fd, VFIO.Request.iommuMapDMA, &map)
        } catch {
            iova.release(start: deviceAddress, size: UInt64(size))
            if error == .noMemory || error == .resourceTemporarilyUnavailable {
                var soft: UInt64 = 0, hard: UInt64 = 0
                _ = CL_getrlimit_memlock(&soft, &hard)
                throw PlatformError.memlockTooLow(needed: mappedBytes + size, limit: soft)
            }
            if error == .noSpace {
                throw PlatformError.systemCall("VFIO_IOMMU_MAP_DMA (\(mappingCount) mappings: the container's limit)", error)
            }
            throw PlatformError.systemCall("VFIO_IOMMU_MAP_DMA", error)
        }
        mappingCount += 1
        mappedBytes += size
        return deviceAddress
    }

    public func unmapForDevice(deviceAddress: UInt64, size: Int) throws {
        var unmap = vfio_iommu_type1_dma_unmap()
        unmap.argsz = UInt32(MemoryLayout<vfio_iommu_type1_dma_unmap>.size)
        unmap.iova = deviceAddress
        unmap.size = UInt64(size)
        do {
            _ = try kernel.ioctl(fd, VFIO.Request.iommuUnmapDMA, &unmap)
        } catch {
            throw PlatformError.systemCall("VFIO_IOMMU_UNMAP_DMA", error)
        }
        iova.release(start: deviceAddress, size: UInt64(size))
        mappingCount -= 1
        mappedBytes -= size
    }
}
