import IPC
import VFSCore
#if canImport(Glibc)
import Glibc
#endif

/// Why a VFS call failed: the server's errno, or the transport (then `status` is ENOTCONN or
/// ETIMEDOUT and `detail` says what happened).
public struct VFSError: Error, Equatable, CustomStringConvertible {
    public var status: IPCStatus
    public var detail: String
    public init(_ status: IPCStatus, _ detail: String = "") {
        self.status = status
        self.detail = detail
    }
    /// strerror's text, as coreutils prints it: "No such file or directory".
    public var message: String { String(cString: strerror(status.rawValue)) }
    public var description: String { detail.isEmpty ? message : "\(message) (\(detail))" }
}

/// The client library: one connection to vfs_server, a method per operation (`VFSProtocol`).
/// Transfers over 64 KiB go through one shared-memory region, shared on first use.
public final class VFSClient {
    public let connection: IPCClient
    public var timeout: Duration = .seconds(30)
    /// The size of the shared region for large reads and writes.
    public static let sharedRegionSize = 1 << 20

    private final class Region {
        let memory: SharedMemory
        let handle: UInt32
        init(memory: consuming SharedMemory, handle: UInt32) {
            self.memory = memory
            self.handle = handle
        }
    }
    private var region: Region?

    public init(connection: IPCClient) { self.connection = connection }

    public static func connect(name: String = "vfs", directory: String) throws(VFSError) -> VFSClient {
        do {
            return VFSClient(connection: try IPCClient.connect(name: name, directory: directory))
        } catch {
            throw VFSError(.ENOTCONN, "cannot connect to \(directory)/\(name).sock: \(error)")
        }
    }

    // MARK: Transport

    @discardableResult
    private func call(_ message: Message, _ data: [UInt8] = []) throws(VFSError) -> IPCClient.Reply {
        var message = message
        if !data.isEmpty { message.setInlineData(count: UInt32(data.count)) }
        let reply: IPCClient.Reply
        do {
            reply = try data.withUnsafeBytes { (bytes) throws(IPCError) -> IPCClient.Reply in
                try connection.sendReceive(message, payload: bytes, timeout: timeout)
            }
        } catch {
            throw VFSError(.ENOTCONN, "\(error)")
        }
        guard reply.status.isOK else { throw VFSError(reply.status) }
        return reply
    }

    /// `call` without allocating: the reply's inline payload lands in `reply`; returns its header.
    private func call(_ message: Message, into reply: UnsafeMutableRawBufferPointer) throws(VFSError) -> Message {
        let header: Message
        do {
            (header, _) = try connection.sendReceive(message, into: reply, timeout: timeout)
        } catch {
            throw VFSError(.ENOTCONN, "\(error)")
        }
        guard header.status.isOK else { throw VFSError(header.status) }
        return header
    }

    @discardableResult
    private func pathMessage(_ type: MessageType, _ path: String, param1: UInt64 = 0, param2: UInt64 = 0) throws(VFSError) -> IPCClient.Reply {
        try call(Message(type: type, param1: param1, param2: param2), Array(path.utf8))
    }

    private func twoPaths(_ type: MessageType, _ first: String, _ second: String, param1: UInt64 = 0) throws(VFSError) {
        let a = Array(first.utf8), b = Array(second.utf8)
        try call(Message(type: type, param1: param1, param3: UInt64(a.count)), a + b)
    }

    private func sharedRegion() throws(VFSError) -> Region {
        if let region { return region }
        do {
            let memory = try SharedMemory(size: Self.sharedRegionSize, name: "vfs-client")
            let handle = try connection.share(memory)
            let made = Region(memory: memory, handle: handle)
            region = made
            return made
        } catch {
            throw VFSError(.ENOMEM, "shared region: \(error)")
        }
    }

    // MARK: Descriptors

    public func open(_ path: String, flags: OpenFlags = .readOnly, mode: UInt32 = 0o644) throws(VFSError) -> Int32 {
        Int32(try pathMessage(.vfsOpen, path, param1: UInt64(flags.rawValue), param2: UInt64(mode)).message.param1)
    }

    public func close(_ fd: Int32) throws(VFSError) { try call(Message(type: .vfsClose, param1: UInt64(fd))) }

    /// Up to `count` bytes from the file position (or `offset`); fewer at the end, none past it.
    /// A new array per call; `read(_:into:at:)` fills the caller's buffer instead.
    public func read(_ fd: Int32, count: Int, at offset: UInt64? = nil) throws(VFSError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var failure: VFSError? = nil
        let got = bytes.withUnsafeMutableBytes { buffer -> Int in
            do throws(VFSError) { return try read(fd, into: buffer, at: offset) } catch {
                failure = error
                return 0
            }
        }
        if let failure { throw failure }
        bytes.removeLast(count - got)
        return bytes
    }

    /// Reads into `buffer` with no array per call (the reply lands in `buffer` through the IPC
    /// client's allocation-free sendReceive): up to `buffer.count` bytes from the file position
    /// (or `offset`); returns how many, fewer at the end, none past it. Up to 64 KiB come inline
    /// in the reply; more through the shared region, a megabyte per request.
    public func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64? = nil) throws(VFSError) -> Int {
        if buffer.count <= VFSProtocol.maxInlineData {
            let message = Message(type: .vfsRead, param1: UInt64(fd), param2: UInt64(buffer.count),
                                  param3: offset ?? VFSProtocol.currentPosition)
            return min(Int(try call(message, into: buffer).param1), buffer.count)
        }
        let region = try sharedRegion()
        var done = 0
        var nextOffset = offset
        while done < buffer.count {
            let chunk = min(buffer.count - done, Self.sharedRegionSize)
            var message = Message(type: .vfsRead, param1: UInt64(fd), param2: UInt64(chunk), param3: nextOffset ?? VFSProtocol.currentPosition)
            message.setSharedData(handle: region.handle, count: UInt32(chunk))
            let n = min(Int(try call(message, into: UnsafeMutableRawBufferPointer(start: nil, count: 0)).param1), chunk)
            UnsafeMutableRawBufferPointer(rebasing: buffer[done..<(done + n)])
                .copyMemory(from: UnsafeRawBufferPointer(rebasing: region.memory.bytes[..<n]))
            done += n
            nextOffset = nextOffset.map { $0 + UInt64(n) }
            if n < chunk { break }
        }
        return done
    }

    /// Writes all of `bytes` (in several requests when large); returns the count written.
    @discardableResult
    public func write(_ fd: Int32, _ bytes: [UInt8], at offset: UInt64? = nil) throws(VFSError) -> Int {
        if bytes.count <= VFSProtocol.maxInlineData {
            let reply = try call(Message(type: .vfsWrite, param1: UInt64(fd), param3: offset ?? VFSProtocol.currentPosition), bytes)
            return Int(reply.message.param1)
        }
        let region = try sharedRegion()
        var done = 0
        while done < bytes.count {
            let chunk = min(bytes.count - done, Self.sharedRegionSize)
            bytes.withUnsafeBytes { source in
                region.memory.mutableBytes!.baseAddress!.copyMemory(from: source.baseAddress! + done, byteCount: chunk)
            }
            let position = offset.map { $0 + UInt64(done) } ?? VFSProtocol.currentPosition
            var message = Message(type: .vfsWrite, param1: UInt64(fd), param3: position)
            message.setSharedData(handle: region.handle, count: UInt32(chunk))
            let n = Int(try call(message).message.param1)
            done += n
            if n < chunk { break }
        }
        return done
    }

    public func seek(_ fd: Int32, offset: Int64, whence: VFSService.Whence = .set) throws(VFSError) -> UInt64 {
        try call(Message(type: .vfsSeek, param1: UInt64(fd), param2: UInt64(bitPattern: offset), param3: whence.rawValue)).message.param1
    }

    public func fsync(_ fd: Int32) throws(VFSError) { try call(Message(type: .vfsFsync, param1: UInt64(fd))) }

    public func truncate(_ fd: Int32, to size: UInt64) throws(VFSError) {
        try call(Message(type: .vfsTruncate, param1: size, param2: 1, param3: UInt64(fd)))
    }

    public func truncate(_ path: String, to size: UInt64) throws(VFSError) { try pathMessage(.vfsTruncate, path, param1: size) }

    /// The next entries of an open directory (empty at the end).
    public func readDirectory(_ fd: Int32) throws(VFSError) -> (entries: [DirectoryEntry], atEnd: Bool) {
        let reply = try call(Message(type: .vfsReadDirectory, param1: UInt64(fd)))
        guard let entries = reply.payload.withUnsafeBytes({ VFSProtocol.unpackEntries($0) }) else {
            throw VFSError(.EBADMSG, "malformed readdir reply")
        }
        return (entries, reply.message.param2 == 1)
    }

    // MARK: Paths

    public func stat(_ path: String, followSymlinks: Bool = true) throws(VFSError) -> FileAttributes {
        try attributes(pathMessage(.vfsStat, path, param1: followSymlinks ? 0 : VFSProtocol.noFollow))
    }

    public func fstat(_ fd: Int32) throws(VFSError) -> FileAttributes {
        try attributes(call(Message(type: .vfsFstat, param1: UInt64(fd))))
    }

    private func attributes(_ reply: IPCClient.Reply) throws(VFSError) -> FileAttributes {
        guard let decoded = reply.payload.withUnsafeBytes({ VFSProtocol.decodeAttributes($0) }) else {
            throw VFSError(.EBADMSG, "short stat reply")
        }
        return decoded.0
    }

    public func mkdir(_ path: String, mode: UInt32 = 0o755) throws(VFSError) { try pathMessage(.vfsMkdir, path, param1: UInt64(mode)) }
    public func rmdir(_ path: String) throws(VFSError) { try pathMessage(.vfsRmdir, path) }
    public func unlink(_ path: String) throws(VFSError) { try pathMessage(.vfsUnlink, path) }
    public func rename(_ old: String, to new: String) throws(VFSError) { try twoPaths(.vfsRename, old, new) }
    public func link(_ old: String, to new: String) throws(VFSError) { try twoPaths(.vfsLink, old, new) }
    public func symlink(target: String, at path: String) throws(VFSError) { try twoPaths(.vfsSymlink, target, path) }
    public func chmod(_ path: String, mode: UInt32) throws(VFSError) { try pathMessage(.vfsChmod, path, param1: UInt64(mode)) }

    public func chown(_ path: String, uid: UInt32?, gid: UInt32?) throws(VFSError) {
        try pathMessage(.vfsChown, path, param1: uid.map(UInt64.init) ?? VFSProtocol.idUnchanged,
                        param2: gid.map(UInt64.init) ?? VFSProtocol.idUnchanged)
    }

    public func utimes(_ path: String, access: TimeChange, modification: TimeChange) throws(VFSError) {
        try pathMessage(.vfsUtimes, path, param1: VFSProtocol.encode(access), param2: VFSProtocol.encode(modification))
    }

    public func readlink(_ path: String) throws(VFSError) -> String {
        String(decoding: try pathMessage(.vfsReadlink, path).payload, as: UTF8.self)
    }

    public func statfs(_ path: String) throws(VFSError) -> VFSProtocol.MountStatistics {
        let reply = try pathMessage(.vfsStatfs, path)
        guard let statistics = reply.payload.withUnsafeBytes({ VFSProtocol.decodeStatistics($0) }) else {
            throw VFSError(.EBADMSG, "short statfs reply")
        }
        return statistics
    }

    public func mount(source: String, at mountPoint: String, readOnly: Bool = false) throws(VFSError) {
        try twoPaths(.vfsMount, mountPoint, source, param1: readOnly ? VFSProtocol.mountReadOnly : 0)
    }

    public func unmount(_ mountPoint: String) throws(VFSError) { try pathMessage(.vfsUnmount, mountPoint) }

    // MARK: Conveniences

    /// Every entry of a directory ("." and ".." included).
    public func list(_ path: String) throws(VFSError) -> [DirectoryEntry] {
        let fd = try open(path, flags: [.directory])
        defer { try? close(fd) }
        var all: [DirectoryEntry] = []
        while true {
            let (entries, atEnd) = try readDirectory(fd)
            all += entries
            if atEnd || entries.isEmpty { return all }
        }
    }

    public func readFile(_ path: String) throws(VFSError) -> [UInt8] {
        let fd = try open(path)
        defer { try? close(fd) }
        var data: [UInt8] = []
        while true {
            let chunk = try read(fd, count: Self.sharedRegionSize)
            data += chunk
            if chunk.count < Self.sharedRegionSize { return data }
        }
    }

    /// Creates or replaces `path` with `bytes`, then fsyncs it.
    public func writeFile(_ path: String, _ bytes: [UInt8], mode: UInt32 = 0o644) throws(VFSError) {
        let fd = try open(path, flags: [.writeOnly, .create, .truncate], mode: mode)
        defer { try? close(fd) }
        let written = try write(fd, bytes)
        guard written == bytes.count else { throw VFSError(.EIO, "short write: \(written) of \(bytes.count)") }
        try fsync(fd)
    }
}
