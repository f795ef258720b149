import VFSCore

/// File contents: read, write (allocating on the way, short on ENOSPC) and truncate, over the
/// block map.
extension Ext2FileSystem {
    /// Checks a file's recorded size is one the format can hold (a corrupt i_size would otherwise
    /// send reads past the block map).
    func checkedSize(_ inode: Inode, _ number: InodeNumber) throws(FSError) -> UInt64 {
        let size = inode.size
        guard size <= geometry.mappableBlocks * UInt64(blockSize) else {
            throw corrupt("inode \(number) has size \(size), beyond what its block map can hold")
        }
        return size
    }

    /// Reads one block into `target` (a block's worth of bytes).
    func readBlock(_ block: UInt32, into target: UnsafeMutableRawBufferPointer) throws(FSError) {
        if directIO {
            try store.read(at: UInt64(block) * UInt64(blockSize), into: target)
        } else {
            let bytes = try Self.readBytes(store, at: UInt64(block) * UInt64(blockSize), count: blockSize)
            bytes.withUnsafeBytes { target.copyMemory(from: $0) }
        }
    }

    func writeBlock(_ block: UInt32, from source: UnsafeRawBufferPointer) throws(FSError) {
        if directIO {
            try store.write(at: UInt64(block) * UInt64(blockSize), from: source)
        } else {
            try writeBytes(at: UInt64(block) * UInt64(blockSize), Array(source))
        }
    }

    func regularFile(_ number: InodeNumber) throws(FSError) -> Inode {
        let inode = try liveInode(number)
        switch inode.type {
        case .regular: return inode
        case .directory: throw FSError(.isDirectory, "inode \(number) is a directory")
        default: throw FSError(.invalidArgument, "inode \(number) is a \(inode.type), not a regular file")
        }
    }

    public func read(_ number: InodeNumber, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(FSError) -> Int {
        try checkMounted()
        let inode = try regularFile(number)
        let size = try checkedSize(inode, number)
        guard offset < size, buffer.count > 0 else { return 0 }
        let end = offset + min(UInt64(buffer.count), size - offset)
        let bs = UInt64(blockSize)
        var position = offset
        while position < end {
            let logical = position / bs
            let inBlock = Int(position % bs)
            let chunk = Int(min(bs - UInt64(inBlock), end - position))
            let done = Int(position - offset)
            let target = UnsafeMutableRawBufferPointer(rebasing: buffer[done..<(done + chunk)])
            let physical = try mapBlock(inode, logical, number)
            if physical == 0 {
                target.initializeMemory(as: UInt8.self, repeating: 0)
            } else if inBlock == 0 && chunk == blockSize && directIO {
                // Whole blocks: gather the physically contiguous run and read it in one go.
                var run = 1
                while run < 256, position + UInt64(run + 1) * bs <= end,
                      try mapBlock(inode, logical + UInt64(run), number) == physical &+ UInt32(run) {
                    run += 1
                }
                let length = run * blockSize
                try store.read(at: UInt64(physical) * bs, into: UnsafeMutableRawBufferPointer(rebasing: buffer[done..<(done + length)]))
                position += UInt64(length)
                continue
            } else {
                try readBlock(physical, into: scratch)
                target.copyMemory(from: UnsafeRawBufferPointer(rebasing: scratch[inBlock..<(inBlock + chunk)]))
            }
            position += UInt64(chunk)
        }
        return Int(end - offset)
    }

    public func write(_ number: InodeNumber, at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(FSError) -> Int {
        try change { () throws(FSError) -> Int in
            var inode = try regularFile(number)
            let oldSize = try checkedSize(inode, number)
            guard buffer.count > 0 else { return 0 }
            let limit = geometry.maxFileSize
            guard offset < limit else {
                throw FSError(.fileTooLarge, "write at \(offset) is past the largest file (\(limit) bytes)")
            }
            // A write crossing the limit writes up to it (POSIX: EFBIG only when nothing fits).
            let end = offset + min(UInt64(buffer.count), limit - offset)
            let bs = UInt64(blockSize)
            var position = offset
            var goal = goalBlock(for: number)
            var failure: FSError? = nil
            while position < end {
                let logical = position / bs
                let inBlock = Int(position % bs)
                let chunk = Int(min(bs - UInt64(inBlock), end - position))
                let done = Int(position - offset)
                let mapped: (block: UInt32, fresh: Bool)
                do throws(FSError) { mapped = try mapOrAllocate(&inode, logical, number, goal: goal) } catch {
                    failure = error
                    break
                }
                goal = mapped.block &+ 1
                if inBlock == 0 && chunk == blockSize && directIO {
                    // Whole blocks: extend the run while the next blocks land right after.
                    var run = 1
                    while run < 256, position + UInt64(run + 1) * bs <= end {
                        guard let next = try? mapOrAllocate(&inode, logical + UInt64(run), number, goal: mapped.block &+ UInt32(run)),
                              next.block == mapped.block &+ UInt32(run) else { break }
                        run += 1
                    }
                    let length = run * blockSize
                    do throws(FSError) {
                        try store.write(at: UInt64(mapped.block) * bs, from: UnsafeRawBufferPointer(rebasing: buffer[done..<(done + length)]))
                    } catch {
                        failure = error
                        break
                    }
                    goal = mapped.block &+ UInt32(run)
                    position += UInt64(length)
                    continue
                }
                do throws(FSError) {
                    if mapped.fresh {
                        scratch.initializeMemory(as: UInt8.self, repeating: 0)
                    } else {
                        try readBlock(mapped.block, into: scratch)
                    }
                    UnsafeMutableRawBufferPointer(rebasing: scratch[inBlock..<(inBlock + chunk)])
                        .copyMemory(from: UnsafeRawBufferPointer(rebasing: buffer[done..<(done + chunk)]))
                    try writeBlock(mapped.block, from: UnsafeRawBufferPointer(scratch))
                } catch {
                    failure = error
                    break
                }
                position += UInt64(chunk)
            }
            let written = Int(position - offset)
            if position > oldSize { inode.size = position }
            if written > 0 {
                let now = Self.now()
                inode.modificationTime = now
                inode.changeTime = now
            }
            try storeInode(number, inode)
            if let failure, written == 0 || failure.errno != .noSpace { throw failure }
            return written
        }
    }

    public func truncate(_ number: InodeNumber, to size: UInt64) throws(FSError) {
        try change { () throws(FSError) in
            var inode = try regularFile(number)
            let oldSize = try checkedSize(inode, number)
            guard size <= geometry.maxFileSize else {
                throw FSError(.fileTooLarge, "size \(size) passes the largest file (\(geometry.maxFileSize) bytes)")
            }
            let bs = UInt64(blockSize)
            if size < oldSize {
                try releaseBlocks(&inode, from: (size + bs - 1) / bs, number)
                // The tail of the new last block must read as zeroes if the file grows again.
                let tail = Int(size % bs)
                if tail != 0 {
                    let block = try mapBlock(inode, size / bs, number)
                    if block != 0 {
                        try readBlock(block, into: scratch)
                        UnsafeMutableRawBufferPointer(rebasing: scratch[tail...]).initializeMemory(as: UInt8.self, repeating: 0)
                        try writeBlock(block, from: UnsafeRawBufferPointer(scratch))
                    }
                }
            }
            inode.size = size
            let now = Self.now()
            inode.modificationTime = now
            inode.changeTime = now
            try storeInode(number, inode)
        }
    }
}
