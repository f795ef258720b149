import VFSCore

/// One record of a directory block (ext2_fs.h `struct ext2_dir_entry_2`): inode (4 bytes),
/// rec_len (2), name_len (1), file_type (1, with the filetype feature; otherwise the high byte
/// of a 16-bit name_len), then the name. Records tile the block exactly.
struct DirectoryRecord {
    var offset: Int
    var inode: UInt32
    var recordLength: Int
    var nameLength: Int
    var fileType: UInt8
    var nameRange: Range<Int> { (offset + 8)..<(offset + 8 + nameLength) }
    /// Bytes the record needs for its own name; the rest of rec_len is slack.
    var usedLength: Int { inode == 0 ? 0 : directoryRecordLength(nameLength: nameLength) }
}

/// Where a directory entry sits: which directory block (logical and physical), its record and
/// the record before it in the same block (for merging on removal).
struct EntryLocation {
    var logical: UInt64
    var block: UInt32
    var record: DirectoryRecord
    var previous: DirectoryRecord?
}

extension Ext2FileSystem {
    /// Largest directory this implementation walks: 2^20 blocks. Bigger sizes are taken as corrupt
    /// (no ext2 directory gets there: the kernel caps directories far below).
    static let maxDirectoryBlocks: UInt64 = 1 << 20

    /// Decodes rec_len (a 64 KiB block stores its full length as 65535 or 0).
    func decodeRecordLength(_ raw: UInt16) -> Int {
        if blockSize == 65536 && (raw == 65535 || raw == 0) { return 65536 }
        return Int(raw)
    }

    func encodeRecordLength(_ length: Int) -> UInt16 {
        length >= 65536 ? 65535 : UInt16(length)
    }

    /// The record at `offset`, checked as the kernel's ext2_check_page does: rec_len at least 12,
    /// 4-byte aligned, inside the block, covering the name; inode number in range.
    func record(in bytes: [UInt8], at offset: Int, directory: InodeNumber, logical: UInt64) throws(FSError) -> DirectoryRecord {
        guard offset + 8 <= blockSize else {
            throw corrupt("directory \(directory) block \(logical): record at \(offset) runs past the block")
        }
        let inode = bytes.le32(offset)
        let recordLength = decodeRecordLength(bytes.le16(offset + 4))
        let nameLength = geometry.fileType ? Int(bytes[offset + 6]) : Int(bytes.le16(offset + 6))
        let fileType = geometry.fileType ? bytes[offset + 7] : 0
        guard recordLength >= 12, recordLength % 4 == 0, offset + recordLength <= blockSize else {
            throw corrupt("directory \(directory) block \(logical): bad rec_len \(recordLength) at \(offset)")
        }
        guard directoryRecordLength(nameLength: nameLength) <= recordLength else {
            throw corrupt("directory \(directory) block \(logical): name_len \(nameLength) exceeds rec_len \(recordLength) at \(offset)")
        }
        guard inode <= geometry.inodesCount else {
            throw corrupt("directory \(directory) block \(logical): entry names inode \(inode) past \(geometry.inodesCount)")
        }
        if inode != 0 && nameLength == 0 {
            throw corrupt("directory \(directory) block \(logical): entry at \(offset) has an empty name")
        }
        return DirectoryRecord(offset: offset, inode: inode, recordLength: recordLength, nameLength: nameLength, fileType: fileType)
    }

    /// Number of blocks of a directory, checking its size is whole blocks and sane.
    func directoryBlocks(_ inode: Inode, _ number: InodeNumber) throws(FSError) -> UInt64 {
        let size = inode.size
        guard size % UInt64(blockSize) == 0 else {
            throw corrupt("directory \(number) has size \(size), not a multiple of the block size")
        }
        let blocks = size / UInt64(blockSize)
        guard blocks <= Self.maxDirectoryBlocks, blocks <= UInt64(geometry.blocksCount) else {
            throw corrupt("directory \(number) has an impossible size \(size)")
        }
        return blocks
    }

    /// A directory's block `logical`; a hole in a directory is corruption in ext2.
    func directoryBlock(_ inode: Inode, _ number: InodeNumber, _ logical: UInt64) throws(FSError) -> (UInt32, [UInt8]) {
        let block = try mapBlock(inode, logical, number)
        guard block != 0 else { throw corrupt("directory \(number) has a hole at block \(logical)") }
        return (block, try metaBlock(block))
    }

    /// Calls `body` for each record (used or not) of a directory from block `startBlock` on, in
    /// on-disk order, until it returns false.
    func forEachRecord(_ number: InodeNumber, _ inode: Inode, from startBlock: UInt64 = 0,
                       _ body: (_ logical: UInt64, _ block: UInt32, _ bytes: [UInt8], _ record: DirectoryRecord, _ previous: DirectoryRecord?) throws(FSError) -> Bool) throws(FSError) {
        let count = try directoryBlocks(inode, number)
        var logical = startBlock
        while logical < count {
            let (block, bytes) = try directoryBlock(inode, number, logical)
            var offset = 0
            var previous: DirectoryRecord? = nil
            while offset < blockSize {
                let entry = try record(in: bytes, at: offset, directory: number, logical: logical)
                guard try body(logical, block, bytes, entry, previous) else { return }
                previous = entry
                offset += entry.recordLength
            }
            logical += 1
        }
    }

    /// The entry called `name` in a directory, if any.
    func findEntry(_ name: FileName, in number: InodeNumber, _ inode: Inode) throws(FSError) -> EntryLocation? {
        var found: EntryLocation? = nil
        let wanted = name.bytes
        try forEachRecord(number, inode) { (logical, block, bytes, entry, previous) throws(FSError) in
            if entry.inode != 0 && entry.nameLength == wanted.count && bytes[entry.nameRange].elementsEqual(wanted) {
                found = EntryLocation(logical: logical, block: block, record: entry, previous: previous)
                return false
            }
            return true
        }
        return found
    }

    /// True when a directory holds nothing but "." and "..".
    func isEmptyDirectory(_ number: InodeNumber, _ inode: Inode) throws(FSError) -> Bool {
        var empty = true
        try forEachRecord(number, inode) { (_, _, bytes, entry, _) throws(FSError) in
            guard entry.inode != 0 else { return true }
            let name = bytes[entry.nameRange]
            if name.elementsEqual([0x2E]) || name.elementsEqual([0x2E, 0x2E]) { return true }
            empty = false
            return false
        }
        return empty
    }

    /// A directory being changed loses its htree index (EXT2_INDEX_FL): its blocks still read
    /// linearly, and the index would no longer describe them.
    func dropIndex(_ inode: inout Inode) {
        inode.flags &= ~Inode.indexFlag
    }

    func writeRecordHeader(_ bytes: inout [UInt8], _ offset: Int, inode: UInt32, recordLength: Int, name: [UInt8]?, type: FileType?) {
        bytes.setLE32(offset, inode)
        bytes.setLE16(offset + 4, encodeRecordLength(recordLength))
        if let name {
            if geometry.fileType {
                bytes[offset + 6] = UInt8(name.count)
                bytes[offset + 7] = type?.rawValue ?? 0
            } else {
                bytes.setLE16(offset + 6, UInt16(name.count))
            }
            bytes.replaceSubrange((offset + 8)..<(offset + 8 + name.count), with: name)
        }
    }

    /// Adds `name` -> `target` to a directory (the caller checked the name is free): into an
    /// unused record or the slack of a used one big enough, else into a new block at the end.
    /// Updates the directory inode (size, blocks, flags, times) in `inode` and stores it.
    func addEntry(_ name: FileName, target: InodeNumber, type: FileType, in number: InodeNumber, _ inode: inout Inode) throws(FSError) {
        let needed = directoryRecordLength(nameLength: name.bytes.count)
        var slot: (block: UInt32, bytes: [UInt8], record: DirectoryRecord)? = nil
        try forEachRecord(number, inode) { (_, block, bytes, entry, _) throws(FSError) in
            if entry.recordLength - entry.usedLength >= needed {
                slot = (block, bytes, entry)
                return false
            }
            return true
        }
        let now = Self.now()
        dropIndex(&inode)
        if let slot {
            let block = slot.block
            var bytes = slot.bytes
            var entry = slot.record
            var offset = entry.offset
            var length = entry.recordLength
            if entry.inode != 0 {
                // Split: the used record keeps what it needs, the new one takes the slack.
                let keep = entry.usedLength
                writeRecordHeader(&bytes, entry.offset, inode: entry.inode, recordLength: keep, name: nil, type: nil)
                offset = entry.offset + keep
                length = entry.recordLength - keep
                entry.recordLength = keep
            }
            writeRecordHeader(&bytes, offset, inode: UInt32(target), recordLength: length, name: name.bytes, type: type)
            try writeMetaRange(block, bytes, offset: entry.offset, count: offset + needed - entry.offset)
        } else {
            let logical = try directoryBlocks(inode, number)
            let block: UInt32
            do throws(FSError) { block = try mapOrAllocate(&inode, logical, number, goal: goalBlock(for: number)).block } catch {
                // An indirect block may have been allocated on the way; the inode must own it.
                try? storeInode(number, inode)
                throw error
            }
            var bytes = [UInt8](repeating: 0, count: blockSize)
            writeRecordHeader(&bytes, 0, inode: UInt32(target), recordLength: blockSize, name: name.bytes, type: type)
            do throws(FSError) { try writeMetaBlock(block, bytes) } catch {
                try? storeInode(number, inode)
                throw error
            }
            inode.size = (logical + 1) * UInt64(blockSize)
        }
        inode.modificationTime = now
        inode.changeTime = now
        try storeInode(number, inode)
    }

    /// Removes the entry at `location`: merged into the record before it, or (first in its block)
    /// marked unused.
    func removeEntry(_ location: EntryLocation, in number: InodeNumber, _ inode: inout Inode) throws(FSError) {
        var bytes = try metaBlock(location.block)
        if let previous = location.previous {
            let merged = previous.recordLength + location.record.recordLength
            bytes.setLE16(previous.offset + 4, encodeRecordLength(merged))
            try writeMetaRange(location.block, bytes, offset: previous.offset + 4, count: 2)
        } else {
            bytes.setLE32(location.record.offset, 0)
            try writeMetaRange(location.block, bytes, offset: location.record.offset, count: 4)
        }
        let now = Self.now()
        dropIndex(&inode)
        inode.modificationTime = now
        inode.changeTime = now
        try storeInode(number, inode)
    }

    /// Points an existing entry at another inode (rename over a target, ".." of a moved directory).
    func retarget(_ location: EntryLocation, to target: InodeNumber, type: FileType, in number: InodeNumber, _ inode: inout Inode) throws(FSError) {
        var bytes = try metaBlock(location.block)
        bytes.setLE32(location.record.offset, UInt32(target))
        if geometry.fileType { bytes[location.record.offset + 7] = type.rawValue }
        try writeMetaRange(location.block, bytes, offset: location.record.offset, count: 8)
        let now = Self.now()
        dropIndex(&inode)
        inode.modificationTime = now
        inode.changeTime = now
        try storeInode(number, inode)
    }
}
