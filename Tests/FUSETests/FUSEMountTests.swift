import PlatformTestSupport
import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// The real thing: vfs_server (tmpfs root) as a process, limitless-fuse mounting it through the
/// kernel, and ordinary programs and syscalls on the mount. Skips (saying why) where FUSE is
/// not available; a watchdog kills the bridge if anything hangs, which makes the kernel fail
/// the pending requests (ENOTCONN) so the test fails instead of hanging.
final class FUSEMountTests: XCTestCase {
    private func executable(_ name: String) throws -> String {
        guard let path = BuiltExecutables.path(name) else { throw XCTSkip("\(BuiltExecutables.directory)/\(name) not built") }
        return path
    }

    private func requireFUSE() throws {
        guard access("/dev/fuse", R_OK | W_OK) == 0 else {
            throw XCTSkip("/dev/fuse is missing or not usable here (\(String(cString: strerror(errno)))): FUSE mount tests need it")
        }
        guard access("/usr/bin/fusermount3", X_OK) == 0 else { throw XCTSkip("fusermount3 is not installed (Debian package fuse3)") }
    }

    /// vfs_server --tmpfs / in `directory`, once its socket exists.
    private func startServer(_ directory: String) throws -> pid_t {
        let log = directory + "/server.log"
        guard case .success(let pid) = ChildProcess.spawn(try executable("vfs_server"), ["--tmpfs", "/", "--runtime-dir", directory], outputPath: log, appending: true) else {
            throw XCTSkip("cannot start vfs_server")
        }
        for _ in 0..<400 {
            if access(directory + "/vfs.sock", F_OK) == 0 { return pid }
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid { break }
            usleep(25_000)
        }
        kill(pid, SIGKILL)
        _ = ChildProcess.wait(pid)
        XCTFail("vfs_server did not listen: \(readText(log))")
        throw XCTSkip("no server")
    }

    /// Waits until `mountPoint` is a fuse.limitless mount (or `bridge` exited: then why).
    private func waitForMount(_ mountPoint: String, bridge: pid_t?, log: String) throws {
        for _ in 0..<400 {
            if isLimitlessMount(mountPoint) { return }
            if let bridge {
                var status: Int32 = 0
                if waitpid(bridge, &status, WNOHANG) == bridge {
                    let output = readText(log)
                    if output.contains("Operation not permitted") || output.contains("Permission denied") {
                        throw XCTSkip("mounting is not permitted here: \(output)")
                    }
                    XCTFail("limitless-fuse exited (status \(status)) before mounting: \(output)")
                    throw XCTSkip("not mounted")
                }
            }
            usleep(25_000)
        }
        XCTFail("not mounted after 10 s: \(readText(log))")
        throw XCTSkip("not mounted")
    }

    private func waitForUnmount(_ mountPoint: String) -> Bool {
        for _ in 0..<400 {
            if !isLimitlessMount(mountPoint) { return true }
            usleep(25_000)
        }
        return false
    }

    private func tool(_ name: String, _ arguments: String...) -> (status: Int32, output: String) {
        ChildProcess.run("/usr/bin/" + name, arguments)
    }

    func testOrdinaryProgramsOnTheMount() throws {
        try requireFUSE()
        let bridgeProgram = try executable("limitless-fuse")
        let directory = makeTemporaryDirectory(self)
        let server = try startServer(directory)
        defer {
            kill(server, SIGTERM)
            _ = ChildProcess.wait(server)
        }
        let mnt = directory + "/mnt"
        XCTAssertEqual(mkdir(mnt, 0o755), 0)
        let log = directory + "/fuse.log"
        guard case .success(let bridge) = ChildProcess.spawn(bridgeProgram, [mnt, "--runtime-dir", directory, "--foreground"], outputPath: log, appending: true) else {
            return XCTFail("cannot start limitless-fuse")
        }
        let watchdog = Watchdog(seconds: 25) {
            kill(bridge, SIGKILL)
            _ = ChildProcess.run("/usr/bin/fusermount3", ["-u", "-z", mnt])
        }
        var bridgeReaped = false
        defer {
            if watchdog.cancel() == false { XCTFail("the watchdog fired: something hung on the mount; log: \(readText(log))") }
            if !bridgeReaped {
                kill(bridge, SIGKILL)
                _ = ChildProcess.wait(bridge)
                _ = ChildProcess.run("/usr/bin/fusermount3", ["-u", "-z", mnt])
            }
        }
        try waitForMount(mnt, bridge: bridge, log: log)

        // Directories and files with syscalls and Foundation.
        XCTAssertEqual(tool("mkdir", "-p", "\(mnt)/a/b/c").status, 0)
        let text = Data("hello through FUSE\n".utf8)
        XCTAssertTrue(FileManager.default.createFile(atPath: "\(mnt)/a/hello.txt", contents: text))
        XCTAssertEqual(FileManager.default.contents(atPath: "\(mnt)/a/hello.txt"), text)
        let fd = open("\(mnt)/a/b/raw", O_WRONLY | O_CREAT | O_EXCL, 0o600)
        XCTAssertGreaterThanOrEqual(fd, 0, String(cString: strerror(errno)))
        XCTAssertEqual(write(fd, "0123456789", 10), 10)
        XCTAssertEqual(pwrite(fd, "AB", 2, 4), 2)
        XCTAssertEqual(fsync(fd), 0)
        XCTAssertEqual(close(fd), 0)
        XCTAssertEqual(open("\(mnt)/a/b/raw", O_WRONLY | O_CREAT | O_EXCL, 0o600), -1)
        XCTAssertEqual(errno, EEXIST, "O_EXCL on an existing file")
        XCTAssertEqual(tool("cat", "\(mnt)/a/b/raw").output, "0123AB6789")

        // cp in and out, byte-identical, 3 MiB (many FUSE writes of 128 KiB).
        let local = directory + "/local.bin"
        var generator = SystemRandomNumberGenerator()
        let content = Data((0..<(3 << 20) + 4321).map { _ in UInt8.random(in: 0...255, using: &generator) })
        try content.write(to: URL(fileURLWithPath: local))
        XCTAssertEqual(tool("cp", local, "\(mnt)/a/big.bin").status, 0)
        XCTAssertEqual(tool("cp", "\(mnt)/a/big.bin", directory + "/back.bin").status, 0)
        XCTAssertEqual(tool("cmp", local, directory + "/back.bin").status, 0, "cp in, cp out: the same bytes")

        // stat sizes and modes, as the kernel reports them.
        var st = stat()
        XCTAssertEqual(stat("\(mnt)/a/big.bin", &st), 0)
        XCTAssertEqual(st.st_size, content.count)
        XCTAssertEqual(st.st_mode & S_IFMT, S_IFREG)
        XCTAssertEqual(stat("\(mnt)/a/b/raw", &st), 0)
        XCTAssertEqual(st.st_mode & 0o7777, 0o600)
        XCTAssertEqual(st.st_size, 10)
        XCTAssertEqual(stat("\(mnt)/a/b", &st), 0)
        XCTAssertEqual(st.st_mode & S_IFMT, S_IFDIR)
        XCTAssertEqual(tool("stat", "-c", "%s %a %F", "\(mnt)/a/hello.txt").output, "19 644 regular file\n")

        // ls, ls -l.
        XCTAssertEqual(tool("ls", "\(mnt)/a").output, "b\nbig.bin\nhello.txt\n")
        let long = tool("ls", "-l", "\(mnt)/a")
        XCTAssertEqual(long.status, 0)
        XCTAssertTrue(long.output.contains("-rw-r--r-- 1 root root \(content.count) ") && long.output.contains(" big.bin"), long.output)
        XCTAssertTrue(long.output.contains("drwxr-xr-x") && long.output.hasSuffix(" hello.txt\n"), long.output)

        // mv (rename), ln -s / readlink, ln (hard link), chmod, touch, truncate.
        XCTAssertEqual(tool("mv", "\(mnt)/a/hello.txt", "\(mnt)/a/b/c/moved.txt").status, 0)
        XCTAssertEqual(access("\(mnt)/a/hello.txt", F_OK), -1)
        XCTAssertEqual(rename("\(mnt)/a/b/c/moved.txt", "\(mnt)/a/renamed.txt"), 0)
        XCTAssertEqual(tool("cat", "\(mnt)/a/renamed.txt").output, "hello through FUSE\n")
        XCTAssertEqual(tool("ln", "-s", "renamed.txt", "\(mnt)/a/link").status, 0)
        XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: "\(mnt)/a/link"), "renamed.txt")
        XCTAssertEqual(tool("cat", "\(mnt)/a/link").output, "hello through FUSE\n", "followed by the kernel")
        XCTAssertEqual(symlink("/nowhere", "\(mnt)/a/dangling"), 0)
        XCTAssertEqual(lstat("\(mnt)/a/dangling", &st), 0)
        XCTAssertEqual(st.st_mode & S_IFMT, S_IFLNK)
        XCTAssertEqual(tool("ln", "\(mnt)/a/renamed.txt", "\(mnt)/a/hard").status, 0)
        XCTAssertEqual(stat("\(mnt)/a/renamed.txt", &st), 0)
        XCTAssertEqual(st.st_nlink, 2)
        var hard = stat()
        XCTAssertEqual(stat("\(mnt)/a/hard", &hard), 0)
        XCTAssertEqual(hard.st_ino, st.st_ino, "the server's inode numbers (use_ino)")
        XCTAssertEqual(tool("chmod", "640", "\(mnt)/a/renamed.txt").status, 0)
        XCTAssertEqual(tool("stat", "-c", "%a", "\(mnt)/a/renamed.txt").output, "640\n")
        XCTAssertEqual(tool("touch", "-d", "2001-02-03 04:05:06 UTC", "\(mnt)/a/renamed.txt").status, 0)
        XCTAssertEqual(tool("stat", "-c", "%Y", "\(mnt)/a/renamed.txt").output, "981173106\n")
        XCTAssertEqual(tool("touch", "\(mnt)/a/new-empty").status, 0)
        XCTAssertEqual(tool("stat", "-c", "%s", "\(mnt)/a/new-empty").output, "0\n")
        XCTAssertEqual(tool("truncate", "-s", "5", "\(mnt)/a/renamed.txt").status, 0)
        XCTAssertEqual(tool("cat", "\(mnt)/a/renamed.txt").output, "hello")
        XCTAssertEqual(truncate("\(mnt)/a/renamed.txt", 100_000), 0)
        XCTAssertEqual(stat("\(mnt)/a/renamed.txt", &st), 0)
        XCTAssertEqual(st.st_size, 100_000)

        // df / statvfs.
        var sv = statvfs()
        XCTAssertEqual(statvfs(mnt, &sv), 0)
        XCTAssertGreaterThan(sv.f_blocks, 0)
        XCTAssertGreaterThan(sv.f_bsize, 0)
        let df = tool("df", "-k", mnt)
        XCTAssertEqual(df.status, 0)
        XCTAssertTrue(df.output.contains("limitless-vfs") && df.output.hasSuffix(" \(mnt)\n"), df.output)

        // Errors pass through with their errno.
        XCTAssertEqual(rmdir("\(mnt)/a"), -1)
        XCTAssertEqual(errno, ENOTEMPTY)
        XCTAssertEqual(open("\(mnt)/nope", O_RDONLY), -1)
        XCTAssertEqual(errno, ENOENT)
        let catDirectory = tool("cat", "\(mnt)/a/b")
        XCTAssertTrue(catDirectory.output.hasSuffix("cat: \(mnt)/a/b: Is a directory\n"), catDirectory.output)
        XCTAssertEqual(mkdir("\(mnt)/a", 0o755), -1)
        XCTAssertEqual(errno, EEXIST)

        // Another user may not enter (one bridge serves one user: no allow_other).
        if access("/usr/bin/setpriv", X_OK) == 0 {
            let other = ChildProcess.run("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/ls", mnt])
            XCTAssertNotEqual(other.status, 0)
            XCTAssertTrue(other.output.contains("Permission denied"), other.output)
        }

        // A file unlinked while open: still readable and fstat-able through the descriptor;
        // its name is gone at once (libfuse parks it as .fuse_hidden* until the last close).
        let kept = open("\(mnt)/a/renamed.txt", O_RDONLY)
        XCTAssertGreaterThanOrEqual(kept, 0)
        XCTAssertEqual(unlink("\(mnt)/a/renamed.txt"), 0)
        XCTAssertEqual(access("\(mnt)/a/renamed.txt", F_OK), -1)
        var buffer = [UInt8](repeating: 0, count: 5)
        XCTAssertEqual(read(kept, &buffer, 5), 5, String(cString: strerror(errno)))
        XCTAssertEqual(buffer, Array("hello".utf8))
        XCTAssertEqual(fstat(kept, &st), 0, String(cString: strerror(errno)))
        XCTAssertEqual(st.st_size, 100_000)
        XCTAssertEqual(close(kept), 0)

        // rm -r, and the tree is gone.
        XCTAssertEqual(tool("rm", "-r", "\(mnt)/a").status, 0)
        XCTAssertEqual(tool("ls", "-A", mnt).output, "")

        // fusermount3 -u: the bridge ends its loop and exits 0.
        XCTAssertEqual(tool("fusermount3", "-u", mnt).status, 0)
        XCTAssertEqual(ChildProcess.wait(bridge), 0)
        bridgeReaped = true
        XCTAssertFalse(isLimitlessMount(mnt))
        let output = readText(log)
        XCTAssertTrue(output.contains("limitless-fuse: mounted at \(mnt)") && output.contains("limitless-fuse: unmounted \(mnt)"), output)
    }

    /// In the background (the default) and stopped with SIGTERM; then the errors before mounting.
    func testBackgroundMountSignalsAndErrors() throws {
        try requireFUSE()
        let bridgeProgram = try executable("limitless-fuse")
        let directory = makeTemporaryDirectory(self)
        let mnt = directory + "/mnt"
        XCTAssertEqual(mkdir(mnt, 0o755), 0)

        // Before any server: the socket path is named, nothing is mounted.
        let noServer = ChildProcess.run(bridgeProgram, [mnt, "--runtime-dir", directory])
        XCTAssertEqual(noServer.status, 1)
        XCTAssertTrue(noServer.output.hasPrefix("limitless-fuse: no VFS server at \(directory)/vfs.sock"), noServer.output)
        let missing = ChildProcess.run(bridgeProgram, [directory + "/absent", "--runtime-dir", directory])
        XCTAssertEqual(missing.status, 64)
        XCTAssertEqual(missing.output, "limitless-fuse: mount point '\(directory)/absent': No such file or directory\n")
        XCTAssertTrue(FileManager.default.createFile(atPath: directory + "/file", contents: nil))
        let notDirectory = ChildProcess.run(bridgeProgram, [directory + "/file", "--runtime-dir", directory])
        XCTAssertEqual(notDirectory.output, "limitless-fuse: mount point '\(directory)/file': Not a directory\n")
        let help = ChildProcess.run(bridgeProgram, ["--help"])
        XCTAssertEqual(help.status, 0)
        XCTAssertTrue(help.output.contains("USAGE: limitless-fuse <mount-point>") && help.output.contains("--runtime-dir"), help.output)

        // allow_other is refused for anyone but root (checked before anything else).
        if access("/usr/bin/setpriv", X_OK) == 0 {
            let shared = ChildProcess.run("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", bridgeProgram, "/tmp", "-o", "ro,allow_other"])
            XCTAssertEqual(shared.status, 64, shared.output)
            XCTAssertTrue(shared.output.hasPrefix("limitless-fuse: -o allow_other refused: one bridge serves one user"), shared.output)
        }

        let server = try startServer(directory)
        defer {
            kill(server, SIGTERM)
            _ = ChildProcess.wait(server)
        }
        let log = directory + "/fuse.log"
        let badOption = ChildProcess.run(bridgeProgram, [mnt, "--runtime-dir", directory, "-o", "no_such_option"])
        XCTAssertEqual(badOption.status, 1)
        XCTAssertTrue(badOption.output.contains("unknown option(s): `-o no_such_option'"), badOption.output)
        XCTAssertFalse(isLimitlessMount(mnt))
        let watchdog = Watchdog(seconds: 20) { _ = ChildProcess.run("/usr/bin/fusermount3", ["-u", "-z", mnt]) }
        defer { if !watchdog.cancel() { XCTFail("the watchdog fired: \(readText(log))") } }

        // Background: the command returns once mounted; the daemon serves.
        let started = ChildProcess.run(bridgeProgram, [mnt, "--runtime-dir", directory])
        XCTAssertEqual(started.status, 0, started.output)
        try waitForMount(mnt, bridge: nil, log: log)
        XCTAssertTrue(FileManager.default.createFile(atPath: "\(mnt)/x", contents: Data("x".utf8)))
        XCTAssertEqual(tool("ls", mnt).output, "x\n")
        XCTAssertEqual(tool("fusermount3", "-u", mnt).status, 0)
        XCTAssertTrue(waitForUnmount(mnt), "fusermount3 -u unmounts the daemon's mount")

        // Foreground, SIGTERM: unmounted, exit 0.
        guard case .success(let bridge) = ChildProcess.spawn(bridgeProgram, [mnt, "--runtime-dir", directory, "--foreground"], outputPath: log, appending: true) else {
            return XCTFail("cannot start limitless-fuse")
        }
        try waitForMount(mnt, bridge: bridge, log: log)
        XCTAssertEqual(tool("cat", "\(mnt)/x").output, "x", "the server kept the file across the two mounts")
        kill(bridge, SIGTERM)
        XCTAssertEqual(ChildProcess.wait(bridge), 0, readText(log))
        XCTAssertFalse(isLimitlessMount(mnt), "SIGTERM unmounts")
        XCTAssertTrue(readText(log).contains("limitless-fuse: unmounted \(mnt)"), readText(log))

        // Foreground, SIGINT (Ctrl-C): the same.
        guard case .success(let interrupted) = ChildProcess.spawn(bridgeProgram, [mnt, "--runtime-dir", directory, "--foreground"], outputPath: log, appending: true) else {
            return XCTFail("cannot start limitless-fuse")
        }
        try waitForMount(mnt, bridge: interrupted, log: log)
        XCTAssertEqual(tool("ls", mnt).output, "x\n")
        kill(interrupted, SIGINT)
        XCTAssertEqual(ChildProcess.wait(interrupted), 0, readText(log))
        XCTAssertFalse(isLimitlessMount(mnt), "SIGINT unmounts")
    }
}
