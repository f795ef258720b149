import IPC
import VFS
import VFSCore
#if canImport(Glibc)
import Glibc
#endif

/// What the bridge does for each FUSE operation, as VFSClient calls. Kept free of libfuse's
/// types (paths are Strings, results Swift values, failures `VFSError`) so it can be tested
/// against a vfs_server without the kernel; `FUSECallbacks` is the C side.
///
/// FUSE paths are absolute below the mount point ("/", "/a/b"), which are exactly the paths of
/// the vfs_server namespace, so they pass through unchanged. A FUSE file handle is the
/// vfs_server descriptor. The server checks permissions against this process's uid and gid
/// (SO_PEERCRED), never the caller's: one bridge serves one user (see `FUSEMount`).
///
/// Not thread-safe: the bridge runs libfuse's single-threaded loop, because one VFSClient is
/// one socket with one request in flight.
public final class FUSEOperations {
    /// Makes a connection; called again after the server went away (see `client()`).
    private let connect: () throws(VFSError) -> VFSClient
    private var connection: VFSClient?

    public init(connect: @escaping () throws(VFSError) -> VFSClient) {
        self.connect = connect
    }

    public convenience init(client: VFSClient) {
        self.init(connect: { () throws(VFSError) in client })
        connection = client
    }

    /// The connection, made again if the last one failed: vfs_server keeps a client's
    /// descriptors across a restart (keyed by the client's pid), so after a supervised restart
    /// the open files of the mount work on. The request that saw the failure is not retried
    /// (it may have run), it fails with ENOTCONN.
    private func client() throws(VFSError) -> VFSClient {
        if let connection { return connection }
        let made = try connect()
        connection = made
        return made
    }

    /// Runs `body` on the connection, dropping the connection on a transport failure.
    private func with<T>(_ body: (VFSClient) throws(VFSError) -> T) throws(VFSError) -> T {
        let client = try client()
        do {
            return try body(client)
        } catch {
            if error.status == .ENOTCONN && !error.detail.isEmpty { connection = nil }
            throw error
        }
    }

    // MARK: Attributes

    /// getattr: by descriptor when FUSE gives one (the file may be unlinked), else lstat (FUSE
    /// resolves symlinks itself, through readlink).
    public func getattr(_ path: String?, handle: Int32?) throws(VFSError) -> FileAttributes {
        try with { (client) throws(VFSError) in
            if let handle { return try client.fstat(handle) }
            return try client.stat(try Self.need(path), followSymlinks: false)
        }
    }

    public func readlink(_ path: String) throws(VFSError) -> String {
        try with { (client) throws(VFSError) in try client.readlink(path) }
    }

    public func chmod(_ path: String?, mode: UInt32) throws(VFSError) {
        try with { (client) throws(VFSError) in try client.chmod(try Self.need(path), mode: mode & 0o7777) }
    }

    /// chown(2) passes -1 for "leave unchanged"; FUSE hands that on as uid_t/gid_t 0xFFFFFFFF.
    public func chown(_ path: String?, uid: UInt32, gid: UInt32) throws(VFSError) {
        try with { (client) throws(VFSError) in
            try client.chown(try Self.need(path), uid: uid == UInt32.max ? nil : uid, gid: gid == UInt32.max ? nil : gid)
        }
    }

    /// truncate(2) by path, or ftruncate(2) by descriptor when FUSE gives one.
    public func truncate(_ path: String?, handle: Int32?, size: UInt64) throws(VFSError) {
        try with { (client) throws(VFSError) in
            if let handle { return try client.truncate(handle, to: size) }
            try client.truncate(try Self.need(path), to: size)
        }
    }

    public func utimens(_ path: String?, access: timespec, modification: timespec) throws(VFSError) {
        try with { (client) throws(VFSError) in
            try client.utimes(try Self.need(path), access: Self.timeChange(access), modification: Self.timeChange(modification))
        }
    }

    public func statfs(_ path: String) throws(VFSError) -> VFSProtocol.MountStatistics {
        try with { (client) throws(VFSError) in try client.statfs(path) }
    }

    // MARK: Names

    public func mkdir(_ path: String, mode: UInt32) throws(VFSError) {
        try with { (client) throws(VFSError) in try client.mkdir(path, mode: mode & 0o7777) }
    }

    public func rmdir(_ path: String) throws(VFSError) { try with { (client) throws(VFSError) in try client.rmdir(path) } }
    public func unlink(_ path: String) throws(VFSError) { try with { (client) throws(VFSError) in try client.unlink(path) } }

    public func symlink(target: String, at path: String) throws(VFSError) {
        try with { (client) throws(VFSError) in try client.symlink(target: target, at: path) }
    }

    public func link(_ old: String, to new: String) throws(VFSError) {
        try with { (client) throws(VFSError) in try client.link(old, to: new) }
    }

    /// renameat2 flags as FUSE passes them.
    public static let renameNoReplace: UInt32 = 1
    public static let renameExchange: UInt32 = 2

    /// rename; RENAME_NOREPLACE is a look-up then the rename (the protocol has no flag for it,
    /// so it is atomic only against this mount, which the single-threaded loop serializes, not
    /// against other clients of the server); RENAME_EXCHANGE is EINVAL, as on file systems
    /// without it (mv then falls back to a plain rename).
    public func rename(_ old: String, to new: String, flags: UInt32) throws(VFSError) {
        try with { (client) throws(VFSError) in
            guard flags & ~Self.renameNoReplace == 0 else { throw VFSError(.EINVAL, "rename flags \(flags)") }
            if flags & Self.renameNoReplace != 0 {
                do throws(VFSError) {
                    _ = try client.stat(new, followSymlinks: false)
                    throw VFSError(.EEXIST)
                } catch where error.status == .ENOENT {}
            }
            try client.rename(old, to: new)
        }
    }

    // MARK: Files

    /// The open(2) flags vfs_server understands (Linux values); the kernel also hands over
    /// O_LARGEFILE, O_NOCTTY, O_CLOEXEC and the like, which mean nothing to it.
    public static let passedOpenFlags: UInt32 = OpenFlags.accessModeMask | OpenFlags.create.rawValue | OpenFlags.exclusive.rawValue
        | OpenFlags.truncate.rawValue | OpenFlags.append.rawValue | OpenFlags.directory.rawValue | OpenFlags.noFollow.rawValue

    /// open: returns the vfs_server descriptor, which becomes the FUSE file handle.
    public func open(_ path: String, flags: Int32) throws(VFSError) -> Int32 {
        try with { (client) throws(VFSError) in
            try client.open(path, flags: OpenFlags(rawValue: UInt32(bitPattern: flags) & Self.passedOpenFlags))
        }
    }

    /// create: open with O_CREAT (FUSE's mode already has the caller's umask applied).
    public func create(_ path: String, flags: Int32, mode: UInt32) throws(VFSError) -> Int32 {
        try with { (client) throws(VFSError) in
            let flags = (UInt32(bitPattern: flags) & Self.passedOpenFlags) | OpenFlags.create.rawValue
            return try client.open(path, flags: OpenFlags(rawValue: flags), mode: mode & 0o7777)
        }
    }

    /// pread: FUSE always gives the offset, so the descriptor's own position is never used.
    public func read(_ handle: Int32, count: Int, offset: UInt64) throws(VFSError) -> [UInt8] {
        try with { (client) throws(VFSError) in try client.read(handle, count: count, at: offset) }
    }

    /// pwrite: returns the count written.
    public func write(_ handle: Int32, _ bytes: [UInt8], offset: UInt64) throws(VFSError) -> Int {
        try with { (client) throws(VFSError) in try client.write(handle, bytes, at: offset) }
    }

    public func fsync(_ handle: Int32) throws(VFSError) { try with { (client) throws(VFSError) in try client.fsync(handle) } }

    /// release and releasedir: the last close of the kernel's file.
    public func release(_ handle: Int32) throws(VFSError) { try with { (client) throws(VFSError) in try client.close(handle) } }

    // MARK: Directories

    /// opendir: an open directory descriptor, so permission and ENOTDIR errors come at opendir
    /// as they do on a local file system.
    public func opendir(_ path: String) throws(VFSError) -> Int32 {
        try with { (client) throws(VFSError) in try client.open(path, flags: [.directory]) }
    }

    /// Every entry, "." and ".." included. FUSE's high-level API asks with offset 0 and keeps
    /// what it was given, so the whole directory is read in one go: from the start, by path
    /// (a second readdir after rewinddir sees the directory as it is now), or from the
    /// descriptor when the directory has no path any more.
    public func readdir(_ path: String?, handle: Int32) throws(VFSError) -> [DirectoryEntry] {
        try with { (client) throws(VFSError) in
            if let path { return try client.list(path) }
            var all: [DirectoryEntry] = []
            while true {
                let (entries, atEnd) = try client.readDirectory(handle)
                all += entries
                if atEnd || entries.isEmpty { return all }
            }
        }
    }

    // MARK: Conversions

    /// libfuse passes a NULL path when a file has no name any more (unlinked while open and
    /// already gone, or nullpath_ok); without a descriptor there is nothing to name it by.
    private static func need(_ path: String?) throws(VFSError) -> String {
        guard let path else { throw VFSError(.ENOENT, "no path") }
        return path
    }

    /// The negative errno libfuse wants for a failure. Transport failures (the server is gone)
    /// are ENOTCONN, which programs print as "Transport endpoint is not connected".
    public static func errno(_ error: VFSError) -> Int32 {
        error.status.rawValue > 0 ? -error.status.rawValue : -EIO
    }

    /// utimensat's UTIME_NOW and UTIME_OMIT in tv_nsec (<sys/stat.h> macros Swift does not
    /// import: ((1l << 30) - 1l) and ((1l << 30) - 2l)).
    public static let utimeNow = (1 << 30) - 1
    public static let utimeOmit = (1 << 30) - 2

    public static func timeChange(_ time: timespec) -> TimeChange {
        switch time.tv_nsec {
        case utimeOmit: .omit
        case utimeNow: .now
        default: .set(FileTime(seconds: Int64(time.tv_sec), nanoseconds: UInt32(clamping: time.tv_nsec)))
        }
    }

    /// struct stat from the server's attributes. st_dev is left for FUSE to fill (it is the
    /// mount's device); st_blksize is a page, the unit cp and friends should write in.
    public static func fill(_ st: inout stat, from a: FileAttributes) {
        st = stat()
        st.st_ino = UInt(a.inode)
        st.st_mode = a.mode
        st.st_nlink = UInt(a.linkCount)
        st.st_uid = a.uid
        st.st_gid = a.gid
        st.st_size = Int(truncatingIfNeeded: a.size)
        st.st_blocks = Int(truncatingIfNeeded: a.blocks512)
        st.st_blksize = 4096
        st.st_atim = timespec(tv_sec: Int(a.accessTime.seconds), tv_nsec: Int(a.accessTime.nanoseconds))
        st.st_mtim = timespec(tv_sec: Int(a.modificationTime.seconds), tv_nsec: Int(a.modificationTime.nanoseconds))
        st.st_ctim = timespec(tv_sec: Int(a.changeTime.seconds), tv_nsec: Int(a.changeTime.nanoseconds))
    }

    /// struct statvfs from the server's statfs answer (df reads f_frsize * f_blocks).
    public static func fill(_ sv: inout statvfs, from m: VFSProtocol.MountStatistics) {
        sv = statvfs()
        let s = m.statistics
        sv.f_bsize = UInt(s.blockSize)
        sv.f_frsize = UInt(s.blockSize)
        sv.f_blocks = fsblkcnt_t(s.totalBlocks)
        sv.f_bfree = fsblkcnt_t(s.freeBlocks)
        sv.f_bavail = fsblkcnt_t(s.availableBlocks)
        sv.f_files = fsfilcnt_t(s.totalInodes)
        sv.f_ffree = fsfilcnt_t(s.freeInodes)
        sv.f_favail = fsfilcnt_t(s.freeInodes)
        sv.f_namemax = UInt(s.maxNameLength)
        sv.f_flag = m.isReadOnly ? UInt(ST_RDONLY) : 0
    }
}
