import VFSCore

/// The classic ext2 block map: i_block[0..11] point at data, i_block[12] at a block of pointers,
/// i_block[13] at a block of pointers to such blocks, i_block[14] one level deeper. A zero
/// pointer is a hole (reads as zeroes).
extension Ext2FileSystem {
    var pointers: UInt64 { UInt64(geometry.pointersPerBlock) }

    /// Which i_block slot roots logical block `logical`, how deep its tree is, and the index of
    /// the block inside that tree. EFBIG past what the map reaches.
    func mapRoute(_ logical: UInt64) throws(FSError) -> (slot: Int, level: Int, rest: UInt64) {
        if logical < 12 { return (Int(logical), 0, 0) }
        var rest = logical - 12
        let p = pointers
        if rest < p { return (Inode.singleIndirect, 1, rest) }
        rest -= p
        if rest < p * p { return (Inode.doubleIndirect, 2, rest) }
        rest -= p * p
        guard rest < p * p * p else { throw FSError(.fileTooLarge, "block \(logical) is past the ext2 block map") }
        return (Inode.tripleIndirect, 3, rest)
    }

    /// The physical block for logical block `logical` of an inode, 0 for a hole.
    func mapBlock(_ inode: Inode, _ logical: UInt64, _ number: InodeNumber) throws(FSError) -> UInt32 {
        let (slot, level, rest) = try mapRoute(logical)
        var block = inode.block(slot)
        var remaining = rest
        var span: UInt64 = 1
        for _ in 1..<max(level, 1) { span *= pointers }
        var depth = level
        while depth > 0 {
            if block == 0 { return 0 }
            try checkFileBlock(block, "inode \(number) indirect block")
            let bytes = try metaBlock(block)
            block = bytes.le32(Int(remaining / span) * 4)
            remaining %= span
            span /= pointers
            depth -= 1
        }
        if block != 0 { try checkFileBlock(block, "inode \(number) block \(logical)") }
        return block
    }

    /// The physical block for `logical`, allocating it (and the indirect blocks on the way) when
    /// it is a hole. Updates i_blocks in `inode`; the caller stores the inode. `fresh` tells that
    /// the data block is new (its old contents are not the file's).
    func mapOrAllocate(_ inode: inout Inode, _ logical: UInt64, _ number: InodeNumber, goal: UInt32) throws(FSError) -> (block: UInt32, fresh: Bool) {
        let (slot, level, rest) = try mapRoute(logical)
        let unit = UInt32(blockSize / 512)
        func account() throws(FSError) {
            guard inode.blocks512 <= UInt32.max - unit else { throw FSError(.fileTooLarge, "inode \(number): i_blocks would overflow") }
        }
        var block = inode.block(slot)
        var fresh = false
        if block == 0 {
            try account()
            block = try allocateBlock(near: goal)
            inode.blocks512 += unit
            inode.setBlock(slot, block)
            fresh = true
            if level > 0 { try writeMetaBlock(block, [UInt8](repeating: 0, count: blockSize)) }
        }
        var remaining = rest
        var span: UInt64 = 1
        for _ in 1..<max(level, 1) { span *= pointers }
        var depth = level
        while depth > 0 {
            try checkFileBlock(block, "inode \(number) indirect block")
            let parent = block
            let offset = Int(remaining / span) * 4
            block = try metaBlock(parent).le32(offset)
            fresh = false
            if block == 0 {
                try account()
                block = try allocateBlock(near: parent &+ 1)
                inode.blocks512 += unit
                fresh = true
                if depth > 1 { try writeMetaBlock(block, [UInt8](repeating: 0, count: blockSize)) }
                var bytes = try takeMetaBlock(parent)
                bytes.setLE32(offset, block)
                try writeMetaRange(parent, bytes, offset: offset, count: 4)
            }
            remaining %= span
            span /= pointers
            depth -= 1
        }
        if !fresh { try checkFileBlock(block, "inode \(number) block \(logical)") }
        return (block, fresh)
    }

    /// Frees every block mapping logical blocks `first` and up, and the indirect blocks left
    /// empty; adjusts i_blocks. The caller stores the inode.
    func releaseBlocks(_ inode: inout Inode, from first: UInt64, _ number: InodeNumber) throws(FSError) {
        let unit = UInt32(blockSize / 512)
        for index in 0..<12 where UInt64(index) >= first {
            let block = inode.block(index)
            guard block != 0 else { continue }
            try freeBlock(block)
            inode.blocks512 = inode.blocks512 >= unit ? inode.blocks512 - unit : 0
            inode.setBlock(index, 0)
        }
        var base: UInt64 = 12
        var covered = pointers
        for (slot, level) in [(Inode.singleIndirect, 1), (Inode.doubleIndirect, 2), (Inode.tripleIndirect, 3)] {
            let block = inode.block(slot)
            if block != 0 && first < base + covered {
                if try releaseTree(block, level: level, base: base, first: first, &inode, number) { inode.setBlock(slot, 0) }
            }
            base += covered
            covered *= pointers
        }
    }

    /// Frees what an indirect block at `level` (1 = points at data) maps from `first` on; true
    /// when the indirect block itself was freed.
    private func releaseTree(_ block: UInt32, level: Int, base: UInt64, first: UInt64,
                             _ inode: inout Inode, _ number: InodeNumber) throws(FSError) -> Bool {
        try checkFileBlock(block, "inode \(number) indirect block")
        let unit = UInt32(blockSize / 512)
        var childSpan: UInt64 = 1
        for _ in 1..<level { childSpan *= pointers }
        var bytes = try metaBlock(block)
        var changed = false
        for index in 0..<geometry.pointersPerBlock {
            let childBase = base + UInt64(index) * childSpan
            if childBase + childSpan <= first { continue }
            let child = bytes.le32(index * 4)
            guard child != 0 else { continue }
            if level == 1 {
                try freeBlock(child)
                inode.blocks512 = inode.blocks512 >= unit ? inode.blocks512 - unit : 0
            } else if try !releaseTree(child, level: level - 1, base: childBase, first: first, &inode, number) {
                continue
            }
            bytes.setLE32(index * 4, 0)
            changed = true
        }
        if first <= base || bytes.allSatisfy({ $0 == 0 }) {
            try freeBlock(block)
            inode.blocks512 = inode.blocks512 >= unit ? inode.blocks512 - unit : 0
            return true
        }
        if changed { try writeMetaBlock(block, bytes) }
        return false
    }
}
