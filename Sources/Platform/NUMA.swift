import CNUMA

/// Placement on a device's NUMA node through libnuma: DMA memory (see `DMAAllocator`) and the
/// threads that touch it, so a queue's memory, its interrupts' handler and the device share a
/// node. On a single-node machine (or without NUMA support) every call is a harmless no-op.
public enum NUMA {
    /// Whether the kernel supports NUMA policy at all.
    public static var available: Bool { numa_available() >= 0 }

    /// Nodes the system has (1 on a machine without NUMA).
    public static var nodeCount: Int { available ? Int(numa_max_node()) + 1 : 1 }

    /// Runs the calling thread only on CPUs of `node` from now on. Returns false when NUMA is
    /// unavailable or the node does not exist, leaving the thread where it was.
    @discardableResult
    public static func runCurrentThread(onNode node: Int) -> Bool {
        guard available, node >= 0, node < nodeCount else { return false }
        return numa_run_on_node(Int32(node)) == 0
    }

    /// The node the calling thread prefers for its allocations.
    public static var preferredNode: Int { available ? Int(numa_preferred()) : 0 }
}
