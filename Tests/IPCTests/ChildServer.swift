import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// limitless-testserver run standalone as a child process, serving MSG_IPC_PING (and ENOSYS for
/// everything else) at DIR/NAME.sock: a real server process for tests to kill and start again.
/// Found next to the test bundle (`swift build --build-tests` builds it); tests skip without it.
final class ChildServer {
    let pid: pid_t
    private var reaped = false

    static func executable() throws -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let count = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        let path = count > 0 ? String(decoding: buffer.prefix(count).map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
        let candidate = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)]) + "/limitless-testserver"
        guard access(candidate, X_OK) == 0 else {
            throw XCTSkip("no limitless-testserver at \(candidate): build it with `swift build --build-tests`")
        }
        return candidate
    }

    /// Starts `limitless-testserver --serve --name NAME` with LIMITLESS_RUNTIME_DIR=directory,
    /// its output going to `log` (appended).
    init(name: String, directory: String, log: String, extraArguments: [String] = []) throws {
        let program = try Self.executable()
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let argv = ([program, "--serve", "--name", name] + extraArguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var env: [UnsafeMutablePointer<CChar>?] = []
        var index = 0
        while let entry = environ[index] {
            if !String(cString: entry).hasPrefix("LIMITLESS_") { env.append(strdup(entry)) }
            index += 1
        }
        env.append(strdup("LIMITLESS_RUNTIME_DIR=\(directory)"))
        env.append(nil)
        defer { env.forEach { free($0) } }
        // An empty signal mask and default dispositions: a test thread (a Swift concurrency
        // worker, say) may block SIGTERM, and the child would inherit that and never stop.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGTERM, SIGINT, SIGPIPE, SIGCHLD] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var pid = pid_t()
        let result = posix_spawn(&pid, program, &actions, &attributes, argv, env)
        guard result == 0 else { throw XCTSkip("posix_spawn(limitless-testserver) failed: \(result)") }
        self.pid = pid
    }

    /// SIGKILL (a crash, as far as its clients can tell), then reaps it.
    func kill() {
        guard !reaped else { return }
        _ = Glibc.kill(pid, SIGKILL)
        wait()
    }

    /// SIGTERM (an orderly stop), then reaps it; SIGKILL (and a test failure) if it has not
    /// exited within a generous guard time, so a server deaf to SIGTERM fails the test instead of
    /// hanging it.
    func terminate(file: StaticString = #filePath, line: UInt = #line) {
        guard !reaped else { return }
        _ = Glibc.kill(pid, SIGTERM)
        let deadline = ContinuousClock.now + .seconds(60)
        var status: Int32 = 0
        while ContinuousClock.now < deadline {
            let result = waitpid(pid, &status, WNOHANG)
            if result == pid || (result < 0 && errno == ECHILD) {
                reaped = true
                return
            }
            usleep(10_000)
        }
        XCTFail("limitless-testserver \(pid) did not exit within 60 s of SIGTERM", file: file, line: line)
        kill()
    }

    private func wait() {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        reaped = true
    }

    deinit { kill() }
}
