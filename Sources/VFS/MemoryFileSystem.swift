import SystemPackage
import VFSCore
#if canImport(Glibc)
import Glibc
#endif

/// A file system in memory, like Linux's tmpfs: mounted with `vfs_server --tmpfs /tmp`, and the
/// fast test double for everything above `FileSystem`. It follows the `FileSystem` contract to
/// the letter (link counts, the evict rule, rename's replace and loop rules), so tests that pass
/// on it exercise the VFS's own logic rather than a lenient stand-in.
///
/// Capacity: `maxBytes` of file data and `maxInodes` inodes; beyond them, ENOSPC.
public final class MemoryFileSystem: FileSystem {
    public let typeName = "tmpfs"
    public let rootInode: InodeNumber = 1
    public let isReadOnly: Bool
    public let maxBytes: UInt64
    public let maxInodes: UInt64
    public private(set) var usedBytes: UInt64 = 0
    /// Inodes `evict` freed (tests check the unlink-while-open rule with it).
    public private(set) var evictedInodes: [InodeNumber] = []
    public private(set) var syncCount = 0
    public private(set) var isUnmounted = false

    final class Node {
        var attributes: FileAttributes
        var data: [UInt8] = []
        var target: [UInt8] = []
        /// Directory entries in creation order (readdir order); "." and ".." are implicit.
        var names: [FileName] = []
        var entries: [FileName: InodeNumber] = [:]
        var parent: InodeNumber
        init(attributes: FileAttributes, parent: InodeNumber) {
            self.attributes = attributes
            self.parent = parent
        }
    }

    private var nodes: [InodeNumber: Node] = [:]
    private var nextInode: InodeNumber = 2

    public init(maxBytes: UInt64 = 64 << 20, maxInodes: UInt64 = 4096, readOnly: Bool = false,
                rootPermissions: UInt32 = 0o1777, rootUID: UInt32 = 0, rootGID: UInt32 = 0) {
        self.maxBytes = maxBytes
        self.maxInodes = maxInodes
        self.isReadOnly = readOnly
        let now = Self.now()
        nodes[1] = Node(attributes: FileAttributes(inode: 1, type: .directory, permissions: rootPermissions, linkCount: 2,
                                                   uid: rootUID, gid: rootGID, size: 0, blocks512: 0, accessTime: now,
                                                   modificationTime: now, changeTime: now), parent: 1)
    }

    static func now() -> FileTime {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return FileTime(seconds: Int64(spec.tv_sec), nanoseconds: UInt32(spec.tv_nsec))
    }

    private func node(_ inode: InodeNumber) throws(FSError) -> Node {
        guard let node = nodes[inode] else { throw FSError(.noSuchFileOrDirectory, "inode \(inode) does not exist") }
        return node
    }

    private func directory(_ inode: InodeNumber) throws(FSError) -> Node {
        let node = try node(inode)
        guard node.attributes.type == .directory else { throw FSError(.notDirectory, "inode \(inode) is not a directory") }
        return node
    }

    private func writable() throws(FSError) {
        guard !isReadOnly else { throw FSError(.readOnlyFileSystem, "tmpfs mounted read-only") }
    }

    private func touch(_ node: Node, modified: Bool = true) {
        let now = Self.now()
        if modified { node.attributes.modificationTime = now }
        node.attributes.changeTime = now
    }

    public func attributes(of inode: InodeNumber) throws(FSError) -> FileAttributes { try node(inode).attributes }

    public func setAttributes(of inode: InodeNumber, _ changes: AttributeChanges) throws(FSError) -> FileAttributes {
        try writable()
        let node = try node(inode)
        if let permissions = changes.permissions { node.attributes.permissions = permissions & 0o7777 }
        if let uid = changes.uid { node.attributes.uid = uid }
        if let gid = changes.gid { node.attributes.gid = gid }
        if let time = changes.accessTime { node.attributes.accessTime = time }
        if let time = changes.modificationTime { node.attributes.modificationTime = time }
        node.attributes.changeTime = Self.now()
        return node.attributes
    }

    public func lookup(_ name: FileName, in directory: InodeNumber) throws(FSError) -> InodeNumber {
        let dir = try self.directory(directory)
        if name == .dot { return directory }
        if name == .dotDot { return dir.parent }
        guard let inode = dir.entries[name] else { throw FSError(.noSuchFileOrDirectory, "\(name) not in inode \(directory)") }
        return inode
    }

    public func readDirectory(_ directory: InodeNumber, from cookie: UInt64,
                              _ body: (DirectoryEntry, UInt64) -> Bool) throws(FSError) {
        let dir = try self.directory(directory)
        var position = cookie
        while true {
            let entry: DirectoryEntry
            switch position {
            case 0: entry = DirectoryEntry(name: .dot, inode: directory, type: .directory)
            case 1: entry = DirectoryEntry(name: .dotDot, inode: dir.parent, type: .directory)
            default:
                let index = Int(position - 2)
                guard index < dir.names.count else { return }
                let name = dir.names[index]
                let inode = dir.entries[name]!
                entry = DirectoryEntry(name: name, inode: inode, type: nodes[inode]?.attributes.type ?? .unknown)
            }
            position += 1
            if !body(entry, position) { return }
        }
    }

    public func read(_ inode: InodeNumber, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(FSError) -> Int {
        let node = try node(inode)
        if node.attributes.type == .directory { throw FSError(.isDirectory, "read of directory \(inode)") }
        guard offset < UInt64(node.data.count), buffer.count > 0 else { return 0 }
        let count = min(buffer.count, node.data.count - Int(offset))
        node.data.withUnsafeBytes { source in
            buffer.baseAddress!.copyMemory(from: source.baseAddress! + Int(offset), byteCount: count)
        }
        return count
    }

    public func write(_ inode: InodeNumber, at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(FSError) -> Int {
        try writable()
        let node = try node(inode)
        if node.attributes.type == .directory { throw FSError(.isDirectory, "write to directory \(inode)") }
        guard buffer.count > 0 else { return 0 }
        guard offset <= 1 << 40 else { throw FSError(.fileTooLarge, "write at \(offset)") }
        let end = Int(offset) + buffer.count
        if end > node.data.count {
            let growth = UInt64(end - node.data.count)
            guard usedBytes + growth <= maxBytes else { throw FSError(.noSpace, "tmpfs full (\(maxBytes) bytes)") }
            usedBytes += growth
            node.data.append(contentsOf: repeatElement(0, count: end - node.data.count))
        }
        node.data.withUnsafeMutableBytes { target in
            (target.baseAddress! + Int(offset)).copyMemory(from: buffer.baseAddress!, byteCount: buffer.count)
        }
        node.attributes.size = UInt64(node.data.count)
        node.attributes.blocks512 = (UInt64(node.data.count) + 511) / 512
        touch(node)
        return buffer.count
    }

    public func truncate(_ inode: InodeNumber, to size: UInt64) throws(FSError) {
        try writable()
        let node = try node(inode)
        if node.attributes.type == .directory { throw FSError(.isDirectory, "truncate of directory \(inode)") }
        guard size <= 1 << 40 else { throw FSError(.fileTooLarge, "truncate to \(size)") }
        let old = UInt64(node.data.count)
        if size > old {
            guard usedBytes + (size - old) <= maxBytes else { throw FSError(.noSpace, "tmpfs full") }
            usedBytes += size - old
            node.data.append(contentsOf: repeatElement(0, count: Int(size - old)))
        } else {
            usedBytes -= old - size
            node.data.removeLast(Int(old - size))
        }
        node.attributes.size = size
        node.attributes.blocks512 = (size + 511) / 512
        touch(node)
    }

    private func insert(_ name: FileName, in directory: InodeNumber, type: VFSCore.FileType, permissions: UInt32,
                        uid: UInt32, gid: UInt32) throws(FSError) -> Node {
        try writable()
        let dir = try self.directory(directory)
        if name.isDotOrDotDot || dir.entries[name] != nil { throw FSError(.fileExists, "\(name) exists") }
        guard UInt64(nodes.count) < maxInodes else { throw FSError(.noSpace, "tmpfs out of inodes") }
        let inode = nextInode
        nextInode += 1
        let now = Self.now()
        let node = Node(attributes: FileAttributes(inode: inode, type: type, permissions: permissions & 0o7777,
                                                   linkCount: type == .directory ? 2 : 1, uid: uid, gid: gid, size: 0,
                                                   blocks512: 0, accessTime: now, modificationTime: now, changeTime: now),
                        parent: directory)
        nodes[inode] = node
        dir.names.append(name)
        dir.entries[name] = inode
        if type == .directory { dir.attributes.linkCount += 1 }
        touch(dir)
        return node
    }

    public func create(_ name: FileName, in directory: InodeNumber, type: VFSCore.FileType, permissions: UInt32,
                       uid: UInt32, gid: UInt32) throws(FSError) -> InodeNumber {
        guard type != .directory, type != .symbolicLink else { throw FSError(.invalidArgument, "create of a \(type)") }
        return try insert(name, in: directory, type: type, permissions: permissions, uid: uid, gid: gid).attributes.inode
    }

    public func makeDirectory(_ name: FileName, in directory: InodeNumber, permissions: UInt32,
                              uid: UInt32, gid: UInt32) throws(FSError) -> InodeNumber {
        try insert(name, in: directory, type: .directory, permissions: permissions, uid: uid, gid: gid).attributes.inode
    }

    public func makeSymbolicLink(_ name: FileName, in directory: InodeNumber, target: [UInt8],
                                 uid: UInt32, gid: UInt32) throws(FSError) -> InodeNumber {
        guard !target.isEmpty, target.count < 4096 else { throw FSError(.fileNameTooLong, "symlink target of \(target.count) bytes") }
        let node = try insert(name, in: directory, type: .symbolicLink, permissions: 0o777, uid: uid, gid: gid)
        node.target = target
        node.attributes.size = UInt64(target.count)
        return node.attributes.inode
    }

    public func readSymbolicLink(_ inode: InodeNumber) throws(FSError) -> [UInt8] {
        let node = try node(inode)
        guard node.attributes.type == .symbolicLink else { throw FSError(.invalidArgument, "inode \(inode) is not a symlink") }
        return node.target
    }

    public func link(_ inode: InodeNumber, as name: FileName, in directory: InodeNumber) throws(FSError) {
        try writable()
        let target = try node(inode)
        guard target.attributes.type != .directory else { throw FSError(.notPermitted, "hard link to a directory") }
        let dir = try self.directory(directory)
        if name.isDotOrDotDot || dir.entries[name] != nil { throw FSError(.fileExists, "\(name) exists") }
        guard target.attributes.linkCount < 65000 else { throw FSError(.tooManyLinks, "inode \(inode)") }
        dir.names.append(name)
        dir.entries[name] = inode
        target.attributes.linkCount += 1
        touch(target, modified: false)
        touch(dir)
    }

    private func removeEntry(_ name: FileName, from dir: Node) {
        dir.entries[name] = nil
        dir.names.removeAll { $0 == name }
    }

    /// Drops one link of `node`; a directory loses its own "." too (POSIX: rmdir leaves 0).
    private func dropLink(_ node: Node, parent: Node) {
        if node.attributes.type == .directory {
            node.attributes.linkCount = 0
            parent.attributes.linkCount -= 1
        } else {
            node.attributes.linkCount -= 1
        }
        touch(node, modified: false)
    }

    public func unlink(_ name: FileName, in directory: InodeNumber) throws(FSError) -> InodeNumber {
        try writable()
        let dir = try self.directory(directory)
        if name.isDotOrDotDot { throw FSError(.isDirectory, "unlink of \(name)") }
        guard let inode = dir.entries[name], let node = nodes[inode] else { throw FSError(.noSuchFileOrDirectory, "\(name)") }
        guard node.attributes.type != .directory else { throw FSError(.isDirectory, "unlink of directory \(name)") }
        removeEntry(name, from: dir)
        dropLink(node, parent: dir)
        touch(dir)
        return inode
    }

    public func removeDirectory(_ name: FileName, in directory: InodeNumber) throws(FSError) -> InodeNumber {
        try writable()
        let dir = try self.directory(directory)
        if name == .dot { throw FSError(.invalidArgument, "rmdir of .") }
        if name == .dotDot { throw FSError(.directoryNotEmpty, "rmdir of ..") }
        guard let inode = dir.entries[name], let node = nodes[inode] else { throw FSError(.noSuchFileOrDirectory, "\(name)") }
        guard node.attributes.type == .directory else { throw FSError(.notDirectory, "\(name) is not a directory") }
        guard node.entries.isEmpty else { throw FSError(.directoryNotEmpty, "\(name) is not empty") }
        removeEntry(name, from: dir)
        dropLink(node, parent: dir)
        touch(dir)
        return inode
    }

    public func rename(_ name: FileName, in directory: InodeNumber, to newName: FileName,
                       in newDirectory: InodeNumber) throws(FSError) -> InodeNumber? {
        try writable()
        let source = try self.directory(directory)
        let target = try self.directory(newDirectory)
        if name.isDotOrDotDot || newName.isDotOrDotDot { throw FSError(.invalidArgument, "rename of . or ..") }
        guard let inode = source.entries[name], let moving = nodes[inode] else { throw FSError(.noSuchFileOrDirectory, "\(name)") }
        if moving.attributes.type == .directory {
            // POSIX rename(2): a directory cannot become its own descendant (EINVAL).
            var ancestor = newDirectory
            while true {
                if ancestor == inode { throw FSError(.invalidArgument, "\(name) into its own subtree") }
                if ancestor == rootInode { break }
                ancestor = nodes[ancestor]!.parent
            }
        }
        var replaced: InodeNumber?
        if let existing = target.entries[newName] {
            if existing == inode { return nil }  // POSIX: both names link the same file: do nothing
            let old = nodes[existing]!
            switch (moving.attributes.type == .directory, old.attributes.type == .directory) {
            case (true, false): throw FSError(.notDirectory, "\(newName) is not a directory")
            case (false, true): throw FSError(.isDirectory, "\(newName) is a directory")
            case (true, true): guard old.entries.isEmpty else { throw FSError(.directoryNotEmpty, "\(newName) not empty") }
            default: break
            }
            removeEntry(newName, from: target)
            dropLink(old, parent: target)
            replaced = existing
        }
        removeEntry(name, from: source)
        target.names.append(newName)
        target.entries[newName] = inode
        if moving.attributes.type == .directory && directory != newDirectory {
            source.attributes.linkCount -= 1
            target.attributes.linkCount += 1
            moving.parent = newDirectory
        }
        touch(moving, modified: false)
        touch(source)
        touch(target)
        return replaced
    }

    public func evict(_ inode: InodeNumber) throws(FSError) {
        guard let node = nodes[inode], node.attributes.linkCount == 0 else { return }
        usedBytes -= UInt64(node.data.count)
        nodes[inode] = nil
        evictedInodes.append(inode)
    }

    /// Whether an inode still exists (tests: an unlinked open file must, until its last close).
    public func holds(_ inode: InodeNumber) -> Bool { nodes[inode] != nil }

    public func statistics() throws(FSError) -> FileSystemStatistics {
        let blocks = maxBytes / 4096
        let free = (maxBytes - usedBytes) / 4096
        return FileSystemStatistics(blockSize: 4096, totalBlocks: blocks, freeBlocks: free, availableBlocks: free,
                                    totalInodes: maxInodes, freeInodes: maxInodes - UInt64(nodes.count),
                                    maxNameLength: FileName.maxLength)
    }

    public func sync() throws(FSError) { syncCount += 1 }
    public func unmount() throws(FSError) { isUnmounted = true }
}
