import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A store in shared memory another process keeps alive: a memfd mapped MAP_SHARED, such as the
/// supervisor's CAP_PAGE_CACHE memory that holds ext2's write-back log across vfs_server's
/// restarts. A write is done once its bytes are copied; `flush` has nothing to do, since the
/// memory survives this process by itself (and nothing here survives a power loss).
public final class SharedMemoryStore: BlockStore {
    public let sectorSize = 512
    public let capacity: UInt64
    private let region: UnsafeMutableRawBufferPointer

    /// Maps all of `descriptor` (which stays the caller's; the mapping outlives its closing).
    public convenience init(mapping descriptor: Int32, what: String) throws(FSError) {
        let size = try Self.size(of: descriptor, what: what) / 512 * 512
        guard size > 0 else { throw FSError(.invalidArgument, "\(what) is empty") }
        try self.init(mapping: descriptor, offset: 0, size: size, what: what)
    }

    private init(mapping descriptor: Int32, offset: Int, size: Int, what: String) throws(FSError) {
        guard let base = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, descriptor, off_t(offset)), base != MAP_FAILED else {
            throw FSError(Errno(rawValue: errno), "cannot map \(what) (\(size) bytes at \(offset))")
        }
        region = UnsafeMutableRawBufferPointer(start: base, count: size)
        capacity = UInt64(size)
    }

    /// `count` stores over equal, page-aligned, disjoint parts of `descriptor`, in order: one
    /// per file system when one memory region holds several write-back logs. The same count
    /// over the same memory gives the same parts, so each restarted mount finds its own log.
    public static func slices(of descriptor: Int32, count: Int, what: String) throws(FSError) -> [SharedMemoryStore] {
        precondition(count >= 1, "at least one slice")
        let page = 4096
        let each = try size(of: descriptor, what: what) / count / page * page
        guard each > 0 else { throw FSError(.invalidArgument, "\(what) is too small for \(count) parts of a page or more") }
        var stores: [SharedMemoryStore] = []
        for index in 0..<count {
            stores.append(try SharedMemoryStore(mapping: descriptor, offset: index * each, size: each, what: "\(what), part \(index + 1) of \(count)"))
        }
        return stores
    }

    private static func size(of descriptor: Int32, what: String) throws(FSError) -> Int {
        var status = stat()
        guard fstat(descriptor, &status) == 0 else { throw FSError(Errno(rawValue: errno), "cannot stat \(what)") }
        return Int(max(0, status.st_size))
    }

    deinit { munmap(region.baseAddress, region.count) }

    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(FSError) {
        try checkRange(offset, buffer.count)
        buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: region[Int(offset)..<(Int(offset) + buffer.count)]))
    }

    public func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(FSError) {
        try checkRange(offset, buffer.count)
        UnsafeMutableRawBufferPointer(rebasing: region[Int(offset)..<(Int(offset) + buffer.count)]).copyMemory(from: buffer)
    }

    public func flush() throws(FSError) {}
}
