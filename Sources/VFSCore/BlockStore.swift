import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The bytes a file system lives on: an image file, a namespace of the storage server, or a
/// cache in front of either. Addressed in bytes; `sectorSize` is the unit reads and writes must be
/// aligned to (offset and count multiples of it). Synchronous; one caller at a time.
public protocol BlockStore: AnyObject {
    var sectorSize: Int { get }
    /// Total size in bytes (a multiple of `sectorSize`).
    var capacity: UInt64 { get }
    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(FSError)
    func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(FSError)
    /// Everything written reaches stable storage.
    func flush() throws(FSError)
}

extension BlockStore {
    /// EINVAL unless `offset` and `count` are sector-aligned and inside the store.
    public func checkRange(_ offset: UInt64, _ count: Int) throws(FSError) {
        let sector = UInt64(sectorSize)
        guard offset % sector == 0, UInt64(count) % sector == 0 else {
            throw FSError(.invalidArgument, "unaligned access at \(offset) of \(count) bytes (sector \(sectorSize))")
        }
        guard offset <= capacity, UInt64(count) <= capacity - offset else {
            throw FSError(.ioError, "access at \(offset) of \(count) bytes past the end (\(capacity))")
        }
    }
}

/// A disk image in an ordinary file (the VFS server's default backend; tests use images made by
/// the real mke2fs). pread/pwrite on one descriptor; `flush` is fsync.
public final class ImageFileStore: BlockStore {
    public let sectorSize: Int
    public let capacity: UInt64
    public let path: FilePath
    public let isReadOnly: Bool
    private let descriptor: FileDescriptor

    public init(path: FilePath, readOnly: Bool = false, sectorSize: Int = 512) throws(FSError) {
        self.path = path
        self.isReadOnly = readOnly
        self.sectorSize = sectorSize
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(path, readOnly ? .readOnly : .readWrite, options: [.closeOnExec])
        } catch {
            throw FSError(error as? Errno ?? .ioError, "cannot open image \(path): \(error)")
        }
        var status = stat()
        guard fstat(fd.rawValue, &status) == 0 else {
            try? fd.close()
            throw FSError(Errno(rawValue: errno), "cannot stat image \(path)")
        }
        let size = UInt64(max(0, status.st_size))
        self.capacity = size - size % UInt64(sectorSize)
        self.descriptor = fd
    }

    deinit { try? descriptor.close() }

    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(FSError) {
        try checkRange(offset, buffer.count)
        var done = 0
        while done < buffer.count {
            let n = pread(descriptor.rawValue, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw FSError(Errno(rawValue: errno), "read of \(path) at \(offset + UInt64(done))")
            }
            if n == 0 { throw FSError(.ioError, "\(path) ended at \(offset + UInt64(done))") }
            done += n
        }
    }

    public func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(FSError) {
        guard !isReadOnly else { throw FSError(.readOnlyFileSystem, "\(path) is open read-only") }
        try checkRange(offset, buffer.count)
        var done = 0
        while done < buffer.count {
            let n = pwrite(descriptor.rawValue, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw FSError(Errno(rawValue: errno), "write of \(path) at \(offset + UInt64(done))")
            }
            done += n
        }
    }

    public func flush() throws(FSError) {
        guard !isReadOnly else { return }
        if fsync(descriptor.rawValue) != 0 { throw FSError(Errno(rawValue: errno), "fsync of \(path)") }
    }
}

/// A store in memory (unit tests, fuzzing). `failWrites` makes writes fail with EIO, to test
/// what a file system does when its device fails.
public final class MemoryBlockStore: BlockStore {
    public let sectorSize: Int
    public var bytes: [UInt8]
    public var failWrites = false
    public private(set) var flushCount = 0

    public init(bytes: [UInt8], sectorSize: Int = 512) {
        self.sectorSize = sectorSize
        self.bytes = Array(bytes.prefix(bytes.count - bytes.count % sectorSize))
    }

    public var capacity: UInt64 { UInt64(bytes.count) }

    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(FSError) {
        try checkRange(offset, buffer.count)
        bytes.withUnsafeBytes { source in
            buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[Int(offset)..<(Int(offset) + buffer.count)]))
        }
    }

    public func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(FSError) {
        if failWrites { throw FSError(.ioError, "injected write failure at \(offset)") }
        try checkRange(offset, buffer.count)
        bytes.withUnsafeMutableBytes { target in
            UnsafeMutableRawBufferPointer(rebasing: target[Int(offset)..<(Int(offset) + buffer.count)]).copyMemory(from: buffer)
        }
    }

    public func flush() throws(FSError) { flushCount += 1 }
}
