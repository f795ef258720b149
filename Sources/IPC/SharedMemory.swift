import CLimitless
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A shared-memory capability: a memfd, sent once to a server (`IPCClient.share`) and named by
/// the handle the server returns in later messages (`Message.setSharedData`). The seed's
/// `create_shared_memory_cap(buffer, size)` is `SharedMemory(sealedCopyOf:)`.
///
/// Seals (memfd_create(2), fcntl F_ADD_SEALS) make promises the receiver can rely on:
/// - every region is sealed against shrinking and growing, so a receiver's mapping can never
///   point past the end of the file (a shrink would turn its reads into SIGBUS);
/// - `sealedCopyOf` also seals writes: its contents are fixed, the receiver sees exactly what was
///   there at creation and nobody (sender included) can change it later.
///
/// Owns its descriptor and mapping; `deinit` unmaps and closes. Handing it to a server does not
/// transfer ownership: the server holds its own descriptor (SCM_RIGHTS duplicates it).
public struct SharedMemory: ~Copyable {
    public let fd: FileDescriptor
    public let size: Int
    /// Our mapping: writable for `init(size:)`, read-only for a sealed copy.
    public let bytes: UnsafeRawBufferPointer
    public let isWritable: Bool

    /// A writable region of `size` bytes, sealed against resizing; both sides see each other's
    /// writes (for buffers used again and again, e.g. a read target).
    public init(size: Int, name: String = "limitless-shm") throws(IPCError) {
        precondition(size > 0, "a shared-memory region needs at least one byte")
        let fd = try Self.create(name: name, size: size)
        guard let base = try? Self.map(fd: fd, size: size, writable: true) else {
            closeDescriptor(fd)
            throw .systemCall("mmap(memfd, \(size))", Errno(rawValue: CL_errno()))
        }
        if CL_fcntl_int(fd, CL_F_ADD_SEALS, CL_F_SEAL_SHRINK | CL_F_SEAL_GROW | CL_F_SEAL_SEAL) != 0 {
            let errno = Errno(rawValue: CL_errno())
            munmap(base, size)
            closeDescriptor(fd)
            throw .systemCall("fcntl(F_ADD_SEALS)", errno)
        }
        self.fd = FileDescriptor(rawValue: fd)
        self.size = size
        self.bytes = UnsafeRawBufferPointer(start: base, count: size)
        self.isWritable = true
    }

    /// A region holding a copy of `contents`, sealed against writes, resizing and further
    /// sealing: what the receiver reads can never change underneath it.
    public init(sealedCopyOf contents: UnsafeRawBufferPointer, name: String = "limitless-shm") throws(IPCError) {
        precondition(contents.count > 0, "a shared-memory region needs at least one byte")
        let size = contents.count
        let fd = try Self.create(name: name, size: size)
        // Write through pwrite, not a mapping: F_SEAL_WRITE is refused while a writable shared
        // mapping exists.
        var written = 0
        while written < size {
            let n = pwrite(fd, contents.baseAddress! + written, size - written, off_t(written))
            if n <= 0 {
                if n < 0 && CL_errno() == EINTR { continue }
                let errno = Errno(rawValue: CL_errno())
                closeDescriptor(fd)
                throw .systemCall("pwrite(memfd)", errno)
            }
            written += n
        }
        let seals = CL_F_SEAL_SHRINK | CL_F_SEAL_GROW | CL_F_SEAL_WRITE | CL_F_SEAL_SEAL
        if CL_fcntl_int(fd, CL_F_ADD_SEALS, seals) != 0 {
            let errno = Errno(rawValue: CL_errno())
            closeDescriptor(fd)
            throw .systemCall("fcntl(F_ADD_SEALS)", errno)
        }
        guard let base = try? Self.map(fd: fd, size: size, writable: false) else {
            let errno = Errno(rawValue: CL_errno())
            closeDescriptor(fd)
            throw .systemCall("mmap(memfd, \(size))", errno)
        }
        self.fd = FileDescriptor(rawValue: fd)
        self.size = size
        self.bytes = UnsafeRawBufferPointer(start: base, count: size)
        self.isWritable = false
    }

    deinit {
        munmap(UnsafeMutableRawPointer(mutating: bytes.baseAddress), size)
        closeDescriptor(fd.rawValue)
    }

    /// Our writable view (nil for a sealed copy).
    public var mutableBytes: UnsafeMutableRawBufferPointer? {
        isWritable ? UnsafeMutableRawBufferPointer(mutating: bytes) : nil
    }

    /// The seals on a descriptor (F_SEAL_* bits), or nil if it is not a sealable memfd.
    public static func seals(of fd: Int32) -> Int32? {
        let seals = CL_fcntl_int(fd, CL_F_GET_SEALS, 0)
        return seals < 0 ? nil : seals
    }

    static func create(name: String, size: Int) throws(IPCError) -> Int32 {
        let fd = try sys("memfd_create(\(name))") { CL_memfd_create(name, CL_MFD_CLOEXEC | CL_MFD_ALLOW_SEALING) }
        if ftruncate(fd, off_t(size)) != 0 {
            let errno = Errno(rawValue: CL_errno())
            closeDescriptor(fd)
            throw .systemCall("ftruncate(memfd, \(size))", errno)
        }
        return fd
    }

    static func map(fd: Int32, size: Int, writable: Bool) throws(IPCError) -> UnsafeMutableRawPointer {
        let protection = writable ? (PROT_READ | PROT_WRITE) : PROT_READ
        guard let base = mmap(nil, size, protection, MAP_SHARED, fd, 0), CL_is_map_failed(base) == 0 else {
            throw .systemCall("mmap", Errno(rawValue: CL_errno()))
        }
        return base
    }
}

/// A region a server received: its own descriptor and mapping, held in a connection's handle
/// table until the client releases it or goes away. Sendable: the server's thread and the
/// connection's ring thread both read through it; `SharedRegionTable` decides when it is unmapped.
struct SharedRegion: @unchecked Sendable {
    /// The largest region a server maps for one client handle.
    static let maxSize = 1 << 30

    var fd: Int32
    var base: UnsafeMutableRawPointer
    var size: Int
    var writable: Bool

    /// Checks and maps a descriptor a client sent. Refused (and the descriptor left to the caller
    /// to close): anything that is not a memfd (EINVAL: sockets, devices, files have no seals),
    /// a memfd not sealed against shrinking (EINVAL: the client could shrink it under our mapping
    /// and crash us with SIGBUS), empty or over `maxSize` (EINVAL / ENOMEM).
    /// Mapped writable unless sealed against writes (then the kernel refuses a writable mapping).
    static func adopt(fd: Int32) -> Result<SharedRegion, IPCStatus> {
        guard let seals = SharedMemory.seals(of: fd), seals & CL_F_SEAL_SHRINK != 0 else { return .failure(.EINVAL) }
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_size > 0 else { return .failure(.EINVAL) }
        guard info.st_size <= maxSize else { return .failure(.ENOMEM) }
        let size = Int(info.st_size)
        let writable = seals & CL_F_SEAL_WRITE == 0
        guard let base = try? SharedMemory.map(fd: fd, size: size, writable: writable) else { return .failure(.ENOMEM) }
        return .success(SharedRegion(fd: fd, base: base, size: size, writable: writable))
    }

    func release() {
        munmap(base, size)
        closeDescriptor(fd)
    }
}
