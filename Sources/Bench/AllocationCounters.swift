import CLimitless
#if canImport(Glibc)
import Glibc
#endif

/// One process's counters kept by the counting LD_PRELOAD library
/// (Tests/AllocationCounter/alloc_counter.c; layout in alloc_counter.h): heap allocation calls
/// (malloc and its relatives), frees, and swift_retain / swift_release calls made from outside
/// libswiftCore, in the first page of a file the library maps MAP_SHARED. Any process may map the
/// file and read them while the counted process runs: a client reads its own and its server's.
public struct AllocationCounters {
    /// What the counters said at one moment.
    public struct Snapshot: Sendable {
        public var allocations: UInt64
        public var frees: UInt64
        public var retains: UInt64
        public var releases: UInt64
    }

    static let magic: UInt64 = 0x434F_4C4C_4154_4D4C  // "LMTALLOC"
    // Field offsets (alloc_counter.h).
    private static let pidOffset = 8, allocationsOffset = 16, freesOffset = 24, retainsOffset = 32
    private static let releasesOffset = 40, retainHooksOffset = 48, traceAllocationsOffset = 56, traceRetainsOffset = 64

    private let page: UnsafeMutableRawPointer
    public let path: String

    /// Maps the counters file at `path`; nil when it cannot be mapped or the library has not
    /// started counting in it (no magic).
    public init?(path: String) {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        guard let address = mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), address != MAP_FAILED else { return nil }
        page = address
        self.path = path
        guard load(0) == Self.magic else {
            munmap(address, 4096)
            return nil
        }
    }

    /// This process's own counters: the file the library was told about
    /// (LIMITLESS_ALLOC_COUNTERS), if it runs under the library.
    public static func ofThisProcess() -> AllocationCounters? {
        guard let path = getenv("LIMITLESS_ALLOC_COUNTERS") else { return nil }
        return AllocationCounters(path: String(cString: path))
    }

    /// The counted process.
    public var pid: Int32 { Int32(truncatingIfNeeded: load(Self.pidOffset)) }
    /// Whether retains are counted (the process has a Swift runtime).
    public var countsRetains: Bool { load(Self.retainHooksOffset) != 0 }

    public func snapshot() -> Snapshot {
        Snapshot(allocations: load(Self.allocationsOffset), frees: load(Self.freesOffset),
                 retains: load(Self.retainsOffset), releases: load(Self.releasesOffset))
    }

    /// Asks for the backtraces (on the counted process's stderr) of its next `allocations`
    /// allocations and `retains` retains; 0, 0 stops asking.
    public func trace(allocations: Int64, retains: Int64) {
        (page + Self.traceAllocationsOffset).storeBytes(of: allocations, as: Int64.self)
        (page + Self.traceRetainsOffset).storeBytes(of: retains, as: Int64.self)
    }

    /// A load the compiler must perform each time (another process changes the value; aligned
    /// 64-bit loads are atomic on x86-64 and arm64).
    private func load(_ offset: Int) -> UInt64 {
        CL_dma_read64(page + offset)
    }
}
