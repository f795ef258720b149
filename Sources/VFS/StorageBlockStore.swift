import IPC
import Storage
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
public final class StorageBlockStore: BlockStore {
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

    private final class Region {
        let memory: SharedMemory
        var handle: UInt32
        init(memory: consuming SharedMemory, handle: UInt32) {
            self.memory = memory
            self.handle = handle
        }
    }
    private let region: Region

    /// Connects to the storage server `name` in `directory`, and reconnects the same way after
    /// it restarts.
    public convenience init(name: String, directory: String, nsid: UInt32) throws(FSError) {
        let connect = { () throws(IPCError) -> BlockClient in try BlockClient.connect(name: name, directory: directory) }
        let client: BlockClient
        do {
            client = try connect()
        } catch {
            throw FSError(.init(rawValue: 107), "no storage server at \(directory)/\(name).sock: \(error)")  // ENOTCONN
        }
        try self.init(client: client, nsid: nsid, reconnect: connect)
    }

    /// Opens namespace `nsid` and shares the transfer region. EIO/ENOENT name what failed.
    /// Without `reconnect`, a broken connection fails every later operation with EIO.
    public init(client: BlockClient, nsid: UInt32, reconnect: (() throws(IPCError) -> BlockClient)? = nil) throws(FSError) {
        self.client = client
        self.nsid = nsid
        self.connect = reconnect
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
                done += remaining
            } else {
                let chunk = min(remaining, Self.regionSize)
                region.memory.mutableBytes!.baseAddress!.copyMemory(from: buffer.baseAddress! + done, byteCount: chunk)
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

    // MARK: Reconnecting

    /// Runs `request`; a reply's status is checked, a broken connection is made again (when this
    /// store knows how) and the request sent again, until `reconnectDeadline`.
    private func retrying(_ what: String, _ request: () throws(IPCError) -> IPCStatus) throws(FSError) {
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
            region.handle = try fresh.connection.share(region.memory)
            client = fresh
            reconnects += 1
            return true
        } catch {
            return false
        }
    }
}
