import VFSCore

/// An on-disk inode (ext2_fs.h `struct ext2_inode`, 128 bytes, plus the extra fields of larger
/// inodes: i_extra_isize and the *_extra time words). Kept raw so fields this implementation does
/// not interpret (i_generation, i_faddr, extended attributes stored in the inode) survive.
struct Inode {
    var raw: [UInt8]

    init(raw: [UInt8]) { self.raw = raw }

    static let directBlocks = 12
    static let singleIndirect = 12
    static let doubleIndirect = 13
    static let tripleIndirect = 14
    /// EXT2_INDEX_FL: the directory carries an htree index (dir_index) in its blocks.
    static let indexFlag: UInt32 = 0x1000
    /// EXT4_EXTENTS_FL / EXT4_INLINE_DATA_FL: formats ext2 cannot read.
    static let extentsFlag: UInt32 = 0x80000
    static let inlineDataFlag: UInt32 = 0x10000000
    /// EXT2_LINK_MAX.
    static let linkMax: UInt16 = 32000

    var mode: UInt16 { get { raw.le16(0) } set { raw.setLE16(0, newValue) } }
    var type: FileType { FileType(modeBits: UInt32(mode)) }
    var isDirectory: Bool { type == .directory }

    /// i_uid with l_i_uid_high (osd2, Linux) for 32-bit ids.
    var uid: UInt32 {
        get { UInt32(raw.le16(2)) | UInt32(raw.le16(120)) << 16 }
        set { raw.setLE16(2, UInt16(truncatingIfNeeded: newValue)); raw.setLE16(120, UInt16(truncatingIfNeeded: newValue >> 16)) }
    }
    var gid: UInt32 {
        get { UInt32(raw.le16(24)) | UInt32(raw.le16(122)) << 16 }
        set { raw.setLE16(24, UInt16(truncatingIfNeeded: newValue)); raw.setLE16(122, UInt16(truncatingIfNeeded: newValue >> 16)) }
    }

    /// i_size, with i_size_high (i_dir_acl in revision 0) as the upper half for regular files
    /// (large_file). Directories keep the upper word zero in ext2.
    var size: UInt64 {
        get {
            let low = UInt64(raw.le32(4))
            return type == .regular ? low | UInt64(raw.le32(108)) << 32 : low
        }
        set {
            raw.setLE32(4, UInt32(truncatingIfNeeded: newValue))
            if type == .regular { raw.setLE32(108, UInt32(truncatingIfNeeded: newValue >> 32)) }
        }
    }

    var linksCount: UInt16 { get { raw.le16(26) } set { raw.setLE16(26, newValue) } }
    /// i_blocks: 512-byte units, data plus indirect plus extended-attribute blocks.
    var blocks512: UInt32 { get { raw.le32(28) } set { raw.setLE32(28, newValue) } }
    var flags: UInt32 { get { raw.le32(32) } set { raw.setLE32(32, newValue) } }
    var dtime: UInt32 { get { raw.le32(20) } set { raw.setLE32(20, newValue) } }
    /// i_file_acl: the extended-attribute block (ext_attr), 0 for none.
    var fileACL: UInt32 { get { raw.le32(104) } set { raw.setLE32(104, newValue) } }

    /// i_block[index], index 0...14.
    func block(_ index: Int) -> UInt32 { raw.le32(40 + 4 * index) }
    mutating func setBlock(_ index: Int, _ value: UInt32) { raw.setLE32(40 + 4 * index, value) }

    /// The 60 bytes of i_block, where a fast symlink keeps its target.
    var blockArea: ArraySlice<UInt8> { raw[40..<100] }

    var extraSize: Int { raw.count > 128 ? Int(raw.le16(128)) : 0 }

    /// The seconds word and, where the inode is large enough, the *_extra word
    /// (bits 0-1: epoch above 32 bits, bits 2-31: nanoseconds).
    private func time(_ offset: Int, extra: Int) -> FileTime {
        // i_crtime itself lives in the extra area; absent in small inodes.
        if offset >= 128 && offset - 128 + 4 > extraSize { return FileTime(seconds: 0) }
        var seconds = Int64(Int32(bitPattern: raw.le32(offset)))
        var nanoseconds: UInt32 = 0
        if extra - 128 + 4 <= extraSize, extra + 4 <= raw.count {
            let word = raw.le32(extra)
            seconds += Int64(word & 3) << 32
            nanoseconds = word >> 2
            if nanoseconds >= 1_000_000_000 { nanoseconds = 0 }
        }
        return FileTime(seconds: seconds, nanoseconds: nanoseconds)
    }

    private mutating func setTime(_ offset: Int, extra: Int, _ time: FileTime) {
        if offset >= 128 && offset - 128 + 4 > extraSize { return }
        raw.setLE32(offset, UInt32(truncatingIfNeeded: time.seconds))
        if extra - 128 + 4 <= extraSize, extra + 4 <= raw.count {
            // ext4-style extra epoch: the seconds word is signed, the two epoch bits extend it
            // (wrapping arithmetic: a client may hand in any Int64).
            let epoch = UInt32(truncatingIfNeeded: (time.seconds &- Int64(Int32(truncatingIfNeeded: time.seconds))) >> 32) & 3
            raw.setLE32(extra, epoch | (min(time.nanoseconds, 999_999_999) << 2))
        }
    }

    var accessTime: FileTime { get { time(8, extra: 140) } set { setTime(8, extra: 140, newValue) } }
    var changeTime: FileTime { get { time(12, extra: 132) } set { setTime(12, extra: 132, newValue) } }
    var modificationTime: FileTime { get { time(16, extra: 136) } set { setTime(16, extra: 136, newValue) } }
    var creationTime: FileTime { get { time(144, extra: 148) } set { setTime(144, extra: 148, newValue) } }

    /// A fast symlink keeps its target in i_block and owns no data block (i_blocks counts only an
    /// extended-attribute block, if any).
    func isFastSymlink(blockSize: Int) -> Bool {
        let aclBlocks: UInt32 = fileACL != 0 ? UInt32(blockSize / 512) : 0
        return type == .symbolicLink && blocks512 == aclBlocks
    }

    /// A fresh inode: everything zero, i_extra_isize set where the inode has room for it (as
    /// mke2fs asks with s_want_extra_isize), so the nanosecond and creation-time fields are used.
    static func fresh(size: Int, wantExtra: UInt16) -> Inode {
        var inode = Inode(raw: [UInt8](repeating: 0, count: size))
        if size > 128 {
            let extra = min(Int(wantExtra == 0 ? 32 : wantExtra), size - 128) & ~3
            inode.raw.setLE16(128, UInt16(extra))
        }
        return inode
    }
}
