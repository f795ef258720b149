import VFSCore

/// The `FileSystem` operations over the ext2 structures: shared checks, attributes, lookup and
/// readDirectory (file data in FileData.swift, names in Namespace.swift).
extension Ext2FileSystem {
    /// Runs a change to the file system: refused on a read-only mount; the superblock and group
    /// descriptors are written afterwards whether it succeeded or not (allocations made before
    /// a failure are real). With a journal a change is never split between two commits.
    func change<T>(_ body: () throws(FSError) -> T) throws(FSError) -> T {
        try checkWritable()
        try commitIfFreedSpaceIsNeeded()
        do throws(FSError) {
            let result = try body()
            try flushMetadata()
            try commitIfLarge()
            return result
        } catch {
            try? flushMetadata()
            throw error
        }
    }

    func makeAttributes(_ number: InodeNumber, _ inode: Inode) -> FileAttributes {
        FileAttributes(inode: number, type: inode.type, permissions: UInt32(inode.mode) & 0o7777,
                       linkCount: UInt32(inode.linksCount), uid: inode.uid, gid: inode.gid, size: inode.size,
                       blocks512: UInt64(inode.blocks512), accessTime: inode.accessTime,
                       modificationTime: inode.modificationTime, changeTime: inode.changeTime)
    }

    /// A directory the caller names, checked to be one (ENOTDIR).
    func directory(_ number: InodeNumber) throws(FSError) -> Inode {
        let inode = try liveInode(number)
        guard inode.isDirectory else { throw FSError(.notDirectory, "inode \(number) is not a directory") }
        return inode
    }

    /// The inode a directory entry names, checked to be in use.
    func entryTarget(_ location: EntryLocation, in directory: InodeNumber) throws(FSError) -> (InodeNumber, Inode) {
        let number = InodeNumber(location.record.inode)
        let inode = try loadInode(number)
        guard inode.mode != 0, number != 1 else {
            throw corrupt("directory \(directory) names inode \(number), which is not in use")
        }
        return (number, inode)
    }

    /// Checks a new name can go into `directory`: a live directory, name not "." / ".." and free.
    func checkNewName(_ name: FileName, in number: InodeNumber) throws(FSError) -> Inode {
        let inode = try directory(number)
        guard !name.isDotOrDotDot else { throw FSError(.fileExists, "\(name) always exists") }
        guard inode.linksCount > 0 else { throw FSError(.noSuchFileOrDirectory, "directory \(number) has been removed") }
        if try findEntry(name, in: number, inode) != nil { throw FSError(.fileExists, "\(name) exists in directory \(number)") }
        return inode
    }

    /// A fresh inode of `mode`, allocated and stored, with one link.
    func newInode(parent: InodeNumber, mode: UInt16, uid: UInt32, gid: UInt32) throws(FSError) -> (InodeNumber, Inode) {
        let isDirectory = FileType(modeBits: UInt32(mode)) == .directory
        let number = try allocateInode(parent: parent, directory: isDirectory)
        var inode = Inode.fresh(size: geometry.inodeSize, wantExtra: superblock.wantExtraInodeSize)
        let now = Self.now()
        inode.mode = mode
        inode.uid = uid
        inode.gid = gid
        inode.linksCount = 1
        inode.accessTime = now
        inode.modificationTime = now
        inode.changeTime = now
        inode.creationTime = now
        do throws(FSError) { try storeInode(number, inode) } catch {
            try? freeInode(number, directory: isDirectory)
            throw error
        }
        return (number, inode)
    }

    /// Undoes `newInode` after a later step failed.
    func discardInode(_ number: InodeNumber, _ inode: inout Inode) {
        if inode.type == .regular || inode.type == .directory || (inode.type == .symbolicLink && !inode.isFastSymlink(blockSize: blockSize)) {
            try? releaseBlocks(&inode, from: 0, number)
        }
        inode.linksCount = 0
        inode.dtime = UInt32(truncatingIfNeeded: Self.now().seconds)
        try? storeInode(number, inode)
        try? freeInode(number, directory: inode.isDirectory)
    }

    // MARK: Attributes

    public func attributes(of inode: InodeNumber) throws(FSError) -> FileAttributes {
        try checkMounted()
        return makeAttributes(inode, try liveInode(inode))
    }

    public func setAttributes(of number: InodeNumber, _ changes: AttributeChanges) throws(FSError) -> FileAttributes {
        try change { () throws(FSError) -> FileAttributes in
            var inode = try liveInode(number)
            if let permissions = changes.permissions {
                inode.mode = (inode.mode & 0o170000) | UInt16(permissions & 0o7777)
            }
            if let uid = changes.uid { inode.uid = uid }
            if let gid = changes.gid { inode.gid = gid }
            if let time = changes.accessTime { inode.accessTime = time }
            if let time = changes.modificationTime { inode.modificationTime = time }
            inode.changeTime = Self.now()
            try storeInode(number, inode)
            return makeAttributes(number, inode)
        }
    }

    // MARK: Names

    public func lookup(_ name: FileName, in directory: InodeNumber) throws(FSError) -> InodeNumber {
        try checkMounted()
        let inode = try self.directory(directory)
        guard let location = try findEntry(name, in: directory, inode) else {
            throw FSError(.noSuchFileOrDirectory, "\(name) not found in directory \(directory)")
        }
        return try entryTarget(location, in: directory).0
    }

    public func readDirectory(_ directory: InodeNumber, from cookie: UInt64,
                              _ body: (DirectoryEntry, _ nextCookie: UInt64) -> Bool) throws(FSError) {
        try checkMounted()
        let inode = try self.directory(directory)
        let size = UInt64(blockSize)
        let startBlock = cookie / size
        let startOffset = Int(cookie % size)
        try forEachRecord(directory, inode, from: startBlock) { (logical, _, bytes, entry, _) throws(FSError) in
            if logical == startBlock && entry.offset < startOffset { return true }
            guard entry.inode != 0 else { return true }
            let name: FileName
            do throws(FSError) { name = try FileName(validating: bytes[entry.nameRange]) } catch {
                throw corrupt("directory \(directory) holds an invalid name (\(error.detail))")
            }
            let type = geometry.fileType ? FileType(rawValue: entry.fileType) ?? .unknown : .unknown
            let next = logical * size + UInt64(entry.offset + entry.recordLength)
            return body(DirectoryEntry(name: name, inode: InodeNumber(entry.inode), type: type), next)
        }
    }
}
