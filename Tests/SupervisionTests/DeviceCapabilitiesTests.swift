import CLimitless
import Glibc
import IPC
import Platform
import PlatformTestSupport
import SystemPackage
import XCTest

@testable import Supervision

/// A kernel that answers the VFIO handshake for devices in any group (container fd 10, group
/// fds 11..., device fds 20...), with a 256-byte config space per device, and records every call.
/// A copy, cut down, of PlatformTests' ScriptedKernel.
final class VFIOScriptedKernel: KernelInterface {
    enum Call: Equatable {
        case open(String)
        case close(Int32)
        case ioctl(Int32, UInt)
    }

    var calls: [Call] = []
    /// What VFIO_CHECK_EXTENSION(VFIO_UNMAP_ALL) answers.
    var supportsUnmapAll = true
    /// Flags, iova and size of every VFIO_IOMMU_UNMAP_DMA.
    var unmaps: [(flags: UInt32, iova: UInt64, size: UInt64)] = []
    /// (index, flags, count) of every VFIO_DEVICE_SET_IRQS.
    var irqSets: [(index: UInt32, flags: UInt32, count: UInt32)] = []
    var configBytes: [Int32: [UInt8]] = [:]
    private var nextGroupFD: Int32 = 11
    private var nextDeviceFD: Int32 = 20

    func open(_ path: String, flags: Int32) throws(Errno) -> Int32 {
        calls.append(.open(path))
        if path.hasSuffix("/vfio/vfio") { return 10 }
        if path.contains("/vfio/") {
            nextGroupFD += 1
            return nextGroupFD - 1
        }
        throw .noSuchFileOrDirectory
    }
    func close(_ fd: Int32) { calls.append(.close(fd)) }
    func ioctl(_ fd: Int32, _ request: UInt, value: UInt) throws(Errno) -> Int32 {
        calls.append(.ioctl(fd, request))
        switch request {
        case VFIO.Request.getAPIVersion: return VFIO.apiVersion
        case VFIO.Request.checkExtension:
            if value == VFIO.type1v2IOMMU || value == VFIO.type1IOMMU { return 1 }
            if value == DeviceCapabilities.unmapAllExtension { return supportsUnmapAll ? 1 : 0 }
            return 0
        case VFIO.Request.setIOMMU, VFIO.Request.deviceReset: return 0
        default: throw .invalidArgument
        }
    }
    func ioctl(_ fd: Int32, _ request: UInt, _ argument: UnsafeMutableRawPointer?) throws(Errno) -> Int32 {
        calls.append(.ioctl(fd, request))
        switch request {
        case VFIO.Request.groupGetStatus:
            argument!.assumingMemoryBound(to: vfio_group_status.self).pointee.flags = VFIO.groupFlagViable
            return 0
        case VFIO.Request.groupSetContainer, VFIO.Request.groupUnsetContainer: return 0
        case VFIO.Request.groupGetDeviceFD:
            nextDeviceFD += 1
            configBytes[nextDeviceFD - 1] = [UInt8](repeating: 0, count: 256)
            return nextDeviceFD - 1
        case VFIO.Request.deviceGetInfo:
            let info = argument!.assumingMemoryBound(to: vfio_device_info.self)
            info.pointee.flags = VFIO.deviceFlagReset | VFIO.deviceFlagPCI
            info.pointee.num_regions = 9
            info.pointee.num_irqs = 5
            return 0
        case VFIO.Request.deviceGetRegionInfo:
            let region = argument!.assumingMemoryBound(to: vfio_region_info.self)
            guard region.pointee.index == VFIO.configRegionIndex else { throw .invalidArgument }
            region.pointee.size = 256
            region.pointee.flags = VFIO.regionFlagRead | VFIO.regionFlagWrite
            region.pointee.offset = UInt64(region.pointee.index) << 40
            return 0
        case VFIO.Request.deviceSetIRQs:
            let set = argument!.assumingMemoryBound(to: vfio_irq_set.self).pointee
            irqSets.append((set.index, set.flags, set.count))
            return 0
        case VFIO.Request.iommuUnmapDMA:
            let unmap = argument!.assumingMemoryBound(to: vfio_iommu_type1_dma_unmap.self).pointee
            unmaps.append((unmap.flags, unmap.iova, unmap.size))
            return 0
        case VFIO.Request.iommuGetInfo: throw .invalidArgument
        default: throw .invalidArgument
        }
    }
    func pread(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer, offset: Int64) throws(Errno) -> Int {
        let bytes = configBytes[fd] ?? []
        let start = Int(offset & 0xFFF)
        for index in 0..<buffer.count { buffer[index] = start + index < bytes.count ? bytes[start + index] : 0xFF }
        return buffer.count
    }
    func pwrite(_ fd: Int32, _ buffer: UnsafeRawBufferPointer, offset: Int64) throws(Errno) -> Int {
        var bytes = configBytes[fd] ?? []
        let start = Int(offset & 0xFFF)
        for index in 0..<buffer.count where start + index < bytes.count { bytes[start + index] = buffer[index] }
        configBytes[fd] = bytes
        return buffer.count
    }
    func mmap(length: Int, protection: Int32, flags: Int32, fd: Int32, offset: Int64) throws(Errno) -> UnsafeMutableRawPointer {
        throw .invalidArgument
    }
    func munmap(_ address: UnsafeMutableRawPointer, length: Int) {}
    func eventfd() throws(Errno) -> Int32 { throw .invalidArgument }
    func waitReadable(_ fd: Int32, timeoutMilliseconds: Int32) throws(Errno) -> Bool { false }
    func read(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int { 0 }
    func write(_ fd: Int32, _ buffer: UnsafeRawBufferPointer) throws(Errno) -> Int { buffer.count }

    func command(of fd: Int32) -> UInt16 {
        let bytes = configBytes[fd]!
        return UInt16(bytes[PCIConfig.command]) | UInt16(bytes[PCIConfig.command + 1]) << 8
    }
    func opens(_ path: String) -> Int { calls.filter { $0 == .open(path) }.count }
}

final class DeviceCapabilitiesTests: XCTestCase {
    var tree: FakeSysfs!
    var kernel: VFIOScriptedKernel!
    var provider: DeviceCapabilities!

    override func setUp() {
        tree = FakeSysfs()
        // Two identical NVMe controllers, a NIC, and a function still bound to a kernel driver.
        tree.addFunction("0000:00:03.0", vendor: 0x1B36, device: 0x0010, classCode: 0x010802, driver: "vfio-pci", group: 4)
        tree.addFunction("0000:00:04.0", vendor: 0x1B36, device: 0x0010, classCode: 0x010802, driver: "vfio-pci", group: 5)
        tree.addFunction("0000:00:05.0", vendor: 0x8086, device: 0x10D3, classCode: 0x020000, driver: "vfio-pci", group: 6)
        tree.addFunction("0000:00:06.0", vendor: 0x1B36, device: 0x000D, classCode: 0x0C0330, driver: "xhci_hcd", group: 7)
        kernel = VFIOScriptedKernel()
        provider = DeviceCapabilities(sysfs: tree.sysfs, kernel: kernel, devfs: "/fake-dev")
    }

    override func tearDown() {
        provider = nil
        kernel = nil
        tree = nil
    }

    func server(_ devices: [(String, String)], _ capabilities: [String], name: String = "driver") -> ServerConfiguration {
        ServerConfiguration(
            name: name, path: "/bin/true",
            devices: devices.map { ServerConfiguration.Device(label: $0.0, selector: DeviceSelector($0.1)!) },
            capabilities: Set(capabilities.map { Capability($0)! }))
    }

    // MARK: Selectors

    func testSelectorsResolveToExactlyOneFunction() throws {
        XCTAssertEqual(try provider.resolve(DeviceSelector("0000:00:03.0")!, label: "NVME0"), PCIAddress("0000:00:03.0"))
        XCTAssertEqual(try provider.resolve(DeviceSelector("8086:10d3")!, label: "NIC0"), PCIAddress("0000:00:05.0"))
        XCTAssertEqual(try provider.resolve(DeviceSelector("class=020000")!, label: "NIC0"), PCIAddress("0000:00:05.0"))
        XCTAssertEqual(try provider.resolve(DeviceSelector("class=0c0330")!, label: "XHCI0"), PCIAddress("0000:00:06.0"))
    }

    func testSeveralMatchesNameThem() {
        for text in ["1b36:0010", "class=010802"] {
            XCTAssertThrowsError(try provider.resolve(DeviceSelector(text)!, label: "NVME0")) { error in
                XCTAssertEqual(error as? DeviceCapabilityError, .severalMatches(
                    label: "NVME0", selector: DeviceSelector(text)!,
                    matches: [PCIAddress("0000:00:03.0")!, PCIAddress("0000:00:04.0")!]))
                XCTAssertTrue("\(error)".contains("2 PCI functions match (0000:00:03.0, 0000:00:04.0)"), "\(error)")
            }
        }
    }

    func testNoMatchSaysSo() {
        for text in ["abcd:1234", "class=010601"] {
            XCTAssertThrowsError(try provider.resolve(DeviceSelector(text)!, label: "DISK0")) { error in
                XCTAssertEqual(error as? DeviceCapabilityError, .noMatch(label: "DISK0", selector: DeviceSelector(text)!))
                XCTAssertTrue("\(error)".contains("no PCI function matches"), "\(error)")
            }
        }
    }

    func testEnumerationFailureIsReported() {
        let broken = DeviceCapabilities(sysfs: Sysfs(root: "/nonexistent-limitless"), kernel: kernel)
        XCTAssertThrowsError(try broken.resolve(DeviceSelector("class=010802")!, label: "NVME0")) { error in
            guard case .enumerationFailed? = error as? DeviceCapabilityError else { return XCTFail("\(error)") }
            XCTAssertTrue("\(error)".contains("/nonexistent-limitless/bus/pci"), "\(error)")
        }
    }

    // MARK: Descriptors

    func testDescriptorListNamesContainerAndDevice() throws {
        let config = server([("NVME0", "0000:00:03.0")],
                            ["CAP_MMIO_NVME0", "CAP_IRQ_NVME0", "CAP_PCI_CONFIG", "CAP_DMA_ALLOC", "CAP_BLOCK_READ"])
        let descriptors = try provider.descriptors(for: config)
        XCTAssertEqual(descriptors, ["CAP_MMIO_NVME0": 20, "CAP_IRQ_NVME0": 20, "CAP_PCI_CONFIG": 20, "CAP_DMA_ALLOC": 10])
        XCTAssertEqual(kernel.opens("/fake-dev/vfio/vfio"), 1)
        XCTAssertEqual(kernel.opens("/fake-dev/vfio/4"), 1)
        XCTAssertTrue(provider.isHolding("driver"))
    }

    func testTwoDevicesShareTheServersContainer() throws {
        let config = server([("NVME0", "0000:00:03.0"), ("NIC0", "8086:10d3")],
                            ["CAP_MMIO_NVME0", "CAP_MMIO_NIC0", "CAP_IRQ_NIC0", "CAP_DMA_ALLOC"])
        let descriptors = try provider.descriptors(for: config)
        XCTAssertEqual(descriptors, ["CAP_MMIO_NVME0": 20, "CAP_MMIO_NIC0": 21, "CAP_IRQ_NIC0": 21, "CAP_DMA_ALLOC": 10])
        XCTAssertEqual(kernel.opens("/fake-dev/vfio/vfio"), 1, "one container per server")
        XCTAssertEqual(kernel.opens("/fake-dev/vfio/6"), 1)
    }

    func testOnlyGrantedDevicesAreOpened() throws {
        XCTAssertEqual(try provider.descriptors(for: server([("NVME0", "0000:00:03.0")], ["CAP_BLOCK_READ"])), [:])
        XCTAssertEqual(try provider.descriptors(for: server([], ["CAP_DMA_ALLOC"], name: "nodevice")), [:])
        XCTAssertTrue(kernel.calls.isEmpty, "nothing opened: \(kernel.calls)")
        // DMA alone still needs a group in the container: the first device is attached, not passed.
        let dmaOnly = try provider.descriptors(for: server([("NVME0", "0000:00:03.0"), ("NIC0", "0000:00:05.0")],
                                                           ["CAP_DMA_ALLOC"], name: "dma"))
        XCTAssertEqual(dmaOnly, ["CAP_DMA_ALLOC": 10])
        XCTAssertEqual(kernel.opens("/fake-dev/vfio/4"), 1)
        XCTAssertEqual(kernel.opens("/fake-dev/vfio/6"), 0)
    }

    func testDeviceNotBoundToVFIOSaysHowToBindIt() {
        let config = server([("XHCI0", "0000:00:06.0")], ["CAP_MMIO_XHCI0"])
        XCTAssertThrowsError(try provider.descriptors(for: config)) { error in
            XCTAssertEqual(error as? DeviceCapabilityError, .platform(
                label: "XHCI0", address: PCIAddress("0000:00:06.0")!,
                .boundToKernelDriver(PCIAddress("0000:00:06.0")!, driver: "xhci_hcd")))
            XCTAssertTrue("\(error)".contains("sudo ./Scripts/bind.sh 0000:00:06.0"), "\(error)")
        }
        XCTAssertFalse(provider.isHolding("driver"))
    }

    func testSecondDeviceFailingReleasesTheFirst() {
        let config = server([("NVME0", "0000:00:03.0"), ("XHCI0", "0000:00:06.0")], ["CAP_MMIO_NVME0", "CAP_MMIO_XHCI0"])
        XCTAssertThrowsError(try provider.descriptors(for: config))
        XCTAssertTrue(kernel.calls.contains(.close(20)), "the first device is closed again")
        XCTAssertTrue(kernel.calls.contains(.close(10)), "and the container")
        XCTAssertFalse(provider.isHolding("driver"))
    }

    // MARK: Between instances

    func testQuiesceTurnsBusMasteringOffAndUnmapsAllDMA() throws {
        let config = server([("NVME0", "0000:00:03.0")], ["CAP_MMIO_NVME0", "CAP_DMA_ALLOC"])
        _ = try provider.descriptors(for: config)
        // The dead driver had enabled memory space and bus mastering.
        kernel.configBytes[20]![PCIConfig.command] = UInt8(PCIConfig.Command.memorySpace | PCIConfig.Command.busMaster)
        XCTAssertEqual(provider.instanceExited(config), [])
        XCTAssertEqual(kernel.command(of: 20) & PCIConfig.Command.busMaster, 0, "bus mastering off")
        XCTAssertEqual(kernel.unmaps.count, 1)
        XCTAssertEqual(kernel.unmaps.first?.flags, DeviceCapabilities.dmaUnmapFlagAll)
        XCTAssertEqual(kernel.unmaps.first?.iova, 0)
        XCTAssertEqual(kernel.unmaps.first?.size, 0)
        XCTAssertEqual(Set(kernel.irqSets.map(\.index)), [VFIO.irqIndexMSIX, VFIO.irqIndexMSI, VFIO.irqIndexINTx])
        XCTAssertTrue(kernel.irqSets.allSatisfy { $0.count == 0 && $0.flags == VFIO.irqSetDataNone | VFIO.irqSetActionTrigger })
        // The device was quiesced before the mappings went away.
        let unmap = kernel.calls.lastIndex(of: .ioctl(10, VFIO.Request.iommuUnmapDMA))!
        XCTAssertGreaterThan(unmap, kernel.calls.lastIndex(of: .ioctl(20, VFIO.Request.deviceSetIRQs))!)
        XCTAssertTrue(provider.isHolding("driver"))
        XCTAssertFalse(kernel.calls.contains(.close(20)), "kept: no close, so no function reset")
    }

    func testNextInstanceGetsTheSameDescriptorsWithoutANewOpen() throws {
        let config = server([("NVME0", "0000:00:03.0")], ["CAP_MMIO_NVME0", "CAP_IRQ_NVME0", "CAP_DMA_ALLOC"])
        let first = try provider.descriptors(for: config)
        _ = provider.instanceExited(config)
        let callsBefore = kernel.calls.count
        let second = try provider.descriptors(for: config)
        XCTAssertEqual(first, second)
        XCTAssertEqual(kernel.calls.count, callsBefore, "no system call at all for the next instance")
        XCTAssertEqual(kernel.opens("/fake-dev/vfio/vfio"), 1)
        XCTAssertEqual(kernel.opens("/fake-dev/vfio/4"), 1)
    }

    func testWithoutUnmapAllTheDescriptorsAreReleasedAndReopened() throws {
        kernel.supportsUnmapAll = false
        let config = server([("NVME0", "0000:00:03.0")], ["CAP_MMIO_NVME0", "CAP_DMA_ALLOC"])
        _ = try provider.descriptors(for: config)
        let problems = provider.instanceExited(config)
        XCTAssertEqual(problems.count, 1)
        XCTAssertTrue(problems.first?.contains("Linux 5.13") ?? false, "\(problems)")
        XCTAssertTrue(kernel.unmaps.isEmpty)
        XCTAssertFalse(provider.isHolding("driver"))
        XCTAssertTrue(kernel.calls.contains(.close(20)))
        XCTAssertTrue(kernel.calls.contains(.close(10)))
        _ = try provider.descriptors(for: config)
        XCTAssertEqual(kernel.opens("/fake-dev/vfio/vfio"), 2, "opened afresh for the next instance")
    }

    func testReleaseResetsAndCloses() throws {
        let config = server([("NVME0", "0000:00:03.0")], ["CAP_MMIO_NVME0", "CAP_DMA_ALLOC"])
        _ = try provider.descriptors(for: config)
        XCTAssertEqual(provider.release(config), [])
        XCTAssertTrue(kernel.calls.contains(.ioctl(20, VFIO.Request.deviceReset)))
        let reset = kernel.calls.firstIndex(of: .ioctl(20, VFIO.Request.deviceReset))!
        XCTAssertGreaterThan(kernel.calls.firstIndex(of: .close(20))!, reset, "reset before close")
        XCTAssertTrue(kernel.calls.contains(.ioctl(11, VFIO.Request.groupUnsetContainer)))
        XCTAssertTrue(kernel.calls.contains(.close(10)))
        XCTAssertFalse(provider.isHolding("driver"))
        XCTAssertEqual(provider.release(config), [], "a second release is a no-op")
        XCTAssertEqual(provider.instanceExited(config), [], "and so is quiescing a server holding nothing")
    }
}

/// A stand-in provider for supervisor tests: real descriptors (files the test opens) instead of
/// VFIO ones, and a record of what the supervisor asked, in order.
final class RecordingProvider: CapabilityProvider, @unchecked Sendable {
    private let lock = Lock()
    private var _events: [String] = []
    let descriptorsByName: [String: Int32]
    let failure: String?

    struct Failure: Error, CustomStringConvertible { var description: String }

    init(_ descriptors: [String: Int32], failure: String? = nil) {
        descriptorsByName = descriptors
        self.failure = failure
    }

    var events: [String] { lock.locked { _events } }

    func descriptors(for server: ServerConfiguration) throws -> [String: Int32] {
        lock.locked { _events.append("open") }
        if let failure { throw Failure(description: failure) }
        return descriptorsByName
    }
    func instanceExited(_ server: ServerConfiguration) -> [String] {
        lock.locked { _events.append("quiesce") }
        return []
    }
    func release(_ server: ServerConfiguration) -> [String] {
        lock.locked { if _events.last != "release" { _events.append("release") } }
        return []
    }
}

/// The supervisor with a real child: the descriptors the provider names are the ones the child
/// holds under the names LIMITLESS_CAPABILITIES gives.
final class DeviceCapabilitySupervisorTests: XCTestCase {
    var directory: TemporaryDirectory!
    var supervisor: Supervisor?
    var opened: [Int32] = []

    override func setUpWithError() throws {
        guard access("/bin/sh", X_OK) == 0, access("/proc/self/fd", F_OK) == 0 else { throw XCTSkip("no /bin/sh or /proc") }
        directory = try TemporaryDirectory()
    }

    override func tearDown() {
        supervisor?.shutdown()
        supervisor = nil
        opened.forEach { close($0) }
        opened = []
        directory = nil
    }

    func openFile(_ name: String) -> (fd: Int32, path: String) {
        let path = directory.path + "/" + name
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        precondition(fd >= 0)
        opened.append(fd)
        return (fd, path)
    }

    func run(_ server: ServerConfiguration, provider: RecordingProvider) throws -> Supervisor {
        var options = Supervisor.Options()
        options.runtimeDirectory = directory.path
        options.requireRegistration = false
        options.checkpointCapacity = 4096
        options.capabilityProvider = provider
        let supervisor = try Supervisor(configuration: try SupervisorConfiguration(servers: [server]), options: options,
                                        logs: try LogStore(LogStore.Configuration()))
        self.supervisor = supervisor
        supervisor.start()
        return supervisor
    }

    func waitFor(_ what: String, timeout: Duration = .seconds(30), _ condition: () -> Bool) {
        let deadline = ContinuousClock.now + timeout
        while !condition() {
            if ContinuousClock.now >= deadline {
                XCTFail("timed out waiting for \(what): \(supervisor?.statuses().map { "\($0.name) \($0.state) \($0.lastExit)" } ?? [])")
                return
            }
            usleep(20_000)
        }
    }

    func testChildHoldsTheNamedDescriptorsAndDevicesAreQuiescedBetweenInstances() throws {
        let container = openFile("container")
        let device = openFile("device")
        let provider = RecordingProvider(["CAP_DMA_ALLOC": container.fd, "CAP_MMIO_NVME0": device.fd, "CAP_IRQ_NVME0": device.fd])
        // Instance 1 prints what it holds and fails; instance 2 prints again and stays.
        let script = """
            echo "caps=$LIMITLESS_CAPABILITIES"
            for fd in 5 6 7 8; do echo "fd $fd -> $(readlink /proc/$$/fd/$fd)"; done
            echo "end of instance $LIMITLESS_INSTANCE"
            [ "$LIMITLESS_INSTANCE" = 1 ] && exit 3
            exec sleep 30
            """
        let config = ServerConfiguration(
            name: "nvme", path: "/bin/sh", arguments: ["-c", script],
            devices: [.init(label: "NVME0", selector: DeviceSelector("0000:00:03.0")!)],
            capabilities: [.dmaAlloc, .mmio(device: "NVME0"), .irq(device: "NVME0"), .pageCache],
            restart: RestartPolicy(mode: .onFailure, initialBackoff: .milliseconds(10)))
        let supervisor = try run(config, provider: provider)
        func text() -> String { supervisor.logs.records(server: "nvme").map(\.text).joined(separator: "\n") }
        waitFor("instance 2") { text().contains("end of instance 2") }

        // Sorted grant list: CAP_DMA_ALLOC, CAP_IRQ_NVME0, CAP_MMIO_NVME0, CAP_PAGE_CACHE (the
        // supervisor's memfd, PageCacheLog; CAP_BLOCK_* have token descriptors, BlockTokenTests).
        let line = try XCTUnwrap(supervisor.logs.records(server: "nvme").first { $0.text.hasPrefix("caps=") }?.text)
        let capabilities = try XCTUnwrap(SupervisorChannel.parseCapabilities(String(line.dropFirst("caps=".count))))
        XCTAssertEqual(capabilities.map(\.name), ["CAP_DMA_ALLOC", "CAP_IRQ_NVME0", "CAP_MMIO_NVME0", "CAP_PAGE_CACHE"])
        XCTAssertEqual(capabilities.map(\.fd), [5, 6, 7, 8])
        let expected = ["CAP_DMA_ALLOC": container.path, "CAP_IRQ_NVME0": device.path, "CAP_MMIO_NVME0": device.path,
                        "CAP_PAGE_CACHE": "/memfd:limitless-page-cache:nvme"]
        for (name, fd) in capabilities where fd >= 0 {
            XCTAssertTrue(text().contains("fd \(fd) -> \(expected[name]!)"), "\(name)=\(fd) in\n\(text())")
        }
        // Open, then quiesce before the restart, then the same descriptors again.
        XCTAssertEqual(Array(provider.events.prefix(3)), ["open", "quiesce", "open"])
        XCTAssertEqual(try supervisor.status(of: "nvme").capabilities,
                       ["CAP_DMA_ALLOC=5", "CAP_IRQ_NVME0=6", "CAP_MMIO_NVME0=7", "CAP_PAGE_CACHE=8"])

        try supervisor.stop("nvme")
        waitFor("release after the stop") { provider.events.last == "release" }
        XCTAssertEqual(provider.events, ["open", "quiesce", "open", "quiesce", "release"])
    }

    func testServerWhoseDevicesCannotBeOpenedDoesNotStart() throws {
        let message = "device NVME0 (0000:00:03.0): 0000:00:03.0 is bound to the kernel driver nvme; give it to vfio-pci with `sudo ./Scripts/bind.sh 0000:00:03.0`."
        let provider = RecordingProvider([:], failure: message)
        let marker = directory.path + "/ran"
        let config = ServerConfiguration(
            name: "nvme", path: "/bin/sh", arguments: ["-c", "touch \(marker)"],
            devices: [.init(label: "NVME0", selector: DeviceSelector("0000:00:03.0")!)],
            capabilities: [.mmio(device: "NVME0")], restart: RestartPolicy(mode: .never))
        let supervisor = try run(config, provider: provider)
        waitFor("given up") { (try? supervisor.status(of: "nvme").lastExit) ?? "" != "" }
        let status = try supervisor.status(of: "nvme")
        XCTAssertEqual(status.lastExit, "could not start: \(message)")
        XCTAssertEqual(status.pid, 0)
        XCTAssertNotEqual(access(marker, F_OK), 0, "the program never ran")
        XCTAssertTrue(supervisor.logs.records(server: "nvme").contains { $0.text.contains("sudo ./Scripts/bind.sh 0000:00:03.0") })
    }
}
