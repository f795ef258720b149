/// The contract between the VFS layer and one mounted file system (ext2 first). The VFS owns
/// paths, mount points, permissions, descriptors and caching policy; a `FileSystem` owns one
/// on-disk format and answers in inode numbers. Everything is synchronous and called from one
/// thread at a time (the VFS serialises); errors are `FSError` with a POSIX errno.
///
/// Permission checks are the VFS's job (it knows the caller's credentials from SO_PEERCRED); a
/// file system checks only what the format imposes (read-only mount: EROFS; full: ENOSPC; name
/// taken: EEXIST; not empty: ENOTEMPTY; wrong kind: ENOTDIR / EISDIR; link limit: EMLINK).
///
/// Lifetime of unlinked files (POSIX keeps an open file alive after its last name is gone): when
/// `unlink`, `removeDirectory` or `rename` drops an inode's link count to 0, the file system
/// keeps the inode and its blocks until the VFS calls `evict(_:)`. The VFS calls `evict` at once
/// when no descriptor holds the inode, otherwise on the last close, and for every such inode
/// before `unmount`.
public protocol FileSystem: AnyObject {
    /// A short name for logs and `df`: "ext2".
    var typeName: String { get }
    var rootInode: InodeNumber { get }
    /// Mounted read-only (asked for, or forced by a feature that is only safe to read).
    var isReadOnly: Bool { get }

    func attributes(of inode: InodeNumber) throws(FSError) -> FileAttributes
    func setAttributes(of inode: InodeNumber, _ changes: AttributeChanges) throws(FSError) -> FileAttributes

    /// The inode `name` names in `directory` ("." and ".." included). ENOENT if absent, ENOTDIR
    /// if `directory` is not a directory.
    func lookup(_ name: FileName, in directory: InodeNumber) throws(FSError) -> InodeNumber

    /// Entries of `directory` from `cookie` on (0 = from the start), handed to `body` in on-disk
    /// order with the cookie that resumes after each; stops early when `body` returns false.
    /// Cookies stay valid across calls while the directory is not changed.
    func readDirectory(_ directory: InodeNumber, from cookie: UInt64,
                       _ body: (DirectoryEntry, _ nextCookie: UInt64) -> Bool) throws(FSError)

    /// Reads up to `buffer.count` bytes at `offset`; returns how many (0 at or past the end).
    /// Holes read as zeroes. EISDIR for a directory.
    func read(_ inode: InodeNumber, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(FSError) -> Int
    /// Writes all of `buffer` at `offset`, growing the file (and allocating blocks) as needed;
    /// returns the count written. ENOSPC leaves what was written before the space ran out and
    /// returns that count if it is not 0. EFBIG past the format's largest file.
    func write(_ inode: InodeNumber, at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(FSError) -> Int
    /// Sets the size; blocks wholly past the new end are freed, a grown file reads zeroes.
    func truncate(_ inode: InodeNumber, to size: UInt64) throws(FSError)

    /// A new regular file (or fifo / socket / device node, by `type`) named `name` in
    /// `directory`, with the given permission bits and owner. EEXIST if the name is taken.
    func create(_ name: FileName, in directory: InodeNumber, type: FileType, permissions: UInt32,
                uid: UInt32, gid: UInt32) throws(FSError) -> InodeNumber
    func makeDirectory(_ name: FileName, in directory: InodeNumber, permissions: UInt32,
                       uid: UInt32, gid: UInt32) throws(FSError) -> InodeNumber
    func makeSymbolicLink(_ name: FileName, in directory: InodeNumber, target: [UInt8],
                          uid: UInt32, gid: UInt32) throws(FSError) -> InodeNumber
    func readSymbolicLink(_ inode: InodeNumber) throws(FSError) -> [UInt8]
    /// A new name for an existing non-directory inode (EPERM for a directory).
    func link(_ inode: InodeNumber, as name: FileName, in directory: InodeNumber) throws(FSError)

    /// Removes a non-directory's name (EISDIR for a directory); returns the inode it named.
    func unlink(_ name: FileName, in directory: InodeNumber) throws(FSError) -> InodeNumber
    /// Removes an empty directory (ENOTEMPTY otherwise); returns its inode.
    func removeDirectory(_ name: FileName, in directory: InodeNumber) throws(FSError) -> InodeNumber
    /// rename(2) within this file system: replaces an existing target of a compatible kind
    /// (a file by a file, an empty directory by a directory), refuses to move a directory into
    /// itself (EINVAL). Returns the replaced inode, if any (its link count dropped).
    func rename(_ name: FileName, in directory: InodeNumber, to newName: FileName,
                in newDirectory: InodeNumber) throws(FSError) -> InodeNumber?

    /// Frees an inode whose link count is 0 (see the type's comment). A no-op for a linked inode.
    func evict(_ inode: InodeNumber) throws(FSError)

    func statistics() throws(FSError) -> FileSystemStatistics
    /// Everything written so far reaches the block store, then the store is flushed.
    func sync() throws(FSError)
    /// `sync`, then marks the file system cleanly unmounted. No call is valid afterwards.
    func unmount() throws(FSError)
}
