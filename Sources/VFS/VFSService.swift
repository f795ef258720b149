import SystemPackage
import VFSCore
#if canImport(Glibc)
import Glibc
#endif

/// A change to one timestamp (utimensat(2)'s UTIME_NOW / UTIME_OMIT).
public enum TimeChange: Equatable, Sendable {
    case omit
    case now
    case set(FileTime)
}

/// The VFS operations, independent of IPC: mounts, path resolution, permission checks with the
/// caller's credentials, a descriptor table per client (keyed by the kernel-verified pid), the
/// inode cache and the unlinked-inode lifetime rule. Not thread-safe: `VFSServer` serialises.
///
/// Errors are `FSError` with the errno Linux gives for the same call; checks run in Linux's
/// order where it matters to a caller (for example mkdir of an existing name is EEXIST even on a
/// read-only mount, because the lookup comes first).
public final class VFSService {
    public internal(set) var mounts = MountTable()
    public internal(set) var inodes = InodeCache()
    public private(set) var tables: [Int32: DescriptorTable] = [:]
    /// Set whenever a descriptor is opened or closed (the server checkpoints, then clears it).
    public var descriptorsChanged = false
    /// Mounts written to since the last periodic write-back.
    private var dirtyMounts: Set<Int> = []
    /// Makes a file system for MSG_VFS_MOUNT: (source, read-only) -> the mounted file system,
    /// its cache and a description. Set by the server; nil refuses mounts over IPC (ENOTSUP).
    public var mountProvider: ((String, Bool) throws(FSError) -> MountSources.Mounted)?
    let log: (String) -> Void

    public init(log: @escaping (String) -> Void = { _ in }) { self.log = log }

    // MARK: Helpers

    func mountRecord(of vnode: VNode) throws(FSError) -> Mount {
        guard let mount = mounts.mount(vnode.mount) else { throw FSError(.badFileDescriptor, "mount \(vnode.mount) is gone") }
        return mount
    }

    func fileSystem(of vnode: VNode) throws(FSError) -> FileSystem { try mountRecord(of: vnode).fileSystem }

    func attributes(_ vnode: VNode) throws(FSError) -> FileAttributes {
        let fs = try fileSystem(of: vnode)
        return try inodes.attributes(of: vnode) { () throws(FSError) in try fs.attributes(of: vnode.inode) }
    }

    private func requireWritable(_ vnode: VNode) throws(FSError) {
        let mount = try mountRecord(of: vnode)
        guard !mount.isReadOnly else { throw FSError(.readOnlyFileSystem, "\(mount.path) is mounted read-only") }
        dirtyMounts.insert(vnode.mount)
    }

    private func table(_ pid: Int32) -> DescriptorTable { tables[pid] ?? DescriptorTable() }

    public func openFile(_ descriptor: Int32, _ credentials: Credentials) throws(FSError) -> OpenFile {
        try table(credentials.pid).file(descriptor)
    }

    /// Owner and group for a new inode: the caller's, except that a setgid directory passes on
    /// its group (and, to subdirectories, the setgid bit), as in Linux's inode_init_owner.
    private func newOwner(in directory: FileAttributes, _ credentials: Credentials, isDirectory: Bool, mode: UInt32) -> (UInt32, UInt32, UInt32) {
        guard directory.permissions & Permissions.setGID != 0 else { return (credentials.uid, credentials.gid, mode) }
        return (credentials.uid, directory.gid, isDirectory ? mode | Permissions.setGID : mode)
    }

    /// After a name went away: evict at once if nothing holds the inode, else on the last close.
    private func droppedLink(_ vnode: VNode) {
        inodes.invalidate(vnode)
        guard let fs = try? fileSystem(of: vnode), let attributes = try? fs.attributes(of: vnode.inode),
              attributes.linkCount == 0 else { return }
        if inodes.openCount(vnode) == 0 {
            do { try fs.evict(vnode.inode) } catch { log("evict of \(vnode) failed: \(error)") }
        } else {
            inodes.markOrphaned(vnode)
        }
    }

    /// The parent and a plain name, or `dotError` for ".", ".." and "/" (each call names the
    /// errno Linux gives it).
    private func parentAndPlainName(_ path: [UInt8], _ credentials: Credentials, dotError: Errno) throws(FSError) -> (VNode, FileName, Bool) {
        let target = try resolveParent(path, credentials)
        guard let name = target.name, !name.isDotOrDotDot else { throw FSError(dotError, "path ends in /, . or ..") }
        return (target.directory, name, target.trailingSlash)
    }

    private func lookupIfPresent(_ directory: VNode, _ name: FileName, _ credentials: Credentials) throws(FSError) -> VNode? {
        do { return try step(from: directory, name, credentials) } catch where error.errno == .noSuchFileOrDirectory { return nil }
    }

    // MARK: Mounts

    /// Mounts what `MountSources` opened at `path`. A refused mount point releases it (unmounted,
    /// cache flushed), so its image is not left marked in use.
    public func mount(_ mounted: MountSources.Mounted, at path: String, readOnly: Bool = false) throws(FSError) {
        do {
            try mount(mounted.fileSystem, at: path, cache: mounted.cache, readOnly: readOnly, source: mounted.description)
        } catch {
            mounted.release()
            throw error
        }
    }

    /// Mounts `fileSystem` at `path` ("/" first, then directories of mounted file systems).
    @discardableResult
    public func mount(_ fileSystem: FileSystem, at path: String, cache: PageCache? = nil, readOnly: Bool = false,
                      source: String) throws(FSError) -> Mount {
        var covered: VNode?
        if mounts.root != nil {
            let vnode: VNode
            do {
                vnode = try resolve(Array(path.utf8), .root)
            } catch {
                throw FSError(error.errno, "mount point \(path): \(error.errno)")
            }
            guard try attributes(vnode).type == .directory else { throw FSError(.notDirectory, "mount point \(path) is not a directory") }
            guard vnode != (try rootVNode()) else { throw FSError(.resourceBusy, "/ is already mounted") }
            covered = vnode
        } else {
            guard path == "/" else { throw FSError(.noSuchFileOrDirectory, "mount the root file system first") }
        }
        let mount = try mounts.add(path: path, fileSystem: fileSystem, cache: cache, covering: covered,
                                   readOnly: readOnly, source: source)
        log("mounted \(fileSystem.typeName) at \(path) (\(source))\(mount.isReadOnly ? ", read-only" : "")")
        return mount
    }

    /// MSG_VFS_MOUNT: root only (EPERM), through `mountProvider`.
    public func mount(source: String, at path: [UInt8], readOnly: Bool, _ credentials: Credentials) throws(FSError) {
        guard credentials.isRoot else { throw FSError(.notPermitted, "mount by \(credentials)") }
        guard let provider = mountProvider else { throw FSError(.notSupported, "this server mounts nothing at run time") }
        try mount(try provider(source, readOnly), at: String(decoding: path, as: UTF8.self), readOnly: readOnly)
    }

    /// Unmounts the file system whose root `path` names: EBUSY while a descriptor is open on it
    /// or something is mounted below it; EINVAL if `path` is not a mount point. Orphans are
    /// evicted, the file system unmounted and its cache flushed.
    public func unmount(_ path: [UInt8], _ credentials: Credentials) throws(FSError) {
        guard credentials.isRoot else { throw FSError(.notPermitted, "unmount by \(credentials)") }
        let vnode = try resolve(path, credentials)
        guard let mount = mounts.mount(vnode.mount), vnode == mount.root, mount.coveredDirectory != nil else {
            throw FSError(.invalidArgument, "not a mount point")
        }
        let busy = tables.values.contains { table in table.files.values.contains { $0.vnode.mount == mount.id } }
        guard !busy else { throw FSError(.resourceBusy, "\(mount.path) has open files") }
        try mounts.remove(mount.id)
        try finish(mount)
    }

    private func finish(_ mount: Mount) throws(FSError) {
        for orphan in inodes.orphans(of: mount.id) { try? mount.fileSystem.evict(orphan.inode) }
        inodes.forget(mount: mount.id)
        dirtyMounts.remove(mount.id)
        try mount.fileSystem.unmount()
        // unmount writes the clean-state superblock after its sync: flush the cache once more.
        try mount.cache?.flush()
        log("unmounted \(mount.path) (\(mount.source))")
    }

    /// Closes every descriptor and unmounts everything, children first (server shutdown).
    /// Returns the failures (logged too).
    @discardableResult
    public func unmountAll() -> [String] {
        for pid in Array(tables.keys) { closeAll(pid) }
        var failures: [String] = []
        for mount in mounts.inMountOrder.reversed() {
            do {
                try mounts.remove(mount.id)
                try finish(mount)
            } catch {
                failures.append("\(mount.path): \(error)")
                log("unmount of \(mount.path) failed: \(error)")
            }
        }
        return failures
    }

    /// Periodic work: write back every mount written to since the last tick (the file system's
    /// sync writes its metadata into the page cache and flushes it), and close the descriptors
    /// of clients that no longer exist (kill(pid, 0) says ESRCH).
    public func tick() {
        for id in dirtyMounts.sorted() {
            guard let mount = mounts.mount(id) else { continue }
            do { try mount.fileSystem.sync() } catch { log("write-back of \(mount.path) failed: \(error)") }
        }
        dirtyMounts.removeAll()
        for pid in Array(tables.keys) where pid > 0 && kill(pid, 0) != 0 && errno == ESRCH {
            log("client pid \(pid) is gone: closing its \(tables[pid]?.count ?? 0) descriptors")
            closeAll(pid)
        }
    }

    // MARK: Descriptors

    public func open(_ path: [UInt8], flags rawFlags: UInt32, mode: UInt32, _ credentials: Credentials) throws(FSError) -> Int32 {
        try open(path, flags: rawFlags, mode: mode, credentials, danglingLinksFollowed: 0)
    }

    private func open(_ path: [UInt8], flags rawFlags: UInt32, mode: UInt32, _ credentials: Credentials,
                      danglingLinksFollowed: Int) throws(FSError) -> Int32 {
        let flags = OpenFlags(rawValue: rawFlags)
        guard flags.accessMode != 3 else { throw FSError(.invalidArgument, "access mode 3") }
        var vnode: VNode
        var created = false
        if flags.contains(.create) {
            let target = try resolveParent(path, credentials)
            guard let name = target.name, !name.isDotOrDotDot, !target.trailingSlash else {
                throw FSError(.isDirectory, "O_CREAT on a directory path")
            }
            if let existing = try lookupIfPresent(target.directory, name, credentials) {
                if flags.contains(.exclusive) { throw FSError(.fileExists, "\(name) exists (O_EXCL)") }
                vnode = existing
                if try attributes(existing).type == .symbolicLink {
                    if flags.contains(.noFollow) { throw FSError(.tooManySymbolicLinkLevels, "\(name) is a symlink (O_NOFOLLOW)") }
                    do {
                        vnode = try resolve(path, followFinal: true, credentials)
                    } catch where error.errno == .noSuchFileOrDirectory {
                        // A dangling symlink: Linux creates its target (open(2), O_CREAT). The
                        // target is taken from the link's directory, as resolution would.
                        guard danglingLinksFollowed < PathLimits.maxSymlinkFollows else {
                            throw FSError(.tooManySymbolicLinkLevels, "dangling symlinks chained")
                        }
                        let target = try fileSystem(of: existing).readSymbolicLink(existing.inode)
                        let directoryPart = path[..<(path.lastIndex(of: 0x2F).map { $0 + 1 } ?? 0)]
                        let next = target.first == 0x2F ? target : Array(directoryPart) + target
                        return try open(next, flags: rawFlags, mode: mode, credentials, danglingLinksFollowed: danglingLinksFollowed + 1)
                    }
                }
            } else {
                try requireWritable(target.directory)
                let directory = try attributes(target.directory)
                try Permissions.check(directory, [.write, .execute], credentials)
                let (uid, gid, permissions) = newOwner(in: directory, credentials, isDirectory: false, mode: mode & 0o7777)
                let inode = try fileSystem(of: target.directory).create(name, in: target.directory.inode, type: .regular,
                                                                        permissions: permissions, uid: uid, gid: gid)
                inodes.invalidate(target.directory)
                vnode = VNode(mount: target.directory.mount, inode: inode)
                created = true
            }
        } else {
            vnode = try resolve(path, followFinal: !flags.contains(.noFollow), credentials)
        }
        let attributes = try attributes(vnode)
        if attributes.type == .symbolicLink { throw FSError(.tooManySymbolicLinkLevels, "O_NOFOLLOW on a symlink") }
        if flags.contains(.directory) && attributes.type != .directory { throw FSError(.notDirectory, "O_DIRECTORY on a non-directory") }
        let wantsWrite = flags.writable || flags.contains(.truncate)
        if attributes.type == .directory && wantsWrite { throw FSError(.isDirectory, "directory opened for writing") }
        if !created {
            var access: Access = []
            if flags.readable { access.insert(.read) }
            if wantsWrite { access.insert(.write) }
            try Permissions.check(attributes, access, credentials)
            if wantsWrite { try requireWritable(vnode) }
            if flags.contains(.truncate) && attributes.type == .regular && attributes.size > 0 {
                try fileSystem(of: vnode).truncate(vnode.inode, to: 0)
                inodes.invalidate(vnode)
            }
        }
        var table = table(credentials.pid)
        let descriptor = try table.insert(OpenFile(vnode: vnode, flags: flags, isDirectory: attributes.type == .directory))
        tables[credentials.pid] = table
        inodes.opened(vnode)
        descriptorsChanged = true
        return descriptor
    }

    public func close(_ descriptor: Int32, _ credentials: Credentials) throws(FSError) {
        var table = table(credentials.pid)
        let file = try table.remove(descriptor)
        tables[credentials.pid] = table.isEmpty ? nil : table
        descriptorsChanged = true
        released(file)
    }

    private func released(_ file: OpenFile) {
        guard inodes.closed(file.vnode), let fs = try? fileSystem(of: file.vnode) else { return }
        do { try fs.evict(file.vnode.inode) } catch { log("evict of \(file.vnode) on last close failed: \(error)") }
    }

    /// Closes every descriptor of one client (it went away, or the server stops).
    public func closeAll(_ pid: Int32) {
        guard let table = tables.removeValue(forKey: pid) else { return }
        for file in table.files.values { released(file) }
        descriptorsChanged = true
    }

    public func descriptorCount(_ pid: Int32) -> Int { tables[pid]?.count ?? 0 }

    /// read(2) at the file position (advancing it), or pread(2) at `offset` when given.
    public func read(_ descriptor: Int32, into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64? = nil,
                     _ credentials: Credentials) throws(FSError) -> Int {
        let file = try openFile(descriptor, credentials)
        guard file.flags.readable else { throw FSError(.badFileDescriptor, "descriptor \(descriptor) not open for reading") }
        guard !file.isDirectory else { throw FSError(.isDirectory, "read of a directory") }
        let position = offset ?? file.offset
        let count = try fileSystem(of: file.vnode).read(file.vnode.inode, at: position, into: buffer)
        if offset == nil { file.offset = position + UInt64(count) }
        return count
    }

    /// write(2) at the file position (the end with O_APPEND), or pwrite(2) at `offset`.
    public func write(_ descriptor: Int32, from buffer: UnsafeRawBufferPointer, at offset: UInt64? = nil,
                      _ credentials: Credentials) throws(FSError) -> Int {
        let file = try openFile(descriptor, credentials)
        guard file.flags.writable else { throw FSError(.badFileDescriptor, "descriptor \(descriptor) not open for writing") }
        try requireWritable(file.vnode)
        var position = offset ?? file.offset
        // POSIX: with O_APPEND every write goes to the end, whatever the position (Linux does
        // this for pwrite too).
        if file.flags.contains(.append) { position = try fileSystem(of: file.vnode).attributes(of: file.vnode.inode).size }
        inodes.invalidate(file.vnode)
        let count = try fileSystem(of: file.vnode).write(file.vnode.inode, at: position, from: buffer)
        if offset == nil || file.flags.contains(.append) { file.offset = position + UInt64(count) }
        return count
    }

    public enum Whence: UInt64 { case set = 0, current = 1, end = 2 }

    public func seek(_ descriptor: Int32, offset: Int64, whence rawWhence: UInt64, _ credentials: Credentials) throws(FSError) -> UInt64 {
        let file = try openFile(descriptor, credentials)
        guard let whence = Whence(rawValue: rawWhence) else { throw FSError(.invalidArgument, "whence \(rawWhence)") }
        if file.isDirectory {
            // A directory's position is a readdir cookie: only rewinding means something.
            guard whence == .set, offset == 0 else { throw FSError(.invalidArgument, "directories seek only to 0") }
            file.offset = 0
            return 0
        }
        let base: Int64
        switch whence {
        case .set: base = 0
        case .current: base = Int64(clamping: file.offset)
        case .end: base = Int64(clamping: try attributes(file.vnode).size)
        }
        let (position, overflow) = base.addingReportingOverflow(offset)
        guard !overflow, position >= 0 else { throw FSError(.invalidArgument, "seek to a negative offset") }
        file.offset = UInt64(position)
        return file.offset
    }

    public func fsync(_ descriptor: Int32, _ credentials: Credentials) throws(FSError) {
        let file = try openFile(descriptor, credentials)
        try fileSystem(of: file.vnode).sync()
    }

    /// Entries of an open directory from its position on; calls `body` for each until it says
    /// stop (it did not take that entry); the position is left after the last one taken.
    /// Returns true at the end of the directory.
    public func readDirectory(_ descriptor: Int32, _ credentials: Credentials,
                              _ body: (DirectoryEntry) -> Bool) throws(FSError) -> Bool {
        let file = try openFile(descriptor, credentials)
        guard file.isDirectory else { throw FSError(.notDirectory, "readdir on a non-directory") }
        var reachedEnd = true
        var position = file.offset
        try fileSystem(of: file.vnode).readDirectory(file.vnode.inode, from: file.offset) { entry, next in
            guard body(entry) else {
                reachedEnd = false
                return false
            }
            position = next
            return true
        }
        file.offset = position
        return reachedEnd
    }

    // MARK: Attributes

    public func stat(_ path: [UInt8], followSymlinks: Bool = true, _ credentials: Credentials) throws(FSError) -> (FileAttributes, Int) {
        let vnode = try resolve(path, followFinal: followSymlinks, credentials)
        return (try attributes(vnode), vnode.mount)
    }

    public func fstat(_ descriptor: Int32, _ credentials: Credentials) throws(FSError) -> (FileAttributes, Int) {
        let file = try openFile(descriptor, credentials)
        return (try attributes(file.vnode), file.vnode.mount)
    }

    public func chmod(_ path: [UInt8], mode: UInt32, _ credentials: Credentials) throws(FSError) {
        let vnode = try resolve(path, credentials)
        let permissions = try Permissions.checkedMode(mode, for: try attributes(vnode), credentials)
        try requireWritable(vnode)
        inodes.store(try fileSystem(of: vnode).setAttributes(of: vnode.inode, AttributeChanges(permissions: permissions)), for: vnode)
    }

    /// chown(2) (lchown(2) without `followSymlinks`); nil leaves that id alone (-1 in C).
    public func chown(_ path: [UInt8], uid: UInt32?, gid: UInt32?, followSymlinks: Bool = true, _ credentials: Credentials) throws(FSError) {
        let vnode = try resolve(path, followFinal: followSymlinks, credentials)
        let attributes = try attributes(vnode)
        try Permissions.checkChown(uid: uid, gid: gid, for: attributes, credentials)
        try requireWritable(vnode)
        var changes = AttributeChanges(uid: uid, gid: gid)
        // Linux clears setuid, and setgid with group execute, when a regular file changes owner.
        if attributes.type == .regular && (uid != nil || gid != nil) && attributes.permissions & 0o6000 != 0 {
            var permissions = attributes.permissions & ~Permissions.setUID
            if permissions & 0o010 != 0 { permissions &= ~Permissions.setGID }
            changes.permissions = permissions
        }
        inodes.store(try fileSystem(of: vnode).setAttributes(of: vnode.inode, changes), for: vnode)
    }

    /// utimensat(2): explicit times need the owner or root (EPERM); setting both to now is also
    /// allowed to anyone with write permission (EACCES otherwise).
    public func utimes(_ path: [UInt8], access: TimeChange, modification: TimeChange, _ credentials: Credentials) throws(FSError) {
        let vnode = try resolve(path, credentials)
        let attributes = try attributes(vnode)
        if !credentials.isRoot && attributes.uid != credentials.uid {
            let onlyNow = access != .omit && modification != .omit
                && { if case .set = access { return false }; if case .set = modification { return false }; return true }()
            guard onlyNow else { throw FSError(.notPermitted, "utimes by \(credentials) of a file it does not own") }
            try Permissions.check(attributes, .write, credentials)
        }
        try requireWritable(vnode)
        let now = MemoryFileSystem.now()
        func value(_ change: TimeChange) -> FileTime? {
            switch change {
            case .omit: nil
            case .now: now
            case .set(let time): time
            }
        }
        let changes = AttributeChanges(accessTime: value(access), modificationTime: value(modification))
        inodes.store(try fileSystem(of: vnode).setAttributes(of: vnode.inode, changes), for: vnode)
    }

    /// truncate(2) by path.
    public func truncate(_ path: [UInt8], to size: UInt64, _ credentials: Credentials) throws(FSError) {
        let vnode = try resolve(path, credentials)
        let attributes = try attributes(vnode)
        if attributes.type == .directory { throw FSError(.isDirectory, "truncate of a directory") }
        guard attributes.type == .regular else { throw FSError(.invalidArgument, "truncate of a \(attributes.type)") }
        try Permissions.check(attributes, .write, credentials)
        try requireWritable(vnode)
        inodes.invalidate(vnode)
        try fileSystem(of: vnode).truncate(vnode.inode, to: size)
    }

    /// ftruncate(2): the descriptor must be open for writing (EINVAL otherwise, as on Linux).
    public func truncate(descriptor: Int32, to size: UInt64, _ credentials: Credentials) throws(FSError) {
        let file = try openFile(descriptor, credentials)
        guard file.flags.writable, !file.isDirectory else { throw FSError(.invalidArgument, "descriptor not open for writing") }
        try requireWritable(file.vnode)
        inodes.invalidate(file.vnode)
        try fileSystem(of: file.vnode).truncate(file.vnode.inode, to: size)
    }

    public func statfs(_ path: [UInt8], _ credentials: Credentials) throws(FSError) -> (FileSystemStatistics, Mount) {
        let vnode = try resolve(path, credentials)
        let mount = try mountRecord(of: vnode)
        return (try mount.fileSystem.statistics(), mount)
    }

    // MARK: Names

    public func mkdir(_ path: [UInt8], mode: UInt32, _ credentials: Credentials) throws(FSError) {
        let (directory, name, _) = try parentAndPlainName(path, credentials, dotError: .fileExists)
        if try lookupIfPresent(directory, name, credentials) != nil { throw FSError(.fileExists, "\(name) exists") }
        try requireWritable(directory)
        let attributes = try attributes(directory)
        try Permissions.check(attributes, [.write, .execute], credentials)
        let (uid, gid, permissions) = newOwner(in: attributes, credentials, isDirectory: true, mode: mode & 0o7777)
        _ = try fileSystem(of: directory).makeDirectory(name, in: directory.inode, permissions: permissions, uid: uid, gid: gid)
        inodes.invalidate(directory)
    }

    /// Checks common to removing `name` from `directory`: write and search permission on the
    /// directory, the sticky rule, and that `child` is not a mount point (EBUSY).
    private func checkRemoval(of child: VNode, from directory: VNode, _ credentials: Credentials) throws(FSError) {
        if let mount = mounts.mount(child.mount), child == mount.root { throw FSError(.resourceBusy, "a mount point") }
        try requireWritable(directory)
        let directoryAttributes = try attributes(directory)
        try Permissions.check(directoryAttributes, [.write, .execute], credentials)
        try Permissions.checkSticky(directory: directoryAttributes, entry: try attributes(child), credentials)
    }

    public func rmdir(_ path: [UInt8], _ credentials: Credentials) throws(FSError) {
        let target = try resolveParent(path, credentials)
        guard let name = target.name else { throw FSError(.resourceBusy, "rmdir of /") }
        if name == .dot { throw FSError(.invalidArgument, "rmdir of .") }
        if name == .dotDot { throw FSError(.directoryNotEmpty, "rmdir of ..") }
        let child = try step(from: target.directory, name, credentials)
        guard try attributes(child).type == .directory else { throw FSError(.notDirectory, "\(name) is not a directory") }
        try checkRemoval(of: child, from: target.directory, credentials)
        let inode = try fileSystem(of: target.directory).removeDirectory(name, in: target.directory.inode)
        inodes.invalidate(target.directory)
        droppedLink(VNode(mount: target.directory.mount, inode: inode))
    }

    public func unlink(_ path: [UInt8], _ credentials: Credentials) throws(FSError) {
        let (directory, name, trailingSlash) = try parentAndPlainName(path, credentials, dotError: .isDirectory)
        let child = try step(from: directory, name, credentials)
        let type = try attributes(child).type
        if type == .directory { throw FSError(.isDirectory, "unlink of directory \(name)") }
        if trailingSlash { throw FSError(.notDirectory, "trailing slash on a non-directory") }
        try checkRemoval(of: child, from: directory, credentials)
        let inode = try fileSystem(of: directory).unlink(name, in: directory.inode)
        inodes.invalidate(directory)
        droppedLink(VNode(mount: directory.mount, inode: inode))
    }

    public func rename(_ oldPath: [UInt8], to newPath: [UInt8], _ credentials: Credentials) throws(FSError) {
        let (oldDirectory, oldName, oldSlash) = try parentAndPlainName(oldPath, credentials, dotError: .resourceBusy)
        let (newDirectory, newName, newSlash) = try parentAndPlainName(newPath, credentials, dotError: .resourceBusy)
        let source = try step(from: oldDirectory, oldName, credentials)
        let sourceAttributes = try attributes(source)
        if (oldSlash || newSlash) && sourceAttributes.type != .directory { throw FSError(.notDirectory, "trailing slash on a non-directory") }
        guard oldDirectory.mount == newDirectory.mount else { throw FSError(.improperLink, "rename across file systems") }
        try checkRemoval(of: source, from: oldDirectory, credentials)
        try requireWritable(newDirectory)
        try Permissions.check(try attributes(newDirectory), [.write, .execute], credentials)
        if let existing = try lookupIfPresent(newDirectory, newName, credentials), existing != source {
            try checkRemoval(of: existing, from: newDirectory, credentials)
        }
        // Moving a directory elsewhere rewrites its "..": Linux wants write permission on it.
        if sourceAttributes.type == .directory && oldDirectory != newDirectory {
            try Permissions.check(sourceAttributes, .write, credentials)
        }
        let replaced = try fileSystem(of: oldDirectory).rename(oldName, in: oldDirectory.inode, to: newName, in: newDirectory.inode)
        inodes.invalidate(oldDirectory)
        inodes.invalidate(newDirectory)
        inodes.invalidate(source)
        if let replaced { droppedLink(VNode(mount: newDirectory.mount, inode: replaced)) }
    }

    public func symlink(target: [UInt8], at path: [UInt8], _ credentials: Credentials) throws(FSError) {
        guard !target.isEmpty else { throw FSError(.noSuchFileOrDirectory, "empty symlink target") }
        guard target.count < PathLimits.maxPathLength else { throw FSError(.fileNameTooLong, "symlink target too long") }
        guard !target.contains(0) else { throw FSError(.invalidArgument, "symlink target holds a NUL byte") }
        let (directory, name, _) = try parentAndPlainName(path, credentials, dotError: .fileExists)
        if try lookupIfPresent(directory, name, credentials) != nil { throw FSError(.fileExists, "\(name) exists") }
        try requireWritable(directory)
        try Permissions.check(try attributes(directory), [.write, .execute], credentials)
        _ = try fileSystem(of: directory).makeSymbolicLink(name, in: directory.inode, target: target,
                                                           uid: credentials.uid, gid: credentials.gid)
        inodes.invalidate(directory)
    }

    public func readlink(_ path: [UInt8], _ credentials: Credentials) throws(FSError) -> [UInt8] {
        let vnode = try resolve(path, followFinal: false, credentials)
        guard try attributes(vnode).type == .symbolicLink else { throw FSError(.invalidArgument, "not a symlink") }
        return try fileSystem(of: vnode).readSymbolicLink(vnode.inode)
    }

    /// link(2): does not follow a symlink as the old path (Linux's default for linkat).
    public func link(_ oldPath: [UInt8], to newPath: [UInt8], _ credentials: Credentials) throws(FSError) {
        let source = try resolve(oldPath, followFinal: false, credentials)
        if try attributes(source).type == .directory { throw FSError(.notPermitted, "hard link to a directory") }
        let (directory, name, _) = try parentAndPlainName(newPath, credentials, dotError: .fileExists)
        if try lookupIfPresent(directory, name, credentials) != nil { throw FSError(.fileExists, "\(name) exists") }
        guard source.mount == directory.mount else { throw FSError(.improperLink, "link across file systems") }
        try requireWritable(directory)
        try Permissions.check(try attributes(directory), [.write, .execute], credentials)
        try fileSystem(of: directory).link(source.inode, as: name, in: directory.inode)
        inodes.invalidate(directory)
        inodes.invalidate(source)
    }

    // MARK: Checkpoint

    /// Every client's descriptors, for `DescriptorCheckpoint.encode`.
    public func checkpointRecords() -> [DescriptorCheckpoint.Record] {
        var records: [DescriptorCheckpoint.Record] = []
        for (pid, table) in tables.sorted(by: { $0.key < $1.key }) {
            for (descriptor, file) in table.files.sorted(by: { $0.key < $1.key }) {
                guard let mount = mounts.mount(file.vnode.mount) else { continue }
                records.append(.init(pid: pid, descriptor: descriptor, flags: file.flags.rawValue, isDirectory: file.isDirectory,
                                     offset: file.offset, inode: file.vnode.inode, mountPath: mount.path))
            }
        }
        return records
    }

    /// Puts checkpointed descriptors back (after a restart, before serving). A record whose
    /// mount or inode is gone is dropped. Returns (restored, dropped).
    @discardableResult
    public func restore(_ records: [DescriptorCheckpoint.Record]) -> (Int, Int) {
        var restored = 0, dropped = 0
        for record in records {
            guard let mount = mounts.mounts.values.first(where: { $0.path == record.mountPath }),
                  let attributes = try? mount.fileSystem.attributes(of: record.inode), attributes.linkCount > 0 || attributes.type == .regular
            else {
                dropped += 1
                continue
            }
            let vnode = VNode(mount: mount.id, inode: record.inode)
            var table = tables[record.pid] ?? DescriptorTable()
            table.restore(OpenFile(vnode: vnode, flags: OpenFlags(rawValue: record.flags), isDirectory: record.isDirectory,
                                   offset: record.offset), as: record.descriptor)
            tables[record.pid] = table
            inodes.opened(vnode)
            if attributes.linkCount == 0 { inodes.markOrphaned(vnode) }
            restored += 1
        }
        return (restored, dropped)
    }
}
