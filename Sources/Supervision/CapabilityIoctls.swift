import CLimitless

/// The VFIO ioctl requests each device capability stands for: what a server's seccomp filter
/// allows (ServerKit's `SeccompPolicy`) and what the supervisor lets through for a capability
/// granted at run time (`Supervisor+SeccompNotifications`). One table for both, here because
/// the supervisor decides and ServerKit builds on Supervision.
public enum CapabilityIoctls {
    static let vfioVersion: [(request: UInt, name: String)] = [(CL_VFIO_GET_API_VERSION, "VFIO_GET_API_VERSION"),
                                                               (CL_VFIO_CHECK_EXTENSION, "VFIO_CHECK_EXTENSION")]
    static let deviceInfo: [(request: UInt, name: String)] = [(CL_VFIO_DEVICE_GET_INFO, "VFIO_DEVICE_GET_INFO"),
                                                              (CL_VFIO_DEVICE_GET_REGION_INFO, "VFIO_DEVICE_GET_REGION_INFO")]

    /// The ioctls `capability` needs (none for capabilities that are not device access).
    public static func requests(forCapability name: String) -> [(request: UInt, name: String)] {
        if name.hasPrefix("CAP_MMIO_") { return vfioVersion + deviceInfo + [(CL_VFIO_DEVICE_RESET, "VFIO_DEVICE_RESET")] }
        if name == "CAP_PCI_CONFIG" { return vfioVersion + deviceInfo }
        if name.hasPrefix("CAP_IRQ_") {
            return [(CL_VFIO_DEVICE_GET_INFO, "VFIO_DEVICE_GET_INFO"), (CL_VFIO_DEVICE_GET_IRQ_INFO, "VFIO_DEVICE_GET_IRQ_INFO"),
                    (CL_VFIO_DEVICE_SET_IRQS, "VFIO_DEVICE_SET_IRQS")]
        }
        if name == "CAP_DMA_ALLOC" {
            return vfioVersion + [(CL_VFIO_IOMMU_GET_INFO, "VFIO_IOMMU_GET_INFO"), (CL_VFIO_IOMMU_MAP_DMA, "VFIO_IOMMU_MAP_DMA"),
                                  (CL_VFIO_IOMMU_UNMAP_DMA, "VFIO_IOMMU_UNMAP_DMA")]
        }
        return []
    }

    /// The request's name (`VFIO_DEVICE_SET_IRQS`), or its number in hex.
    public static func name(of request: UInt) -> String {
        for capability in ["CAP_MMIO_X", "CAP_PCI_CONFIG", "CAP_IRQ_X", "CAP_DMA_ALLOC"] {
            if let rule = requests(forCapability: capability).first(where: { $0.request == request }) { return rule.name }
        }
        return "ioctl 0x" + String(request, radix: 16)
    }

    /// Every request some capability stands for, sorted.
    public static let all: [UInt] = Array(Set(["CAP_MMIO_X", "CAP_PCI_CONFIG", "CAP_IRQ_X", "CAP_DMA_ALLOC"]
        .flatMap { requests(forCapability: $0).map(\.request) })).sorted()
}
