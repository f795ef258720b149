import CLimitless
import ServerKit
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// ioctl is allowed only with the request numbers the granted capabilities need.
final class SeccompIoctlTests: XCTestCase {
    func testRequestsFollowTheCapabilities() {
        let mmio = SeccompPolicy(capabilities: ["CAP_MMIO_NVME0"])
        XCTAssertTrue(mmio.allowedSyscalls.contains("ioctl"))
        XCTAssertEqual(mmio.allowedIoctls.map(Set.init), Set([CL_VFIO_GET_API_VERSION, CL_VFIO_CHECK_EXTENSION, CL_VFIO_DEVICE_GET_INFO,
                                                              CL_VFIO_DEVICE_GET_REGION_INFO, CL_VFIO_DEVICE_RESET]))
        XCTAssertFalse(mmio.allowedIoctls!.contains(CL_VFIO_DEVICE_SET_IRQS))
        XCTAssertTrue(SeccompPolicy(capabilities: ["CAP_IRQ_NVME0"]).allowedIoctls!.contains(CL_VFIO_DEVICE_SET_IRQS))
        XCTAssertTrue(SeccompPolicy(capabilities: ["CAP_DMA_ALLOC"]).allowedIoctls!.contains(CL_VFIO_IOMMU_MAP_DMA))
        XCTAssertEqual(SeccompPolicy(capabilities: ["CAP_BLOCK_READ"]).allowedIoctls, [])
        // Asking for ioctl outright allows every request, as before.
        XCTAssertNil(SeccompPolicy(capabilities: ["CAP_MMIO_NVME0"], extra: ["ioctl"]).allowedIoctls)
        XCTAssertEqual(SeccompPolicy.ioctlName(CL_VFIO_DEVICE_SET_IRQS), "VFIO_DEVICE_SET_IRQS")
        XCTAssertEqual(SeccompPolicy.capabilities(allowing: CL_VFIO_DEVICE_SET_IRQS), ["CAP_IRQ_<DEV>"])
    }

    func testTheErrorNamesTheMissingCapability() throws {
        var options = ServerRuntime.Options()
        options.stopSignals = []
        let runtime = try ServerRuntime(environment: ServerEnvironment(mode: .standalone, serverName: "t",
                                                                       capabilities: [("CAP_MMIO_NVME0", -1)]), options: options)
        let error = runtime.ioctlError(request: CL_VFIO_DEVICE_SET_IRQS, errno: EPERM)
        XCTAssertEqual(error, .ioctlRefused(request: "VFIO_DEVICE_SET_IRQS", capabilities: ["CAP_IRQ_NVME0"]))
        XCTAssertTrue(error.description.hasPrefix("VFIO_DEVICE_SET_IRQS refused by the seccomp filter (EPERM): this server is not granted CAP_IRQ_NVME0"),
                      error.description)
        XCTAssertEqual(runtime.ioctlError(request: CL_VFIO_DEVICE_SET_IRQS, errno: ENOTTY), .ioctlFailed("VFIO_DEVICE_SET_IRQS", .inappropriateIOCTLForDevice))
        // Thrown by the runtime's ioctl: /dev/null is no VFIO device, so without a filter the kernel says ENOTTY.
        let null = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { close(null) }
        XCTAssertThrowsError(try runtime.ioctl(null, CL_VFIO_DEVICE_GET_INFO, nil)) { error in
            XCTAssertEqual(error as? ServerKitError, .ioctlFailed("VFIO_DEVICE_GET_INFO", .inappropriateIOCTLForDevice))
        }
    }

    /// In a forked child with the filter of `capabilities`: the errno of each request on /dev/null
    /// (ENOTTY: the filter let it through to the kernel, which has no such request for /dev/null;
    /// EPERM: the filter refused it). Exit codes carry the answers: 1 ENOTTY, 2 EPERM, 3 other.
    private func errnoOfIoctl(_ request: UInt, capabilities: [String]) throws -> Int32 {
        let program = try SeccompPolicy(capabilities: capabilities).program()
        let null = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { close(null) }
        let child = fork()
        if child == 0 {
            if CL_sk_set_no_new_privs() != 0 { _exit(10) }
            if SeccompPolicy.install(program) != nil { _exit(11) }
            if CL_ioctl_ptr(null, request, nil) >= 0 { _exit(0) }
            let code = CL_errno()
            _exit(code == ENOTTY ? 1 : code == EPERM ? 2 : 3)
        }
        XCTAssertGreaterThan(child, 0)
        var status: Int32 = 0
        XCTAssertEqual(waitpid(child, &status, 0), child)
        XCTAssertEqual(status & 0x7F, 0, "the child died by signal \(status & 0x7F)")
        switch (status >> 8) & 0xFF {
        case 1: return ENOTTY
        case 2: return EPERM
        case let code: XCTFail("unexpected child exit \(code)"); return -1
        }
    }

    func testAForbiddenIoctlFailsWithEPERMAndAnAllowedOneReachesTheKernel() throws {
        let mmioOnly = ["CAP_MMIO_NVME0", "CAP_DMA_ALLOC"]
        XCTAssertEqual(try errnoOfIoctl(CL_VFIO_DEVICE_SET_IRQS, capabilities: mmioOnly), EPERM)
        XCTAssertEqual(try errnoOfIoctl(CL_VFIO_DEVICE_GET_INFO, capabilities: mmioOnly), ENOTTY)
        XCTAssertEqual(try errnoOfIoctl(CL_VFIO_IOMMU_MAP_DMA, capabilities: mmioOnly), ENOTTY)
        // Not a VFIO request at all (TCGETS), and an allowed number with high bits set.
        XCTAssertEqual(try errnoOfIoctl(0x5401, capabilities: mmioOnly), EPERM)
        XCTAssertEqual(try errnoOfIoctl(CL_VFIO_DEVICE_GET_INFO | (1 << 32), capabilities: mmioOnly), EPERM)
        // Granted the interrupts too: SET_IRQS passes.
        XCTAssertEqual(try errnoOfIoctl(CL_VFIO_DEVICE_SET_IRQS, capabilities: mmioOnly + ["CAP_IRQ_NVME0"]), ENOTTY)
        // No device capability: no ioctl at all.
        XCTAssertEqual(try errnoOfIoctl(CL_VFIO_DEVICE_GET_INFO, capabilities: ["CAP_BLOCK_READ"]), EPERM)
    }
}
