import CLimitless
import XCTest
#if canImport(Glibc)
import Glibc
#endif

@testable import ServerKit

/// What a standby does before it reports ready: the file mappings it prefaults are this
/// process's code, it leaves no descriptor open, and a seccomp program prepared for the
/// capabilities it expects is the one installed after activation (and only for those).
final class StandbyWarmUpTests: XCTestCase {
    func openDescriptors() -> Set<Int32> {
        Set((0..<1024).filter { CL_fcntl_int($0, F_GETFD, 0) >= 0 })
    }

    func testTheMappingsAreThisProcesssFilesAndNothingStaysOpen() {
        let before = openDescriptors()
        let ranges = StandbyWarmUp.fileMappings()
        // The code of a C library function this process runs is in one of them.
        let code = unsafeBitCast(getpid as @convention(c) () -> pid_t, to: Int.self)
        XCTAssertTrue(ranges.contains { $0.contains(code) }, "getpid at 0x\(String(code, radix: 16)) in none of \(ranges.count) mappings")
        // Stack and heap are not files.
        var local = 0
        let stack = withUnsafeMutablePointer(to: &local) { Int(bitPattern: $0) }
        XCTAssertFalse(ranges.contains { $0.contains(stack) })
        StandbyWarmUp.run()
        XCTAssertEqual(openDescriptors(), before, "the warm-up leaves every descriptor as it found it")
    }

    func testAPreparedFilterIsUsedForExactlyItsCapabilities() throws {
        let capabilities = ["CAP_DMA_ALLOC", "CAP_MMIO_NVME0"]
        ServerRuntime.prepareSeccompFilter(capabilities: capabilities, extraSyscalls: ["kill"])
        let base = SeccompPolicy(capabilities: capabilities, extra: ["kill"])
        // Supervised, the VFIO requests the capabilities do not allow go to the supervisor: the
        // prepared program is built for that policy.
        let policy = try XCTUnwrap(ServerRuntime.notifyingPolicy(base))
        XCTAssertFalse(policy.notifiedIoctls.isEmpty)
        XCTAssertTrue(PreparedSeccompProgram.isPrepared(for: policy))
        XCTAssertFalse(PreparedSeccompProgram.isPrepared(for: base))
        let program = try PreparedSeccompProgram.program(for: policy)
        XCTAssertEqual(program.map(\.k), try policy.program().map(\.k))
        XCTAssertEqual(program.map(\.code), try policy.program().map(\.code))
        // Other capabilities at activation: their own program, built then.
        let other = try XCTUnwrap(ServerRuntime.notifyingPolicy(SeccompPolicy(capabilities: ["CAP_DMA_ALLOC"], extra: ["kill"])))
        XCTAssertNotEqual(try PreparedSeccompProgram.program(for: other).map(\.k), program.map(\.k))
    }
}
