/// An inode number as the file system names it (ext2: 1-based, 32 bits; wider file systems fit).
public typealias InodeNumber = UInt64

/// The kind of a file, as in the top bits of st_mode (S_IFMT).
public enum FileType: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case unknown = 0
    case regular = 1
    case directory = 2
    case characterDevice = 3
    case blockDevice = 4
    case fifo = 5
    case socket = 6
    case symbolicLink = 7

    /// The S_IFMT bits of st_mode.
    public var modeBits: UInt32 {
        switch self {
        case .unknown: 0
        case .fifo: 0o010000
        case .characterDevice: 0o020000
        case .directory: 0o040000
        case .blockDevice: 0o060000
        case .regular: 0o100000
        case .symbolicLink: 0o120000
        case .socket: 0o140000
        }
    }

    public init(modeBits mode: UInt32) {
        self = FileType.allCases.first { $0 != .unknown && $0.modeBits == mode & 0o170000 } ?? .unknown
    }

    public var description: String {
        switch self {
        case .unknown: "unknown"
        case .regular: "regular file"
        case .directory: "directory"
        case .characterDevice: "character device"
        case .blockDevice: "block device"
        case .fifo: "fifo"
        case .socket: "socket"
        case .symbolicLink: "symbolic link"
        }
    }
}

/// A point in time as file systems keep it.
public struct FileTime: Hashable, Sendable, Comparable {
    public var seconds: Int64
    public var nanoseconds: UInt32
    public init(seconds: Int64, nanoseconds: UInt32 = 0) {
        self.seconds = seconds
        self.nanoseconds = nanoseconds
    }
    public static func < (a: FileTime, b: FileTime) -> Bool {
        (a.seconds, a.nanoseconds) < (b.seconds, b.nanoseconds)
    }
}

/// What stat(2) reports about one inode.
public struct FileAttributes: Hashable, Sendable {
    public var inode: InodeNumber
    public var type: FileType
    /// Permission bits only (0o7777: setuid, setgid, sticky, rwx for user, group, other).
    public var permissions: UInt32
    public var linkCount: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var size: UInt64
    /// Space used, in 512-byte units (st_blocks).
    public var blocks512: UInt64
    public var accessTime: FileTime
    public var modificationTime: FileTime
    public var changeTime: FileTime

    public init(inode: InodeNumber, type: FileType, permissions: UInt32, linkCount: UInt32, uid: UInt32, gid: UInt32,
                size: UInt64, blocks512: UInt64, accessTime: FileTime, modificationTime: FileTime, changeTime: FileTime) {
        self.inode = inode
        self.type = type
        self.permissions = permissions
        self.linkCount = linkCount
        self.uid = uid
        self.gid = gid
        self.size = size
        self.blocks512 = blocks512
        self.accessTime = accessTime
        self.modificationTime = modificationTime
        self.changeTime = changeTime
    }

    /// st_mode: type bits and permission bits.
    public var mode: UInt32 { type.modeBits | (permissions & 0o7777) }
}

/// A change to an inode's attributes (chmod, chown, utimes); nil fields are left alone. The file
/// system sets ctime itself on any change.
public struct AttributeChanges: Sendable, Equatable {
    public var permissions: UInt32?
    public var uid: UInt32?
    public var gid: UInt32?
    public var accessTime: FileTime?
    public var modificationTime: FileTime?
    public init(permissions: UInt32? = nil, uid: UInt32? = nil, gid: UInt32? = nil,
                accessTime: FileTime? = nil, modificationTime: FileTime? = nil) {
        self.permissions = permissions
        self.uid = uid
        self.gid = gid
        self.accessTime = accessTime
        self.modificationTime = modificationTime
    }
}

/// One directory entry as readdir returns it.
public struct DirectoryEntry: Hashable, Sendable {
    public var name: FileName
    public var inode: InodeNumber
    /// From the entry's file-type byte where the file system keeps one, else `.unknown`.
    public var type: FileType
    public init(name: FileName, inode: InodeNumber, type: FileType) {
        self.name = name
        self.inode = inode
        self.type = type
    }
}

/// What statfs(2) reports.
public struct FileSystemStatistics: Hashable, Sendable {
    public var blockSize: Int
    public var totalBlocks: UInt64
    public var freeBlocks: UInt64
    /// Free blocks an unprivileged user may use (free minus the reserved blocks).
    public var availableBlocks: UInt64
    public var totalInodes: UInt64
    public var freeInodes: UInt64
    public var maxNameLength: Int
    public init(blockSize: Int, totalBlocks: UInt64, freeBlocks: UInt64, availableBlocks: UInt64,
                totalInodes: UInt64, freeInodes: UInt64, maxNameLength: Int) {
        self.blockSize = blockSize
        self.totalBlocks = totalBlocks
        self.freeBlocks = freeBlocks
        self.availableBlocks = availableBlocks
        self.totalInodes = totalInodes
        self.freeInodes = freeInodes
        self.maxNameLength = maxNameLength
    }
}
