import VFSCore

/// The VFS's view of inodes: cached attributes (path resolution asks for the attributes of
/// every directory it walks; the cache answers without a trip into the file system) and, per
/// inode, how many descriptors hold it open, which decides when an unlinked inode is evicted
/// (the `FileSystem` lifetime rule: evict when the link count is 0 and nothing holds it open).
///
/// Attributes are dropped whenever the VFS changes the inode (write, truncate, setattr, link,
/// unlink, rename), so a hit is always current: the VFS is the file systems' only user.
/// Bounded: past `capacity` entries, unopened entries are dropped (cheap to fetch again).
public struct InodeCache {
    struct Entry {
        var attributes: FileAttributes?
        var openCount = 0
        /// Unlinked (link count 0) while open: evict on the last close.
        var orphaned = false
    }

    public let capacity: Int
    private var entries: [VNode: Entry] = [:]
    public private(set) var hits = 0
    public private(set) var misses = 0

    public init(capacity: Int = 4096) {
        self.capacity = capacity
        entries.reserveCapacity(capacity + 1)
    }

    public var count: Int { entries.count }

    /// Cached attributes, or `fetch`'s answer (then cached).
    public mutating func attributes(of vnode: VNode, fetch: () throws(FSError) -> FileAttributes) throws(FSError) -> FileAttributes {
        if let cached = entries[vnode]?.attributes {
            hits += 1
            return cached
        }
        misses += 1
        let attributes = try fetch()
        if entries.count >= capacity { shrink() }
        entries[vnode, default: Entry()].attributes = attributes
        return attributes
    }

    public mutating func store(_ attributes: FileAttributes, for vnode: VNode) {
        if entries.count >= capacity { shrink() }
        entries[vnode, default: Entry()].attributes = attributes
    }

    public mutating func invalidate(_ vnode: VNode) {
        guard var entry = entries[vnode] else { return }
        entry.attributes = nil
        if entry.openCount == 0 && !entry.orphaned { entries[vnode] = nil } else { entries[vnode] = entry }
    }

    public mutating func opened(_ vnode: VNode) { entries[vnode, default: Entry()].openCount += 1 }

    /// Counts a close; true when it was the last and the inode is orphaned (evict it now).
    public mutating func closed(_ vnode: VNode) -> Bool {
        guard var entry = entries[vnode], entry.openCount > 0 else { return false }
        entry.openCount -= 1
        let evict = entry.openCount == 0 && entry.orphaned
        if entry.openCount == 0 { entry.orphaned = false }
        entries[vnode] = entry
        return evict
    }

    public func openCount(_ vnode: VNode) -> Int { entries[vnode]?.openCount ?? 0 }

    public mutating func markOrphaned(_ vnode: VNode) { entries[vnode, default: Entry()].orphaned = true }

    /// Orphans of one mount (to evict before it is unmounted).
    public func orphans(of mount: Int) -> [VNode] {
        entries.filter { $0.key.mount == mount && $0.value.orphaned }.map(\.key)
    }

    public mutating func forget(mount: Int) {
        entries = entries.filter { $0.key.mount != mount }
    }

    /// Drops every entry no descriptor holds (at least half of them when over capacity).
    private mutating func shrink() {
        entries = entries.filter { $0.value.openCount > 0 || $0.value.orphaned }
    }
}
