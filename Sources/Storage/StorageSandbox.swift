import ServerKit

/// storage_server's seccomp filter (installed by `ServerRuntime.dropPrivileges` once its socket
/// listens and before it serves): the base set every server gets, what its device capabilities
/// need (VFIO ioctls by request number, mlock for DMA), and the few calls below. No open,
/// no exec, no socket but AF_UNIX: a compromised storage_server cannot reach the network or a
/// file it did not hold before serving.
public enum StorageSandbox {
    /// Beyond `SeccompPolicy.baseSyscalls`, for what serving needs:
    /// - kill (signal 0 only, in practice) and msync: telling whether a client that registered
    ///   buffers has vanished (`RegisteredBuffers.clientVanished`);
    /// - unlink / unlinkat: removing its own socket and pid file when it stops.
    public static let extraSyscalls = ["kill", "msync", "unlink", "unlinkat"]

    /// The capabilities the filter is built for: the granted ones when supervised; standalone
    /// (the device opened by the server itself) the device capabilities it acts with.
    public static func capabilities(granted: [String], standaloneLabel: String = "NVME0") -> [String] {
        granted.isEmpty
            ? ["CAP_PCI_CONFIG", "CAP_MMIO_\(standaloneLabel)", "CAP_IRQ_\(standaloneLabel)", "CAP_DMA_ALLOC"]
            : granted
    }

    /// The policy storage_server installs.
    public static func policy(granted: [String]) -> SeccompPolicy {
        SeccompPolicy(capabilities: capabilities(granted: granted), extra: extraSyscalls)
    }
}
