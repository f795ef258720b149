import VFSCore

/// One 32-byte entry of the group descriptor table (ext2_fs.h `struct ext2_group_desc`), which
/// starts in the block after the superblock's.
struct GroupDescriptor {
    static let size = 32

    var blockBitmap: UInt32
    var inodeBitmap: UInt32
    var inodeTable: UInt32
    var freeBlocks: UInt16
    var freeInodes: UInt16
    var usedDirectories: UInt16
    /// The remaining 14 bytes (bg_flags, bg_reserved, checksums of later formats), kept as read.
    var rest: [UInt8]

    init(_ bytes: [UInt8], at offset: Int) {
        blockBitmap = bytes.le32(offset)
        inodeBitmap = bytes.le32(offset + 4)
        inodeTable = bytes.le32(offset + 8)
        freeBlocks = bytes.le16(offset + 12)
        freeInodes = bytes.le16(offset + 14)
        usedDirectories = bytes.le16(offset + 16)
        rest = Array(bytes[(offset + 18)..<(offset + 32)])
    }

    func store(into bytes: inout [UInt8], at offset: Int) {
        bytes.setLE32(offset, blockBitmap)
        bytes.setLE32(offset + 4, inodeBitmap)
        bytes.setLE32(offset + 8, inodeTable)
        bytes.setLE16(offset + 12, freeBlocks)
        bytes.setLE16(offset + 14, freeInodes)
        bytes.setLE16(offset + 16, usedDirectories)
        bytes.replaceSubrange((offset + 18)..<(offset + 32), with: rest)
    }

    /// Checks that the bitmaps and inode table lie inside the group (as the kernel's
    /// ext2_check_descriptors does) and that the free counts fit the group.
    func validate(group: Int, _ geometry: Geometry) throws(FSError) {
        let start = geometry.groupStart(group)
        let end = UInt64(start) + UInt64(geometry.blocksInGroup(group))
        func inside(_ block: UInt32, _ count: UInt32) -> Bool {
            UInt64(block) >= UInt64(start) && UInt64(block) + UInt64(count) <= end
        }
        guard inside(blockBitmap, 1) else { throw FSError.corrupted("group \(group): block bitmap at \(blockBitmap) is outside the group") }
        guard inside(inodeBitmap, 1) else { throw FSError.corrupted("group \(group): inode bitmap at \(inodeBitmap) is outside the group") }
        guard inside(inodeTable, geometry.inodeTableBlocks) else {
            throw FSError.corrupted("group \(group): inode table at \(inodeTable) (\(geometry.inodeTableBlocks) blocks) is outside the group")
        }
        let area = start + geometry.superblockAreaBlocks(group)
        guard blockBitmap >= area, inodeBitmap >= area, inodeTable >= area else {
            throw FSError.corrupted("group \(group): bitmaps or inode table overlap the superblock and descriptor area")
        }
        guard UInt32(freeBlocks) <= geometry.blocksInGroup(group) else {
            throw FSError.corrupted("group \(group): \(freeBlocks) free blocks in a group of \(geometry.blocksInGroup(group))")
        }
        guard UInt32(freeInodes) <= geometry.inodesPerGroup, UInt32(usedDirectories) <= geometry.inodesPerGroup else {
            throw FSError.corrupted("group \(group): \(freeInodes) free inodes, \(usedDirectories) directories in a group of \(geometry.inodesPerGroup)")
        }
    }
}
