import CLimitless
import Supervision
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The ioctl requests each capability needs: with them the seccomp filter allows ioctl(2) only
/// with those request numbers, so a server granted CAP_MMIO_NVME0 but not CAP_IRQ_NVME0 can read
/// its device's regions but gets EPERM from VFIO_DEVICE_SET_IRQS.
///
/// Limits, said plainly: the filter sees the request number, not what the descriptor is (seccomp
/// cannot look at descriptors), so it restricts *which operations*, and the descriptors the
/// server holds restrict *on what*. VFIO reuses numbers across descriptor kinds (the IOMMU's
/// GET_INFO/MAP_DMA/UNMAP_DMA share numbers with the device's hot-reset requests), so
/// CAP_DMA_ALLOC's numbers also pass those device requests. A filter can only ever be narrowed,
/// so the VFIO requests of capabilities granted at run time are decided by the supervisor
/// (`SeccompNotifications`).
public struct IoctlRule: Equatable, Sendable {
    public var request: UInt
    public var name: String
    public init(request: UInt, name: String) {
        self.request = request
        self.name = name
    }
}

extension SeccompPolicy {
    /// The ioctls `capability` needs (none for capabilities that are not device access); the
    /// table is Supervision's `CapabilityIoctls`, which the supervisor decides run-time grants by.
    public static func ioctls(forCapability name: String) -> [IoctlRule] {
        CapabilityIoctls.requests(forCapability: name).map { IoctlRule(request: $0.request, name: $0.name) }
    }

    /// Every rule a capability can bring, for naming a refused request.
    static let knownRules: [(capability: String, rule: IoctlRule)] =
        ["CAP_MMIO_<DEV>", "CAP_PCI_CONFIG", "CAP_IRQ_<DEV>", "CAP_DMA_ALLOC"].flatMap { pattern in
            ioctls(forCapability: pattern.replacingDevice(with: "X")).map { (pattern, $0) }
        }

    /// The request's name (`VFIO_DEVICE_SET_IRQS`), or its number in hex.
    public static func ioctlName(_ request: UInt) -> String { CapabilityIoctls.name(of: request) }

    /// The capabilities (device ones as `CAP_IRQ_<DEV>`) whose grant would allow `request`.
    public static func capabilities(allowing request: UInt) -> [String] {
        var seen = Set<String>()
        return knownRules.filter { $0.rule.request == request }.map(\.capability).filter { seen.insert($0).inserted }
    }

    /// The request numbers `capabilities` allow, sorted, without repeats.
    public static func allowedIoctls(capabilities: [String]) -> [UInt] {
        Array(Set(capabilities.flatMap { ioctls(forCapability: $0).map(\.request) })).sorted()
    }
}

extension String {
    fileprivate func replacingDevice(with label: String) -> String {
        hasSuffix("_<DEV>") ? String(dropLast("<DEV>".count)) + label : self
    }
}

extension ServerRuntime {
    /// Why an ioctl failed, naming the missing capability when the seccomp filter refused it
    /// (EPERM for a request this server's capabilities do not allow). A device capability is
    /// named with the label of this server's other grants for that device (CAP_MMIO_NVME0 held,
    /// VFIO_DEVICE_SET_IRQS refused: CAP_IRQ_NVME0).
    public func ioctlError(request: UInt, errno: Int32) -> ServerKitError {
        let name = SeccompPolicy.ioctlName(request)
        guard errno == EPERM else { return .ioctlFailed(name, Errno(rawValue: errno)) }
        let candidates = SeccompPolicy.capabilities(allowing: request)
        guard !candidates.isEmpty else { return .ioctlFailed(name, Errno(rawValue: errno)) }
        let labels = capabilityNames.compactMap { held -> String? in
            for prefix in ["CAP_MMIO_", "CAP_IRQ_"] where held.hasPrefix(prefix) { return String(held.dropFirst(prefix.count)) }
            return nil
        }
        let named = candidates.map { pattern in
            pattern.hasSuffix("_<DEV>") ? pattern.replacingDevice(with: labels.first ?? "<DEV>") : pattern
        }
        return .ioctlRefused(request: name, capabilities: named)
    }

    /// ioctl(fd, request, arg), retried on EINTR; a failure is thrown as `ioctlError` (so a
    /// request the seccomp filter refused says which capability is missing).
    @discardableResult
    public func ioctl(_ fd: Int32, _ request: UInt, _ argument: UnsafeMutableRawPointer?) throws(ServerKitError) -> Int32 {
        while true {
            let result = CL_ioctl_ptr(fd, request, argument)
            if result >= 0 { return result }
            let code = CL_errno()
            if code == EINTR { continue }
            throw ioctlError(request: request, errno: code)
        }
    }
}
