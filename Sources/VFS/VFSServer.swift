import IPC
import VFSCore
#if canImport(Glibc)
import Glibc
#endif

/// The IPC side of the VFS: decodes each request (see `VFSProtocol`), runs it on the
/// `VFSService` with the credentials the kernel vouched for, and builds the reply. A request the
/// table cannot make sense of gets an error reply (EBADMSG / EINVAL) and the server carries on.
///
/// One lock serialises the IPC thread and the server's main thread (periodic write-back,
/// checkpoints, shutdown): `withService`.
public final class VFSServer: IPCRequestHandler, @unchecked Sendable {
    public let service: VFSService
    private let lock: UnsafeMutablePointer<pthread_mutex_t>
    private let log: (String) -> Void
    public private(set) var requests: UInt64 = 0
    public private(set) var failures: UInt64 = 0

    public init(service: VFSService, log: @escaping (String) -> Void = { _ in }) {
        self.service = service
        self.log = log
        lock = .allocate(capacity: 1)
        pthread_mutex_init(lock, nil)
    }

    deinit {
        pthread_mutex_destroy(lock)
        lock.deallocate()
    }

    /// Runs `body` with the service, holding the lock.
    public func withService<T>(_ body: (VFSService) throws -> T) rethrows -> T {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return try body(service)
    }

    /// An IPC server at `directory/name.sock` answering with `handle`. Call `start()` on it.
    public func makeIPCServer(name: String, directory: String) throws(IPCError) -> IPCServer {
        try IPCServer(name: name, directory: directory, requestHandler: self)
    }

    /// `IPCRequestHandler`: the IPC server calls this per request, with no reference counting.
    public func handle(_ message: Message, _ payload: IPCPayload, _ connection: IPCConnection) -> IPCReply {
        handle(message, payload)
    }

    public func handle(_ message: Message, _ payload: IPCPayload) -> IPCReply {
        withService { service in
            requests &+= 1
            let credentials = Credentials(pid: message.senderPID, uid: message.senderUID, gid: message.senderGID)
            do throws(FSError) {
                return try dispatch(message, payload, credentials, service)
            } catch {
                failures &+= 1
                if error.errno == .ioError || error.isCorruption {
                    log("\(message.type) from \(credentials): \(error)")
                }
                return .error(IPCStatus(rawValue: error.errno.rawValue))
            }
        }
    }

    private static let badMessage = FSError(.init(rawValue: 74), "request data does not match the protocol")  // EBADMSG

    /// The request's data as a path (inline only: a path in shared memory could change under us).
    private func path(_ message: Message, _ payload: IPCPayload) throws(FSError) -> [UInt8] {
        if case .shared = message.data { throw Self.badMessage }
        return Array(payload.data)
    }

    /// Two paths: the first `param3` bytes and the rest.
    private func paths(_ message: Message, _ payload: IPCPayload) throws(FSError) -> ([UInt8], [UInt8]) {
        let bytes = try path(message, payload)
        guard message.param3 <= UInt64(bytes.count) else { throw Self.badMessage }
        let split = Int(message.param3)
        return (Array(bytes[..<split]), Array(bytes[split...]))
    }

    private func descriptor(_ value: UInt64) throws(FSError) -> Int32 {
        guard value <= UInt64(Int32.max) else { throw FSError(.badFileDescriptor, "descriptor \(value)") }
        return Int32(value)
    }

    private func dispatch(_ message: Message, _ payload: IPCPayload, _ credentials: Credentials,
                          _ service: VFSService) throws(FSError) -> IPCReply {
        switch message.type {
        case .vfsOpen:
            guard message.param1 <= UInt64(UInt32.max) else { throw FSError(.invalidArgument, "open flags") }
            let fd = try service.open(try path(message, payload), flags: UInt32(message.param1), mode: UInt32(truncatingIfNeeded: message.param2), credentials)
            return IPCReply(param1: UInt64(fd))
        case .vfsRead:
            let fd = try descriptor(message.param1)
            let offset = message.param3 == VFSProtocol.currentPosition ? nil : message.param3
            if case .shared = message.data {
                guard let target = payload.writableData else { throw FSError(.invalidArgument, "read into a write-sealed region") }
                let count = Int(min(message.param2, UInt64(target.count)))
                let n = try service.read(fd, into: UnsafeMutableRawBufferPointer(rebasing: target[..<count]), at: offset, credentials)
                return IPCReply(param1: UInt64(n))
            }
            guard message.param2 <= UInt64(VFSProtocol.maxInlineData) else {
                throw FSError(.invalidArgument, "inline read of \(message.param2) bytes; share a region for more than 64 KiB")
            }
            let n = try service.read(fd, into: UnsafeMutableRawBufferPointer(rebasing: payload.reply[..<Int(message.param2)]), at: offset, credentials)
            return IPCReply(param1: UInt64(n), payloadCount: n)
        case .vfsWrite:
            let offset = message.param3 == VFSProtocol.currentPosition ? nil : message.param3
            let n = try service.write(try descriptor(message.param1), from: payload.data, at: offset, credentials)
            return IPCReply(param1: UInt64(n))
        case .vfsClose:
            try service.close(try descriptor(message.param1), credentials)
            return .ok
        case .vfsStat, .vfsFstat:
            let (attributes, device) = message.type == .vfsStat
                ? try service.stat(try path(message, payload), followSymlinks: message.param1 & VFSProtocol.noFollow == 0, credentials)
                : try service.fstat(try descriptor(message.param1), credentials)
            VFSProtocol.encode(attributes, device: device, into: payload.reply)
            return IPCReply(payloadCount: VFSProtocol.attributesSize)
        case .vfsMkdir:
            try service.mkdir(try path(message, payload), mode: UInt32(truncatingIfNeeded: message.param1), credentials)
            return .ok
        case .vfsRmdir:
            try service.rmdir(try path(message, payload), credentials)
            return .ok
        case .vfsUnlink:
            try service.unlink(try path(message, payload), credentials)
            return .ok
        case .vfsReadDirectory:
            let limit = message.param2 == 0 ? Int.max : Int(min(message.param2, UInt64(Int32.max)))
            var offset = 0
            var count = 0
            let reply = payload.reply
            let atEnd = try service.readDirectory(try descriptor(message.param1), credentials) { entry in
                guard count < limit, let next = VFSProtocol.pack(entry, into: reply, at: offset) else { return false }
                offset = next
                count += 1
                return true
            }
            return IPCReply(param1: UInt64(count), param2: atEnd ? 1 : 0, payloadCount: offset)
        case .vfsRename:
            let (old, new) = try paths(message, payload)
            try service.rename(old, to: new, credentials)
            return .ok
        case .vfsTruncate:
            if message.param2 == 1 {
                try service.truncate(descriptor: try descriptor(message.param3), to: message.param1, credentials)
            } else {
                try service.truncate(try path(message, payload), to: message.param1, credentials)
            }
            return .ok
        case .vfsFsync:
            try service.fsync(try descriptor(message.param1), credentials)
            return .ok
        case .vfsSeek:
            let position = try service.seek(try descriptor(message.param1), offset: Int64(bitPattern: message.param2),
                                            whence: message.param3, credentials)
            return IPCReply(param1: position)
        case .vfsChmod:
            try service.chmod(try path(message, payload), mode: UInt32(truncatingIfNeeded: message.param1), credentials)
            return .ok
        case .vfsChown:
            func id(_ value: UInt64) throws(FSError) -> UInt32? {
                if value == VFSProtocol.idUnchanged { return nil }
                guard value < VFSProtocol.idUnchanged else { throw FSError(.invalidArgument, "id \(value)") }
                return UInt32(value)
            }
            try service.chown(try path(message, payload), uid: try id(message.param1), gid: try id(message.param2),
                              followSymlinks: message.param3 & VFSProtocol.noFollow == 0, credentials)
            return .ok
        case .vfsUtimes:
            try service.utimes(try path(message, payload), access: VFSProtocol.decodeTime(message.param1),
                               modification: VFSProtocol.decodeTime(message.param2), credentials)
            return .ok
        case .vfsSymlink:
            let (target, link) = try paths(message, payload)
            try service.symlink(target: target, at: link, credentials)
            return .ok
        case .vfsReadlink:
            let target = try service.readlink(try path(message, payload), credentials)
            target.withUnsafeBytes { payload.reply.copyMemory(from: $0) }
            return IPCReply(payloadCount: target.count)
        case .vfsLink:
            let (old, new) = try paths(message, payload)
            try service.link(old, to: new, credentials)
            return .ok
        case .vfsStatfs:
            let (statistics, mount) = try service.statfs(try path(message, payload), credentials)
            let count = VFSProtocol.encode(.init(statistics: statistics, typeName: mount.fileSystem.typeName,
                                                 isReadOnly: mount.isReadOnly, mountPoint: mount.path), into: payload.reply)
            return IPCReply(payloadCount: count)
        case .vfsMount:
            let (mountPoint, source) = try paths(message, payload)
            try service.mount(source: String(decoding: source, as: UTF8.self), at: mountPoint,
                              readOnly: message.param1 & VFSProtocol.mountReadOnly != 0, credentials)
            return .ok
        case .vfsUnmount:
            try service.unmount(try path(message, payload), credentials)
            return .ok
        default:
            throw FSError(.init(rawValue: 38), "\(message.type) is not a VFS request")  // ENOSYS
        }
    }
}
