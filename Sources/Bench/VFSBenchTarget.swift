import SystemPackage
import VFS
#if canImport(Glibc)
import Glibc
#endif

/// The file operations the VFS workload uses, so the same loop runs against the kernel's file
/// system (plain syscalls) and against vfs_server (VFSClient over IPC). Paths are absolute inside
/// the target: "/" is the benchmark's root on either side.
public protocol VFSBenchTarget: AnyObject {
    /// What the figures are printed as (kernel, ours).
    var label: String { get }
    /// open(O_CREAT | O_EXCL | O_WRONLY) then close: a file that did not exist, now empty.
    func createExclusive(_ path: String) throws
    func stat(_ path: String) throws
    func unlink(_ path: String) throws
    /// mkdir; an existing directory is fine (the phases run in separate invocations).
    func makeDirectory(_ path: String) throws
    func exists(_ path: String) -> Bool
    /// open(O_CREAT | O_TRUNC | O_WRONLY).
    func openForWriting(_ path: String) throws -> Int32
    func openForReading(_ path: String) throws -> Int32
    /// Writes all of `bytes`; returns the count written.
    func write(_ fd: Int32, _ bytes: [UInt8]) throws -> Int
    /// Reads up to `count` bytes at the file position; returns how many (0 at the end).
    func read(_ fd: Int32, count: Int) throws -> Int
    func fsync(_ fd: Int32) throws
    func close(_ fd: Int32) throws
}

/// The kernel side: a directory on a mounted file system, plain syscalls.
public final class PosixBenchTarget: VFSBenchTarget {
    public let label: String
    /// The host directory that stands for "/" of the target.
    public let root: String
    /// One buffer for all reads, so the read loop copies into the same pages every time, as a
    /// C program would.
    private var buffer: [UInt8] = []

    public init(root: String, label: String = "kernel") {
        self.root = root.hasSuffix("/") ? String(root.dropLast()) : root
        self.label = label
    }

    private func host(_ path: String) -> String { root + path }

    private func fail(_ call: String, _ path: String) -> BenchError {
        .systemCall("\(call)(\(host(path)))", Errno(rawValue: errno))
    }

    public func createExclusive(_ path: String) throws {
        let fd = Glibc.open(host(path), O_CREAT | O_EXCL | O_WRONLY, 0o644)
        guard fd >= 0 else { throw fail("open", path) }
        guard Glibc.close(fd) == 0 else { throw fail("close", path) }
    }

    public func stat(_ path: String) throws {
        var attributes = Glibc.stat()
        let status = host(path).withCString { lstat($0, &attributes) }
        guard status == 0 else { throw fail("stat", path) }
    }

    public func unlink(_ path: String) throws {
        guard Glibc.unlink(host(path)) == 0 else { throw fail("unlink", path) }
    }

    public func makeDirectory(_ path: String) throws {
        guard Glibc.mkdir(host(path), 0o755) == 0 || errno == EEXIST else { throw fail("mkdir", path) }
    }

    public func exists(_ path: String) -> Bool { access(host(path), F_OK) == 0 }

    public func openForWriting(_ path: String) throws -> Int32 {
        let fd = Glibc.open(host(path), O_CREAT | O_TRUNC | O_WRONLY, 0o644)
        guard fd >= 0 else { throw fail("open", path) }
        return fd
    }

    public func openForReading(_ path: String) throws -> Int32 {
        let fd = Glibc.open(host(path), O_RDONLY)
        guard fd >= 0 else { throw fail("open", path) }
        return fd
    }

    public func write(_ fd: Int32, _ bytes: [UInt8]) throws -> Int {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + done, $0.count - done) }
            guard n > 0 else { throw BenchError.systemCall("write", Errno(rawValue: errno)) }
            done += n
        }
        return done
    }

    public func read(_ fd: Int32, count: Int) throws -> Int {
        if buffer.count < count { buffer = [UInt8](repeating: 0, count: count) }
        let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, count) }
        guard n >= 0 else { throw BenchError.systemCall("read", Errno(rawValue: errno)) }
        return n
    }

    public func fsync(_ fd: Int32) throws {
        guard Glibc.fsync(fd) == 0 else { throw BenchError.systemCall("fsync", Errno(rawValue: errno)) }
    }

    public func close(_ fd: Int32) throws {
        guard Glibc.close(fd) == 0 else { throw BenchError.systemCall("close", Errno(rawValue: errno)) }
    }
}

/// Our side: vfs_server through the client library, as any client program would use it (each
/// call one request and reply; transfers over the inline limit through the client's shared region).
public final class VFSClientBenchTarget: VFSBenchTarget {
    public let label: String
    public let client: VFSClient

    public init(client: VFSClient, label: String = "ours") {
        self.client = client
        self.label = label
    }

    /// A connection to vfs_server at DIRECTORY/NAME.sock.
    public static func connect(name: String, directory: String, label: String = "ours") throws -> VFSClientBenchTarget {
        VFSClientBenchTarget(client: try VFSClient.connect(name: name, directory: directory), label: label)
    }

    public func createExclusive(_ path: String) throws {
        let fd = try client.open(path, flags: [.create, .exclusive, .writeOnly], mode: 0o644)
        try client.close(fd)
    }

    public func stat(_ path: String) throws { _ = try client.stat(path) }

    public func unlink(_ path: String) throws { try client.unlink(path) }

    public func makeDirectory(_ path: String) throws {
        do {
            try client.mkdir(path)
        } catch where error.status == .EEXIST {
        }
    }

    public func exists(_ path: String) -> Bool { (try? client.stat(path)) != nil }

    public func openForWriting(_ path: String) throws -> Int32 {
        try client.open(path, flags: [.create, .truncate, .writeOnly], mode: 0o644)
    }

    public func openForReading(_ path: String) throws -> Int32 { try client.open(path) }

    public func write(_ fd: Int32, _ bytes: [UInt8]) throws -> Int {
        let n = try client.write(fd, bytes)
        guard n == bytes.count else { throw VFSError(.EIO, "short write: \(n) of \(bytes.count)") }
        return n
    }

    public func read(_ fd: Int32, count: Int) throws -> Int { try client.read(fd, count: count).count }

    public func fsync(_ fd: Int32) throws { try client.fsync(fd) }

    public func close(_ fd: Int32) throws { try client.close(fd) }
}
