import VFSCore

/// First clear bit in `bitmap` at or after `start` and before `limit`, scanning bytes (a full
/// byte, 0xFF, is skipped whole).
func firstClearBit(_ bitmap: [UInt8], from start: Int, limit: Int) -> Int? {
    var bit = start
    while bit < limit {
        let byte = bitmap[bit >> 3]
        if byte == 0xFF && bit & 7 == 0 {
            bit += 8
            continue
        }
        let free = ~byte >> UInt8(bit & 7)
        if free != 0 {
            let found = bit + free.trailingZeroBitCount
            return found < limit ? found : nil
        }
        bit = (bit | 7) + 1
    }
    return nil
}

/// Block and inode allocation over the per-group bitmaps (ext2 bg_block_bitmap, bg_inode_bitmap),
/// keeping the group descriptors' and the superblock's free counts in step.
extension Ext2FileSystem {
    func groupOf(block: UInt32) -> Int { Int((block - geometry.firstDataBlock) / geometry.blocksPerGroup) }

    /// A free block, near `goal` where possible (the same group, then the following groups).
    /// ENOSPC when none is left. Bitmap bits that claim metadata is free are skipped and logged.
    func allocateBlock(near goal: UInt32) throws(FSError) -> UInt32 {
        let goal = goal >= geometry.firstDataBlock && goal < geometry.blocksCount ? goal : geometry.firstDataBlock
        let firstGroup = groupOf(block: goal)
        for step in 0..<geometry.groupCount {
            let group = (firstGroup + step) % geometry.groupCount
            guard descriptors[group].freeBlocks > 0 else { continue }
            let start = geometry.groupStart(group)
            let count = Int(geometry.blocksInGroup(group))
            var bitmap = try takeMetaBlock(descriptors[group].blockBitmap)
            var from = step == 0 ? Int(goal - start) : 0
            var wrapped = false
            var heldBack = false
            while true {
                guard let bit = firstClearBit(bitmap, from: from, limit: count) else {
                    if !wrapped && from > 0 { wrapped = true; from = 0; continue }
                    break
                }
                let block = start + UInt32(bit)
                if transaction.freed.contains(block) {
                    // Freed in the running transaction: not reused before its commit.
                    heldBack = true
                    from = bit + 1
                    continue
                }
                if isMetadata(block) {
                    log("ext2: corrupted: block bitmap of group \(group) shows metadata block \(block) free; not using it")
                    from = bit + 1
                    continue
                }
                bitmap[bit >> 3] |= 1 << UInt8(bit & 7)
                try writeMetaRange(descriptors[group].blockBitmap, bitmap, offset: bit >> 3, count: 1)
                descriptors[group].freeBlocks -= 1
                superblock.freeBlocksCount &-= 1
                descriptorChanged(group)
                cache.removeValue(forKey: block)
                return block
            }
            if !heldBack {
                log("ext2: corrupted: group \(group) counts \(descriptors[group].freeBlocks) free blocks but its bitmap has none")
            }
        }
        throw FSError(.noSpace, "no free block")
    }

    /// Returns a block to its group. A block that is already free (a doubly referenced block in a
    /// corrupt image) is logged and left alone, so the counts stay true.
    func freeBlock(_ block: UInt32) throws(FSError) {
        guard block >= geometry.firstDataBlock, block < geometry.blocksCount, !isMetadata(block) else {
            log("ext2: corrupted: not freeing block \(block) (outside the file system or metadata)")
            return
        }
        let group = groupOf(block: block)
        let bit = Int(block - geometry.groupStart(group))
        var bitmap = try takeMetaBlock(descriptors[group].blockBitmap)
        guard bitmap[bit >> 3] & (1 << UInt8(bit & 7)) != 0 else {
            log("ext2: corrupted: block \(block) freed twice")
            return
        }
        bitmap[bit >> 3] &= ~(1 << UInt8(bit & 7))
        try writeMetaRange(descriptors[group].blockBitmap, bitmap, offset: bit >> 3, count: 1)
        cache.removeValue(forKey: block)
        if journal != nil { transaction.free(block) }
        // A count that already says the whole group is free disagrees with the bitmap.
        guard UInt32(descriptors[group].freeBlocks) < geometry.blocksInGroup(group) else {
            log("ext2: corrupted: group \(group) free block count exceeds the group")
            return
        }
        descriptors[group].freeBlocks &+= 1
        superblock.freeBlocksCount &+= 1
        descriptorChanged(group)
        cache.removeValue(forKey: block)
    }

    /// A free inode. Files go in their parent's group when it has room; directories in the group
    /// with the most free inodes among those with free blocks too (spreading directories, a
    /// simplified form of the kernel's policy).
    func allocateInode(parent: InodeNumber, directory: Bool) throws(FSError) -> InodeNumber {
        let parentGroup = Int((parent - 1) / InodeNumber(geometry.inodesPerGroup))
        var order: [Int] = []
        if directory {
            var best = -1
            for group in 0..<geometry.groupCount where descriptors[group].freeInodes > 0 {
                if best < 0 || (descriptors[group].freeBlocks > 0 && descriptors[group].freeInodes > descriptors[best].freeInodes) {
                    best = group
                }
            }
            if best >= 0 { order.append(best) }
        }
        for step in 0..<geometry.groupCount { order.append((parentGroup + step) % geometry.groupCount) }
        for group in order {
            guard descriptors[group].freeInodes > 0 else { continue }
            var bitmap = try takeMetaBlock(descriptors[group].inodeBitmap)
            // Inodes below s_first_ino are reserved (root, bad blocks, resize, journal ...).
            let groupFirst = group * Int(geometry.inodesPerGroup) + 1
            let from = max(0, Int(geometry.firstInode) - groupFirst)
            if let bit = firstClearBit(bitmap, from: from, limit: Int(geometry.inodesPerGroup)) {
                let number = InodeNumber(groupFirst + bit)
                bitmap[bit >> 3] |= 1 << UInt8(bit & 7)
                try writeMetaRange(descriptors[group].inodeBitmap, bitmap, offset: bit >> 3, count: 1)
                descriptors[group].freeInodes -= 1
                if directory { descriptors[group].usedDirectories &+= 1 }
                superblock.freeInodesCount &-= 1
                descriptorChanged(group)
                return number
            }
            log("ext2: corrupted: group \(group) counts \(descriptors[group].freeInodes) free inodes but its bitmap has none")
        }
        throw FSError(.noSpace, "no free inode")
    }

    func freeInode(_ number: InodeNumber, directory: Bool) throws(FSError) {
        let index = Int(number - 1)
        let group = index / Int(geometry.inodesPerGroup)
        let bit = index % Int(geometry.inodesPerGroup)
        var bitmap = try takeMetaBlock(descriptors[group].inodeBitmap)
        guard bitmap[bit >> 3] & (1 << UInt8(bit & 7)) != 0 else {
            log("ext2: corrupted: inode \(number) freed twice")
            return
        }
        bitmap[bit >> 3] &= ~(1 << UInt8(bit & 7))
        try writeMetaRange(descriptors[group].inodeBitmap, bitmap, offset: bit >> 3, count: 1)
        guard UInt32(descriptors[group].freeInodes) < geometry.inodesPerGroup else {
            log("ext2: corrupted: group \(group) free inode count exceeds the group")
            return
        }
        descriptors[group].freeInodes &+= 1
        if directory && descriptors[group].usedDirectories > 0 { descriptors[group].usedDirectories -= 1 }
        superblock.freeInodesCount &+= 1
        descriptorChanged(group)
    }

    /// The block a new file's data should start near: its inode's group.
    func goalBlock(for number: InodeNumber) -> UInt32 {
        let group = Int((number - 1) / InodeNumber(geometry.inodesPerGroup))
        return geometry.groupStart(group)
    }
}
