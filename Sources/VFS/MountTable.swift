import SystemPackage
import VFSCore

/// An inode in the VFS's namespace: which mounted file system, and its inode number there.
public struct VNode: Hashable, Sendable, CustomStringConvertible {
    public var mount: Int
    public var inode: InodeNumber
    public init(mount: Int, inode: InodeNumber) {
        self.mount = mount
        self.inode = inode
    }
    public var description: String { "\(mount):\(inode)" }
}

/// One mounted file system.
public final class Mount {
    public let id: Int
    /// Where it is mounted, as an absolute path ("/" for the root file system).
    public let path: String
    public let fileSystem: FileSystem
    /// The page cache under it, when it lives on a block store (nil for tmpfs).
    public let cache: PageCache?
    /// The directory it covers in the parent mount (nil for the root mount).
    public let coveredDirectory: VNode?
    /// Mounted read-only by request (the file system may also be read-only by itself).
    public let readOnlyRequested: Bool
    /// A short text for logs and df: "ext2 on image /srv/disk.img".
    public let source: String

    init(id: Int, path: String, fileSystem: FileSystem, cache: PageCache?, coveredDirectory: VNode?, readOnly: Bool, source: String) {
        self.id = id
        self.path = path
        self.fileSystem = fileSystem
        self.cache = cache
        self.coveredDirectory = coveredDirectory
        self.readOnlyRequested = readOnly
        self.source = source
    }

    public var isReadOnly: Bool { readOnlyRequested || fileSystem.isReadOnly }
    public var root: VNode { VNode(mount: id, inode: fileSystem.rootInode) }
}

/// The mounts the VFS knows, and the two maps path resolution needs: from a covered directory
/// to the mount on top of it (walking down), and from a mount's root to the directory it covers
/// (walking `..` up across the mount point, as Linux's follow_dotdot does).
public struct MountTable {
    public private(set) var mounts: [Int: Mount] = [:]
    private var coveredBy: [VNode: Int] = [:]
    private var nextID = 0
    public private(set) var rootMountID: Int?

    public init() {}

    public var root: VNode? { rootMountID.flatMap { mounts[$0]?.root } }

    public func mount(_ id: Int) -> Mount? { mounts[id] }

    /// The mount sitting on `vnode`, if it is a mount point (the topmost one if stacked).
    public func mounted(on vnode: VNode) -> Mount? {
        var current = vnode
        var found: Mount?
        while let id = coveredBy[current], let mount = mounts[id] {
            found = mount
            current = mount.root
        }
        return found
    }

    /// Adds a mount: the first is the root; later ones need the directory they cover.
    public mutating func add(path: String, fileSystem: FileSystem, cache: PageCache?, covering directory: VNode?,
                             readOnly: Bool, source: String) throws(FSError) -> Mount {
        if let directory {
            guard coveredBy[directory] == nil else { throw FSError(.resourceBusy, "\(path) is already a mount point") }
        } else {
            guard rootMountID == nil else { throw FSError(.resourceBusy, "a root file system is already mounted") }
        }
        let mount = Mount(id: nextID, path: path, fileSystem: fileSystem, cache: cache, coveredDirectory: directory,
                          readOnly: readOnly, source: source)
        nextID += 1
        mounts[mount.id] = mount
        if let directory { coveredBy[directory] = mount.id } else { rootMountID = mount.id }
        return mount
    }

    /// Removes a mount from the table (the caller has flushed and unmounted it). EBUSY while
    /// another mount sits on one of its directories.
    public mutating func remove(_ id: Int) throws(FSError) {
        guard let mount = mounts[id] else { throw FSError(.invalidArgument, "mount \(id) not mounted") }
        if coveredBy.keys.contains(where: { $0.mount == id }) {
            throw FSError(.resourceBusy, "\(mount.path) has mounts below it")
        }
        if let covered = mount.coveredDirectory { coveredBy[covered] = nil }
        if rootMountID == id { rootMountID = nil }
        mounts[id] = nil
    }

    /// Mounts, children after their parents (the order to mount), reversed to unmount.
    public var inMountOrder: [Mount] { mounts.values.sorted { $0.id < $1.id } }
}
