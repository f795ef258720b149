import CLimitless
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Where servers listen. Each server is a Unix SOCK_SEQPACKET socket `DIR/NAME.sock` (SEQPACKET:
/// connection-oriented like a stream, so SO_PEERCRED and hang-up detection work, but with message
/// boundaries like datagrams, so one read is one message). Next to it, `DIR/NAME.pid` holds the
/// server's pid in decimal, which is the whole name/pid registry: `IPCClient.connect(pid:)` scans
/// the directory's *.pid files. No daemon keeps the registry; a stale pair left by a crashed
/// server is replaced when the name is listened on again.
public enum IPCRuntime {
    /// The runtime directory on an installed system (tmpfs, created by the supervisor). Tests and
    /// development runs pass their own.
    public static let defaultDirectory = "/run/limitless"
}

/// A server's name and the paths it implies.
public struct IPCEndpoint: Equatable, Sendable, CustomStringConvertible {
    public let name: String
    public let directory: String

    public init(name: String, directory: String = IPCRuntime.defaultDirectory) throws(IPCError) {
        let allowed = name.utf8.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x2E || c == 0x5F || c == 0x2D
        }
        guard !name.isEmpty, name.utf8.count <= 64, allowed, !name.hasPrefix(".") else { throw .invalidName(name) }
        self.name = name
        self.directory = directory.count > 1 && directory.hasSuffix("/") ? String(directory.dropLast()) : directory
        guard socketPath.utf8.count < 108 else { throw .pathTooLong(socketPath) }
    }

    public var socketPath: String { directory + "/" + name + ".sock" }
    public var pidPath: String { directory + "/" + name + ".pid" }
    public var description: String { socketPath }

    // MARK: Sockets

    /// A Unix address for `path` (checked to fit by `init`).
    static func address(_ path: String) -> (sockaddr_un, socklen_t) {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            let bytes = Array(path.utf8.prefix(raw.count - 1))
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return (address, socklen_t(MemoryLayout<sockaddr_un>.size))
    }

    static func makeSocket(nonblocking: Bool) throws(IPCError) -> Int32 {
        try sys("socket(AF_UNIX, SOCK_SEQPACKET)") {
            socket(AF_UNIX, CL_SOCK_SEQPACKET | CL_SOCK_CLOEXEC | (nonblocking ? CL_SOCK_NONBLOCK : 0), 0)
        }
    }

    /// Creates the directory if needed, removes a stale socket left by a dead server, binds,
    /// listens and writes NAME.pid. Returns the listening (non-blocking) socket.
    func listen(backlog: Int32 = 128) throws(IPCError) -> Int32 {
        let fd = try makeListeningSocket(backlog: backlog)
        do throws(IPCError) {
            try writePIDFile()
        } catch {
            closeDescriptor(fd)
            throw error
        }
        return fd
    }

    /// `listen` without the pid file: the supervisor holds a server's listening socket across
    /// its instances (`InheritedListener`) and writes NAME.pid itself for each instance.
    public func makeListeningSocket(backlog: Int32 = 128) throws(IPCError) -> Int32 {
        try Self.makeDirectories(directory)
        if access(socketPath, F_OK) == 0 {
            // Something is there: a live server (connect succeeds) or the remains of a dead one.
            if let live = try? connectSocket() {
                closeDescriptor(live)
                throw .addressInUse(socketPath)
            }
            unlink(socketPath)
        }
        let fd = try Self.makeSocket(nonblocking: true)
        do throws(IPCError) {
            var (address, length) = Self.address(socketPath)
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
            }
            if bound != 0 {
                let code = CL_errno()
                if code == EADDRINUSE { throw IPCError.addressInUse(socketPath) }
                throw IPCError.systemCall("bind(\(socketPath))", Errno(rawValue: code))
            }
            _ = try sys("listen(\(socketPath))") { Glibc.listen(fd, backlog) }
        } catch {
            closeDescriptor(fd)
            throw error
        }
        return fd
    }

    /// Connects a blocking socket to the server.
    func connectSocket() throws(IPCError) -> Int32 {
        let fd = try Self.makeSocket(nonblocking: false)
        var (address, length) = Self.address(socketPath)
        let result = retryingEINTR {
            withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, length) }
            }
        }
        if case .failure(let errno) = result {
            closeDescriptor(fd)
            if errno == .noSuchFileOrDirectory || errno == .connectionRefused {
                throw .serverNotFound(name: name, directory: directory)
            }
            throw .systemCall("connect(\(socketPath))", errno)
        }
        return fd
    }

    /// Removes the socket and pid file (when the server stops).
    public func removeFiles() {
        unlink(socketPath)
        unlink(pidPath)
    }

    // MARK: Registry

    /// Writes NAME.pid naming `pid` (this process by default; the supervisor names the instance
    /// it started).
    public func writePIDFile(pid: Int32 = getpid()) throws(IPCError) {
        let text = Array(String(pid).utf8) + [0x0A]
        let temporary = pidPath + ".tmp"
        // Made afresh and never followed: the supervisor writes this as root in a directory a
        // server may be able to write, where a planted symlink must not redirect it.
        unlink(temporary)
        let fd = try sys("open(\(temporary))") { open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644) }
        defer { closeDescriptor(fd) }
        _ = try sys("write(\(temporary))") { text.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } }
        // rename is atomic: a reader sees the old file or the new one, never half a number.
        _ = try sys("rename(\(pidPath))") { rename(temporary, pidPath) }
    }

    /// The endpoint whose NAME.pid file holds `pid`.
    static func lookup(pid: Int32, directory: String) throws(IPCError) -> IPCEndpoint {
        guard let dir = opendir(directory) else { throw .noServerForPID(pid, directory: directory) }
        defer { closedir(dir) }
        while let entry = readdir(dir) {
            let fileName = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            guard fileName.hasSuffix(".pid") else { continue }
            let name = String(fileName.dropLast(4))
            guard let endpoint = try? IPCEndpoint(name: name, directory: directory),
                  readPID(endpoint.pidPath) == pid else { continue }
            return endpoint
        }
        throw .noServerForPID(pid, directory: directory)
    }

    static func readPID(_ path: String) -> Int32? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { closeDescriptor(fd) }
        var buffer = [UInt8](repeating: 0, count: 32)
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard count > 0 else { return nil }
        let text = String(decoding: buffer[..<count], as: UTF8.self)
        return Int32(text.split(separator: "\n").first ?? "")
    }

    static func makeDirectories(_ path: String) throws(IPCError) {
        var prefix = ""
        for component in path.split(separator: "/", omittingEmptySubsequences: true) {
            prefix += "/" + component
            if mkdir(prefix, 0o755) != 0 {
                let code = CL_errno()
                if code != EEXIST { throw .systemCall("mkdir(\(prefix))", Errno(rawValue: code)) }
            }
        }
    }
}
