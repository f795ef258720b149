import CLimitless
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The benchmark's second process: this same binary, started again through /proc/self/exe with
/// a hidden `--role`, inheriting one descriptor (a memfd or a socket). Re-executing gives the peer
/// a clean process (no threads, no state copied from the parent) and needs no fork() in Swift.
struct PeerProcess {
    let role: String
    let pid: pid_t

    /// Starts `limitless-bench ipc --role ROLE --fd FD --cpu CPU ...`; `descriptor` stays open in the
    /// peer (close-on-exec is cleared for the spawn only).
    static func spawn(role: String, descriptor: Int32, cpu: Int?, arguments: [String] = []) throws(BenchError) -> PeerProcess {
        let executable = ownExecutable()
        var argv = [executable, "ipc", "--role", role, "--fd", String(descriptor)]
        if let cpu { argv += ["--cpu", String(cpu)] }
        argv += arguments
        let flags = fcntl(descriptor, F_GETFD)
        _ = fcntl(descriptor, F_SETFD, flags & ~FD_CLOEXEC)
        defer { _ = fcntl(descriptor, F_SETFD, flags | FD_CLOEXEC) }
        let cStrings = argv.map { strdup($0) } + [nil]
        defer { cStrings.forEach { free($0) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable, nil, nil, cStrings, environ)
        guard result == 0 else { throw .systemCall("posix_spawn(/proc/self/exe --role \(role))", Errno(rawValue: result)) }
        return PeerProcess(role: role, pid: pid)
    }

    /// This binary's path. Read through readlink rather than exec'ing /proc/self/exe directly, so
    /// the benchmark also runs under valgrind (which reports its client's path there).
    static func ownExecutable() -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { return "/proc/self/exe" }
        return String(decoding: buffer.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Waits for the peer to exit; throws if it failed.
    func wait() throws(BenchError) {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            guard errno == EINTR else { throw .systemCall("waitpid", Errno(rawValue: errno)) }
        }
        guard status == 0 else { throw .peerFailed(role: role, status: status) }
    }

    func kill() { _ = Glibc.kill(pid, SIGKILL) }
}

/// A page of plain shared memory (a memfd), for the cache-line floor.
struct SharedPage: ~Copyable {
    let descriptor: Int32
    let base: UnsafeMutableRawPointer

    static let size = 4096

    init() throws(BenchError) {
        let fd = CL_memfd_create("limitless-bench-floor", 0x0001)  // MFD_CLOEXEC
        guard fd >= 0 else { throw .systemCall("memfd_create", Errno(rawValue: CL_errno())) }
        guard ftruncate(fd, off_t(Self.size)) == 0 else { throw .systemCall("ftruncate", Errno(rawValue: CL_errno())) }
        try self.init(mapping: fd)
    }

    init(mapping fd: Int32) throws(BenchError) {
        let address = mmap(nil, Self.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let address, CL_is_map_failed(address) == 0 else { throw .systemCall("mmap", Errno(rawValue: CL_errno())) }
        descriptor = fd
        base = address
    }

    deinit {
        munmap(base, Self.size)
        close(descriptor)
    }
}
