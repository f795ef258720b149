import XCTest
import SystemPackage
@testable import Platform
import PlatformTestSupport

final class VFIOTests: XCTestCase {
    var tree: FakeSysfs!
    let address = PCIAddress("0000:00:03.0")!

    override func setUp() {
        tree = FakeSysfs()
        tree.addFunction("0000:00:03.0", vendor: 0x1B36, device: 0x0010, classCode: 0x010802, driver: "vfio-pci", group: 4)
    }

    func testHandshakeRunsInTheOrderVFIORequires() throws {
        let kernel = ScriptedKernel.vfioHappyPath(group: 4)
        let device = try VFIODevice(address: address, sysfs: tree.sysfs, kernel: kernel)
        XCTAssertEqual(device.group, 4)
        XCTAssertTrue(device.info.supportsReset)
        let requests = kernel.calls.compactMap { call -> UInt? in if case .ioctl(_, let request) = call { return request }; return nil }
        let setContainer = try XCTUnwrap(requests.firstIndex(of: VFIO.Request.groupSetContainer))
        let setIOMMU = try XCTUnwrap(requests.firstIndex(of: VFIO.Request.setIOMMU))
        let getDevice = try XCTUnwrap(requests.firstIndex(of: VFIO.Request.groupGetDeviceFD))
        XCTAssertLessThan(try XCTUnwrap(requests.firstIndex(of: VFIO.Request.groupGetStatus)), setContainer)
        XCTAssertLessThan(setContainer, setIOMMU, "VFIO_SET_IOMMU is only valid once a group is attached")
        XCTAssertLessThan(setIOMMU, getDevice)
        XCTAssertEqual(device.container.iommuModel, VFIO.type1v2IOMMU)
    }

    func testBARMappingUsesTheRegionOffsetAndIsCached() throws {
        let kernel = ScriptedKernel.vfioHappyPath(group: 4, barSize: 0x4000)
        let device = try VFIODevice(address: address, sysfs: tree.sysfs, kernel: kernel)
        let bar = try device.mapBAR(0)
        XCTAssertEqual(bar.length, 0x4000)
        XCTAssertEqual(try device.mapBAR(0).base, bar.base)
        XCTAssertEqual(kernel.calls.filter { if case .mmap = $0 { return true }; return false }, [.mmap(12, 0, 0x4000)])
    }

    func testMissingBARNamesTheOnesThatExist() throws {
        let device = try VFIODevice(address: address, sysfs: tree.sysfs, kernel: ScriptedKernel.vfioHappyPath(group: 4))
        XCTAssertThrowsError(try device.mapBAR(2)) { XCTAssertEqual($0 as? PlatformError, .noSuchBAR(index: 2, available: [0])) }
        XCTAssertThrowsError(try device.mapBAR(9)) { XCTAssertEqual($0 as? PlatformError, .noSuchBAR(index: 9, available: [0])) }
    }

    func testConfigSpaceGoesThroughTheConfigRegion() throws {
        let kernel = ScriptedKernel.vfioHappyPath(group: 4)
        kernel.configBytes[0] = 0x36; kernel.configBytes[1] = 0x1B
        let device = try VFIODevice(address: address, sysfs: tree.sysfs, kernel: kernel)
        XCTAssertEqual(try device.config.read16(0), 0x1B36)
        XCTAssertEqual(device.config.size, 4096)
    }

    func testInterruptsAskedBeyondTheDeviceAreRefused() throws {
        let device = try VFIODevice(address: address, sysfs: tree.sysfs, kernel: ScriptedKernel.vfioHappyPath(group: 4, msixVectors: 2))
        XCTAssertEqual(try device.enableInterrupts(.msix, count: 2).map(\.vector), [0, 1])
        XCTAssertThrowsError(try device.enableInterrupts(.msix, count: 3)) {
            XCTAssertEqual($0 as? PlatformError, .interruptsUnavailable(kind: "MSI-X", requested: 3, available: 2))
        }
    }

    func testDeviceBoundToKernelDriverSaysHowToBindIt() {
        tree.link("bus/pci/devices/0000:00:03.0/driver", to: "../../../bus/pci/drivers/nvme")
        XCTAssertThrowsError(try VFIODevice(address: address, sysfs: tree.sysfs, kernel: ScriptedKernel.vfioHappyPath(group: 4))) { error in
            XCTAssertEqual(error as? PlatformError, .boundToKernelDriver(address, driver: "nvme"))
            XCTAssertTrue("\(error)".contains("Scripts/bind.sh 0000:00:03.0"))
        }
    }

    func testNoIOMMUNamesTheKernelParameter() {
        let bare = FakeSysfs()
        bare.addFunction("0000:00:03.0", vendor: 0x1B36, device: 0x0010, classCode: 0x010802, driver: "vfio-pci")
        XCTAssertThrowsError(try VFIODevice(address: address, sysfs: bare.sysfs, kernel: ScriptedKernel.vfioHappyPath(group: 4))) { error in
            XCTAssertEqual(error as? PlatformError, .iommuDisabled)
            XCTAssertTrue("\(error)".contains("intel_iommu=on"))
        }
    }

    func testGroupNotViableNamesTheOtherMembers() {
        tree.addFunction("0000:00:03.1", vendor: 0x1B36, device: 0x0011, classCode: 0x020000, driver: "e1000e", group: 4)
        let kernel = ScriptedKernel.vfioHappyPath(group: 4, viable: false)
        XCTAssertThrowsError(try VFIODevice(address: address, sysfs: tree.sysfs, kernel: kernel)) { error in
            let other = PlatformError.GroupMember(address: PCIAddress("0000:00:03.1")!, driver: "e1000e")
            XCTAssertEqual(error as? PlatformError, .groupNotViable(group: 4, blockers: [other]))
            XCTAssertTrue("\(error)".contains("0000:00:03.1 (bound to e1000e)"), "\(error)")
        }
        XCTAssertTrue(kernel.calls.contains(.close(11)), "the group descriptor must be closed on failure")
    }

    func testPermissionDeniedOnTheGroupNode() {
        let kernel = ScriptedKernel.vfioHappyPath(group: 4)
        kernel.openResults["/dev/vfio/4"] = .failure(.permissionDenied)
        XCTAssertThrowsError(try VFIODevice(address: address, sysfs: tree.sysfs, kernel: kernel)) { error in
            XCTAssertEqual(error as? PlatformError, .permissionDenied(path: "/dev/vfio/4"))
            XCTAssertTrue("\(error)".contains("limitless group"))
        }
    }

    func testMissingVFIOModule() {
        let kernel = ScriptedKernel.vfioHappyPath(group: 4)
        kernel.openResults["/dev/vfio/vfio"] = nil
        XCTAssertThrowsError(try VFIODevice(address: address, sysfs: tree.sysfs, kernel: kernel)) { error in
            XCTAssertTrue("\(error)".contains("modprobe vfio-pci"), "\(error)")
        }
    }

    func testUnknownDevice() {
        XCTAssertThrowsError(try VFIODevice(address: PCIAddress("0000:00:09.0")!, sysfs: tree.sysfs,
                                            kernel: ScriptedKernel.vfioHappyPath(group: 4))) { error in
            XCTAssertEqual(error as? PlatformError, .deviceNotFound(PCIAddress("0000:00:09.0")!))
        }
    }

    func testMapDMAFailingWithENOMEMReportsMemlock() throws {
        let kernel = ScriptedKernel.vfioHappyPath(group: 4)
        let device = try VFIODevice(address: address, sysfs: tree.sysfs, kernel: kernel)
        let happy = kernel.ioctlHandler
        kernel.ioctlHandler = { fd, request, argument throws(Errno) in
            if request == VFIO.Request.iommuMapDMA { throw .noMemory }
            return try happy(fd, request, argument)
        }
        let memory = UnsafeMutableRawPointer.allocate(byteCount: 8192, alignment: 4096)
        defer { memory.deallocate() }
        XCTAssertThrowsError(try device.container.mapForDevice(memory, size: 8192)) { error in
            guard case .memlockTooLow? = error as? PlatformError else { return XCTFail("\(error)") }
            XCTAssertTrue("\(error)".contains("ulimit -l"))
        }
        XCTAssertEqual(device.container.iova.freeBytes, device.container.iova.window.size, "a failed mapping must give its IOVA back")
    }

    func testMapAndUnmapKeepCountsAndIOVAs() throws {
        let device = try VFIODevice(address: address, sysfs: tree.sysfs, kernel: ScriptedKernel.vfioHappyPath(group: 4))
        let memory = UnsafeMutableRawPointer.allocate(byteCount: 2 << 20, alignment: 4096)
        defer { memory.deallocate() }
        let iova = try device.container.mapForDevice(memory, size: 2 << 20)
        XCTAssertEqual(iova % (2 << 20), 0, "2 MiB mappings get 2 MiB-aligned IOVAs so the IOMMU can use large pages")
        XCTAssertNotEqual(iova, UInt64(UInt(bitPattern: memory)), "IOVAs come from the allocator, not from our address space")
        XCTAssertEqual(device.container.mappingCount, 1)
        try device.container.unmapForDevice(deviceAddress: iova, size: 2 << 20)
        XCTAssertEqual(device.container.mappingCount, 0)
    }

    func testTwoDevicesInOneGroupShareTheGroupDescriptor() throws {
        tree.addFunction("0000:00:03.1", vendor: 0x1B36, device: 0x0011, classCode: 0x020000, driver: "vfio-pci", group: 4)
        let kernel = ScriptedKernel.vfioHappyPath(group: 4)
        let container = try VFIOContainer(kernel: kernel)
        var first: VFIODevice? = try VFIODevice(address: address, sysfs: tree.sysfs, kernel: kernel, container: container)
        let second = try VFIODevice(address: PCIAddress("0000:00:03.1")!, sysfs: tree.sysfs, kernel: kernel, container: container)
        XCTAssertEqual(kernel.calls.filter { $0 == .open("/dev/vfio/4") }.count, 1)
        first = nil
        XCTAssertFalse(kernel.calls.contains(.close(11)), "the group stays attached while a device uses it")
        XCTAssertNil(first)
        _ = second
    }
}

final class VFIOAdoptionTests: XCTestCase {
    func testAdoptedDescriptorsAreUsedAndClosedButTheGroupIsLeftAlone() throws {
        let kernel = ScriptedKernel.vfioHappyPath(group: 4)
        var device: VFIODevice? = try VFIODevice(adopting: 12, address: PCIAddress("0000:00:03.0")!,
                                                 container: VFIOContainer(adopting: 10, kernel: kernel), group: 4, kernel: kernel)
        XCTAssertEqual(try device!.mapBAR(0).length, 0x4000)
        XCTAssertTrue(device!.info.supportsReset)
        XCTAssertFalse(kernel.calls.contains { if case .open = $0 { return true }; return false }, "adoption opens nothing")
        device = nil
        XCTAssertTrue(kernel.calls.contains(.close(12)))
        XCTAssertTrue(kernel.calls.contains(.close(10)))
        XCTAssertFalse(kernel.calls.contains(.ioctl(11, VFIO.Request.groupUnsetContainer)))
    }

    func testAdoptingSomethingThatIsNotAVFIODeviceIsAnError() {
        let kernel = ScriptedKernel.vfioHappyPath(group: 4)
        kernel.ioctlHandler = { _, _, _ throws(Errno) in throw .inappropriateIOCTLForDevice }
        XCTAssertThrowsError(try VFIODevice(adopting: 7, address: PCIAddress("0000:00:03.0")!,
                                            container: VFIOContainer(adopting: 10, kernel: kernel), kernel: kernel)) { error in
            XCTAssertTrue("\(error)".contains("adopted descriptor"), "\(error)")
        }
    }
}
