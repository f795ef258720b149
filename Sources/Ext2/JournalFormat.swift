import VFSCore

/// The jbd2 on-disk format (ext3/ext4 journals; Linux include/linux/jbd2.h, e2fsprogs
/// lib/ext2fs/kernel-jbd.h). Every journal field is big-endian, unlike the rest of ext2.
///
/// A journal is a circular log in the blocks of the journal inode: block 0 is the journal
/// superblock, blocks s_first..<s_maxlen hold transactions. A transaction is one or more
/// descriptor blocks, each followed by the copies of the blocks its tags name, then a commit
/// block; revoke blocks may sit between them. Every block but the copies starts with the same
/// 12-byte header carrying the transaction's sequence number.
enum JournalFormat {
    /// JBD2_MAGIC_NUMBER, h_magic of every header (and of the superblock).
    static let magic: UInt32 = 0xC03B_3998
    static let headerSize = 12

    // h_blocktype.
    static let descriptorBlock: UInt32 = 1
    static let commitBlock: UInt32 = 2
    static let superblockV1: UInt32 = 3
    static let superblockV2: UInt32 = 4
    static let revokeBlock: UInt32 = 5

    // Tag flags (t_flags, the low 16 bits of the tag's second word).
    /// The copy's first four bytes were the magic number and are stored as zero.
    static let flagEscape: UInt32 = 1
    /// No 16-byte UUID follows this tag (every tag but a descriptor's first).
    static let flagSameUUID: UInt32 = 2
    static let flagLastTag: UInt32 = 8
    static let uuidSize = 16

    // Journal superblock features (s_feature_*). Only revoke is understood.
    static let compatChecksum: UInt32 = 0x1
    static let incompatRevoke: UInt32 = 0x1
    static let incompat64Bit: UInt32 = 0x2
    static let incompatAsyncCommit: UInt32 = 0x4
    static let incompatCsumV2: UInt32 = 0x8
    static let incompatCsumV3: UInt32 = 0x10
    static let incompatFastCommit: UInt32 = 0x20
    static let incompatSupported: UInt32 = incompatRevoke

    static let compatNames: [UInt32: String] = [0x1: "journal_checksum"]
    static let incompatNames: [UInt32: String] = [
        0x1: "journal_incompat_revoke", 0x2: "journal_64bit", 0x4: "journal_async_commit",
        0x8: "journal_checksum_v2", 0x10: "journal_checksum_v3", 0x20: "journal_fast_commit",
    ]

    /// Tag size without 64bit and checksum features: t_blocknr, t_checksum (unused), t_flags
    /// (journal_tag_bytes() with the t_blocknr_high word left off).
    static let tagSize = 8

    /// A block header (journal_header_t).
    struct Header {
        var blockType: UInt32
        var sequence: UInt32

        init(blockType: UInt32, sequence: UInt32) {
            self.blockType = blockType
            self.sequence = sequence
        }

        /// The header of `block`, nil when it does not start with the magic number.
        init?(_ block: [UInt8]) {
            guard block.count >= headerSize, block.be32(0) == magic else { return nil }
            blockType = block.be32(4)
            sequence = block.be32(8)
        }

        func store(into block: inout [UInt8]) {
            block.setBE32(0, magic)
            block.setBE32(4, blockType)
            block.setBE32(8, sequence)
        }
    }
}

/// The journal superblock (journal_superblock_t), kept raw so the fields not interpreted here
/// (UUID, users, checksum fields) are written back as they were.
struct JournalSuperblock {
    var raw: [UInt8]

    /// A new, empty version-2 superblock (what mke2fs writes for an internal journal) for a log
    /// of `maxLength` blocks, this one included, naming the file system's `uuid` (s_uuid, one
    /// user). No features: commits here never write revoke blocks (see `Journal`).
    static func empty(blockSize: Int, maxLength: UInt32, uuid: ArraySlice<UInt8>) -> JournalSuperblock {
        var raw = [UInt8](repeating: 0, count: blockSize)
        JournalFormat.Header(blockType: JournalFormat.superblockV2, sequence: 0).store(into: &raw)
        raw.setBE32(12, UInt32(blockSize))
        raw.setBE32(16, maxLength)
        raw.setBE32(20, 1)  // s_first
        raw.setBE32(24, 1)  // s_sequence
        raw.replaceSubrange(48..<64, with: uuid)
        raw.setBE32(64, 1)  // s_nr_users
        return JournalSuperblock(raw: raw)
    }

    var blockType: UInt32 { raw.be32(4) }
    var blockSize: UInt32 { raw.be32(12) }
    /// s_maxlen: blocks in the journal, the superblock included.
    var maxLength: UInt32 { raw.be32(16) }
    /// s_first: first block of the log.
    var first: UInt32 { raw.be32(20) }
    /// s_sequence: the first transaction expected in the log.
    var sequence: UInt32 { get { raw.be32(24) } set { raw.setBE32(24, newValue) } }
    /// s_start: block of the log's first transaction, 0 when the log is empty (clean).
    var start: UInt32 { get { raw.be32(28) } set { raw.setBE32(28, newValue) } }
    var errno: Int32 { Int32(bitPattern: raw.be32(32)) }
    // Version 2 only (zero in version 1).
    var featureCompat: UInt32 { blockType == JournalFormat.superblockV2 ? raw.be32(36) : 0 }
    var featureIncompat: UInt32 { blockType == JournalFormat.superblockV2 ? raw.be32(40) : 0 }
    var featureROCompat: UInt32 { blockType == JournalFormat.superblockV2 ? raw.be32(44) : 0 }
    var uuid: ArraySlice<UInt8> { raw[48..<64] }
    /// A write-back log's own field, in the first word of s_padding (0x5C; the log never goes
    /// on disk, so nothing else reads it): the file system's s_mnt_count of the mount that last
    /// took the log, one more than 0 so that an unset field matches no mount.
    var takenAtMountCount: UInt32 { get { raw.be32(0x5C) } set { raw.setBE32(0x5C, newValue) } }

    /// Names of the features this implementation does not understand, empty when there are none.
    var unsupportedFeatures: [String] {
        var names = Features.names(featureCompat, JournalFormat.compatNames, "journal compat")
        names += Features.names(featureIncompat & ~JournalFormat.incompatSupported, JournalFormat.incompatNames, "journal incompat")
        names += Features.names(featureROCompat, [:], "journal ro_compat")
        return names
    }

    /// Checks the fields the log's layout depends on against the journal inode.
    func validate(blockSize fsBlockSize: Int, inodeBlocks: UInt64) throws(FSError) {
        guard JournalFormat.Header(raw) != nil,
              blockType == JournalFormat.superblockV1 || blockType == JournalFormat.superblockV2 else {
            throw FSError.corrupted("journal superblock has no jbd2 magic or an unknown block type")
        }
        guard Int(blockSize) == fsBlockSize else {
            throw FSError.corrupted("journal block size \(blockSize) differs from the file system's \(fsBlockSize)")
        }
        guard maxLength >= 4, UInt64(maxLength) <= inodeBlocks else {
            throw FSError.corrupted("journal s_maxlen \(maxLength) with a journal inode of \(inodeBlocks) blocks")
        }
        guard first >= 1, first < maxLength else { throw FSError.corrupted("journal s_first \(first) (s_maxlen \(maxLength))") }
        guard start == 0 || (start >= first && start < maxLength) else {
            throw FSError.corrupted("journal s_start \(start) outside the log \(first)..<\(maxLength)")
        }
    }
}

/// Big-endian field access for the journal's structures.
extension Array where Element == UInt8 {
    @inline(__always) func be32(_ offset: Int) -> UInt32 {
        precondition(offset >= 0 && offset + 4 <= count)
        return withUnsafeBytes { UInt32(bigEndian: $0.loadUnaligned(fromByteOffset: offset, as: UInt32.self)) }
    }

    @inline(__always) mutating func setBE32(_ offset: Int, _ value: UInt32) {
        precondition(offset >= 0 && offset + 4 <= count)
        withUnsafeMutableBytes { $0.storeBytes(of: value.bigEndian, toByteOffset: offset, as: UInt32.self) }
    }
}
