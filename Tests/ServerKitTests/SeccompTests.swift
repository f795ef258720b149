import CLimitless
import ServerKit
import XCTest
#if canImport(Glibc)
import Glibc
#endif

final class SeccompTests: XCTestCase {
    func testProgramShape() throws {
        let program = try SeccompPolicy(capabilities: []).program()
        XCTAssertGreaterThan(program.count, 60)
        XCTAssertLessThan(program.count, 255)
        XCTAssertTrue(SeccompPolicy(capabilities: ["CAP_MMIO_NVME0"]).allowedSyscalls.contains("ioctl"))
        XCTAssertFalse(SeccompPolicy(capabilities: ["CAP_BLOCK_READ"]).allowedSyscalls.contains("ioctl"))
    }

    /// Installs the filter in a forked child (never in the test process) and checks what it allows.
    func testFilterRefusesWhatIsNotGrantedWithEPERM() throws {
        let program = try SeccompPolicy(capabilities: []).program()
        let directory = "/tmp/serverkit-seccomp-\(getpid())"
        let child = fork()
        if child == 0 {
            // Only system calls and C from here: the child of a multithreaded process.
            if CL_sk_set_no_new_privs() != 0 { _exit(10) }
            if SeccompPolicy.install(program) != nil { _exit(11) }
            let inet = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            if inet >= 0 { _exit(12) }
            if CL_errno() != EPERM { _exit(13) }
            if mkdir(directory, 0o700) == 0 || CL_errno() != EPERM { _exit(14) }
            if open("/etc/hostname", O_RDONLY) >= 0 || CL_errno() != EPERM { _exit(15) }
            let unix = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            if unix < 0 { _exit(16) }
            if getpid() <= 0 { _exit(17) }
            _exit(0)
        }
        XCTAssertGreaterThan(child, 0)
        var status: Int32 = 0
        XCTAssertEqual(waitpid(child, &status, 0), child)
        rmdir(directory)
        let meaning = [10: "no_new_privs failed", 11: "seccomp install failed", 12: "socket(AF_INET) was allowed",
                       13: "socket(AF_INET) failed with another errno", 14: "mkdir was not refused with EPERM",
                       15: "open was not refused with EPERM", 16: "socket(AF_UNIX) was refused", 17: "getpid failed"]
        let code = (status >> 8) & 0xFF
        XCTAssertEqual(status & 0x7F, 0, "the child died by signal \(status & 0x7F)")
        XCTAssertEqual(code, 0, meaning[Int(code)] ?? "exit \(code)")
    }
}
