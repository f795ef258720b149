import VFSCore

/// The ext2 superblock: 1024 bytes at byte 1024 of the device (ext2_fs.h `struct ext2_super_block`).
/// Kept as its raw bytes so fields this implementation does not interpret (UUID, volume name,
/// journal and hash fields, newer additions) are written back unchanged.
struct Superblock {
    static let offset: UInt64 = 1024
    static let size = 1024
    static let magic: UInt16 = 0xEF53

    var raw: [UInt8]

    // Field offsets in struct ext2_super_block.
    var inodesCount: UInt32 { raw.le32(0) }
    var blocksCount: UInt32 { raw.le32(4) }
    var reservedBlocksCount: UInt32 { raw.le32(8) }
    var freeBlocksCount: UInt32 { get { raw.le32(12) } set { raw.setLE32(12, newValue) } }
    var freeInodesCount: UInt32 { get { raw.le32(16) } set { raw.setLE32(16, newValue) } }
    var firstDataBlock: UInt32 { raw.le32(20) }
    var logBlockSize: UInt32 { raw.le32(24) }
    var blocksPerGroup: UInt32 { raw.le32(32) }
    var inodesPerGroup: UInt32 { raw.le32(40) }
    var mountTime: UInt32 { get { raw.le32(44) } set { raw.setLE32(44, newValue) } }
    var writeTime: UInt32 { get { raw.le32(48) } set { raw.setLE32(48, newValue) } }
    var mountCount: UInt16 { get { raw.le16(52) } set { raw.setLE16(52, newValue) } }
    var magicNumber: UInt16 { raw.le16(56) }
    /// s_state: EXT2_VALID_FS (1) when cleanly unmounted, EXT2_ERROR_FS (2) when errors were found.
    var state: UInt16 { get { raw.le16(58) } set { raw.setLE16(58, newValue) } }
    var revisionLevel: UInt32 { raw.le32(76) }
    /// s_first_ino: first inode not reserved (always 11 in revision 0).
    var firstInode: UInt32 { revisionLevel == 0 ? 11 : raw.le32(84) }
    var inodeSize: Int { revisionLevel == 0 ? 128 : Int(raw.le16(88)) }
    var featureCompat: UInt32 { revisionLevel == 0 ? 0 : raw.le32(92) }
    var featureIncompat: UInt32 {
        get { revisionLevel == 0 ? 0 : raw.le32(96) }
        set { raw.setLE32(96, newValue) }
    }
    var featureROCompat: UInt32 { revisionLevel == 0 ? 0 : raw.le32(100) }
    var reservedGDTBlocks: UInt32 { UInt32(raw.le16(206)) }
    var wantExtraInodeSize: UInt16 { raw.le16(0x15E) }
    /// s_journal_inum: the journal's inode (has_journal), 0 for an external journal.
    var journalInode: UInt32 { raw.le32(0xE0) }
    /// s_uuid: the file system's identity (a write-back log names it, to refuse another's).
    var uuid: ArraySlice<UInt8> { raw[0x68..<0x78] }
    /// s_last_orphan: head of the orphan list (ext3), inodes unlinked while still open, chained
    /// through their i_dtime.
    var lastOrphan: UInt32 { get { raw.le32(0xE8) } set { raw.setLE32(0xE8, newValue) } }

    static let validFS: UInt16 = 1
    static let errorFS: UInt16 = 2
}

/// Feature flags (ext2_fs.h EXT2_FEATURE_*): which ones this implementation reads and writes, and
/// names for the rest so a refusal can say what it refused.
enum Features {
    /// EXT3_FEATURE_COMPAT_HAS_JOURNAL: a jbd2 journal, in the inode s_journal_inum.
    static let compatHasJournal: UInt32 = 0x0004
    static let compatExtAttr: UInt32 = 0x0008
    static let compatResizeInode: UInt32 = 0x0010
    static let compatDirIndex: UInt32 = 0x0020

    static let roCompatSparseSuper: UInt32 = 0x0001
    static let roCompatLargeFile: UInt32 = 0x0002
    /// EXT2_FEATURE_RO_COMPAT_BTREE_DIR was never used on disk; safe to ignore.
    static let roCompatBtreeDir: UInt32 = 0x0004
    static let roCompatSupported: UInt32 = roCompatSparseSuper | roCompatLargeFile | roCompatBtreeDir

    static let incompatFiletype: UInt32 = 0x0002
    static let incompatSupported: UInt32 = incompatFiletype
    /// EXT3_FEATURE_INCOMPAT_RECOVER (needs_recovery): mounted with a journal and not cleanly
    /// unmounted; understood only together with has_journal.
    static let incompatRecover: UInt32 = 0x0004

    static let incompatNames: [UInt32: String] = [
        0x0001: "compression", 0x0002: "filetype", 0x0004: "needs_recovery", 0x0008: "journal_dev",
        0x0010: "meta_bg", 0x0040: "extent", 0x0080: "64bit", 0x0100: "mmp", 0x0200: "flex_bg",
        0x0400: "ea_inode", 0x1000: "dirdata", 0x2000: "metadata_csum_seed", 0x4000: "large_dir",
        0x8000: "inline_data", 0x10000: "encrypt", 0x20000: "casefold",
    ]
    static let roCompatNames: [UInt32: String] = [
        0x0001: "sparse_super", 0x0002: "large_file", 0x0004: "btree_dir", 0x0008: "huge_file",
        0x0010: "uninit_bg", 0x0020: "dir_nlink", 0x0040: "extra_isize", 0x0080: "has_snapshot",
        0x0100: "quota", 0x0200: "bigalloc", 0x0400: "metadata_csum", 0x0800: "replica",
        0x1000: "read-only", 0x2000: "project", 0x4000: "shared_blocks", 0x8000: "verity",
    ]

    /// Names of the bits in `mask`, unknown bits as hex.
    static func names(_ mask: UInt32, _ table: [UInt32: String], _ kind: String) -> [String] {
        (0..<32).compactMap { bit -> String? in
            let flag = UInt32(1) << UInt32(bit)
            guard mask & flag != 0 else { return nil }
            return table[flag] ?? "unknown \(kind) feature 0x\(String(flag, radix: 16))"
        }
    }
}

/// The figures derived from a checked superblock that every other part relies on.
struct Geometry {
    let blockSize: Int
    let blocksCount: UInt32
    let firstDataBlock: UInt32
    let blocksPerGroup: UInt32
    let inodesPerGroup: UInt32
    let inodesCount: UInt32
    let inodeSize: Int
    let firstInode: UInt32
    let groupCount: Int
    /// Blocks holding the group descriptor table (32-byte ext2_group_desc entries).
    let descriptorBlocks: Int
    let reservedGDTBlocks: UInt32
    let sparseSuper: Bool
    let largeFile: Bool
    let fileType: Bool
    let inodeTableBlocks: UInt32
    /// Block pointers per indirect block.
    let pointersPerBlock: Int

    /// Checks the superblock fields the layout depends on (bad magic, absurd sizes and counts).
    init(_ sb: Superblock, capacity: UInt64) throws(FSError) {
        guard sb.magicNumber == Superblock.magic else {
            throw FSError.corrupted("bad superblock magic 0x\(String(sb.magicNumber, radix: 16)) (ext2 is 0xef53)")
        }
        guard sb.revisionLevel <= 1 else {
            throw FSError(.notSupported, "superblock revision \(sb.revisionLevel) (ext2 revisions 0 and 1 are supported)")
        }
        // ext2 allows 1 KiB to 64 KiB blocks (s_log_block_size 0...6).
        guard sb.logBlockSize <= 6 else { throw FSError.corrupted("s_log_block_size \(sb.logBlockSize)") }
        blockSize = 1024 << Int(sb.logBlockSize)
        blocksCount = sb.blocksCount
        firstDataBlock = sb.firstDataBlock
        // s_first_data_block is 1 for 1 KiB blocks (the superblock fills block 1), else 0.
        guard firstDataBlock == (blockSize == 1024 ? 1 : 0) else {
            throw FSError.corrupted("s_first_data_block \(firstDataBlock) with \(blockSize)-byte blocks")
        }
        guard blocksCount > firstDataBlock + 1 else { throw FSError.corrupted("s_blocks_count \(blocksCount)") }
        guard UInt64(blocksCount) * UInt64(blockSize) <= capacity else {
            throw FSError.corrupted("file system of \(blocksCount) blocks of \(blockSize) bytes is larger than the device (\(capacity) bytes)")
        }
        blocksPerGroup = sb.blocksPerGroup
        inodesPerGroup = sb.inodesPerGroup
        // Each group's bitmaps are one block, so a group holds at most 8 * block size of each.
        guard blocksPerGroup >= 8, blocksPerGroup <= UInt32(blockSize * 8), blocksPerGroup % 8 == 0 else {
            throw FSError.corrupted("s_blocks_per_group \(blocksPerGroup)")
        }
        guard inodesPerGroup >= 1, inodesPerGroup <= UInt32(blockSize * 8) else {
            throw FSError.corrupted("s_inodes_per_group \(inodesPerGroup)")
        }
        let groups = (UInt64(blocksCount - firstDataBlock) + UInt64(blocksPerGroup) - 1) / UInt64(blocksPerGroup)
        groupCount = Int(groups)
        inodesCount = sb.inodesCount
        guard UInt64(inodesCount) == groups * UInt64(inodesPerGroup) else {
            throw FSError.corrupted("s_inodes_count \(inodesCount) is not \(groups) groups of \(inodesPerGroup)")
        }
        inodeSize = sb.inodeSize
        guard inodeSize >= 128, inodeSize <= blockSize, inodeSize & (inodeSize - 1) == 0 else {
            throw FSError.corrupted("s_inode_size \(inodeSize)")
        }
        firstInode = sb.firstInode
        guard firstInode >= 11, firstInode < inodesCount else { throw FSError.corrupted("s_first_ino \(firstInode)") }
        descriptorBlocks = (groupCount * 32 + blockSize - 1) / blockSize
        sparseSuper = sb.featureROCompat & Features.roCompatSparseSuper != 0
        largeFile = sb.featureROCompat & Features.roCompatLargeFile != 0
        fileType = sb.featureIncompat & Features.incompatFiletype != 0
        reservedGDTBlocks = sb.featureCompat & Features.compatResizeInode != 0 ? sb.reservedGDTBlocks : 0
        inodeTableBlocks = UInt32((Int(inodesPerGroup) * inodeSize + blockSize - 1) / blockSize)
        pointersPerBlock = blockSize / 4
        guard UInt64(descriptorBlocks) + UInt64(reservedGDTBlocks) + 1 < UInt64(blocksPerGroup) else {
            throw FSError.corrupted("\(descriptorBlocks) descriptor blocks and \(reservedGDTBlocks) reserved ones do not fit a group")
        }
    }

    /// First block of group `group`.
    func groupStart(_ group: Int) -> UInt32 { firstDataBlock + UInt32(group) * blocksPerGroup }

    /// Blocks in group `group` (the last one may be short).
    func blocksInGroup(_ group: Int) -> UInt32 {
        let start = groupStart(group)
        return Swift.min(blocksPerGroup, blocksCount - start)
    }

    /// Whether group `group` carries a superblock and descriptor backup (sparse_super: groups 0,
    /// 1 and powers of 3, 5 and 7; without it every group).
    func hasSuperblockBackup(_ group: Int) -> Bool {
        guard sparseSuper else { return true }
        if group <= 1 { return true }
        for base in [3, 5, 7] {
            var power = base
            while power < group { power *= base }
            if power == group { return true }
        }
        return false
    }

    /// Blocks at the start of a group taken by the superblock, descriptor table and reserved
    /// descriptor blocks (resize_inode), when the group has a backup.
    func superblockAreaBlocks(_ group: Int) -> UInt32 {
        hasSuperblockBackup(group) ? 1 + UInt32(descriptorBlocks) + reservedGDTBlocks : 0
    }

    /// Largest logical block a file can map: 12 direct, then single, double, triple indirect.
    var mappableBlocks: UInt64 {
        let p = UInt64(pointersPerBlock)
        return 12 + p + p * p + p * p * p
    }

    /// Largest file size: what the block map reaches, what i_blocks (32-bit count of 512-byte
    /// units, no huge_file) can account for, and 2 GiB - 1 without large_file.
    var maxFileSize: UInt64 {
        guard largeFile else { return UInt64(Int32.max) }
        let byMap = mappableBlocks * UInt64(blockSize)
        // i_blocks also counts indirect blocks; leave room for them (about 1/pointersPerBlock).
        let byCount = UInt64(UInt32.max) * 512
        let dataShare = byCount - byCount / UInt64(pointersPerBlock) - UInt64(4 * blockSize)
        return Swift.min(byMap, dataShare - dataShare % UInt64(blockSize))
    }
}
