import CLimitless
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Which system calls a server may make once it has dropped privileges: a base set every server
/// needs (memory, threads, time, signals, the IPC sockets it already holds), plus what its
/// granted capabilities need. Everything else fails with EPERM (not a kill), so the server sees
/// an ordinary error it can report.
///
/// Not in the base set: opening, creating or removing files (openat, mkdirat, unlinkat), execve,
/// bind/listen, and sockets of any family but AF_UNIX (`socket(AF_INET, ...)` fails with EPERM).
/// So a server sets up its endpoints and opens what it needs *before* dropping privileges.
public struct SeccompPolicy: Equatable, Sendable {
    public static let baseSyscalls: [String] = [
        "read", "write", "readv", "writev", "pread64", "pwrite64", "close", "fstat", "newfstatat", "statx", "lseek",
        "mmap", "munmap", "mprotect", "mremap", "madvise", "brk", "futex", "clock_gettime", "clock_getres",
        "clock_nanosleep", "nanosleep", "gettimeofday", "getpid", "gettid", "getppid", "getuid", "geteuid", "getgid",
        "getegid", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "tgkill", "exit", "exit_group",
        "sched_yield", "sched_getaffinity", "getrandom", "poll", "ppoll", "epoll_create1", "epoll_ctl", "epoll_wait",
        "epoll_pwait", "eventfd2", "fcntl", "dup", "dup3", "pipe2", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "sendto",
        "recvfrom", "accept4", "connect", "getsockopt", "setsockopt", "shutdown", "getsockname", "getpeername",
        "set_robust_list", "rseq", "clone", "clone3", "prlimit64", "membarrier", "restart_syscall", "memfd_create",
        "ftruncate", "timerfd_create", "timerfd_settime", "timerfd_gettime", "signalfd4", "uname",
    ]

    /// What capabilities add: device access goes through ioctls on VFIO descriptors, DMA
    /// buffers are locked; creating devices means creating endpoints.
    public static func syscalls(forCapability name: String) -> [String] {
        if name.hasPrefix("CAP_MMIO_") || name.hasPrefix("CAP_IRQ_") || name == "CAP_PCI_CONFIG" { return ["ioctl"] }
        if name == "CAP_DMA_ALLOC" { return ["ioctl", "mlock", "munlock"] }
        if name == "CAP_DEVICE_CREATE" { return ["bind", "listen", "unlinkat", "unlink", "mkdirat", "mkdir"] }
        return []
    }

    /// System call names allowed (those this architecture lacks are skipped).
    public var allowedSyscalls: [String]
    /// `socket()` for families other than AF_UNIX.
    public var allowNonUnixSockets = false
    /// With "ioctl" allowed: the only request numbers it may be called with (`SeccompIoctls`);
    /// nil allows every request.
    public var allowedIoctls: [UInt]?
    /// Requests outside `allowedIoctls` that are neither allowed nor refused by the filter but
    /// put to the supervisor (SECCOMP_RET_USER_NOTIF), which allows those of capabilities granted
    /// at run time (`SeccompNotifications`). Only where the ioctl list is restricted.
    public var notifiedIoctls: [UInt] = []

    public init(allowedSyscalls: [String], allowNonUnixSockets: Bool = false, allowedIoctls: [UInt]? = nil) {
        self.allowedSyscalls = allowedSyscalls
        self.allowNonUnixSockets = allowNonUnixSockets
        self.allowedIoctls = allowedIoctls
    }

    /// The base set plus what `capabilities` need plus `extra`. ioctl is allowed only with the
    /// requests the capabilities need, unless `extra` names "ioctl" (then with any request).
    public init(capabilities: [String], extra: [String] = []) {
        var names = Self.baseSyscalls
        for capability in capabilities { names += Self.syscalls(forCapability: capability) }
        names += extra
        var seen = Set<String>()
        self.init(allowedSyscalls: names.filter { seen.insert($0).inserted },
                  allowedIoctls: extra.contains("ioctl") ? nil : Self.allowedIoctls(capabilities: capabilities))
    }

    /// The BPF program: check the architecture (anything else is killed: its numbers would
    /// mean other calls), refuse x32 numbers, allow the listed calls, allow socket() for
    /// AF_UNIX only, refuse the rest with EPERM.
    public func program() throws(ServerKitError) -> [sock_filter] {
        let arch = CL_sk_audit_arch()
        guard arch != 0 else { throw .seccompUnavailable("unsupported architecture (x86_64 and aarch64 only)") }
        var numbers: [UInt32] = []
        // ioctl with a request list gets its own check block, like socket.
        let ioctlNumber = "ioctl".withCString { CL_sk_syscall_number($0) }
        let ioctlAllowed = allowedSyscalls.contains("ioctl")
        // A request list of its own: allowed ones, or none but some put to the supervisor.
        let ioctlRequests: [UInt]? = ioctlNumber < 0 ? nil : ioctlAllowed ? allowedIoctls : notifiedIoctls.isEmpty ? nil : []
        let notified = ioctlRequests.map { listed in notifiedIoctls.filter { !listed.contains($0) } } ?? []
        for name in allowedSyscalls where name != "socket" && !(name == "ioctl" && ioctlRequests != nil) {
            let number = name.withCString { CL_sk_syscall_number($0) }
            if number >= 0 { numbers.append(UInt32(number)) }
        }
        let socketNumber = "socket".withCString { CL_sk_syscall_number($0) }
        let hasSocket = socketNumber >= 0
        let allowAllSockets = allowNonUnixSockets
        // Layout: 0 load arch; 1 jeq arch; 2 kill; 3 load nr; 4 jge x32 -> deny; 5..<5+n allowed;
        // [socket jeq]; deny; allow; [load arg0; jeq AF_UNIX; allow; deny].
        let entries = numbers.count + (hasSocket ? 1 : 0) + (ioctlRequests != nil ? 1 : 0)
        guard entries + 13 + 6 + (ioctlRequests?.count ?? 0) + notified.count < 255 else { throw .seccompUnavailable("too many system calls for one BPF jump range") }
        let ldW: UInt16 = 0x20, jeqK: UInt16 = 0x15, jgeK: UInt16 = 0x35, retK: UInt16 = 0x06
        let deny = CL_SK_SECCOMP_RET_ERRNO | UInt32(EPERM)
        var p: [sock_filter] = []
        func add(_ code: UInt16, _ jt: Int, _ jf: Int, _ k: UInt32) {
            p.append(sock_filter(code: code, jt: UInt8(jt), jf: UInt8(jf), k: k))
        }
        add(ldW, 0, 0, 4)                               // seccomp_data.arch
        add(jeqK, 1, 0, arch)
        add(retK, 0, 0, CL_SK_SECCOMP_RET_KILL_PROCESS)
        add(ldW, 0, 0, 0)                               // seccomp_data.nr
        let denyIndex = 5 + entries
        let allowIndex = denyIndex + 1
        let socketCheckIndex = allowIndex + 1
        let ioctlCheckIndex = socketCheckIndex + (hasSocket && !allowAllSockets ? 4 : 0)
        add(jgeK, denyIndex - 5, 0, 0x4000_0000)        // __X32_SYSCALL_BIT
        for number in numbers { add(jeqK, allowIndex - (p.count + 1), 0, number) }
        if hasSocket {
            add(jeqK, (allowAllSockets ? allowIndex : socketCheckIndex) - (p.count + 1), 0, UInt32(socketNumber))
        }
        if ioctlRequests != nil {
            add(jeqK, ioctlCheckIndex - (p.count + 1), 0, UInt32(ioctlNumber))
        }
        add(retK, 0, 0, deny)
        add(retK, 0, 0, CL_SK_SECCOMP_RET_ALLOW)
        if hasSocket && !allowAllSockets {
            add(ldW, 0, 0, 16)                          // low half of args[0] (little-endian)
            add(jeqK, 0, 1, UInt32(AF_UNIX))
            add(retK, 0, 0, CL_SK_SECCOMP_RET_ALLOW)
            add(retK, 0, 0, deny)
        }
        if let requests = ioctlRequests {
            // args[1], the request: the high half must be 0 (every allowed number fits in 32
            // bits), the low half one of the list. Block: ld hi; jeq 0; ld lo; jeq...; deny;
            // allow; [user-notif for the notified requests].
            precondition(p.count == ioctlCheckIndex)
            let blockDeny = ioctlCheckIndex + 3 + requests.count + notified.count
            add(ldW, 0, 0, 28)                          // high half of args[1]
            add(jeqK, 0, blockDeny - (p.count + 1), 0)
            add(ldW, 0, 0, 24)                          // low half of args[1]
            for request in requests { add(jeqK, blockDeny + 1 - (p.count + 1), 0, UInt32(truncatingIfNeeded: request)) }
            for request in notified { add(jeqK, blockDeny + 2 - (p.count + 1), 0, UInt32(truncatingIfNeeded: request)) }
            add(retK, 0, 0, deny)
            add(retK, 0, 0, CL_SK_SECCOMP_RET_ALLOW)
            if !notified.isEmpty { add(retK, 0, 0, CL_SK_SECCOMP_RET_USER_NOTIF) }
        }
        return p
    }

    /// Installs `program` on the calling process (every thread). Needs no_new_privs (or
    /// CAP_SYS_ADMIN). Async-signal-safe apart from what the caller built beforehand, so it can
    /// run in a forked child.
    public static func install(_ program: [sock_filter]) -> Errno? {
        let result = program.withUnsafeBufferPointer { CL_sk_seccomp_install($0.baseAddress, UInt16($0.count)) }
        return result == 0 ? nil : Errno(rawValue: CL_errno())
    }
}

/// What `ServerRuntime.dropPrivileges` installed, as the line it logs; built only when read.
public struct DroppedPrivileges: CustomStringConvertible, Sendable {
    let policy: SeccompPolicy?
    let instructions: Int
    let capabilities: [String]

    public var description: String {
        guard let policy else { return "privileges dropped: no_new_privs" }
        let ioctls = policy.allowedSyscalls.contains("ioctl") ? policy.allowedIoctls.map { "\($0.count) ioctl requests" } ?? "any ioctl" : "no ioctl"
        return "privileges dropped: no_new_privs, seccomp filter of \(instructions) instructions, \(ioctls) "
            + "(capabilities: \(capabilities.isEmpty ? "none" : capabilities.joined(separator: " ")))"
    }
}

extension ServerRuntime {
    /// Drops privileges before serving: sets no_new_privs (execve can never again raise
    /// privileges) and, with `seccomp`, installs a filter allowing the base system calls plus
    /// what the granted capabilities need (`SeccompPolicy`) plus `extraSyscalls`; anything else
    /// then fails with EPERM. Call after opening files and setting up endpoints. `capabilities`
    /// replaces the granted names (a standalone server that opened its device itself names the
    /// capabilities it acts with). Logs what it installed, unless `logNow` is false: then the
    /// caller logs the result later (storage_server does once it has registered, so that a
    /// restart's clock does not run while the line is built and sent).
    @discardableResult
    public func dropPrivileges(seccomp: Bool = true, capabilities: [String]? = nil, extraSyscalls: [String] = [],
                               logNow: Bool = true) throws(ServerKitError) -> DroppedPrivileges {
        let capabilityNames = capabilities ?? self.capabilityNames
        guard CL_sk_set_no_new_privs() == 0 else { throw .privilegeDrop("prctl(PR_SET_NO_NEW_PRIVS)", Errno(rawValue: CL_errno())) }
        var dropped = DroppedPrivileges(policy: nil, instructions: 0, capabilities: capabilityNames)
        if seccomp {
            // A standby prepared its program from these very names before its activation.
            let prepared = PreparedSeccompProgram.prepared(capabilities: capabilityNames, extra: extraSyscalls)
            let base = prepared?.base ?? SeccompPolicy(capabilities: capabilityNames, extra: extraSyscalls)
            let (policy, program) = try installSeccompFilter(base, prepared: prepared)
            dropped = DroppedPrivileges(policy: policy, instructions: program.count, capabilities: capabilityNames)
        }
        if logNow { log(.info, dropped.description) }
        return dropped
    }

    /// Whether no_new_privs is set on this process.
    public static var noNewPrivileges: Bool { CL_sk_get_no_new_privs() == 1 }
}
