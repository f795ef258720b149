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

    /// After an activation the filter is found by the names it was prepared from, without
    /// building the policy again: the same policies and program as building them would give, and
    /// nothing for other names.
    func testAPreparedFilterIsFoundByItsNames() throws {
        let capabilities = ["CAP_DMA_ALLOC", "CAP_IRQ_NVME0", "CAP_MMIO_NVME0", "CAP_PCI_CONFIG"]
        ServerRuntime.prepareSeccompFilter(capabilities: capabilities, extraSyscalls: ["kill"])
        let match = try XCTUnwrap(PreparedSeccompProgram.prepared(capabilities: capabilities, extra: ["kill"]))
        let base = SeccompPolicy(capabilities: capabilities, extra: ["kill"])
        XCTAssertEqual(match.base, base)
        let notifying = try XCTUnwrap(ServerRuntime.notifyingPolicy(base))
        XCTAssertEqual(match.notifying, notifying)
        XCTAssertEqual(match.program.map(\.k), try notifying.program().map(\.k))
        XCTAssertEqual(match.program.map(\.code), try notifying.program().map(\.code))
        XCTAssertNil(PreparedSeccompProgram.prepared(capabilities: capabilities, extra: []))
        XCTAssertNil(PreparedSeccompProgram.prepared(capabilities: ["CAP_DMA_ALLOC"], extra: ["kill"]))
        XCTAssertNil(PreparedSeccompProgram.prepared(capabilities: Array(capabilities.reversed()), extra: ["kill"]))
        // Any ioctl allowed: nothing to put to the supervisor, so the program is the base one.
        ServerRuntime.prepareSeccompFilter(capabilities: capabilities, extraSyscalls: ["ioctl"])
        let plain = try XCTUnwrap(PreparedSeccompProgram.prepared(capabilities: capabilities, extra: ["ioctl"]))
        XCTAssertNil(plain.notifying)
        XCTAssertEqual(plain.program.map(\.k), try SeccompPolicy(capabilities: capabilities, extra: ["ioctl"]).program().map(\.k))
    }

    func testTheDroppedPrivilegesLineNamesTheFilter() {
        let policy = SeccompPolicy(capabilities: ["CAP_DMA_ALLOC"])
        let line = DroppedPrivileges(policy: policy, instructions: 42, capabilities: ["CAP_DMA_ALLOC"]).description
        XCTAssertTrue(line.hasPrefix("privileges dropped: no_new_privs, seccomp filter of 42 instructions, "), line)
        XCTAssertTrue(line.hasSuffix("(capabilities: CAP_DMA_ALLOC)"), line)
        XCTAssertEqual(DroppedPrivileges(policy: nil, instructions: 0, capabilities: []).description, "privileges dropped: no_new_privs")
    }
}
