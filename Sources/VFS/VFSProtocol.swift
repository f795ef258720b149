import IPC
import VFSCore

/// The VFS protocol `vfs_server` speaks on `RUNTIME_DIR/NAME.sock` (IPC messages 0x0100–0x0116,
/// `MessageType.vfs…`). The caller's pid, uid and gid are the header's `sender_*` fields, which
/// the IPC layer fills from SO_PEERCRED: a request cannot name whose permissions it runs with.
/// Every reply carries an errno-style status (`IPCStatus`, Linux's numbers).
///
/// Paths travel inline as the request's data (bytes, no NUL terminator, < 4096 bytes). Requests
/// with two paths put both in the data and the first one's length in param3. File data travels
/// inline (at most 64 KiB each way) or through a shared-memory region the client shared earlier
/// (`IPCClient.share`; a read's region must be writable).
///
/// | Message          | param1              | param2            | param3               | data (request)      | reply on success                                    |
/// |------------------|---------------------|-------------------|----------------------|---------------------|-----------------------------------------------------|
/// | MSG_VFS_OPEN     | open flags (Linux)  | mode              | -                    | path                | param1 = descriptor                                 |
/// | MSG_VFS_READ     | descriptor          | byte count        | offset, or ~0 = file position | none (reply inline, ≤ 64 KiB) or a writable shared region | param1 = bytes read; inline: payload = the bytes |
/// | MSG_VFS_WRITE    | descriptor          | -                 | offset, or ~0 = file position | the bytes, inline or shared | param1 = bytes written                       |
/// | MSG_VFS_CLOSE    | descriptor          | -                 | -                    | none                | ok                                                  |
/// | MSG_VFS_STAT     | 1 = do not follow a final symlink (lstat) | - | -           | path                | payload = attributes (80 bytes, `encode(_:device:)`) |
/// | MSG_VFS_FSTAT    | descriptor          | -                 | -                    | none                | payload = attributes                                |
/// | MSG_VFS_MKDIR    | mode                | -                 | -                    | path                | ok                                                  |
/// | MSG_VFS_RMDIR    | -                   | -                 | -                    | path                | ok                                                  |
/// | MSG_VFS_UNLINK   | -                   | -                 | -                    | path                | ok                                                  |
/// | MSG_VFS_READDIR  | descriptor (of an open directory) | max entries (0 = as many as fit) | - | none | param1 = entries, param2 = 1 at the end; payload = entries: inode u64, type u8, name length u8, name |
/// | MSG_VFS_RENAME   | -                   | -                 | old path length      | old path + new path | ok                                                  |
/// | MSG_VFS_TRUNCATE | new size            | 0 = by path, 1 = by descriptor | descriptor | path (by path)    | ok                                                  |
/// | MSG_VFS_FSYNC    | descriptor          | -                 | -                    | none                | ok (the file system's data and metadata are on stable storage) |
/// | MSG_VFS_LSEEK    | descriptor          | offset (i64 bits) | whence (0 SET, 1 CUR, 2 END) | none        | param1 = new position                               |
/// | MSG_VFS_CHMOD    | mode                | -                 | -                    | path                | ok                                                  |
/// | MSG_VFS_CHOWN    | uid, or 0xFFFFFFFF = unchanged | gid, or 0xFFFFFFFF | 1 = do not follow (lchown) | path | ok                               |
/// | MSG_VFS_UTIMES   | atime ns since the epoch, ~0 = omit, ~1 = now | mtime, same | -   | path                | ok                                                  |
/// | MSG_VFS_SYMLINK  | -                   | -                 | target length        | target + link path  | ok                                                  |
/// | MSG_VFS_READLINK | -                   | -                 | -                    | path                | payload = target                                    |
/// | MSG_VFS_LINK     | -                   | -                 | old path length      | old path + new path | ok                                                  |
/// | MSG_VFS_STATFS   | -                   | -                 | -                    | path                | payload = statistics (80 bytes) + mount point path  |
/// | MSG_VFS_MOUNT    | 1 = read-only       | -                 | mount point length   | mount point + source ("tmpfs" or an image path on the server) | ok (root only) |
/// | MSG_VFS_UNMOUNT  | -                   | -                 | -                    | mount point         | ok (root only)                                      |
///
/// Errors: the errno Linux gives for the same call (ENOENT, EEXIST, ENOTEMPTY, EACCES, EPERM,
/// EISDIR, ENOTDIR, ENAMETOOLONG, ELOOP, ENOSPC, EROFS, EXDEV, EBUSY, EBADF, EMFILE...), plus:
/// EBADMSG for a request whose data does not hold what the table says (a two-path length past
/// the data, a path in shared memory); EINVAL for impossible parameters (a read over 64 KiB
/// without a shared region, whence > 2, a path with a NUL byte); ENOSYS for other types.
///
/// Descriptors belong to the client's pid and survive a restart of the server (checkpointed;
/// a client reconnecting from the same pid finds them).
public enum VFSProtocol {
    public static let maxInlineData = Message.maxInlinePayload
    /// READ / WRITE param3: use (and advance) the file position.
    public static let currentPosition = UInt64.max
    /// STAT param1, CHOWN param3.
    public static let noFollow: UInt64 = 1
    /// UTIMES params.
    public static let timeOmit = UInt64.max
    public static let timeNow = UInt64.max - 1
    /// CHOWN params.
    public static let idUnchanged = UInt64(UInt32.max)
    /// MOUNT param1.
    public static let mountReadOnly: UInt64 = 1
    public static let attributesSize = 80
    public static let statisticsSize = 80

    // MARK: Attributes (stat)

    /// inode u64 @0, mode u32 @8, links u32 @12, uid u32 @16, gid u32 @20, size u64 @24,
    /// blocks512 u64 @32, atime s i64 @40, atime ns u32 @48, mtime ns u32 @52, mtime s i64 @56,
    /// ctime s i64 @64, ctime ns u32 @72, device (mount id) u32 @76.
    public static func encode(_ a: FileAttributes, device: Int, into buffer: UnsafeMutableRawBufferPointer) {
        buffer.storeBytes(of: a.inode.littleEndian, toByteOffset: 0, as: UInt64.self)
        buffer.storeBytes(of: a.mode.littleEndian, toByteOffset: 8, as: UInt32.self)
        buffer.storeBytes(of: a.linkCount.littleEndian, toByteOffset: 12, as: UInt32.self)
        buffer.storeBytes(of: a.uid.littleEndian, toByteOffset: 16, as: UInt32.self)
        buffer.storeBytes(of: a.gid.littleEndian, toByteOffset: 20, as: UInt32.self)
        buffer.storeBytes(of: a.size.littleEndian, toByteOffset: 24, as: UInt64.self)
        buffer.storeBytes(of: a.blocks512.littleEndian, toByteOffset: 32, as: UInt64.self)
        buffer.storeBytes(of: a.accessTime.seconds.littleEndian, toByteOffset: 40, as: Int64.self)
        buffer.storeBytes(of: a.accessTime.nanoseconds.littleEndian, toByteOffset: 48, as: UInt32.self)
        buffer.storeBytes(of: a.modificationTime.nanoseconds.littleEndian, toByteOffset: 52, as: UInt32.self)
        buffer.storeBytes(of: a.modificationTime.seconds.littleEndian, toByteOffset: 56, as: Int64.self)
        buffer.storeBytes(of: a.changeTime.seconds.littleEndian, toByteOffset: 64, as: Int64.self)
        buffer.storeBytes(of: a.changeTime.nanoseconds.littleEndian, toByteOffset: 72, as: UInt32.self)
        buffer.storeBytes(of: UInt32(truncatingIfNeeded: device).littleEndian, toByteOffset: 76, as: UInt32.self)
    }

    public static func decodeAttributes(_ bytes: UnsafeRawBufferPointer) -> (FileAttributes, device: Int)? {
        guard bytes.count >= attributesSize else { return nil }
        func u32(_ at: Int) -> UInt32 { UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: at, as: UInt32.self)) }
        func u64(_ at: Int) -> UInt64 { UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: at, as: UInt64.self)) }
        let mode = u32(8)
        let attributes = FileAttributes(
            inode: u64(0), type: VFSCore.FileType(modeBits: mode), permissions: mode & 0o7777, linkCount: u32(12), uid: u32(16),
            gid: u32(20), size: u64(24), blocks512: u64(32),
            accessTime: FileTime(seconds: Int64(bitPattern: u64(40)), nanoseconds: u32(48)),
            modificationTime: FileTime(seconds: Int64(bitPattern: u64(56)), nanoseconds: u32(52)),
            changeTime: FileTime(seconds: Int64(bitPattern: u64(64)), nanoseconds: u32(72)))
        return (attributes, Int(u32(76)))
    }

    // MARK: Statistics (statfs)

    /// What statfs answers, with the mount it describes.
    public struct MountStatistics: Equatable, Sendable {
        public var statistics: FileSystemStatistics
        public var typeName: String
        public var isReadOnly: Bool
        public var mountPoint: String
    }

    /// blockSize, totalBlocks, freeBlocks, availableBlocks, totalInodes, freeInodes,
    /// maxNameLength as u64 @0...48, flags u64 @56 (1 read-only), type name @64 (16 bytes,
    /// NUL-padded), then the mount point path. Returns the byte count.
    public static func encode(_ s: MountStatistics, into buffer: UnsafeMutableRawBufferPointer) -> Int {
        let values: [UInt64] = [UInt64(s.statistics.blockSize), s.statistics.totalBlocks, s.statistics.freeBlocks,
                                s.statistics.availableBlocks, s.statistics.totalInodes, s.statistics.freeInodes,
                                UInt64(s.statistics.maxNameLength), s.isReadOnly ? 1 : 0]
        for (index, value) in values.enumerated() { buffer.storeBytes(of: value.littleEndian, toByteOffset: index * 8, as: UInt64.self) }
        let name = Array(s.typeName.utf8.prefix(16))
        for index in 0..<16 { buffer[64 + index] = index < name.count ? name[index] : 0 }
        let path = Array(s.mountPoint.utf8.prefix(buffer.count - statisticsSize))
        for (index, byte) in path.enumerated() { buffer[statisticsSize + index] = byte }
        return statisticsSize + path.count
    }

    public static func decodeStatistics(_ bytes: UnsafeRawBufferPointer) -> MountStatistics? {
        guard bytes.count >= statisticsSize else { return nil }
        func u64(_ index: Int) -> UInt64 { UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: index * 8, as: UInt64.self)) }
        let statistics = FileSystemStatistics(blockSize: Int(u64(0)), totalBlocks: u64(1), freeBlocks: u64(2), availableBlocks: u64(3),
                                              totalInodes: u64(4), freeInodes: u64(5), maxNameLength: Int(u64(6)))
        let name = Array(bytes[64..<80]).prefix { $0 != 0 }
        return MountStatistics(statistics: statistics, typeName: String(decoding: name, as: UTF8.self), isReadOnly: u64(7) & 1 != 0,
                               mountPoint: String(decoding: bytes[statisticsSize...], as: UTF8.self))
    }

    // MARK: Directory entries (readdir)

    /// Packs one entry at `offset`; nil if it does not fit.
    public static func pack(_ entry: DirectoryEntry, into buffer: UnsafeMutableRawBufferPointer, at offset: Int) -> Int? {
        let size = 10 + entry.name.bytes.count
        guard offset + size <= buffer.count else { return nil }
        buffer.storeBytes(of: entry.inode.littleEndian, toByteOffset: offset, as: UInt64.self)
        buffer[offset + 8] = entry.type.rawValue
        buffer[offset + 9] = UInt8(entry.name.bytes.count)
        for (index, byte) in entry.name.bytes.enumerated() { buffer[offset + 10 + index] = byte }
        return offset + size
    }

    /// The entries of a readdir reply; nil if the payload is malformed.
    public static func unpackEntries(_ bytes: UnsafeRawBufferPointer) -> [DirectoryEntry]? {
        var entries: [DirectoryEntry] = []
        var offset = 0
        while offset < bytes.count {
            guard offset + 10 <= bytes.count else { return nil }
            let inode = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
            let type = VFSCore.FileType(rawValue: bytes[offset + 8]) ?? .unknown
            let length = Int(bytes[offset + 9])
            guard offset + 10 + length <= bytes.count, let name = try? FileName(validating: bytes[(offset + 10)..<(offset + 10 + length)])
            else { return nil }
            entries.append(DirectoryEntry(name: name, inode: inode, type: type))
            offset += 10 + length
        }
        return entries
    }

    // MARK: Times

    public static func encode(_ change: TimeChange) -> UInt64 {
        switch change {
        case .omit: timeOmit
        case .now: timeNow
        case .set(let time): UInt64(bitPattern: time.seconds &* 1_000_000_000 &+ Int64(time.nanoseconds))
        }
    }

    public static func decodeTime(_ value: UInt64) -> TimeChange {
        if value == timeOmit { return .omit }
        if value == timeNow { return .now }
        do {
            let nanoseconds = Int64(bitPattern: value)
            let (seconds, remainder) = nanoseconds.quotientAndRemainder(dividingBy: 1_000_000_000)
            return remainder >= 0 ? .set(FileTime(seconds: seconds, nanoseconds: UInt32(remainder)))
                : .set(FileTime(seconds: seconds - 1, nanoseconds: UInt32(remainder + 1_000_000_000)))
        }
    }
}
