import VFSCore

/// The ext2 file system (revisions 0 and 1), read-write, on any `BlockStore`.
///
/// Layout of this module, one concept per file: `Superblock` (fields, features, the checked
/// `Geometry`), `GroupDescriptor`, `Inode` (128-byte and larger inodes), `BlockMap` (direct and
/// single/double/triple indirect blocks), `Allocator` (bitmaps and free counts), `Directory`
/// (records, insert by splitting slack, delete by merging), `Ext2FileSystem` (mount, raw I/O,
/// the metadata cache, sync and unmount), the `FileSystem` operations in `Operations`,
/// `FileData` and `Namespace`, and ext3's journal: `JournalFormat` (jbd2 on disk), `Journal`
/// (commit, checkpoint, replay) and `Transaction` (the running transaction, commit policy, the
/// orphan list); `WriteBackLog` puts the same log in memory outside the image for plain ext2.
///
/// Supported on disk: what `mke2fs -t ext2` and `mke2fs -t ext3` make (has_journal, ext_attr,
/// resize_inode, dir_index, filetype, sparse_super, large_file) and images without those
/// features. Deliberate limits:
/// - an htree-indexed directory (dir_index) is read linearly and loses its EXT2_INDEX_FL on its
///   first change, as the kernel's ext2 does; indexes are never built;
/// - extended attributes are kept as they are; an evicted inode drops its reference to its
///   attribute block (freeing it with the last one); nothing reads or writes attributes;
/// - reads do not update atime; the reserved blocks (s_r_blocks_count) are reported by
///   `statistics` but not enforced, since the VFS, not the file system, knows who asks;
/// - group descriptor and superblock backups are left for e2fsck and resize2fs, as the kernel does.
/// Every field read from the image is checked before use; damage surfaces as `FSError.corrupted`
/// (EUCLEAN) or EIO, with a line to `log`.
public enum Ext2 {
    /// Reads and checks the superblock and group descriptors on `store` and returns the mounted
    /// file system. Unsupported features are refused with a message naming them (or the mount
    /// is forced read-only where reading is safe). `log` receives notes worth a line in the
    /// server's log (forced read-only, errors found in the image).
    ///
    /// `writeBackLog`: memory that outlives the process (the supervisor's CAP_PAGE_CACHE memfd)
    /// for a plain ext2 read-write mount to log its commits in, so a crash of the process keeps
    /// the image consistent (`WriteBackLog.swift`). Ignored for ext3 (its journal does that) and
    /// read-only mounts.
    public static func mount(store: BlockStore, readOnly: Bool, writeBackLog: BlockStore? = nil,
                             log: @escaping (String) -> Void) throws(FSError) -> FileSystem {
        try Ext2FileSystem(store: store, readOnly: readOnly, writeBackLog: writeBackLog, log: log)
    }
}
