/// Results of a hardware-in-the-loop run: one line per check as it finishes, so a hang shows
/// where it hung, and one closing `N passed, N failed` line the rig and CI read.
public final class SuiteReport {
    public private(set) var passed = 0
    public private(set) var failed = 0
    public private(set) var skipped = 0
    private let write: (String) -> Void

    public init(write: @escaping (String) -> Void = { print($0) }) { self.write = write }

    /// Runs one check. It passes unless it throws; the thrown error is the failure's reason.
    /// The returned detail is printed beside PASS (a serial number, a register value).
    public func check(_ name: String, _ body: () throws -> String?) {
        do {
            let detail = try body()
            passed += 1
            write("PASS \(name)" + (detail.map { ": \($0)" } ?? ""))
        } catch let skip as Skip {
            skipped += 1
            write("SKIP \(name): \(skip.reason)")
        } catch {
            failed += 1
            write("FAIL \(name): \(error)")
        }
    }

    public func note(_ line: String) { write("     " + line) }

    public var summary: String {
        "\(passed) passed, \(failed) failed" + (skipped > 0 ? ", \(skipped) skipped" : "")
    }

    /// Thrown by a check that cannot run here (e.g. a device without MSI-X); counted apart.
    public struct Skip: Error {
        public var reason: String
        public init(_ reason: String) { self.reason = reason }
    }
}

/// A failed expectation inside a check, with what was expected and what was seen.
public struct CheckFailure: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

@inline(__always)
func expect(_ condition: Bool, _ message: @autoclosure () -> String) throws {
    if !condition { throw CheckFailure(message()) }
}
