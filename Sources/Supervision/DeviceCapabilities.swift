import CLimitless
import Glibc
import Platform
import SystemPackage

/// Something that opens the descriptors a server's capabilities stand for and looks after them
/// between instances. The supervisor calls it on its loop thread, under its lock:
/// - `descriptors(for:)` before every start; a throw means the server does not start, and the
///   error's text becomes its last exit;
/// - `instanceExited(_:)` after every exit of an instance, before anything restarts it;
/// - `release(_:)` once the server is neither running nor wanted (stopped, failed, shutdown).
///   It may come more than once and for servers it never opened anything for.
/// The supervisor does not close what it is given: the provider owns the descriptors.
public protocol CapabilityProvider: AnyObject, Sendable {
    func descriptors(for server: ServerConfiguration) throws -> [String: Int32]
    /// Returns what went wrong, for the log (empty: all well).
    func instanceExited(_ server: ServerConfiguration) -> [String]
    /// Returns what went wrong, for the log (empty: all well).
    func release(_ server: ServerConfiguration) -> [String]
}

/// Why a server's devices could not be opened.
public enum DeviceCapabilityError: Error, Equatable, CustomStringConvertible {
    /// No PCI function matches the selector.
    case noMatch(label: String, selector: DeviceSelector)
    /// More than one does; the configuration must say which.
    case severalMatches(label: String, selector: DeviceSelector, matches: [PCIAddress])
    /// The PCI functions could not be listed.
    case enumerationFailed(label: String, selector: DeviceSelector, reason: String)
    /// Platform refused to open the function (not bound to vfio-pci, no IOMMU, ...).
    case platform(label: String, address: PCIAddress, PlatformError)
    /// Anything else opening the function threw.
    case other(label: String, address: PCIAddress, reason: String)

    public var description: String {
        switch self {
        case .noMatch(let label, let selector):
            return "device \(label) (\(selector)): no PCI function matches; list functions with `serverctl devices` or `lspci -Dnn`."
        case .severalMatches(let label, let selector, let matches):
            return "device \(label) (\(selector)): \(matches.count) PCI functions match ("
                + matches.map(\.description).joined(separator: ", ")
                + "); write the address of the one this server drives in servers.conf."
        case .enumerationFailed(let label, let selector, let reason):
            return "device \(label) (\(selector)): \(reason)"
        case .platform(let label, let address, let error):
            return "device \(label) (\(address)): \(error)"
        case .other(let label, let address, let reason):
            return "device \(label) (\(address)): \(reason)"
        }
    }
}

/// The supervisor's side of the device capabilities (issue 4): for a server whose configuration
/// has `device LABEL SELECTOR` lines and grants CAP_MMIO_<LABEL>, CAP_IRQ_<LABEL>,
/// CAP_PCI_CONFIG or CAP_DMA_ALLOC, it resolves each selector to one PCI function, opens one VFIO
/// container for the server and the devices in it through `Platform` (so Platform's checks and
/// messages apply: a function not bound to vfio-pci says `sudo ./Scripts/bind.sh BDF`), and
/// names the descriptors:
///
/// - `CAP_DMA_ALLOC`: the container descriptor (the server adopts it with
///   `VFIOContainer(adopting:)` and maps its DMA memory through it);
/// - `CAP_MMIO_<LABEL>` and `CAP_IRQ_<LABEL>`: the VFIO device descriptor of that device (BARs
///   and interrupts are both reached through it: `VFIODevice(adopting:address:container:)`);
/// - `CAP_PCI_CONFIG`: the device descriptor of the server's first `device` line (config space is
///   a region of the device descriptor).
///
/// One device descriptor may thus stand for several capabilities; the supervisor passes it once
/// per capability name, each a dup of the same open file (so the server sees, say, fds 5 and 6
/// for CAP_IRQ_NVME0 and CAP_MMIO_NVME0, both the same device). Which ioctls a capability allows
/// on it is ServerKit's business (seccomp), not this type's.
///
/// Which functions are opened: the devices whose label appears in a granted CAP_MMIO_/CAP_IRQ_;
/// the first declared device as well when CAP_PCI_CONFIG is granted; and, when CAP_DMA_ALLOC is
/// granted but no device is otherwise opened, the first declared device (a container without a
/// group attached has no IOMMU and cannot map anything). A server with no such grant gets nothing
/// from here.
///
/// Across instances: the objects, and so the descriptors, are kept. The next instance of the
/// server gets the very same descriptors, without a new open, so without the function reset VFIO
/// does when a device descriptor is opened or closed. After each exit (`instanceExited`) the
/// device is quiesced before anything can restart it:
/// 1. bus mastering is cleared in its config space, so the dead driver's in-flight DMA stops;
/// 2. its interrupt triggers (MSI-X, MSI, INTx) are torn down, so the dead instance's eventfds
///    are no longer signalled (errors are ignored: an index that was never enabled refuses);
/// 3. the dead instance's DMA mappings are removed. They live in the shared container — the
///    server made them through the container descriptor it held — and they outlive it, keeping
///    its pages pinned and its IOVAs taken (the next instance's allocator starts at the same
///    window, so its mappings would collide). They are removed with one VFIO_IOMMU_UNMAP_DMA of
///    the whole IOVA space with VFIO_DMA_UNMAP_FLAG_ALL where the kernel has it (Linux 5.13 and
///    later, VFIO_UNMAP_ALL extension). Where it does not, the supervisor cannot know the
///    mappings, so it releases everything instead: closing the descriptors makes the kernel
///    drop the mappings and reset the function, and the next instance gets freshly opened
///    descriptors (a reset's wait, but no stale mappings).
/// If any quiesce step that matters (1 or 3) fails, the objects are released the same way.
///
/// On the final stop or failure (`release`), the device is reset (VFIO_DEVICE_RESET, where the
/// device offers it) and everything is closed.
///
/// Thread safety: every method takes an internal lock.
public final class DeviceCapabilities: CapabilityProvider, @unchecked Sendable {
    private let sysfs: Sysfs
    private let kernel: any KernelInterface
    private let devfs: String
    private let listFunctions: () throws -> [PCIFunctionInfo]
    private let lock = Lock()
    private var kept: [String: Opened] = [:]

    /// What one server holds: its container and devices, in the order opened.
    final class Opened {
        let container: VFIOContainer
        let devices: [(label: String, device: VFIODevice)]
        let descriptors: [String: Int32]
        init(container: VFIOContainer, devices: [(label: String, device: VFIODevice)], descriptors: [String: Int32]) {
            self.container = container
            self.devices = devices
            self.descriptors = descriptors
        }
    }

    /// `functions` lists the machine's PCI functions for vendor:device and class selectors; nil
    /// uses `PCIEnumerator(sysfs:)`.
    public init(sysfs: Sysfs = Sysfs(), kernel: any KernelInterface = LinuxKernel.shared, devfs: String = "/dev",
                functions: (() throws -> [PCIFunctionInfo])? = nil) {
        self.sysfs = sysfs
        self.kernel = kernel
        self.devfs = devfs
        self.listFunctions = functions ?? { try PCIEnumerator(sysfs: sysfs).functions() }
    }

    // MARK: Planning

    /// The declared devices to open for `server`, in declaration order (see the type's comment).
    public static func devicesToOpen(for server: ServerConfiguration) -> [ServerConfiguration.Device] {
        let granted = server.capabilities
        var labels = Set(granted.compactMap(\.device))
        if let first = server.devices.first {
            if granted.contains(.pciConfig) { labels.insert(first.label) }
            if granted.contains(.dmaAlloc) && !server.devices.contains(where: { labels.contains($0.label) }) {
                labels.insert(first.label)
            }
        }
        return server.devices.filter { labels.contains($0.label) }
    }

    /// The one PCI function `selector` names. An address is taken as written (Platform checks
    /// that it exists when it is opened); IDs and class codes must match exactly one function.
    public func resolve(_ selector: DeviceSelector, label: String) throws(DeviceCapabilityError) -> PCIAddress {
        let predicate: (PCIFunctionInfo) -> Bool
        switch selector {
        case .address(let address): return address
        case .ids(let vendor, let device): predicate = { $0.vendorID == vendor && $0.deviceID == device }
        case .classCode(let code): predicate = { $0.classCode == code }
        }
        let functions: [PCIFunctionInfo]
        do {
            functions = try listFunctions()
        } catch {
            throw .enumerationFailed(label: label, selector: selector, reason: "\(error)")
        }
        let matches = functions.filter(predicate).map(\.address).sorted()
        guard !matches.isEmpty else { throw .noMatch(label: label, selector: selector) }
        guard matches.count == 1 else { throw .severalMatches(label: label, selector: selector, matches: matches) }
        return matches[0]
    }

    // MARK: CapabilityProvider

    public func descriptors(for server: ServerConfiguration) throws -> [String: Int32] {
        try lock.locked { () throws -> [String: Int32] in
            // Opened before: the descriptors for the capabilities granted now (a run-time grant
            // of CAP_IRQ_X for a device already open for CAP_MMIO_X needs no new open).
            if let opened = kept[server.name] { return Self.descriptorMap(server, devices: opened.devices, container: opened.container) }
            let wanted = Self.devicesToOpen(for: server)
            guard !wanted.isEmpty else { return [:] }
            var container: VFIOContainer?
            var devices: [(label: String, device: VFIODevice)] = []
            for entry in wanted {
                let address = try resolve(entry.selector, label: entry.label)
                do {
                    let device = try VFIODevice(address: address, sysfs: sysfs, kernel: kernel, container: container, devfs: devfs)
                    container = device.container
                    devices.append((entry.label, device))
                } catch let error as PlatformError {
                    throw DeviceCapabilityError.platform(label: entry.label, address: address, error)
                } catch {
                    throw DeviceCapabilityError.other(label: entry.label, address: address, reason: "\(error)")
                }
            }
            // `wanted` is not empty and every open succeeded, so there is a container.
            let shared = container!
            let descriptors = Self.descriptorMap(server, devices: devices, container: shared)
            kept[server.name] = Opened(container: shared, devices: devices, descriptors: descriptors)
            return descriptors
        }
    }

    /// Which open descriptor stands for each of `server`'s capabilities: a device's fd for its
    /// CAP_MMIO/CAP_IRQ (and the first device's for CAP_PCI_CONFIG), the container's for
    /// CAP_DMA_ALLOC.
    static func descriptorMap(_ server: ServerConfiguration, devices: [(label: String, device: VFIODevice)],
                              container: VFIOContainer) -> [String: Int32] {
        var descriptors: [String: Int32] = [:]
        for capability in server.capabilities {
            switch capability {
            case .mmio(let label), .irq(let label):
                if let device = devices.first(where: { $0.label == label })?.device {
                    descriptors[capability.description] = device.deviceFD
                }
            case .pciConfig:
                if let first = server.devices.first, let device = devices.first(where: { $0.label == first.label })?.device {
                    descriptors[capability.description] = device.deviceFD
                }
            case .dmaAlloc:
                descriptors[capability.description] = container.fd
            default:
                break
            }
        }
        return descriptors
    }

    public func instanceExited(_ server: ServerConfiguration) -> [String] {
        lock.locked {
            guard let opened = kept[server.name] else { return [] }
            var problems: [String] = []
            var mustRelease = false
            for (label, device) in opened.devices {
                do {
                    try device.setBusMaster(false)
                } catch {
                    problems.append("device \(label) (\(device.address)): clearing bus mastering failed: \(error)")
                    mustRelease = true
                }
                for index in [VFIO.irqIndexMSIX, VFIO.irqIndexMSI, VFIO.irqIndexINTx] {
                    tearDownInterrupts(device.deviceFD, index: index)
                }
            }
            switch unmapAllDMA(opened.container) {
            case .done:
                break
            case .unsupported:
                problems.append("the kernel cannot unmap all DMA at once (VFIO_DMA_UNMAP_FLAG_ALL needs Linux 5.13): "
                    + "closing \(server.name)'s VFIO descriptors instead; the next instance opens them again after a function reset")
                mustRelease = true
            case .failed(let error):
                problems.append("unmapping \(server.name)'s DMA failed: \(error); closing its VFIO descriptors instead")
                mustRelease = true
            }
            if mustRelease { problems += releaseLocked(server.name) }
            return problems
        }
    }

    public func release(_ server: ServerConfiguration) -> [String] {
        lock.locked { releaseLocked(server.name) }
    }

    /// Whether descriptors are held for `name` (tests, status).
    public func isHolding(_ name: String) -> Bool { lock.locked { kept[name] != nil } }

    // MARK: Quiescing

    /// Resets each device that offers a reset and drops every object; their deinits close the
    /// device descriptors, detach the groups and close the container.
    private func releaseLocked(_ name: String) -> [String] {
        guard let opened = kept.removeValue(forKey: name) else { return [] }
        var problems: [String] = []
        for (label, device) in opened.devices {
            _ = try? device.setBusMaster(false)
            guard device.info.supportsReset else { continue }
            do { try device.reset() } catch { problems.append("device \(label) (\(device.address)): \(error)") }
        }
        return problems
    }

    /// VFIO_DEVICE_SET_IRQS with DATA_NONE | ACTION_TRIGGER and count 0: every vector of `index`
    /// torn down. Refused (EINVAL) when the index is not enabled, which is fine.
    private func tearDownInterrupts(_ deviceFD: Int32, index: UInt32) {
        var set = vfio_irq_set()
        set.argsz = UInt32(MemoryLayout<vfio_irq_set>.size)
        set.flags = VFIO.irqSetDataNone | VFIO.irqSetActionTrigger
        set.index = index
        set.start = 0
        set.count = 0
        _ = try? kernel.ioctl(deviceFD, VFIO.Request.deviceSetIRQs, &set)
    }

    /// From <linux/vfio.h> (Linux 5.13): the extension and the unmap flag.
    static let unmapAllExtension: UInt = 9
    static let dmaUnmapFlagAll: UInt32 = 1 << 1

    enum UnmapResult: Equatable {
        case done
        case unsupported
        case failed(Errno)
    }

    /// One VFIO_IOMMU_UNMAP_DMA with VFIO_DMA_UNMAP_FLAG_ALL (iova and size 0, as the flag
    /// requires): every mapping in the container, whoever made it.
    private func unmapAllDMA(_ container: VFIOContainer) -> UnmapResult {
        guard ((try? kernel.ioctl(container.fd, VFIO.Request.checkExtension, value: Self.unmapAllExtension)) ?? 0) > 0 else {
            return .unsupported
        }
        var unmap = vfio_iommu_type1_dma_unmap()
        unmap.argsz = UInt32(MemoryLayout<vfio_iommu_type1_dma_unmap>.size)
        unmap.flags = Self.dmaUnmapFlagAll
        unmap.iova = 0
        unmap.size = 0
        do {
            _ = try kernel.ioctl(container.fd, VFIO.Request.iommuUnmapDMA, &unmap)
            return .done
        } catch {
            return .failed(error)
        }
    }
}
