import CLimitless
import Glibc

/// Starts one server process the way `SupervisorChannel` says: stdin /dev/null, stdout and stderr
/// into pipes the supervisor reads, `inheritedDescriptors` placed at 3, 4, 5... and nothing else
/// open, the environment given, signals at their defaults and unblocked, and its own process
/// group (so stopping a server also reaches anything it forked, and a terminal's ^C reaches only
/// the supervisor, which stops servers in order).
///
/// Without an identity to switch to this is one `posix_spawn`. Switching user and group (root
/// only) is not something posix_spawn can do, so then the launcher forks and the child calls only
/// async-signal-safe functions on memory prepared before the fork: setgroups, setgid, setuid,
/// dup2, close_range, execve. `PR_SET_NO_NEW_PRIVS` and seccomp are the server's own first steps
/// (ServerKit): they must come after exec, which they would otherwise constrain.
public enum ProcessLauncher {
    /// What to start.
    public struct Request: Sendable {
        public var path: String
        /// argv[1...].
        public var arguments: [String]
        /// `NAME=value` strings: the whole environment of the new process.
        public var environment: [String]
        /// Placed at descriptors 3, 4, 5... in this order.
        public var inheritedDescriptors: [Int32]
        /// Switch to this identity (needs root); nil keeps the supervisor's.
        public var identity: Identity?

        public init(path: String, arguments: [String] = [], environment: [String] = [], inheritedDescriptors: [Int32] = [],
                    identity: Identity? = nil) {
            self.path = path
            self.arguments = arguments
            self.environment = environment
            self.inheritedDescriptors = inheritedDescriptors
            self.identity = identity
        }
    }

    /// A user, its group and supplementary groups, as numbers.
    public struct Identity: Hashable, Sendable, CustomStringConvertible {
        public var uid: uid_t
        public var gid: gid_t
        public var groups: [gid_t]
        public init(uid: uid_t, gid: gid_t, groups: [gid_t] = []) {
            self.uid = uid
            self.gid = gid
            self.groups = groups
        }
        public var description: String { "uid \(uid) gid \(gid)" }
    }

    /// A started process: its pid and the read ends (non-blocking, close-on-exec) of its stdout
    /// and stderr pipes, owned by the caller.
    public struct Process: Sendable {
        public var pid: pid_t
        public var stdout: Int32
        public var stderr: Int32
    }

    public static func launch(_ request: Request) throws(LaunchError) -> Process {
        var outPipe: [Int32] = [-1, -1], errPipe: [Int32] = [-1, -1]
        guard makePipe(&outPipe) == 0 else { throw .systemCall("pipe2", errno) }
        guard makePipe(&errPipe) == 0 else {
            let code = errno
            close(outPipe[0]); close(outPipe[1])
            throw .systemCall("pipe2", code)
        }
        // Sources are first copied above every target so that placing one never overwrites
        // another, and a source already sitting at its target is not left close-on-exec.
        let lowest = Int32(3 + request.inheritedDescriptors.count + 64)
        var sources: [Int32] = []
        defer {
            for fd in sources { close(fd) }
            close(outPipe[1]); close(errPipe[1])
        }
        for fd in request.inheritedDescriptors {
            let copy = CL_fcntl_int(fd, F_DUPFD_CLOEXEC, lowest)
            guard copy >= 0 else {
                let code = errno
                close(outPipe[0]); close(errPipe[0])
                throw .systemCall("fcntl(F_DUPFD_CLOEXEC) of descriptor \(fd)", code)
            }
            sources.append(copy)
        }
        let pid: pid_t
        do throws(LaunchError) {
            if let identity = request.identity {
                pid = try forkExec(request, identity: identity, stdout: outPipe[1], stderr: errPipe[1], sources: sources)
            } else {
                pid = try spawn(request, stdout: outPipe[1], stderr: errPipe[1], sources: sources)
            }
        } catch {
            close(outPipe[0]); close(errPipe[0])
            throw error
        }
        _ = CL_fcntl_int(outPipe[0], F_SETFL, O_NONBLOCK)
        _ = CL_fcntl_int(errPipe[0], F_SETFL, O_NONBLOCK)
        return Process(pid: pid, stdout: outPipe[0], stderr: errPipe[0])
    }

    private typealias Pipe2 = @convention(c) (UnsafeMutablePointer<Int32>?, Int32) -> Int32
    /// pipe2(2), looked up at run time (its declaration needs _GNU_SOURCE): the descriptors are
    /// close-on-exec from birth, so a spawn on another thread cannot inherit them.
    nonisolated(unsafe) private static let pipe2: Pipe2? = {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "pipe2") else { return nil }
        return unsafeBitCast(symbol, to: Pipe2.self)
    }()

    /// A close-on-exec pipe; 0 on success, -1 and errno on failure.
    private static func makePipe(_ fds: inout [Int32]) -> Int32 {
        if let pipe2 { return pipe2(&fds, O_CLOEXEC) }
        guard pipe(&fds) == 0 else { return -1 }
        _ = CL_fcntl_int(fds[0], F_SETFD, FD_CLOEXEC)
        _ = CL_fcntl_int(fds[1], F_SETFD, FD_CLOEXEC)
        return 0
    }

    // MARK: posix_spawn

    private typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, Int32) -> Int32
    /// glibc 2.34's posix_spawn_file_actions_addclosefrom_np, looked up at run time (its
    /// declaration needs _GNU_SOURCE). Without it only close-on-exec keeps other descriptors in.
    nonisolated(unsafe) private static let addCloseFrom: AddCloseFrom? = {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") else { return nil }
        return unsafeBitCast(symbol, to: AddCloseFrom.self)
    }()

    private static func spawn(_ request: Request, stdout: Int32, stderr: Int32, sources: [Int32]) throws(LaunchError) -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }

        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, stdout, 1)
        posix_spawn_file_actions_adddup2(&actions, stderr, 2)
        for (index, source) in sources.enumerated() {
            posix_spawn_file_actions_adddup2(&actions, source, 3 + Int32(index))
        }
        if let addCloseFrom { _ = addCloseFrom(&actions, 3 + Int32(sources.count)) }

        var empty = sigset_t(), all = sigset_t()
        sigemptyset(&empty)
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP))

        let argv = CStringArray([request.path] + request.arguments)
        let envp = CStringArray(request.environment)
        var pid: pid_t = 0
        let result = posix_spawn(&pid, request.path, &actions, &attributes, argv.pointers, envp.pointers)
        guard result == 0 else { throw .spawn(path: request.path, errno: result) }
        return pid
    }

    // MARK: fork and exec (switching identity)

    private static func forkExec(_ request: Request, identity: Identity, stdout: Int32, stderr: Int32,
                                 sources: [Int32]) throws(LaunchError) -> pid_t {
        // Everything the child touches is made here, before the fork.
        let argv = CStringArray([request.path] + request.arguments)
        let envp = CStringArray(request.environment)
        let path = argv.pointers[0]!
        let devNull = CStringArray(["/dev/null"])
        let groups = UnsafeMutablePointer<gid_t>.allocate(capacity: max(1, identity.groups.count))
        defer { groups.deallocate() }
        for (index, group) in identity.groups.enumerated() { groups[index] = group }
        let sourceList = UnsafeMutablePointer<Int32>.allocate(capacity: max(1, sources.count))
        defer { sourceList.deallocate() }
        for (index, source) in sources.enumerated() { sourceList[index] = source }
        let sourceCount = Int32(sources.count)
        let groupCount = identity.groups.count
        // The child reports a failure (its errno) through this pipe; exec closes it on success.
        var report: [Int32] = [-1, -1]
        guard makePipe(&report) == 0 else { throw .systemCall("pipe2", errno) }
        let reportWrite = report[1]
        var empty = sigset_t()
        sigemptyset(&empty)

        let pid = fork()
        if pid == 0 {
            func fail(_ code: Int32) -> Never {
                var value = code
                _ = write(reportWrite, &value, 4)
                _exit(127)
            }
            _ = setpgid(0, 0)
            for signal in 1..<Int32(65) where signal != SIGKILL && signal != SIGSTOP { _ = Glibc.signal(signal, SIG_DFL) }
            _ = sigprocmask(SIG_SETMASK, &empty, nil)
            let null = open(devNull.pointers[0]!, O_RDONLY)
            if null < 0 || dup2(null, 0) < 0 { fail(errno) }
            if dup2(stdout, 1) < 0 || dup2(stderr, 2) < 0 { fail(errno) }
            for index in 0..<sourceCount where dup2(sourceList[Int(index)], 3 + index) < 0 { fail(errno) }
            // close_range(first, ~0U, 0): everything above the placed descriptors, except the
            // report pipe, which is close-on-exec.
            var fd = 3 + sourceCount
            while fd < 1024 {
                if fd != reportWrite { close(fd) }
                fd += 1
            }
            if setgroups(groupCount, groups) != 0 { fail(errno) }
            if setgid(identity.gid) != 0 { fail(errno) }
            if setuid(identity.uid) != 0 { fail(errno) }
            execve(path, argv.pointers, envp.pointers)
            fail(errno)
        }
        close(report[1])
        defer { close(report[0]) }
        guard pid > 0 else { throw .systemCall("fork", errno) }
        var code: Int32 = 0
        var got = 0
        repeat { got = read(report[0], &code, 4) } while got < 0 && errno == EINTR
        if got == 4 {
            var status: Int32 = 0
            _ = waitpid(pid, &status, 0)
            throw .spawn(path: request.path, errno: code)
        }
        return pid
    }

    // MARK: Users and groups

    /// Resolves `user` and `group` (names or numbers) to numbers. A user without a group runs in
    /// its own primary group, with the supplementary groups /etc/group gives it.
    public static func resolveIdentity(user: String?, group: String?) throws(LaunchError) -> Identity? {
        if user == nil && group == nil { return nil }
        var uid = getuid(), gid = getgid()
        var groups: [gid_t] = []
        if let user {
            if let entry = getpwnam(user) {
                uid = entry.pointee.pw_uid
                gid = entry.pointee.pw_gid
                var count: Int32 = 64
                var list = [gid_t](repeating: 0, count: 64)
                if getgrouplist(user, gid, &list, &count) >= 0 { groups = Array(list.prefix(Int(count))) }
            } else if let number = uid_t(user) {
                uid = number
            } else {
                throw .unknownUser(user)
            }
        }
        if let group {
            if let entry = getgrnam(group) {
                gid = entry.pointee.gr_gid
            } else if let number = gid_t(group) {
                gid = number
            } else {
                throw .unknownGroup(group)
            }
        }
        if !groups.contains(gid) { groups.insert(gid, at: 0) }
        return Identity(uid: uid, gid: gid, groups: groups)
    }
}

public enum LaunchError: Error, Hashable, Sendable, CustomStringConvertible {
    case systemCall(String, Int32)
    case spawn(path: String, errno: Int32)
    case unknownUser(String)
    case unknownGroup(String)

    public var description: String {
        switch self {
        case .systemCall(let call, let code):
            return "\(call) failed: \(String(cString: strerror(code)))"
        case .spawn(let path, let code):
            let hint = code == ENOENT ? "; is the path in servers.conf right?" : code == EACCES ? "; is it executable?" : ""
            return "cannot start \(path): \(String(cString: strerror(code)))\(hint)"
        case .unknownUser(let name):
            return "no user \(name) on this system; create it (useradd --system \(name)) or change the server's user line"
        case .unknownGroup(let name):
            return "no group \(name) on this system; create it (groupadd --system \(name)) or change the server's group line"
        }
    }
}

/// NUL-terminated copies of strings and a NULL-terminated array of pointers to them, freed with
/// the value: argv and envp for exec.
final class CStringArray {
    let pointers: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>
    private let count: Int

    init(_ strings: [String]) {
        count = strings.count
        pointers = .allocate(capacity: strings.count + 1)
        for (index, string) in strings.enumerated() { pointers[index] = strdup(string) }
        pointers[strings.count] = nil
    }

    deinit {
        for index in 0..<count { free(pointers[index]) }
        pointers.deallocate()
    }
}
