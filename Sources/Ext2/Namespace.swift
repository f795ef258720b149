import VFSCore

/// Names: creating files, directories and links, removing them, rename, and freeing inodes
/// whose last name is gone (evict).
extension Ext2FileSystem {
    public func create(_ name: FileName, in directory: InodeNumber, type: FileType, permissions: UInt32,
                       uid: UInt32, gid: UInt32) throws(FSError) -> InodeNumber {
        try change { () throws(FSError) -> InodeNumber in
            switch type {
            case .regular, .fifo, .socket, .characterDevice, .blockDevice: break
            default: throw FSError(.invalidArgument, "create makes files, fifos, sockets and device nodes, not a \(type)")
            }
            var parent = try checkNewName(name, in: directory)
            var (number, inode) = try newInode(parent: directory, mode: UInt16(type.modeBits | (permissions & 0o7777)), uid: uid, gid: gid)
            do throws(FSError) { try addEntry(name, target: number, type: type, in: directory, &parent) } catch {
                discardInode(number, &inode)
                throw error
            }
            return number
        }
    }

    public func makeDirectory(_ name: FileName, in directory: InodeNumber, permissions: UInt32,
                              uid: UInt32, gid: UInt32) throws(FSError) -> InodeNumber {
        try change { () throws(FSError) -> InodeNumber in
            var parent = try checkNewName(name, in: directory)
            guard parent.linksCount < Inode.linkMax else { throw FSError(.tooManyLinks, "directory \(directory) has \(parent.linksCount) links") }
            let originalLinks = parent.linksCount
            var (number, inode) = try newInode(parent: directory, mode: UInt16(FileType.directory.modeBits | (permissions & 0o7777)), uid: uid, gid: gid)
            do throws(FSError) {
                let (block, _) = try mapOrAllocate(&inode, 0, number, goal: goalBlock(for: number))
                // "." and "..": the first block of every ext2 directory.
                var bytes = [UInt8](repeating: 0, count: blockSize)
                writeRecordHeader(&bytes, 0, inode: UInt32(number), recordLength: 12, name: [0x2E], type: .directory)
                writeRecordHeader(&bytes, 12, inode: UInt32(directory), recordLength: blockSize - 12, name: [0x2E, 0x2E], type: .directory)
                try writeMetaBlock(block, bytes)
                inode.size = UInt64(blockSize)
                inode.linksCount = 2
                try storeInode(number, inode)
                parent.linksCount += 1
                try addEntry(name, target: number, type: .directory, in: directory, &parent)
            } catch {
                discardInode(number, &inode)
                if var reloaded = try? loadInode(directory), reloaded.linksCount != originalLinks {
                    reloaded.linksCount = originalLinks
                    try? storeInode(directory, reloaded)
                }
                throw error
            }
            return number
        }
    }

    public func makeSymbolicLink(_ name: FileName, in directory: InodeNumber, target: [UInt8],
                                 uid: UInt32, gid: UInt32) throws(FSError) -> InodeNumber {
        try change { () throws(FSError) -> InodeNumber in
            guard !target.isEmpty else { throw FSError(.noSuchFileOrDirectory, "empty symbolic link target") }
            guard !target.contains(0) else { throw FSError(.invalidArgument, "symbolic link target holds NUL") }
            guard target.count < blockSize, target.count < 4096 else {
                throw FSError(.fileNameTooLong, "symbolic link target of \(target.count) bytes")
            }
            var parent = try checkNewName(name, in: directory)
            var (number, inode) = try newInode(parent: directory, mode: UInt16(FileType.symbolicLink.modeBits | 0o777), uid: uid, gid: gid)
            do throws(FSError) {
                if target.count < 60 {
                    // Fast symlink: the target lives in i_block itself.
                    inode.raw.replaceSubrange(40..<(40 + target.count), with: target)
                } else {
                    let (block, _) = try mapOrAllocate(&inode, 0, number, goal: goalBlock(for: number))
                    var bytes = [UInt8](repeating: 0, count: blockSize)
                    bytes.replaceSubrange(0..<target.count, with: target)
                    try writeBytes(at: UInt64(block) * UInt64(blockSize), bytes)
                }
                inode.size = UInt64(target.count)
                try storeInode(number, inode)
                try addEntry(name, target: number, type: .symbolicLink, in: directory, &parent)
            } catch {
                discardInode(number, &inode)
                throw error
            }
            return number
        }
    }

    public func readSymbolicLink(_ number: InodeNumber) throws(FSError) -> [UInt8] {
        try checkMounted()
        let inode = try liveInode(number)
        guard inode.type == .symbolicLink else { throw FSError(.invalidArgument, "inode \(number) is not a symbolic link") }
        let size = inode.size
        if inode.isFastSymlink(blockSize: blockSize) {
            guard size < 60 else { throw corrupt("fast symbolic link \(number) has size \(size)") }
            return Array(inode.blockArea.prefix(Int(size)))
        }
        guard size > 0, size < UInt64(blockSize) else { throw corrupt("symbolic link \(number) has size \(size)") }
        let block = try mapBlock(inode, 0, number)
        guard block != 0 else { throw corrupt("symbolic link \(number) has no block") }
        try readBlock(block, into: scratch)
        return Array(UnsafeRawBufferPointer(rebasing: scratch[0..<Int(size)]))
    }

    public func link(_ number: InodeNumber, as name: FileName, in directory: InodeNumber) throws(FSError) {
        try change { () throws(FSError) in
            var inode = try liveInode(number)
            // The name is checked first, as Linux does (EEXIST before EPERM).
            var parent = try checkNewName(name, in: directory)
            guard !inode.isDirectory else { throw FSError(.notPermitted, "hard links to directories are not allowed") }
            guard inode.linksCount > 0 else { throw FSError(.noSuchFileOrDirectory, "inode \(number) has no name left") }
            guard inode.linksCount < Inode.linkMax else { throw FSError(.tooManyLinks, "inode \(number) has \(inode.linksCount) links") }
            try addEntry(name, target: number, type: inode.type, in: directory, &parent)
            inode = try loadInode(number)
            inode.linksCount += 1
            inode.changeTime = Self.now()
            try storeInode(number, inode)
        }
    }

    // MARK: Removing

    public func unlink(_ name: FileName, in directory: InodeNumber) throws(FSError) -> InodeNumber {
        try change { () throws(FSError) -> InodeNumber in
            var parent = try self.directory(directory)
            guard !name.isDotOrDotDot else { throw FSError(.isDirectory, "cannot unlink \(name)") }
            guard let location = try findEntry(name, in: directory, parent) else {
                throw FSError(.noSuchFileOrDirectory, "\(name) not found in directory \(directory)")
            }
            var (number, inode) = try entryTarget(location, in: directory)
            guard !inode.isDirectory else { throw FSError(.isDirectory, "\(name) is a directory") }
            try removeEntry(location, in: directory, &parent)
            inode = try loadInode(number)
            if inode.linksCount > 0 { inode.linksCount -= 1 }
            if inode.linksCount == 0 { orphan(number, &inode) }
            inode.changeTime = Self.now()
            try storeInode(number, inode)
            return number
        }
    }

    public func removeDirectory(_ name: FileName, in directory: InodeNumber) throws(FSError) -> InodeNumber {
        try change { () throws(FSError) -> InodeNumber in
            var parent = try self.directory(directory)
            if name == .dot { throw FSError(.invalidArgument, "cannot remove \".\"") }
            if name == .dotDot { throw FSError(.directoryNotEmpty, "cannot remove \"..\"") }
            guard let location = try findEntry(name, in: directory, parent) else {
                throw FSError(.noSuchFileOrDirectory, "\(name) not found in directory \(directory)")
            }
            var (number, inode) = try entryTarget(location, in: directory)
            guard inode.isDirectory else { throw FSError(.notDirectory, "\(name) is not a directory") }
            guard try isEmptyDirectory(number, inode) else { throw FSError(.directoryNotEmpty, "\(name) is not empty") }
            // The child's ".." no longer counts as a link of the parent.
            if parent.linksCount > 1 { parent.linksCount -= 1 }
            try removeEntry(location, in: directory, &parent)
            inode = try loadInode(number)
            inode.linksCount = 0
            orphan(number, &inode)
            inode.changeTime = Self.now()
            try storeInode(number, inode)
            return number
        }
    }

    /// Whether `ancestor` is `directory` or one of its ancestors (walking ".." up to the root).
    /// A ".." chain that loops is corruption.
    func isAncestor(_ ancestor: InodeNumber, of directory: InodeNumber) throws(FSError) -> Bool {
        var current = directory
        var seen = Set<InodeNumber>()
        while true {
            if current == ancestor { return true }
            if current == rootInode { return false }
            guard seen.insert(current).inserted else { throw corrupt("directory \(directory): the \"..\" chain loops at \(current)") }
            let inode = try liveInode(current)
            guard inode.isDirectory else { throw corrupt("a \"..\" entry names inode \(current), which is not a directory") }
            guard let location = try findEntry(.dotDot, in: current, inode) else {
                throw corrupt("directory \(current) has no \"..\" entry")
            }
            current = InodeNumber(location.record.inode)
        }
    }

    public func rename(_ name: FileName, in directory: InodeNumber, to newName: FileName,
                       in newDirectory: InodeNumber) throws(FSError) -> InodeNumber? {
        try change { () throws(FSError) -> InodeNumber? in
            let oldParent = try self.directory(directory)
            let newParent = try self.directory(newDirectory)
            guard !name.isDotOrDotDot, !newName.isDotOrDotDot else {
                throw FSError(.invalidArgument, "cannot rename \".\" or \"..\"")
            }
            guard let source = try findEntry(name, in: directory, oldParent) else {
                throw FSError(.noSuchFileOrDirectory, "\(name) not found in directory \(directory)")
            }
            let (sourceNumber, sourceInode) = try entryTarget(source, in: directory)
            let target = try findEntry(newName, in: newDirectory, newParent)
            var replaced: (InodeNumber, Inode)? = nil
            if let target {
                replaced = try entryTarget(target, in: newDirectory)
                // Two names of one inode: rename does nothing (POSIX).
                if replaced!.0 == sourceNumber { return nil }
            }
            guard newParent.linksCount > 0 else { throw FSError(.noSuchFileOrDirectory, "directory \(newDirectory) has been removed") }
            let moving = sourceInode.isDirectory
            if moving, try isAncestor(sourceNumber, of: newDirectory) {
                throw FSError(.invalidArgument, "cannot move directory \(name) into itself")
            }
            // A target that contains the source is not empty (Linux checks this before kinds).
            if let (number, inode) = replaced, inode.isDirectory, try isAncestor(number, of: directory) {
                throw FSError(.directoryNotEmpty, "\(newName) contains \(name)")
            }
            if moving {
                if let (number, inode) = replaced {
                    guard inode.isDirectory else { throw FSError(.notDirectory, "\(newName) is not a directory") }
                    guard try isEmptyDirectory(number, inode) else { throw FSError(.directoryNotEmpty, "\(newName) is not empty") }
                } else if directory != newDirectory && newParent.linksCount >= Inode.linkMax {
                    throw FSError(.tooManyLinks, "directory \(newDirectory) has \(newParent.linksCount) links")
                }
            } else if let (_, inode) = replaced, inode.isDirectory {
                throw FSError(.isDirectory, "\(newName) is a directory")
            }

            // The new name first, so a failure (ENOSPC) leaves the old name in place.
            var parent = try loadInode(newDirectory)
            if let target {
                try retarget(target, to: sourceNumber, type: sourceInode.type, in: newDirectory, &parent)
            } else {
                try addEntry(newName, target: sourceNumber, type: sourceInode.type, in: newDirectory, &parent)
            }
            // Adding may have split records of the old directory; find the old name afresh.
            var old = try loadInode(directory)
            guard let current = try findEntry(name, in: directory, old) else {
                throw corrupt("directory \(directory): \(name) vanished during rename")
            }
            try removeEntry(current, in: directory, &old)

            if let (number, _) = replaced {
                var inode = try loadInode(number)
                if inode.isDirectory {
                    // An empty directory replaced: its "." and the entry both go; its ".." no
                    // longer counts for the new parent.
                    inode.linksCount = 0
                    var parent = try loadInode(newDirectory)
                    if parent.linksCount > 1 { parent.linksCount -= 1 }
                    try storeInode(newDirectory, parent)
                } else if inode.linksCount > 0 {
                    inode.linksCount -= 1
                }
                if inode.linksCount == 0 { orphan(number, &inode) }
                inode.changeTime = Self.now()
                try storeInode(number, inode)
            }
            var moved = try loadInode(sourceNumber)
            if moving && directory != newDirectory {
                guard let dotDot = try findEntry(.dotDot, in: sourceNumber, moved) else {
                    throw corrupt("directory \(sourceNumber) has no \"..\" entry")
                }
                try retarget(dotDot, to: newDirectory, type: .directory, in: sourceNumber, &moved)
                var oldParent = try loadInode(directory)
                if oldParent.linksCount > 1 { oldParent.linksCount -= 1 }
                try storeInode(directory, oldParent)
                var newParent = try loadInode(newDirectory)
                newParent.linksCount += 1
                try storeInode(newDirectory, newParent)
            }
            moved.changeTime = Self.now()
            try storeInode(sourceNumber, moved)
            return replaced?.0
        }
    }

    public func evict(_ number: InodeNumber) throws(FSError) {
        try checkMounted()
        guard !isReadOnly else { return }
        try change { () throws(FSError) in
            try checkInodeNumber(number)
            if unlinkedInodes.remove(number) != nil { try removeOrphan(number) }
            var inode = try loadInode(number)
            guard inode.linksCount == 0, inode.mode != 0, number >= InodeNumber(geometry.firstInode) else { return }
            // Only files, directories and slow symlinks hold block pointers in i_block; fast
            // symlinks keep text there and device nodes their device number.
            if inode.type == .regular || inode.type == .directory ||
                (inode.type == .symbolicLink && !inode.isFastSymlink(blockSize: blockSize)) {
                try releaseBlocks(&inode, from: 0, number)
            }
            try releaseAttributeBlock(&inode, number)
            inode.size = 0
            inode.dtime = UInt32(truncatingIfNeeded: Self.now().seconds)
            try storeInode(number, inode)
            try freeInode(number, directory: inode.isDirectory)
        }
    }

    /// Drops this inode's reference to its extended-attribute block (ext2 xattr header:
    /// h_magic 0xEA020000, h_refcount), freeing the block with the last reference.
    func releaseAttributeBlock(_ inode: inout Inode, _ number: InodeNumber) throws(FSError) {
        let block = inode.fileACL
        guard block != 0 else { return }
        inode.fileACL = 0
        let unit = UInt32(blockSize / 512)
        inode.blocks512 = inode.blocks512 >= unit ? inode.blocks512 - unit : 0
        try checkFileBlock(block, "inode \(number) attribute block")
        var bytes = try metaBlock(block)
        guard bytes.le32(0) == 0xEA02_0000 else { throw corrupt("inode \(number): attribute block \(block) has a bad magic") }
        let references = bytes.le32(4)
        if references <= 1 {
            try freeBlock(block)
        } else {
            bytes.setLE32(4, references - 1)
            try writeMetaRange(block, bytes, offset: 4, count: 4)
        }
    }
}
