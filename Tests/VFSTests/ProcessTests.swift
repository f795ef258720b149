import PlatformTestSupport
import SystemPackage
import VFS
import VFSCore
import Dispatch
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// The real executables: vfs_server as a process, limitless-fs as its client.
final class ProcessTests: XCTestCase {
    private func executable(_ name: String) throws -> String {
        guard let path = BuiltExecutables.path(name) else { throw XCTSkip("\(BuiltExecutables.directory)/\(name) not built") }
        return path
    }

    /// Starts vfs_server with `arguments`; returns its pid once the socket exists.
    private func startServer(_ arguments: [String], directory: String) throws -> pid_t {
        let server = try executable("vfs_server")
        let log = directory + "/server.log"
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawn_file_actions_addopen(&actions, 2, log, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        let argv = ([server] + arguments + ["--runtime-dir", directory]).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        XCTAssertEqual(posix_spawn(&pid, server, &actions, nil, argv, environ), 0)
        posix_spawn_file_actions_destroy(&actions)
        // Up to 20 s: the build machine is shared and can be slow to start a process.
        for _ in 0..<800 {
            if access(directory + "/vfs.sock", F_OK) == 0 { return pid }
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                XCTFail("vfs_server exited at start: \(readText(log))")
                throw FSError(.ioError, "vfs_server exited")
            }
            usleep(25_000)
        }
        kill(pid, SIGTERM)
        XCTFail("vfs_server did not listen: \(readText(log))")
        return pid
    }

    private func stop(_ pid: pid_t) -> Int32 {
        guard pid > 0 else { return 0 }
        kill(pid, SIGTERM)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        return (status & 0x7F) == 0 ? (status >> 8) & 0xFF : -(status & 0x7F)
    }

    private func readText(_ path: String) -> String {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return "" }
        defer { close(fd) }
        var data: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { return String(decoding: data, as: UTF8.self) }
            data += buffer[..<n]
        }
    }

    private func writeText(_ path: String, _ bytes: [UInt8]) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }

    private func fsTool(_ directory: String, _ arguments: String...) throws -> (Int32, String) {
        ChildProcess.run(try executable("limitless-fs"), arguments + ["--runtime-dir", directory])
    }

    /// limitless-fs commands against a running server; `root` is where to work.
    private func exerciseTool(_ directory: String, under base: String) throws {
        var generator = SystemRandomNumberGenerator()
        let local = directory + "/local.bin"
        let content = (0..<300_000).map { _ in UInt8.random(in: 0...255, using: &generator) }
        writeText(local, content)
        XCTAssertEqual(try fsTool(directory, "mkdir", "-p", "\(base)/x/y/z").0, 0)
        XCTAssertEqual(try fsTool(directory, "mkdir", "-p", "\(base)/x/y").0, 0, "mkdir -p of an existing directory")
        XCTAssertEqual(try fsTool(directory, "put", local, "\(base)/x/y/").0, 0)
        XCTAssertEqual(try fsTool(directory, "get", "\(base)/x/y/local.bin", directory + "/back.bin").0, 0)
        XCTAssertEqual(ChildProcess.run("/usr/bin/cmp", [local, directory + "/back.bin"]).0, 0, "put then get is byte-identical")
        let listing = try fsTool(directory, "ls", "-l", "\(base)/x/y")
        XCTAssertEqual(listing.0, 0)
        XCTAssertTrue(listing.1.contains("300000 ") && listing.1.contains("local.bin") && listing.1.contains("drwxr-xr-x"), listing.1)
        XCTAssertEqual(try fsTool(directory, "mv", "\(base)/x/y/local.bin", "\(base)/x/moved.bin").0, 0)
        XCTAssertEqual(try fsTool(directory, "ls", "\(base)/x").1, "moved.bin\ny\n")
        XCTAssertEqual(try fsTool(directory, "ln", "-s", "moved.bin", "\(base)/x/link").0, 0)
        XCTAssertTrue(try fsTool(directory, "ls", "-l", "\(base)/x").1.contains("link -> moved.bin"))
        XCTAssertEqual(try fsTool(directory, "chmod", "600", "\(base)/x/moved.bin").0, 0)
        XCTAssertTrue(try fsTool(directory, "stat", "\(base)/x/moved.bin").1.contains("(600/-rw-------)"))
        let removeMissing = try fsTool(directory, "rm", "\(base)/nope")
        XCTAssertEqual(removeMissing.0, 1)
        XCTAssertEqual(removeMissing.1, "limitless-fs: cannot remove '\(base)/nope': No such file or directory\n")
        XCTAssertEqual(try fsTool(directory, "rmdir", "\(base)/x").1, "limitless-fs: failed to remove '\(base)/x': Directory not empty\n")
        XCTAssertEqual(try fsTool(directory, "cat", "\(base)/x/y").1, "limitless-fs: \(base)/x/y: Is a directory\n")
        let df = try fsTool(directory, "df", base.isEmpty ? "/" : base)
        XCTAssertEqual(df.0, 0)
        XCTAssertTrue(df.1.hasPrefix("Filesystem     1K-blocks"), df.1)
        XCTAssertEqual(try fsTool(directory, "rm", "\(base)/x/moved.bin", "\(base)/x/link").0, 0)
        XCTAssertEqual(try fsTool(directory, "rmdir", "\(base)/x/y/z", "\(base)/x/y", "\(base)/x").0, 0)
    }

    func testServerAndToolOnTmpfs() throws {
        let directory = makeTemporaryDirectory(self)
        let pid = try startServer(["--tmpfs", "/", "--writeback-interval", "100ms"], directory: directory)
        try exerciseTool(directory, under: "")
        for command in ["ls", "cat", "put", "get", "mkdir", "rm", "rmdir", "mv", "stat", "df", "ln", "chmod"] {
            let (status, help) = try fsTool(directory, command, "--help")
            XCTAssertEqual(status, 0, command)
            XCTAssertTrue(help.contains("USAGE: limitless-fs \(command)"), help)
        }
        XCTAssertEqual(stop(pid), 0, "SIGTERM stops it cleanly")
        let log = readText(directory + "/server.log")
        XCTAssertTrue(log.contains("mounted tmpfs at /") && log.contains("everything unmounted cleanly"), log)
        XCTAssertEqual(try fsTool(directory, "ls", "/").0, 1, "no server: an error, not a hang")
    }

    func testBadImageIsRefusedWithAMessage() throws {
        let directory = makeTemporaryDirectory(self)
        let server = try executable("vfs_server")
        let (status, output) = ChildProcess.run(server, ["--image", directory + "/missing.img", "--runtime-dir", directory])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(output.contains("missing.img"), output)
        writeText(directory + "/garbage.img", [UInt8](repeating: 0xA5, count: 1 << 20))
        let (garbageStatus, garbageOutput) = ChildProcess.run(server, ["--image", directory + "/garbage.img", "--runtime-dir", directory])
        XCTAssertNotEqual(garbageStatus, 0)
        XCTAssertTrue(garbageOutput.contains("garbage.img") && garbageOutput.contains("ext2"), garbageOutput)
        let (usageStatus, usage) = ChildProcess.run(server, ["--runtime-dir", directory])
        XCTAssertEqual(usageStatus, 64)
        XCTAssertTrue(usage.contains("give one root file system"), usage)
    }

    /// A --mount whose mount point does not exist stops the server with a message, and the
    /// image it had already mounted is left cleanly unmounted (not marked in use). With a
    /// write-back log (CAP_PAGE_CACHE, passed by hand as a standalone server takes it) the mount
    /// marks the image in use on disk at once, so only an unmount puts it back.
    func testARefusedMountPointLeavesTheImageClean() throws {
        let directory = makeTemporaryDirectory(self)
        let root = try makeExt2Image(self, blocks: 4096), second = try makeExt2Image(self, blocks: 4096)
        writeText(directory + "/log.mem", [UInt8](repeating: 0, count: 1 << 20))
        let command = "exec 7<>'\(directory)/log.mem'; LIMITLESS_CAPABILITIES=CAP_PAGE_CACHE=7 exec '\(try executable("vfs_server"))' "
            + "--image '\(root)' --mount '/nothere=\(second)' --runtime-dir '\(directory)'"
        let (status, output) = ChildProcess.run("/bin/bash", ["-c", command])
        XCTAssertEqual(status, 1)
        XCTAssertTrue(output.contains("mount point /nothere"), output)
        guard let dumpe2fs = ChildProcess.systemTool("dumpe2fs") else { throw XCTSkip("dumpe2fs not installed") }
        for image in [root, second] {
            let state = ChildProcess.run(dumpe2fs, ["-h", image]).1.split(separator: "\n").first { $0.hasPrefix("Filesystem state:") }
            XCTAssertEqual(state.map { $0.hasSuffix(" clean") && !$0.contains("not clean") }, true, "\(image): \(state as Any)")
        }
    }

    /// vfs_server on `image` under a real limitless-supervisor (restart always, checkpoints):
    /// the supervisor's pid, the runtime directory, and the server's pid once it listens.
    private struct SupervisedVFS {
        var supervisorPID: pid_t
        let directory: String

        func serverPID() -> pid_t? {
            guard access(directory + "/vfs.sock", F_OK) == 0 else { return nil }
            let fd = open(directory + "/vfs.pid", O_RDONLY)
            guard fd >= 0 else { return nil }
            defer { close(fd) }
            var buffer = [UInt8](repeating: 0, count: 32)
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            return n > 0 ? pid_t(String(decoding: buffer[..<n], as: UTF8.self).filter(\.isNumber)) : nil
        }

        /// Up to 20 s for an instance other than `old` to listen.
        func waitForServer(otherThan old: pid_t?) -> pid_t? {
            for _ in 0..<800 {
                if let pid = serverPID(), pid != old, kill(pid, 0) == 0 { return pid }
                usleep(25_000)
            }
            return nil
        }
    }

    /// `pageCache`: grant CAP_PAGE_CACHE (1 MiB), the memory for a plain ext2 write-back log.
    /// `mounted`: an ext2 image mounted on /second too (`--mount`).
    private func superviseVFS(image: String, pageCache: Bool = false, mounted: String? = nil) throws -> SupervisedVFS {
        try mountExt2OrSkip(try ImageFileStore(path: FilePath(image), readOnly: true), readOnly: true).unmount()
        let supervisor = try executable("limitless-supervisor")
        let server = try executable("vfs_server")
        let directory = makeTemporaryDirectory(self)
        writeText(directory + "/servers.conf", Array("""
            start_server vfs \(server) --image \(image) \(mounted.map { "--mount /second=" + $0 } ?? "") --runtime-dir \(directory) --writeback-interval 200ms
                restart always backoff=50ms max-backoff=1s limit=10/60s
                checkpoint 1s
            \(pageCache ? "    capabilities CAP_PAGE_CACHE\n    page_cache_log 1M\n" : "")
            """.utf8))
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawn_file_actions_addopen(&actions, 1, directory + "/supervisor.log", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let arguments: [String] = [supervisor, "--config", directory + "/servers.conf", "--runtime-dir", directory,
                                   "--log-dir", directory + "/logs"]
        let argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var supervisorPID: pid_t = 0
        XCTAssertEqual(posix_spawn(&supervisorPID, supervisor, &actions, nil, argv, environ), 0)
        posix_spawn_file_actions_destroy(&actions)
        return SupervisedVFS(supervisorPID: supervisorPID, directory: directory)
    }

    /// Under limitless-supervisor: vfs_server is killed with SIGKILL, restarted, restores its
    /// descriptor checkpoint, and this process (same pid) reads on from where it was; fsync'd
    /// data is on disk. After the supervisor stops everything, e2fsck finds the image clean.
    func testSupervisedRestartKeepsDescriptorsAndFsyncedData() throws {
        let image = try makeExt2Image(self, blocks: 8192)
        var supervised = try superviseVFS(image: image)
        let directory = supervised.directory
        defer { _ = stop(supervised.supervisorPID) }
        let first = try XCTUnwrap(supervised.waitForServer(otherThan: nil),
                                  "vfs_server did not start under the supervisor: \(readText(directory + "/supervisor.log"))")
        let client = try VFSClient.connect(name: "vfs", directory: directory)
        try client.writeFile("/kept", Array("0123456789".utf8))
        let fd = try client.open("/kept")
        XCTAssertEqual(try client.read(fd, count: 3), Array("012".utf8))
        usleep(1_500_000)  // the server checkpoints its descriptors within half a second
        XCTAssertEqual(kill(first, SIGKILL), 0)
        guard supervised.waitForServer(otherThan: first) != nil else {
            return XCTFail("vfs_server was not restarted: \(readText(directory + "/supervisor.log"))")
        }
        let again = try VFSClient.connect(name: "vfs", directory: directory)
        XCTAssertEqual(try again.read(fd, count: 100), Array("3456789".utf8), "the same descriptor, at the same position")
        try again.close(fd)
        XCTAssertEqual(try again.readFile("/kept"), Array("0123456789".utf8), "fsync'd data survived SIGKILL")
        XCTAssertEqual(stop(supervised.supervisorPID), 0)
        supervised.supervisorPID = 0
        let restoredLine = ChildProcess.run("/bin/grep", ["-rh", "restored 1 descriptors", directory + "/logs", directory + "/supervisor.log"])
        XCTAssertEqual(restoredLine.0, 0, "the restarted server logs the restore")
        guard let e2fsck = ChildProcess.systemTool("e2fsck") else { throw XCTSkip("e2fsck not installed") }
        let (status, output) = ChildProcess.run(e2fsck, ["-fn", image])
        XCTAssertEqual(status, 0, output)
    }

    /// SIGKILL in the middle of a stream of writes (each file written, then fsync'd): the
    /// supervisor restarts vfs_server and every file whose fsync was acknowledged reads back
    /// exactly; the server keeps serving new writes. The image has a journal (mke2fs -t ext3):
    /// the restarted server replays what was committed, and after a clean stop e2fsck -fn finds
    /// the image clean.
    func testSIGKILLUnderAWriteLoadKeepsEveryAcknowledgedFsync() throws {
        let image = try makeExt2Image(self, blocks: 8192, type: "ext3")
        try killUnderAWriteLoad(image: image, pageCache: false, kills: 1, typeName: "ext3", replayedLine: "journal: replayed",
                                figuresPattern: "journal: [0-9]+ commits, [0-9]+ blocks journalled")
    }

    /// The same on a plain ext2 image (no journal), several kills: the supervisor grants
    /// CAP_PAGE_CACHE, whose memfd outlives each instance and holds the mount's write-back log;
    /// each restarted instance replays the last commit, and e2fsck -fn finds the image clean.
    func testSIGKILLUnderAWriteLoadOnPlainExt2WithTheSupervisorsWriteBackLog() throws {
        let image = try makeExt2Image(self, blocks: 8192)
        try killUnderAWriteLoad(image: image, pageCache: true, kills: 3, typeName: "ext2", replayedLine: "write-back log: replayed",
                                figuresPattern: "write-back log: [0-9]+ commits, [0-9]+ blocks journalled")
        guard let dumpe2fs = ChildProcess.systemTool("dumpe2fs") else { return }
        let features = ChildProcess.run(dumpe2fs, ["-h", image]).1.split(separator: "\n").first { $0.hasPrefix("Filesystem features:") }
        XCTAssertFalse(features.map { $0.contains("has_journal") || $0.contains("needs_recovery") } ?? true, "\(features as Any)")
    }

    /// The same with a second plain ext2 image on /second (`--mount`), the write load on it: the
    /// CAP_PAGE_CACHE memory is split between the two mounts' logs, one half each.
    func testSIGKILLUnderAWriteLoadOnAMountedPlainExt2Image() throws {
        let image = try makeExt2Image(self, blocks: 8192)
        let second = try makeExt2Image(self, blocks: 8192)
        guard let debugfs = ChildProcess.systemTool("debugfs") else { throw XCTSkip("debugfs not installed") }
        XCTAssertEqual(ChildProcess.run(debugfs, ["-w", "-R", "mkdir second", image]).0, 0, "the mount point on the root image")
        try killUnderAWriteLoad(image: image, pageCache: true, kills: 1, typeName: "ext2", replayedLine: "write-back log: replayed",
                                figuresPattern: "write-back log: [0-9]+ commits, [0-9]+ blocks journalled", mounted: second)
    }

    private func killUnderAWriteLoad(image: String, pageCache: Bool, kills: Int, typeName: String, replayedLine: String,
                                     figuresPattern: String, mounted: String? = nil) throws {
        var supervised = try superviseVFS(image: image, pageCache: pageCache, mounted: mounted)
        let directory = supervised.directory
        defer { _ = stop(supervised.supervisorPID) }
        var server = try XCTUnwrap(supervised.waitForServer(otherThan: nil),
                                   "vfs_server did not start under the supervisor: \(readText(directory + "/supervisor.log"))")
        var client = try VFSClient.connect(name: "vfs", directory: directory)
        let load = mounted == nil ? "/load" : "/second/load"
        try client.mkdir(load)
        func contents(_ index: Int) -> [UInt8] {
            Array(repeating: UInt8(truncatingIfNeeded: index &* 37 &+ 1), count: 1500 + (index % 7) * 1000)
        }
        var acknowledged: [Int] = []
        var index = 0
        for round in 1...kills {
            // The killer fires once a few more files are acknowledged, while writes keep going.
            let killed = DispatchSemaphore(value: 0)
            let target = server
            let killAt = acknowledged.count + 40
            var failure: VFSError?
            while index < 1_000_000 {
                if acknowledged.count == killAt {
                    DispatchQueue.global().async { kill(target, SIGKILL); killed.signal() }
                }
                defer { index += 1 }
                do {
                    try client.writeFile("\(load)/f\(index)", contents(index))
                    acknowledged.append(index)
                } catch {
                    failure = error
                    break
                }
            }
            XCTAssertNotNil(failure, "kill \(round) interrupted the stream")
            XCTAssertEqual(killed.wait(timeout: .now() + 30), .success)
            XCTAssertGreaterThanOrEqual(acknowledged.count, killAt)
            guard let next = supervised.waitForServer(otherThan: server) else {
                return XCTFail("vfs_server was not restarted after kill \(round): \(readText(directory + "/supervisor.log"))")
            }
            server = next
            client = try VFSClient.connect(name: "vfs", directory: directory)
            XCTAssertEqual(try client.statfs(load).typeName, typeName)
            for file in acknowledged {
                XCTAssertEqual(try client.readFile("\(load)/f\(file)"), contents(file), "acknowledged fsync of f\(file), after kill \(round)")
            }
        }
        try client.writeFile("/after", Array("still serving".utf8))
        XCTAssertEqual(try client.readFile("/after"), Array("still serving".utf8))
        XCTAssertEqual(stop(supervised.supervisorPID), 0)
        supervised.supervisorPID = 0
        let logs = [directory + "/logs", directory + "/supervisor.log"]
        let replayed = ChildProcess.run("/bin/grep", ["-rh", replayedLine] + logs)
        print("after the restarts (\(kills) kills, \(acknowledged.count) files acknowledged): \(replayed.0 == 0 ? replayed.1 : "no committed transaction was left to replay")")
        let figures = ChildProcess.run("/bin/grep", ["-rhoE", figuresPattern] + logs)
        print("the last instance's log until its clean stop: \(figures.1)")
        if pageCache {
            // One log per ext2 mount, each in its part of the 1 MiB.
            let mounts = mounted == nil ? 1 : 2
            let protection = ChildProcess.run("/bin/grep", ["-rhc", "write-back log in supervisor-held memory (\(1024 / mounts) KiB)"] + logs)
            XCTAssertEqual(protection.1.split(separator: "\n").compactMap { Int($0) }.reduce(0, +), (kills + 1) * mounts,
                           "every instance says which protection each of its mounts has")
        }
        guard let e2fsck = ChildProcess.systemTool("e2fsck") else { throw XCTSkip("e2fsck not installed") }
        for checked in [image] + (mounted.map { [$0] } ?? []) {
            let (status, output) = ChildProcess.run(e2fsck, ["-fn", checked])
            XCTAssertEqual(status, 0, "e2fsck -fn on \(checked) after \(kills) SIGKILLs under load and a clean stop:\n\(output)")
        }
    }

    /// vfs_server on an mke2fs image, the tool through it, a clean stop, then e2fsck.
    func testServerOnAnExt2ImagePassesE2fsck() throws {
        let image = try makeExt2Image(self, blocks: 16384)
        try mountExt2OrSkip(try ImageFileStore(path: FilePath(image), readOnly: true), readOnly: true).unmount()
        // A directory for the tmpfs to cover, made by debugfs (the image is fresh from mke2fs).
        guard let debugfs = ChildProcess.systemTool("debugfs") else { throw XCTSkip("debugfs not installed") }
        XCTAssertEqual(ChildProcess.run(debugfs, ["-w", "-R", "mkdir tmp", image]).0, 0)
        XCTAssertEqual(ChildProcess.run(debugfs, ["-w", "-R", "mkdir mnt", image]).0, 0)
        let second = try makeExt2Image(self, blocks: 4096)
        let directory = makeTemporaryDirectory(self)
        let pid = try startServer(["--image", image, "--tmpfs", "/tmp", "--mount", "/mnt=\(second)", "--writeback-interval", "200ms"],
                                  directory: directory)
        try exerciseTool(directory, under: "")
        try exerciseTool(directory, under: "/tmp")
        try exerciseTool(directory, under: "/mnt")
        let df = try fsTool(directory, "df", "/", "/tmp", "/mnt")
        XCTAssertTrue(df.1.contains(" /\n") && df.1.contains(" /tmp\n") && df.1.contains(" /mnt\n") && df.1.contains("tmpfs"), df.1)
        XCTAssertTrue(df.1.contains("\next2 ") && !df.1.contains("ext3"), "images without a journal are ext2: \(df.1)")
        writeText(directory + "/m", Array("on the second image".utf8))
        XCTAssertEqual(try fsTool(directory, "put", directory + "/m", "/mnt/m").0, 0)
        XCTAssertEqual(try fsTool(directory, "mv", "/mnt/m", "/m").1, "limitless-fs: cannot move '/mnt/m' to '/m': Invalid cross-device link\n")
        XCTAssertEqual(try fsTool(directory, "mkdir", "/keep").0, 0)
        writeText(directory + "/k", Array("kept".utf8))
        XCTAssertEqual(try fsTool(directory, "put", directory + "/k", "/keep/k").0, 0)
        XCTAssertEqual(stop(pid), 0)
        guard let e2fsck = ChildProcess.systemTool("e2fsck") else { throw XCTSkip("e2fsck not installed") }
        let (status, output) = ChildProcess.run(e2fsck, ["-fn", image])
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(ChildProcess.run(debugfs, ["-R", "cat /keep/k", image]).1.contains("kept"))
        XCTAssertTrue(ChildProcess.run(debugfs, ["-R", "cat /m", second]).1.contains("on the second image"))
        let (secondStatus, secondOutput) = ChildProcess.run(e2fsck, ["-fn", second])
        XCTAssertEqual(secondStatus, 0, secondOutput)
    }
}
