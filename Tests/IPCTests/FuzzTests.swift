import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// Bounded runs of the `limitless-fuzz` executable (built by `swift build`/`swift test` next to
/// the test bundle): 100k decoder inputs and 20k datagrams at a live server, fixed seeds so a
/// failure reproduces. The million-input run is `limitless-fuzz decoder` from Scripts/test.sh;
/// long campaigns are Scripts/fuzz.sh.
final class FuzzTests: XCTestCase {
    private func fuzzBinary() throws -> String {
        // The test runner is an executable in the products directory (…/debug/<Package>PackageTests.xctest).
        var buffer = [CChar](repeating: 0, count: 4096)
        let length = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        let runner = length > 0 ? String(decoding: buffer[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
        let path = URL(fileURLWithPath: runner).deletingLastPathComponent().appendingPathComponent("limitless-fuzz").path
        guard access(path, X_OK) == 0 else {
            throw XCTSkip("\(path) is not built; run `swift build --product limitless-fuzz` with the same scratch path first")
        }
        return path
    }

    private func run(_ arguments: [String]) throws -> (status: Int32, output: String) {
        let binary = try fuzzBinary()
        var template = Array("/tmp/limitless-fuzztest-XXXXXX".utf8CString)
        let directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let outputPath = directory + "/out.txt"
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let argv = ([binary] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid = pid_t()
        XCTAssertEqual(posix_spawn(&pid, binary, &actions, nil, argv, environ), 0)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return (status, (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "")
    }

    func testDecoderFuzzHundredThousandInputs() throws {
        let (status, output) = try run(["decoder", "--iterations", "100000", "--seed", "20261127"])
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains("inputs: 100000 in"), output)
        XCTAssertTrue(output.contains("violations: 0"), output)
        // Both sides of the decoder were exercised.
        let accepted = output.split(separator: "\n").first { $0.hasPrefix("accepted: ") }.flatMap { Int($0.dropFirst(10)) } ?? 0
        XCTAssertGreaterThan(accepted, 10_000, output)
        XCTAssertLessThan(accepted, 90_000, output)
    }

    func testServerFuzzKeepsServingAndReturnsToBaseline() throws {
        let (status, output) = try run(["server", "--count", "20000", "--seed", "20261127", "--ping-every", "500"])
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains("pings 40 ok"), output)
        XCTAssertTrue(output.contains("violations: 0"), output)
    }
}
