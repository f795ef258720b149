import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// A temporary directory removed at the end of the test.
func makeTemporaryDirectory(_ test: XCTestCase) -> String {
    var template = Array("/tmp/fuse-test-XXXXXX".utf8CString)
    let path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    test.addTeardownBlock { _ = runProgram("/usr/bin/rm", ["-rf", path]) }
    return path
}

/// Starts a program with stdout and stderr appended to `log`; returns its pid.
func spawn(_ program: String, _ arguments: [String], log: String) -> pid_t? {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0o644)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    let argv = ([program] + arguments).map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    var pid: pid_t = 0
    return posix_spawn(&pid, program, &actions, nil, argv, environ) == 0 ? pid : nil
}

/// Waits for `pid`; its exit status, or -signal.
func waitForExit(_ pid: pid_t) -> Int32 {
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    return (status & 0x7F) == 0 ? (status >> 8) & 0xFF : -(status & 0x7F)
}

/// Runs a program to the end: its exit status and combined output.
@discardableResult
func runProgram(_ program: String, _ arguments: [String]) -> (status: Int32, output: String) {
    let log = "/tmp/fuse-test-run-\(getpid())-\(UInt64.random(in: 0...UInt64.max)).log"
    defer { unlink(log) }
    guard let pid = spawn(program, arguments, log: log) else { return (-1, "cannot start \(program)") }
    let status = waitForExit(pid)
    return (status, readText(log))
}

func readText(_ path: String) -> String {
    (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
}

/// Is `path` a mount point of type fuse.limitless (per /proc/self/mountinfo)?
func isLimitlessMount(_ path: String) -> Bool {
    readText("/proc/self/mountinfo").split(separator: "\n").contains { line in
        let fields = line.split(separator: " ")
        guard fields.count > 4, fields[4] == path, let dash = fields.firstIndex(of: "-"), dash + 1 < fields.count else { return false }
        return fields[dash + 1] == "fuse.limitless"
    }
}

/// Runs `action` once after `seconds` unless cancelled first: a hung FUSE request must end
/// as a failed test, never as a hung test run.
final class Watchdog: @unchecked Sendable {
    private let lock = NSLock()
    private var cancelled = false

    init(seconds: Double, action: @escaping @Sendable () -> Void) {
        DispatchQueue.global().asyncAfter(deadline: .now() + seconds) { [self] in
            lock.lock()
            let fire = !cancelled
            cancelled = true
            lock.unlock()
            if fire { action() }
        }
    }

    /// True if it had not fired yet.
    @discardableResult
    func cancel() -> Bool {
        lock.lock()
        defer { lock.unlock() }
        let wasPending = !cancelled
        cancelled = true
        return wasPending
    }
}
