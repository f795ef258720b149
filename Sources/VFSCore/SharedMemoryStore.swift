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
    public init(mapping descriptor: Int32, what: String) throws(FSError) {
        var status = stat()
        guard fstat(descriptor, &status) == 0 else { throw FSError(Errno(rawValue: errno), "cannot stat \(what)") }
        let size = Int(max(0, status.st_size)) / 512 * 512
        guard size > 0 else { throw FSError(.invalidArgument, "\(what) is empty") }
        guard let base = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, descriptor, 0), base != MAP_FAILED else {
            throw FSError(Errno(rawValue: errno), "cannot map \(what) (\(size) bytes)")
        }
        region = UnsafeMutableRawBufferPointer(start: base, count: size)
        capacity = UInt64(size)
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
