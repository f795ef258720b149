import PlatformTestSupport
import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// A temporary directory removed at the end of the test.
func makeTemporaryDirectory(_ test: XCTestCase) -> String {
    var template = Array("/tmp/fuse-test-XXXXXX".utf8CString)
    let path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    test.addTeardownBlock { _ = ChildProcess.run("/usr/bin/rm", ["-rf", path]) }
    return path
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
