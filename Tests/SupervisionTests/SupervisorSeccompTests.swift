import Glibc
import IPC
import XCTest

@testable import Supervision

/// A capability granted at run time gets its VFIO ioctls without a restart: the server's seccomp
/// filter puts them to the supervisor, which allows them by the grant (real supervisor, real
/// limitless-testserver with its filter installed, probing VFIO_IOMMU_GET_INFO).
extension SupervisorIntegrationTests {
    func testARunTimeGrantAllowsItsIoctlsThroughTheSupervisor() throws {
        let file = open(directory.path + "/dma", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        XCTAssertGreaterThanOrEqual(file, 0)
        defer { close(file) }
        try run([server("sec", ["--seccomp", "--probe-ioctl"])]) { options in
            options.capabilityProvider = nil
            options.capabilityDescriptors = { _ in ["CAP_DMA_ALLOC": file] }
        }
        waitFor("sec running") { isRunning("sec") }
        // Not granted: the supervisor refuses it.
        waitFor("the first probe") { lines("sec", .stdout).contains { $0.hasPrefix("ioctl VFIO_IOMMU_GET_INFO on stdin: errno") } }
        XCTAssertTrue(lines("sec", .stdout).contains("ioctl VFIO_IOMMU_GET_INFO on stdin: errno \(EPERM)"), logText("sec"))
        XCTAssertTrue(lines("sec", .supervisor).contains { $0.hasPrefix("seccomp listener received") }, logText("sec"))
        XCTAssertTrue(lines("sec", .supervisor).contains("refused VFIO_IOMMU_GET_INFO: no capability granted now stands for it"), logText("sec"))

        // Granted at run time: the call runs (the file answers ENOTTY), same instance.
        try supervisor!.grant(["CAP_DMA_ALLOC"], to: "sec")
        waitFor("the probe after the grant") { lines("sec", .stdout).contains { $0.hasPrefix("capability: CAP_DMA_ALLOC granted") } }
        let line = lines("sec", .stdout).first { $0.hasPrefix("capability: CAP_DMA_ALLOC granted") } ?? ""
        XCTAssertTrue(line.hasSuffix("; ioctl VFIO_IOMMU_GET_INFO on it: errno \(ENOTTY)"), line + "\n" + logText("sec"))
        XCTAssertTrue(lines("sec", .supervisor).contains("allowed VFIO_IOMMU_GET_INFO (granted CAP_DMA_ALLOC at run time)"), logText("sec"))
        XCTAssertEqual(state("sec").instance, 1)
        XCTAssertEqual(state("sec").restarts, 0)
    }
}
