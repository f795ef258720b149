import IPC
import Storage
import Synchronization
import VFSCore
#if canImport(Glibc)
import Glibc
#endif

/// A `BlockStore` over one namespace of storage_server (`BlockClient`, MSG_BLOCK_*): the VFS's
/// backend on real hardware. Reads always go through one shared-memory region (shared once at
/// start: no allocation per request); writes up to 64 KiB go inline, larger ones through the
/// region. Transfers larger than the region are split.
///
/// When storage_server restarts (the supervisor brings it back after a crash), the connection
/// breaks. A store made with `init(name:directory:nsid:)` then reconnects by name, with backoff,
/// for up to `reconnectDeadline`: it opens the namespace again (the geometry must not have
/// changed), shares the region again, and sends the interrupted request again. Every block
/// request is idempotent (a read, or a write of the same bytes to the same blocks), so replaying
/// one whose reply was lost is safe; and the page cache above keeps dirty pages until a write
/// succeeds, so nothing is lost meanwhile. Past the deadline the operation fails with EIO.
///
/// Zero copy (`DirectPageIO`): a page cache built on this store gets its pool from here, a
/// second shared-memory region registered with the server (MSG_BLOCK_REGISTER_BUFFER), so the
/// server maps it for the device once. Page-cache misses, read-ahead and write-back are then
/// block requests naming offsets in that region: on NVMe the controller DMAs straight into and
/// out of the cached pages (the reply's param2 = 1); nothing is copied on this side, nothing
/// sent inline. A server that cannot register (ENOTSUP: UIO) still serves the same requests
/// through its bounce buffer. After a reconnect the pool is shared and registered again before
/// the interrupted request is resent (registrations belong to a connection).
public final class StorageBlockStore: BlockStore, DirectPageIO {
    public private(set) var client: BlockClient
    public let nsid: UInt32
    public let sectorSize: Int
    public let capacity: UInt64
    public static let regionSize = 1 << 20
    /// How long an operation keeps trying to reach a restarted storage server.
    public var reconnectDeadline: Duration = .seconds(30)
    /// How many times the connection was made again.
    public private(set) var reconnects = 0
    private let connect: (() throws(IPCError) -> BlockClient)?
    /// The CAP_BLOCK_* descriptors held now (asked again whenever they are presented).
    private let tokens: () -> [Int32]
    /// Set by another thread after a run-time grant; read before each request (below).
    public let tokenRefresh: TokenRefresh
    /// How often held tokens were presented again on a live connection (after a grant).
    public private(set) var tokenRepresentations = 0

    private final class Region {
        let memory: SharedMemory
        var handle: UInt32
        init(memory: consuming SharedMemory, handle: UInt32) {
            self.memory = memory
            self.handle = handle
        }
    }
    private let region: Region

    /// The page cache's pool, once provided (`providePagePool`).
    private final class PagePool {
        let memory: SharedMemory
        var handle: UInt32
        /// Whether the server registered it (zero copy) on the current connection; when not,
        /// `registrationStatus` says why.
        var registered = false
        var registrationStatus: IPCStatus = .ok
        init(memory: consuming SharedMemory, handle: UInt32) {
            self.memory = memory
            self.handle = handle
        }
    }
    private var pagePool: PagePool?

    // Statistics (tests and the server's log).
    /// Page I/O requests (`readPages`/`writePages`) sent, and the replies saying the device
    /// moved the data straight to or from the pool (param2 = 1).
    public private(set) var pageRequests = 0
    public private(set) var zeroCopyReplies = 0
    /// Writes sent inline, and bytes copied between callers' buffers and the transfer region
    /// (the `read`/`write` path; page I/O does neither).
    public private(set) var inlineWrites = 0
    public private(set) var bytesCopied = 0
    /// How often the pool was registered with a server (1 + once per reconnect when it works).
    public private(set) var poolRegistrations = 0
    /// Whether a page cache's pool lives here, and whether the current server registered it.
    public var hasPagePool: Bool { pagePool != nil }
    public var isPagePoolRegistered: Bool { pagePool?.registered ?? false }
    /// Where the statistics line goes when the store goes away (vfs_server's log: after an
    /// unmount it says how the page cache's I/O went).
    public var log: ((String) -> Void)?
    public var statistics: String {
        "\(pageRequests) page requests (\(zeroCopyReplies) zero copy), \(inlineWrites) inline writes, \(bytesCopied) bytes copied, \(reconnects) reconnects"
    }

    deinit {
        // The pool's registration ends with this connection (the server sweeps when a client's
        // connection closes), so there is no unregister round trip that could block on a hung
        // server here.
        log?(statistics)
    }

    /// One line for the server's log.
    public var pagePoolDescription: String {
        guard let pagePool else { return "page cache pool: private (copies)" }
        return pagePool.registered
            ? "page cache pool: \(pagePool.memory.size) bytes registered with the storage server (zero copy)"
            : "page cache pool: \(pagePool.memory.size) bytes shared, not registered (\(pagePool.registrationStatus)): the server copies"
    }

    /// Connects to the storage server `name` in `directory`, and reconnects the same way after
    /// it restarts. `tokens` gives the CAP_BLOCK_READ / CAP_BLOCK_WRITE descriptors held at the
    /// time (asked again per connection: a revoked one is gone); they are presented on every
    /// connection, the first and each one after a restart.
    /// A CAP_BLOCK_* granted while the store runs is presented on the live connection before the
    /// next request once someone calls `tokenRefresh.request()` (vfs_server does, from ServerKit's
    /// onCapabilityChange).
    public convenience init(name: String, directory: String, nsid: UInt32,
                            tokens: @escaping () -> [Int32] = { [] }, tokenRefresh: TokenRefresh = TokenRefresh()) throws(FSError) {
        let connect = { () throws(IPCError) -> BlockClient in
            try BlockClient.connect(name: name, directory: directory, presenting: tokens())
        }
        let client: BlockClient
        do {
            client = try connect()
        } catch {
            throw FSError(.socketNotConnected, "no storage server at \(directory)/\(name).sock: \(error)")
        }
        try self.init(client: client, nsid: nsid, reconnect: connect, tokens: tokens, tokenRefresh: tokenRefresh)
    }

    /// Opens namespace `nsid` and shares the transfer region. EIO/ENOENT name what failed.
    /// Without `reconnect`, a broken connection fails every later operation with EIO.
    public init(client: BlockClient, nsid: UInt32, reconnect: (() throws(IPCError) -> BlockClient)? = nil,
                tokens: @escaping () -> [Int32] = { [] }, tokenRefresh: TokenRefresh = TokenRefresh()) throws(FSError) {
        self.client = client
        self.nsid = nsid
        self.connect = reconnect
        self.tokens = tokens
        self.tokenRefresh = tokenRefresh
        let geometry: BlockGeometry
        do {
            switch try client.openNamespace(nsid) {
            case .success(let found): geometry = found
            case .failure(let status): throw FSError(.init(rawValue: status.rawValue), "storage namespace \(nsid): \(status)")
            }
            let memory = try SharedMemory(size: Self.regionSize, name: "vfs-storage")
            let handle = try client.connection.share(memory)
            region = Region(memory: memory, handle: handle)
        } catch let error as FSError {
            throw error
        } catch {
            throw FSError(.ioError, "storage server: \(error)")
        }
        sectorSize = geometry.blockSize
        capacity = geometry.capacityBytes
    }

    private func check(_ status: IPCStatus, _ what: String) throws(FSError) {
        guard status.isOK else { throw FSError(.init(rawValue: status.rawValue), "storage \(what) on nsid \(nsid): \(status)") }
    }

    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(FSError) {
        try checkRange(offset, buffer.count)
        var done = 0
        while done < buffer.count {
            let chunk = min(buffer.count - done, Self.regionSize)
            let lba = (offset + UInt64(done)) / UInt64(sectorSize)
            try retrying("read") { () throws(IPCError) -> IPCStatus in
                try client.read(nsid, lba: lba, blocks: UInt64(chunk / sectorSize), sharedHandle: region.handle, count: UInt32(chunk))
            }
            (buffer.baseAddress! + done).copyMemory(from: region.memory.bytes.baseAddress!, byteCount: chunk)
            bytesCopied += chunk
            done += chunk
        }
    }

    public func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(FSError) {
        try checkRange(offset, buffer.count)
        var done = 0
        while done < buffer.count {
            let lba = (offset + UInt64(done)) / UInt64(sectorSize)
            let remaining = buffer.count - done
            if remaining <= BlockProtocol.maxInlineBytes {
                let slice = UnsafeRawBufferPointer(rebasing: buffer[done...])
                try retrying("write") { () throws(IPCError) -> IPCStatus in
                    try client.write(nsid, lba: lba, blocks: UInt64(remaining / sectorSize), data: slice)
                }
                inlineWrites += 1
                done += remaining
            } else {
                let chunk = min(remaining, Self.regionSize)
                region.memory.mutableBytes!.baseAddress!.copyMemory(from: buffer.baseAddress! + done, byteCount: chunk)
                bytesCopied += chunk
                try retrying("write") { () throws(IPCError) -> IPCStatus in
                    try client.write(nsid, lba: lba, blocks: UInt64(chunk / sectorSize), sharedHandle: region.handle, count: UInt32(chunk))
                }
                done += chunk
            }
        }
    }

    public func flush() throws(FSError) {
        try retrying("flush") { () throws(IPCError) -> IPCStatus in try client.flush(nsid) }
    }

    // MARK: DirectPageIO (zero copy)

    /// The pool as a shared-memory region (mmap: page aligned), shared with the server and
    /// registered for the device. Nil when the region cannot be made or shared (the cache then
    /// keeps its own pool) or a pool was already provided. A refused registration still
    /// returns the region: page I/O through it costs the server a copy, this side none.
    public func providePagePool(byteCount: Int) -> UnsafeMutableRawPointer? {
        guard pagePool == nil, byteCount > 0 else { return nil }
        // Whole pages: the registration wants them (NVMe PRPs are page granular).
        let size = (byteCount + 4095) / 4096 * 4096
        guard size <= Int(UInt32.max) else { return nil }
        do {
            let memory = try SharedMemory(size: size, name: "vfs-page-cache")
            let handle = try client.connection.share(memory)
            let pool = PagePool(memory: memory, handle: handle)
            do {
                try register(pool, on: client)
            } catch {
                // The connection broke: the next request reconnects, which registers again.
                pool.registrationStatus = .EIO
            }
            pagePool = pool
            return pool.memory.mutableBytes!.baseAddress!
        } catch {
            return nil
        }
    }

    /// Registers the pool's region (its current handle) on `client`'s connection. A refusal is
    /// recorded (the pool still works, copied by the server); a broken connection throws.
    private func register(_ pool: PagePool, on client: BlockClient) throws(IPCError) {
        pool.registered = false
        switch try client.registerBuffer(sharedHandle: pool.handle, count: UInt32(pool.memory.size)) {
        case .success:
            pool.registered = true
            pool.registrationStatus = .ok
            poolRegistrations += 1
        case .failure(let status):
            pool.registrationStatus = status
        }
    }

    public func readPages(at deviceOffset: UInt64, poolOffset: Int, count: Int) throws(FSError) {
        try pageIO(.blockRead, deviceOffset, poolOffset, count)
    }

    public func writePages(at deviceOffset: UInt64, poolOffset: Int, count: Int) throws(FSError) {
        try pageIO(.blockWrite, deviceOffset, poolOffset, count)
    }

    /// One block request per `BlockProtocol.maxSharedBytes`, naming the pool range itself: no
    /// data inline, nothing copied here, the header-only reply read into no buffer (no
    /// allocation).
    private func pageIO(_ type: MessageType, _ deviceOffset: UInt64, _ poolOffset: Int, _ count: Int) throws(FSError) {
        try checkRange(deviceOffset, count)
        guard let pool = pagePool, poolOffset >= 0, poolOffset <= pool.memory.size, count <= pool.memory.size - poolOffset else {
            throw FSError(.invalidArgument, "page I/O of \(count) bytes at pool offset \(poolOffset) outside the page pool")
        }
        let what = type == .blockRead ? "page read" : "page write"
        var done = 0
        while done < count {
            let chunk = min(count - done, BlockProtocol.maxSharedBytes)
            let lba = (deviceOffset + UInt64(done)) / UInt64(sectorSize)
            let within = UInt32(poolOffset + done)
            try retrying(what) { () throws(IPCError) -> IPCStatus in
                var message = Message(type: type, param1: UInt64(nsid), param2: lba, param3: UInt64(chunk / sectorSize))
                // The handle is read per attempt: a reconnect shares the pool again under a new one.
                message.setSharedData(handle: pool.handle, offset: within, count: UInt32(chunk))
                let reply = try client.connection.sendReceive(message, into: UnsafeMutableRawBufferPointer(start: nil, count: 0),
                                                              timeout: client.timeout).0
                // param2 = 1: the server moved the data zero copy (block reads and writes only).
                if reply.status.isOK && reply.param2 == 1 { zeroCopyReplies += 1 }
                return reply.status
            }
            pageRequests += 1
            done += chunk
        }
    }

    // MARK: Reconnecting

    /// Runs `request`; the reply's status is checked, a broken connection is made again (when
    /// this store knows how) and the request sent again, until `reconnectDeadline`.
    private func retrying(_ what: String, _ request: () throws(IPCError) -> IPCStatus) throws(FSError) {
        if tokenRefresh.take() { presentTokensAgain() }
        var deadline: ContinuousClock.Instant?
        var backoff = Duration.milliseconds(5)
        while true {
            let failure: IPCError
            do {
                try check(try request(), what)
                return
            } catch let error as IPCError {
                failure = error
            } catch {
                throw error as! FSError
            }
            guard connect != nil, Self.isBrokenConnection(failure) else {
                throw FSError(.ioError, "storage \(what) on nsid \(nsid): \(failure)")
            }
            let limit = deadline ?? ContinuousClock.now + reconnectDeadline
            deadline = limit
            guard ContinuousClock.now < limit else {
                throw FSError(.ioError, "storage \(what) on nsid \(nsid): the storage server did not come back within \(reconnectDeadline) (\(failure))")
            }
            if reconnect() { continue }
            var pause = timespec(tv_sec: Int(backoff.components.seconds), tv_nsec: Int(backoff.components.attoseconds / 1_000_000_000))
            nanosleep(&pause, nil)
            backoff = min(backoff * 2, .milliseconds(250))
        }
    }

    /// Presents every token held now on the current connection (this thread's: the
    /// connection is used by one thread only, so no lock). Tokens presented before are harmless
    /// to present again (the server keeps a set). A broken connection is left to the request
    /// that follows: its reconnect presents every token anyway.
    private func presentTokensAgain() {
        tokenRepresentations += 1
        var refused = false
        var rights = BlockRights()
        let held = tokens()
        for token in held {
            do {
                switch try client.present(token: token) {
                case .success(let now): rights = now
                case .failure(let status):
                    refused = true
                    log?("the storage server refused a CAP_BLOCK token held since a run-time grant: \(status)")
                }
            } catch {
                return
            }
        }
        if !rights.isEmpty {
            log?("presented the \(held.count) CAP_BLOCK tokens held since a run-time grant: the connection now has \(rights)")
        }
        // The supervisor tells the storage server of the grant before this process, but each
        // reads its channel on its own: a token presented before the storage server learned it
        // is refused. Present again before the next few requests, then give up (a token it never
        // learns would otherwise cost a round trip per request).
        if refused && presentationRetries < Self.presentationRetryLimit {
            presentationRetries += 1
            tokenRefresh.request()
        } else {
            presentationRetries = 0
        }
    }
    private var presentationRetries = 0
    private static let presentationRetryLimit = 10

    /// The errors that mean the server went away (not that it refused the request).
    private static func isBrokenConnection(_ error: IPCError) -> Bool {
        switch error {
        case .disconnected, .serverNotFound: true
        case .systemCall(_, let errno): errno == .brokenPipe || errno == .connectionReset || errno == .socketNotConnected
            || errno == .connectionRefused || errno == .noSuchFileOrDirectory
        default: false
        }
    }

    /// One attempt: connect, open the namespace (same geometry), share the region again.
    private func reconnect() -> Bool {
        guard let connect else { return false }
        do {
            let fresh = try connect()
            guard case .success(let geometry) = try fresh.openNamespace(nsid),
                  geometry.blockSize == sectorSize, geometry.capacityBytes == capacity else { return false }
            let regionHandle = try fresh.connection.share(region.memory)
            if let pagePool {
                // Shared and registered again before the interrupted request is resent: the old
                // connection's handle and registration died with it.
                pagePool.handle = try fresh.connection.share(pagePool.memory)
                try register(pagePool, on: fresh)
            }
            region.handle = regionHandle
            client = fresh
            reconnects += 1
            return true
        } catch {
            return false
        }
    }
}

/// A flag another thread sets when the CAP_BLOCK_* descriptors this process holds changed (a
/// run-time grant: ServerKit's onCapabilityChange runs on the supervisor link's thread). The
/// store, on its own thread, takes it before its next request and presents the tokens then, so
/// the connection is never used from two threads and needs no lock; the check is one atomic load.
public final class TokenRefresh: Sendable {
    private let pending = Atomic<Bool>(false)

    public init() {}

    /// Asks for the held tokens to be presented before the store's next request.
    public func request() { pending.store(true, ordering: .releasing) }

    /// Whether a presentation was asked for since the last call (clears it).
    @inline(__always)
    func take() -> Bool {
        guard pending.load(ordering: .relaxed) else { return false }
        return pending.exchange(false, ordering: .acquiring)
    }
}
