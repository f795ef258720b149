import VFSCore

/// A backing store that can hold a page cache's pages itself and move them between the device
/// and the pool by their place in it, with no copy on the cache's side.
///
/// `StorageBlockStore` is one: the pool is a shared-memory region registered with storage_server
/// (MSG_BLOCK_REGISTER_BUFFER), so a page-cache miss, a read-ahead or a write-back is a block
/// request naming an offset in that region, and on NVMe the controller DMAs straight into (or
/// out of) the cached page. A `PageCache` built on such a store asks it for its pool once, at
/// creation; stores that are not `DirectPageIO` (image files, RAM stores) keep the cache's own
/// pool and the copying path.
public protocol DirectPageIO: BlockStore {
    /// Memory for a page cache's pool of `byteCount` bytes (page aligned), kept alive as long as
    /// the store; nil when the store cannot provide it (the cache then allocates its own pool
    /// and uses `read`/`write`). Called once per cache; a store provides at most one pool.
    func providePagePool(byteCount: Int) -> UnsafeMutableRawPointer?
    /// Reads `count` bytes (whole sectors) at `deviceOffset` into the pool at `poolOffset`.
    func readPages(at deviceOffset: UInt64, poolOffset: Int, count: Int) throws(FSError)
    /// Writes `count` bytes (whole sectors) of the pool at `poolOffset` to `deviceOffset`.
    func writePages(at deviceOffset: UInt64, poolOffset: Int, count: Int) throws(FSError)
}
