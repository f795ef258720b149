import CLimitless

/// Which CPUs the two benchmark processes run on. Pinning them apart keeps the scheduler from
/// migrating either mid-run and makes every message cross between two cores, as in production;
/// with one CPU the two processes time-share it and every wake-up is a context switch.
public struct CPUPlacement: Sendable {
    /// CPUs this process may run on (its affinity mask).
    public let allowed: [Int]
    /// Where the measuring process runs, and where its peer runs (nil: unpinned).
    public let parent: Int?
    public let peer: Int?

    public static func choose() -> CPUPlacement {
        var cpus = [Int32](repeating: 0, count: 1024)
        let n = Int(CL_allowed_cpus(&cpus, 1024))
        let allowed = n > 0 ? cpus.prefix(n).map(Int.init) : []
        guard allowed.count >= 2 else { return CPUPlacement(allowed: allowed, parent: allowed.first, peer: allowed.first) }
        return CPUPlacement(allowed: allowed, parent: allowed[0], peer: allowed[1])
    }

    /// Pins the calling thread; returns false if the kernel refused (the run goes on unpinned).
    @discardableResult
    public static func pin(to cpu: Int?) -> Bool {
        guard let cpu else { return false }
        return CL_pin_to_cpu(Int32(cpu)) == 0
    }
}
