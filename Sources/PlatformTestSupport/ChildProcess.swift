#if canImport(Glibc)
import Glibc
#endif

/// Starting a test's child process: `program arguments` with stdout and stderr to `outputPath`
/// (truncated, or appended to with `appending`: a log several processes share), this process's
/// environment minus the entries `dropping` says, plus `environment`.
public enum ChildProcess {
    /// posix_spawn (or posix_spawnp with `search`): the child's pid, or posix_spawn's error
    /// number (ENOENT: no such program).
    public static func spawn(_ program: String, _ arguments: [String], environment: [String] = [], outputPath: String,
                             search: Bool = false, appending: Bool = false,
                             dropping: (String) -> Bool = { _ in false }) -> Result<pid_t, SpawnFailure> {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | (appending ? O_APPEND : O_TRUNC), 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let argv = ([program] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var env: [UnsafeMutablePointer<CChar>?] = []
        var index = 0
        while let entry = environ[index] {
            if !dropping(String(cString: entry)) { env.append(strdup(entry)) }
            index += 1
        }
        env += environment.map { strdup($0) }
        env.append(nil)
        defer { env.forEach { free($0) } }
        var pid = pid_t()
        let result = search ? posix_spawnp(&pid, program, &actions, nil, argv, env) : posix_spawn(&pid, program, &actions, nil, argv, env)
        return result == 0 ? .success(pid) : .failure(SpawnFailure(code: result))
    }

    /// Waits for `pid` (EINTR retried) and returns its wait status.
    public static func wait(_ pid: pid_t) -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return status
    }

    public struct SpawnFailure: Error, Equatable { public let code: Int32 }

    /// Where a system tool (e2fsprogs' mke2fs, e2fsck, debugfs live in /sbin on some
    /// distributions, /usr/sbin on others) is installed, or nil.
    public static func systemTool(_ name: String) -> String? {
        ["/usr/sbin/", "/sbin/", "/usr/bin/", "/bin/"].map { $0 + name }.first { access($0, X_OK) == 0 }
    }
}

#if canImport(Foundation)
import Foundation

extension ChildProcess {
    /// Runs `path arguments` (environment inherited, plus `environment`) to the end and returns
    /// its exit status with stdout and stderr together: for tools a test calls (e2fsprogs,
    /// serverctl).
    public static func output(_ path: String, _ arguments: [String], environment: [String: String] = [:]) throws
        -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    /// Runs `path arguments` to the end: its exit status (-signal when a signal ended it) and
    /// stdout and stderr together; status -1 and the reason when it cannot be started. The
    /// output goes through a temporary file rather than a pipe: a program that daemonizes
    /// (limitless-fuse) leaves a child holding its output open, and a pipe's reader would wait
    /// for that child.
    public static func run(_ path: String, _ arguments: [String]) -> (status: Int32, output: String) {
        let outputPath = NSTemporaryDirectory() + "limitless-child-\(getpid())-\(UInt64.random(in: 0...UInt64.max)).out"
        defer { unlink(outputPath) }
        switch spawn(path, arguments, outputPath: outputPath) {
        case .failure(let failure):
            return (-1, "cannot start \(path): \(String(cString: strerror(failure.code)))")
        case .success(let pid):
            let status = wait(pid)
            let output = FileManager.default.contents(atPath: outputPath).map { String(decoding: $0, as: UTF8.self) } ?? ""
            return ((status & 0x7F) == 0 ? (status >> 8) & 0xFF : -(status & 0x7F), output)
        }
    }
}
#endif
