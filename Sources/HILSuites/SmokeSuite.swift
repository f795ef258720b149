import Platform

/// The hardware-in-the-loop smoke suite: for each function under test, through VFIO with the
/// IOMMU on (or UIO where asked), read config space, map BAR0, allocate and map DMA memory,
/// receive an MSI-X interrupt from the device, and run the device's own checks (NVMe Identify
/// and the IOMMU fault test, xHCI No Op, e1000e interrupt cause).
public struct SmokeSuite {
    public struct Options {
        /// Functions to test; empty means every function bound to vfio-pci (or uio_pci_generic).
        public var devices: [PCIAddress] = []
        /// Serial number the NVMe controller must report (the rig profile gives it to QEMU).
        public var nvmeSerial: String?
        /// Namespaces expected on the NVMe controller, as logical block sizes in nsid order.
        public var nvmeBlockSizes: [Int] = []
        public var backend: PCIBackend = .auto
        public var sysfs = Sysfs()
        /// How long to wait for an interrupt or a completion.
        public var timeoutNanoseconds: UInt64 = 5_000_000_000
        public init() {}
    }

    public var options: Options
    public init(options: Options) { self.options = options }

    public func run(report: SuiteReport) {
        var targets: [PCIFunctionInfo] = []
        report.check("enumerate PCI functions") {
            let functions = try PCIEnumerator(sysfs: options.sysfs).functions()
            if options.devices.isEmpty {
                targets = functions.filter { $0.driver == "vfio-pci" || $0.driver == "uio_pci_generic" }
            } else {
                for address in options.devices {
                    guard let function = functions.first(where: { $0.address == address }) else {
                        throw PlatformError.deviceNotFound(address)
                    }
                    targets.append(function)
                }
            }
            try expect(!targets.isEmpty, "no function is bound to vfio-pci; bind one with `sudo ./Scripts/bind.sh BDF`")
            return "\(functions.count) functions, testing " + targets.map { "\($0.address) (\($0.idPair))" }.joined(separator: ", ")
        }
        for target in targets { runDevice(target, report: report) }
    }

    private func runDevice(_ function: PCIFunctionInfo, report: SuiteReport) {
        let label = "\(function.address) \(DeviceKind(function).name)"
        var opened: (any PCIDeviceAccess)?
        report.check("\(label): open through \(options.backend == .auto ? "its bound driver" : options.backend.rawValue)") {
            let device = try openPCIDevice(function.address, backend: options.backend, sysfs: options.sysfs)
            opened = device
            let group = (device as? VFIODevice).map { " IOMMU group \($0.group)" } ?? ""
            return "\(device.backendName)\(group)"
        }
        guard let device = opened else { return }
        // Run where the device is: its DMA memory is placed on the same node below.
        if let node = device.numaNode { NUMA.runCurrentThread(onNode: node) }

        report.check("\(label): config space") {
            let header = try device.config.header()
            try expect(header.vendorID == function.vendorID && header.deviceID == function.deviceID,
                       "config space says \(hex(header.vendorID, width: 4)):\(hex(header.deviceID, width: 4)), sysfs says \(function.idPair)")
            let capabilities = try PCICapabilities(reading: device.config)
            try expect(capabilities.problems.isEmpty, "capability list: \(capabilities.problems.joined(separator: "; "))")
            let names = capabilities.standard.map { PCICapabilities.name(ofStandard: $0.id) }
            let msix = capabilities.msix.map { ", MSI-X table of \($0.tableSize) in BAR\($0.tableBAR)" } ?? ""
            return "class \(hex(header.classCode, width: 6)), capabilities [\(names.joined(separator: ", "))]\(msix)"
        }

        var bar0: MMIORegion?
        report.check("\(label): BAR0 mapped") {
            let region = try device.mapBAR(0)
            let first = region.read32(0)
            try expect(first != 0xFFFF_FFFF, "BAR0 reads all ones: the device is not responding (powered down or gone)")
            bar0 = region
            return "\(region.length / 1024) KiB, first register 0x\(hex(first, width: 8))"
        }

        let allocator = DMAAllocator(mapper: device.dmaMapper, numaNode: device.numaNode)
        report.check("\(label): DMA buffer allocated and mapped") {
            let buffer = try allocator.allocate(size: 64 * 1024)
            for offset in stride(from: 0, to: buffer.size, by: 8) {
                buffer.address.storeBytes(of: UInt64(offset) &* 0x9E37_79B9_7F4A_7C15, toByteOffset: offset, as: UInt64.self)
            }
            for offset in stride(from: 0, to: buffer.size, by: 8) {
                let value = buffer.address.load(fromByteOffset: offset, as: UInt64.self)
                try expect(value == UInt64(offset) &* 0x9E37_79B9_7F4A_7C15, "DMA memory did not read back at \(offset)")
            }
            allocator.free(buffer)
            var mappings = ""
            if let container = (device as? VFIODevice)?.container {
                try expect(container.mappingCount == allocator.slabCount, "\(container.mappingCount) IOMMU mappings for \(allocator.slabCount) slabs")
                mappings = ", \(container.mappingCount) IOMMU mapping(s)"
            }
            return "64 KiB at device address 0x\(hex(buffer.deviceAddress, width: 1)), "
                + (allocator.usesHugePages ? "2 MiB huge pages" : "4 KiB pages") + mappings
        }

        guard let registers = bar0 else { return }
        let context = DeviceSmokeContext(function: function, device: device, registers: registers,
                                         allocator: allocator, options: options, label: label)
        switch DeviceKind(function) {
        case .nvme: NVMeSmoke(context: context).run(report: report)
        case .xhci: XHCISmoke(context: context).run(report: report)
        case .e1000e: E1000ESmoke(context: context).run(report: report)
        case .other: report.check("\(label): device-specific checks") { throw SuiteReport.Skip("no smoke checks for \(function.idPair)") }
        }
        report.check("\(label): function reset") {
            guard let vfio = device as? VFIODevice else { throw SuiteReport.Skip("reset is checked through VFIO only") }
            guard vfio.info.supportsReset else { throw SuiteReport.Skip("the device offers VFIO no reset method") }
            try device.disableInterrupts()
            try device.reset()
            // VFIO saves and restores config space around the reset, so the function must come
            // back with its identity and with BAR0 answering through the same mapping.
            try expect(try device.config.read16(PCIConfig.vendorID) == function.vendorID, "config space unreadable after reset")
            let first = registers.read32(0)
            try expect(first != 0xFFFF_FFFF, "BAR0 reads all ones after reset")
            return "BAR0 first register 0x\(hex(first, width: 8)) after VFIO_DEVICE_RESET"
        }
        try? device.disableInterrupts()
        try? device.setBusMaster(false)
    }
}

/// What a device-specific smoke test gets.
struct DeviceSmokeContext {
    var function: PCIFunctionInfo
    var device: any PCIDeviceAccess
    var registers: MMIORegion
    var allocator: DMAAllocator
    var options: SmokeSuite.Options
    var label: String

    /// Enables one MSI-X vector (MSI, then INTx, where the backend has no MSI-X).
    func interruptLine() throws -> InterruptLine {
        for kind in [InterruptLine.Kind.msix, .msi, .intx] where try device.interruptVectors(kind) > 0 {
            return try device.enableInterrupts(kind, count: 1)[0]
        }
        throw CheckFailure("the device offers no interrupts through \(device.backendName)")
    }

    /// Runs `command` and counts the interrupts it brought on `line`: those the driver took while
    /// waiting (`driverCount` before and after), or, when the completion was already visible
    /// before any interrupt reached us (QEMU posts it while handling the doorbell write), the
    /// one still on its way. Throws when none arrives.
    func expectInterrupt<T>(on line: InterruptLine, driverCount: () -> UInt64, during command: () throws -> T) throws -> (T, UInt64) {
        _ = line.consume()  // anything left over from earlier commands
        let before = driverCount()
        let result = try command()
        var fired = driverCount() - before
        if fired == 0 { fired = line.wait(timeoutNanoseconds: Int64(options.timeoutNanoseconds)) }
        try expect(fired > 0, "the command completed but no \(line.kind.rawValue) interrupt arrived on vector \(line.vector)")
        return (result, fired)
    }
}

enum DeviceKind {
    case nvme, xhci, e1000e, other

    init(_ function: PCIFunctionInfo) {
        switch (function.classCode, function.vendorID, function.deviceID) {
        case (0x01_08_02, _, _): self = .nvme
        case (0x0C_03_30, _, _): self = .xhci
        case (_, 0x8086, 0x10D3): self = .e1000e
        default: self = .other
        }
    }

    var name: String {
        switch self {
        case .nvme: "nvme"
        case .xhci: "xhci"
        case .e1000e: "e1000e"
        case .other: "pci"
        }
    }
}
