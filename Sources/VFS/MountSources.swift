import Ext2
import IPC
import Storage
import SystemPackage
import VFSCore

/// How vfs_server gets the file systems it mounts: an ext2 image file, an ext2 file system on a
/// storage_server namespace, or a tmpfs. Each block-backed one gets its own page cache.
public enum MountSources {
    public struct Mounted {
        public var fileSystem: FileSystem
        public var cache: PageCache?
        public var description: String

        public init(fileSystem: FileSystem, cache: PageCache?, description: String) {
            self.fileSystem = fileSystem
            self.cache = cache
            self.description = description
        }

        /// Unmounts a file system that never made it into the mount table (its mount point was
        /// refused, say), so its image is left cleanly unmounted rather than marked in use.
        public func release() {
            try? fileSystem.unmount()
            // unmount writes the clean-state superblock into the cache: flush it out.
            try? cache?.flush()
        }
    }

    /// An ext2 image file behind a page cache. Errors name the image and what is wrong with it.
    /// `writeBackLog`: memory outliving this process for a plain ext2 mount's commits (Ext2.mount).
    public static func image(_ path: String, readOnly: Bool, cachePages: Int, writeBackLog: BlockStore? = nil,
                             log: @escaping (String) -> Void) throws(FSError) -> Mounted {
        let store: ImageFileStore
        do {
            store = try ImageFileStore(path: FilePath(path), readOnly: readOnly)
        } catch {
            throw FSError(error.errno, "cannot open image \(path): \(error.errno)")
        }
        guard store.capacity > 0 else { throw FSError(.invalidArgument, "image \(path) is empty") }
        return try ext2(on: store, readOnly: readOnly, cachePages: cachePages, writeBackLog: writeBackLog, what: "image \(path)", log: log)
    }

    /// Namespace `nsid` of the storage server at `directory/name.sock`, presenting `tokens()`
    /// (the CAP_BLOCK_* descriptors held then) on each connection, and on the live one again
    /// after `tokenRefresh.request()` (a run-time grant).
    public static func storage(name: String, directory: String, nsid: UInt32, tokens: @escaping () -> [Int32] = { [] },
                               tokenRefresh: TokenRefresh = TokenRefresh(), readOnly: Bool, cachePages: Int,
                               writeBackLog: BlockStore? = nil, log: @escaping (String) -> Void) throws(FSError) -> Mounted {
        let store = try StorageBlockStore(name: name, directory: directory, nsid: nsid, tokens: tokens, tokenRefresh: tokenRefresh)
        let what = "storage \(name) nsid \(nsid) (\(store.capacity / UInt64(store.sectorSize)) blocks of \(store.sectorSize))"
        // The page cache takes its pool from the store (registered with the server: the device
        // DMAs straight into cached pages); say whether that worked.
        let mounted = try ext2(on: store, readOnly: readOnly, cachePages: cachePages, writeBackLog: writeBackLog, what: what, log: log)
        log("\(what): \(store.pagePoolDescription)")
        store.log = { log("\(what): \($0)") }
        return mounted
    }

    public static func ext2(on store: BlockStore, readOnly: Bool, cachePages: Int, writeBackLog: BlockStore? = nil, what: String,
                            log: @escaping (String) -> Void) throws(FSError) -> Mounted {
        let cache = PageCache(backing: store, pageCount: cachePages)
        do {
            let fs = try Ext2.mount(store: cache, readOnly: readOnly, writeBackLog: writeBackLog, log: { log("\(what): \($0)") })
            return Mounted(fileSystem: fs, cache: cache, description: "\(fs.typeName) on \(what)")
        } catch {
            throw FSError(error.errno, "cannot mount \(what) as ext2: \(error.detail.isEmpty ? "\(error.errno)" : error.detail)")
        }
    }

    public static func tmpfs(readOnly: Bool = false) -> Mounted {
        Mounted(fileSystem: MemoryFileSystem(readOnly: readOnly), cache: nil, description: "tmpfs")
    }

    /// "--mount /mnt=IMAGE": the mount point and the image; nil unless both are there and the
    /// mount point is absolute.
    public static func parseMountOption(_ text: String) -> (mountPoint: String, image: String)? {
        guard let equals = text.firstIndex(of: "=") else { return nil }
        let mountPoint = String(text[..<equals]), image = String(text[text.index(after: equals)...])
        guard mountPoint.hasPrefix("/"), !image.isEmpty else { return nil }
        return (mountPoint, image)
    }

    /// "5", "5s", "500ms", "2m" as a duration; nil if malformed or not positive.
    public static func parseDuration(_ text: String) -> Duration? {
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60)]
        var number = Substring(text), scale = 1.0
        for (suffix, factor) in units where text.hasSuffix(suffix) {
            number = text.dropLast(suffix.count)
            scale = factor
            break
        }
        guard let value = Double(number), value > 0 else { return nil }
        return .milliseconds(Int64(value * scale * 1000))
    }
}
