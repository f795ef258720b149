import CLimitless
import IPC
import XCTest
#if canImport(Glibc)
import Glibc
#endif

@testable import ServerKit

/// What a standby does before it reports ready: it leaves no descriptor open, and a seccomp
/// program prepared for the capabilities it expects is the one installed after activation (and
/// only for those).
final class StandbyWarmUpTests: XCTestCase {
    func openDescriptors() -> Set<Int32> {
        Set((0..<1024).filter { CL_fcntl_int($0, F_GETFD, 0) >= 0 })
    }

    func testTheWarmUpLeavesNoDescriptorOpen() {
        let before = openDescriptors()
        StandbyWarmUp.run()
        XCTAssertEqual(openDescriptors(), before, "the warm-up leaves every descriptor as it found it")
    }

    /// The activation's variable lines, read apart from setting them (the warm-up runs this
    /// part): a value keeps every `=` after the first; any variable but the activation's is refused.
    func testActivationVariablesAreReadAsPairsAndOthersRefused() throws {
        let pairs = try StandbyActivation.assignments("\(SupervisorChannel.capabilitiesVariable)=CAP_DMA_ALLOC=5,CAP_PCI_CONFIG=-1\n"
            + "\(SupervisorChannel.instanceVariable)=3")
        XCTAssertEqual(pairs.map(\.name), [SupervisorChannel.capabilitiesVariable, SupervisorChannel.instanceVariable])
        XCTAssertEqual(pairs.map(\.value), ["CAP_DMA_ALLOC=5,CAP_PCI_CONFIG=-1", "3"])
        XCTAssertThrowsError(try StandbyActivation.assignments("\(SupervisorChannel.instanceVariable)=3\nLD_PRELOAD=/tmp/x.so")) { error in
            XCTAssertTrue("\(error)".contains("unexpected line \"LD_PRELOAD=/tmp/x.so\""), "\(error)")
        }
        XCTAssertThrowsError(try StandbyActivation.assignments("\(SupervisorChannel.standbyVariable)=1"))
        XCTAssertThrowsError(try StandbyActivation.assignments("no equals sign"))
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
