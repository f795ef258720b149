import PlatformTestSupport
import Bench
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// The VFS benchmark's workload on the host, tiny sizes: it does what it says on both targets
/// (the counts, the bytes, nothing left behind). Timing is never asserted.
final class VFSWorkloadTests: XCTestCase {
    private func options() -> VFSWorkload.Options {
        var options = VFSWorkload.Options()
        options.files = 20
        options.mebibytes = 1
        options.chunkKiB = 128
        options.directory = "/bench"
        return options
    }

    /// Runs every phase and checks the figures' counts and the target's state after each.
    private func exercise(_ target: VFSBenchTarget) throws {
        let workload = VFSWorkload(options: options())
        let metadata = try workload.metadata(on: target)
        XCTAssertEqual(metadata.map(\.operation), ["create", "stat", "unlink"])
        XCTAssertEqual(metadata.map(\.count), [20, 20, 20])
        XCTAssertTrue(metadata.allSatisfy { $0.bytes == 0 && $0.p50Nanoseconds <= $0.p99Nanoseconds })
        XCTAssertTrue(target.exists("/bench"), "the directory stays")
        for index in 0..<20 { XCTAssertFalse(target.exists(workload.filePath(index)), "f\(index) is gone after unlink") }

        let write = try workload.sequentialWrite(on: target)
        XCTAssertEqual(write.operation, "seqwrite")
        XCTAssertEqual(write.bytes, 1 << 20)
        XCTAssertEqual(write.count, 8, "1 MiB in 128 KiB writes")
        XCTAssertTrue(target.exists(workload.sequentialPath))

        let read = try workload.sequentialRead(on: target)
        XCTAssertEqual(read.operation, "seqread")
        XCTAssertEqual(read.bytes, 1 << 20)
        XCTAssertEqual(read.count, 9, "8 full reads and the one that finds the end")

        try workload.cleanUp(on: target)
        XCTAssertFalse(target.exists(workload.sequentialPath))
        XCTAssertThrowsError(try workload.sequentialRead(on: target), "nothing to read after the clean-up")

        // A second metadata pass on the same directory: create is O_EXCL, so a leftover file
        // from the first pass would fail it.
        XCTAssertEqual(try workload.metadata(on: target).map(\.count), [20, 20, 20])
        for index in 0..<20 { XCTAssertFalse(target.exists(workload.filePath(index))) }
    }

    func testPosixTargetInATemporaryDirectory() throws {
        let directory = temporaryDirectory()
        let target = PosixBenchTarget(root: directory)
        try exercise(target)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory + "/bench"), [])
        XCTAssertThrowsError(try target.createExclusive("/missing/dir/f"), "errors surface")
    }

    func testCreateIsExclusive() throws {
        let target = PosixBenchTarget(root: temporaryDirectory())
        try target.createExclusive("/f")
        XCTAssertThrowsError(try target.createExclusive("/f"))
    }

    /// vfs_server as a child process on an ext2 image made by mke2fs (4 KiB blocks, as in the rig),
    /// the workload through VFSClient; then a clean stop and e2fsck -fn on the image.
    func testVFSServerOnAnExt2Image() throws {
        let server = try executable("vfs_server")
        guard let mke2fs = ChildProcess.systemTool("mke2fs"), let e2fsck = ChildProcess.systemTool("e2fsck"), let debugfs = ChildProcess.systemTool("debugfs") else {
            throw XCTSkip("e2fsprogs not installed")
        }
        let directory = temporaryDirectory()
        let image = directory + "/fs.img"
        let made = ChildProcess.run(mke2fs, ["-q", "-F", "-t", "ext2", "-b", "4096", image, "4096"])
        XCTAssertEqual(made.0, 0, made.1)

        let pid = try startServer(server, ["--image", image, "--runtime-dir", directory, "--writeback-interval", "200ms"],
                                  socket: directory + "/vfs.sock", log: directory + "/server.log")
        var stopped = false
        defer { if !stopped { kill(pid, SIGTERM); waitpid(pid, nil, 0) } }
        try exercise(try VFSClientBenchTarget.connect(name: "vfs", directory: directory))

        kill(pid, SIGTERM)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        stopped = true
        XCTAssertEqual(status, 0, "vfs_server exits 0 on SIGTERM")
        let fsck = ChildProcess.run(e2fsck, ["-fn", image])
        XCTAssertEqual(fsck.0, 0, fsck.1)
        // The directory the workload used is on the image and empty ("." and ".." only).
        let listing = ChildProcess.run(debugfs, ["-R", "ls -p /bench", image])
        XCTAssertEqual(listing.1.split(separator: "\n").filter { $0.hasPrefix("/") }.count, 2, listing.1)
    }

    // MARK: Helpers

    private func temporaryDirectory() -> String {
        var template = Array("/tmp/vfsbench-test-XXXXXX".utf8CString)
        let path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
    }

    /// The executables next to the test bundle (.build/debug or release).
    private func executable(_ name: String) throws -> String {
        guard let path = BuiltExecutables.path(name) else { throw XCTSkip("\(BuiltExecutables.directory)/\(name) not built") }
        return path
    }

    /// Spawns the server (stderr to `log`) and waits up to 20 s for its socket: the build machine
    /// is shared and can be slow to start a process.
    private func startServer(_ program: String, _ arguments: [String], socket: String, log: String) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawn_file_actions_addopen(&actions, 2, log, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        let argv = ([program] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, program, &actions, nil, argv, environ)
        posix_spawn_file_actions_destroy(&actions)
        guard spawned == 0 else { throw XCTSkip("cannot spawn \(program): \(spawned)") }
        for _ in 0..<800 {
            if access(socket, F_OK) == 0 { return pid }
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                XCTFail("vfs_server exited at start: \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
                throw CancellationError()
            }
            usleep(25_000)
        }
        kill(pid, SIGTERM)
        waitpid(pid, nil, 0)
        XCTFail("vfs_server did not listen: \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
        throw CancellationError()
    }
}
