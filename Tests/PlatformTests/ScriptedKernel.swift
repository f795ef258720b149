import Glibc
import CLimitless
import SystemPackage
@testable import Platform

/// A kernel whose answers the test writes: which paths open (and with what error), and what each
/// ioctl does. Every call is recorded so a test can check the order of the VFIO handshake.
final class ScriptedKernel: KernelInterface {
    enum Call: Equatable {
        case open(String)
        case close(Int32)
        case ioctl(Int32, UInt)
        case mmap(Int32, Int64, Int)
        case munmap(Int)
    }

    var calls: [Call] = []
    var openResults: [String: Result<Int32, Errno>] = [:]
    var ioctlHandler: (Int32, UInt, UnsafeMutableRawPointer?) throws(Errno) -> Int32 = { _, _, _ in 0 }
    var ioctlValueHandler: (Int32, UInt, UInt) throws(Errno) -> Int32 = { _, _, _ in 0 }
    private var nextEventFD: Int32 = 100
    /// Backing memory for mmap'd BARs, freed with the kernel.
    private var mappings: [UnsafeMutableRawPointer] = []

    deinit { mappings.forEach { $0.deallocate() } }

    func open(_ path: String, flags: Int32) throws(Errno) -> Int32 {
        calls.append(.open(path))
        guard let result = openResults[path] else { throw .noSuchFileOrDirectory }
        return try result.get()
    }
    func close(_ fd: Int32) { calls.append(.close(fd)) }
    func ioctl(_ fd: Int32, _ request: UInt, _ argument: UnsafeMutableRawPointer?) throws(Errno) -> Int32 {
        calls.append(.ioctl(fd, request))
        return try ioctlHandler(fd, request, argument)
    }
    func ioctl(_ fd: Int32, _ request: UInt, value: UInt) throws(Errno) -> Int32 {
        calls.append(.ioctl(fd, request))
        return try ioctlValueHandler(fd, request, value)
    }
    var configBytes = [UInt8](repeating: 0, count: 256)
    func pread(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer, offset: Int64) throws(Errno) -> Int {
        let start = Int(offset & 0xFFF)
        for index in 0..<buffer.count { buffer[index] = start + index < configBytes.count ? configBytes[start + index] : 0xFF }
        return buffer.count
    }
    func pwrite(_ fd: Int32, _ buffer: UnsafeRawBufferPointer, offset: Int64) throws(Errno) -> Int {
        let start = Int(offset & 0xFFF)
        for index in 0..<buffer.count where start + index < configBytes.count { configBytes[start + index] = buffer[index] }
        return buffer.count
    }
    func mmap(length: Int, protection: Int32, flags: Int32, fd: Int32, offset: Int64) throws(Errno) -> UnsafeMutableRawPointer {
        calls.append(.mmap(fd, offset, length))
        let memory = UnsafeMutableRawPointer.allocate(byteCount: length, alignment: 4096)
        memory.initializeMemory(as: UInt8.self, repeating: 0, count: length)
        mappings.append(memory)
        return memory
    }
    func munmap(_ address: UnsafeMutableRawPointer, length: Int) { calls.append(.munmap(length)) }
    func eventfd() throws(Errno) -> Int32 {
        nextEventFD += 1
        return nextEventFD
    }
    func waitReadable(_ fd: Int32, timeoutMilliseconds: Int32) throws(Errno) -> Bool { false }
    func read(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int { 0 }
    func write(_ fd: Int32, _ buffer: UnsafeRawBufferPointer) throws(Errno) -> Int { buffer.count }

    /// A kernel that answers the whole VFIO handshake for one device in `group`, with BAR0 of
    /// `barSize` bytes and `msixVectors` MSI-X vectors.
    static func vfioHappyPath(group: Int, viable: Bool = true, barSize: UInt64 = 0x4000, msixVectors: UInt32 = 64) -> ScriptedKernel {
        let kernel = ScriptedKernel()
        kernel.openResults["/dev/vfio/vfio"] = .success(10)
        kernel.openResults["/dev/vfio/\(group)"] = .success(11)
        kernel.ioctlValueHandler = { _, request, value throws(Errno) in
            switch request {
            case VFIO.Request.getAPIVersion: return VFIO.apiVersion
            case VFIO.Request.checkExtension: return value == VFIO.type1v2IOMMU || value == VFIO.type1IOMMU ? 1 : 0
            case VFIO.Request.setIOMMU: return 0
            case VFIO.Request.deviceReset: return 0
            default: throw .invalidArgument
            }
        }
        kernel.ioctlHandler = { fd, request, argument throws(Errno) in
            switch request {
            case VFIO.Request.groupGetStatus:
                argument!.assumingMemoryBound(to: vfio_group_status.self).pointee.flags = viable ? VFIO.groupFlagViable : 0
                return 0
            case VFIO.Request.groupSetContainer: return 0
            case VFIO.Request.groupUnsetContainer: return 0
            case VFIO.Request.groupGetDeviceFD: return 12
            case VFIO.Request.deviceGetInfo:
                let info = argument!.assumingMemoryBound(to: vfio_device_info.self)
                info.pointee.flags = VFIO.deviceFlagReset | VFIO.deviceFlagPCI
                info.pointee.num_regions = 9
                info.pointee.num_irqs = 5
                return 0
            case VFIO.Request.deviceGetRegionInfo:
                let region = argument!.assumingMemoryBound(to: vfio_region_info.self)
                switch region.pointee.index {
                case 0:
                    region.pointee.size = barSize
                    region.pointee.flags = VFIO.regionFlagRead | VFIO.regionFlagWrite | VFIO.regionFlagMmap
                case 7:
                    region.pointee.size = 4096
                    region.pointee.flags = VFIO.regionFlagRead | VFIO.regionFlagWrite
                case 1...6: region.pointee.size = 0
                default: throw .invalidArgument
                }
                region.pointee.offset = UInt64(region.pointee.index) << 40
                return 0
            case VFIO.Request.deviceGetIRQInfo:
                let irq = argument!.assumingMemoryBound(to: vfio_irq_info.self)
                irq.pointee.flags = VFIO.irqInfoEventfd
                irq.pointee.count = irq.pointee.index == VFIO.irqIndexMSIX ? msixVectors : 1
                return 0
            case VFIO.Request.deviceSetIRQs: return 0
            case VFIO.Request.iommuMapDMA, VFIO.Request.iommuUnmapDMA: return 0
            default: throw .invalidArgument
            }
        }
        return kernel
    }
}
