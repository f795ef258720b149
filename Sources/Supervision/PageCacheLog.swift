import Glibc
import SystemPackage

/// What CAP_PAGE_CACHE stands for: a memfd the supervisor creates once per server (at its first
/// start with the grant) and hands to every instance, so it outlives each one. vfs_server keeps
/// the write-back log of a plain ext2 mount in it (Ext2 `WriteBackLog`): a commit goes to this
/// memory before it goes in place, and the next instance replays it after a crash. The
/// supervisor never reads it; its size is sealed (F_SEAL_SHRINK, F_SEAL_GROW), so a server
/// cannot pull the memory from under the supervisor or grow it without bound.
///
/// Memory only: it survives the server's crash, not the supervisor's exit or a power loss.
public final class PageCacheLog {
    /// servers.conf `page_cache_log` when not given.
    public static let defaultSize = 16 << 20
    /// The accepted sizes: room for a log of 64 blocks of 4 KiB at least, at most 1 GiB.
    public static let sizeRange = (256 << 10)...(1 << 30)

    /// The memfd, owned: closed when the log is released.
    public let fileDescriptor: FileDescriptor
    public let size: Int

    /// Creates the memfd `limitless-page-cache:NAME` (visible in /proc/PID/fd) of `size` bytes,
    /// zero-filled (a new, empty log); untouched pages cost no memory.
    public init(name: String, size: Int) throws(CheckpointError) {
        fileDescriptor = try SealedMemory.create(name: "limitless-page-cache:" + name, size: size)
        self.size = size
    }

    deinit { _ = try? fileDescriptor.close() }
}

extension Supervisor {
    /// CAP_PAGE_CACHE's descriptor for a server granted it: its page-cache log, created at the
    /// first call and the same for every later instance. Empty when not granted.
    func pageCacheLogDescriptors(_ server: ServerProcess, _ config: ServerConfiguration) throws(LaunchError) -> [String: Int32] {
        guard config.capabilities.contains(.pageCache) else { return [:] }
        if server.pageCacheLog == nil {
            do {
                server.pageCacheLog = try PageCacheLog(name: config.name, size: config.pageCacheLogSize)
            } catch {
                throw .systemCall("creating the page-cache log memfd of \(config.pageCacheLogSize) bytes (\(error))", ENOMEM)
            }
        }
        return [Capability.pageCache.description: server.pageCacheLog!.fileDescriptor.rawValue]
    }
}
