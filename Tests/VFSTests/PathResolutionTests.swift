import SystemPackage
import VFS
import VFSCore
import XCTest

final class PathResolutionTests: XCTestCase {
    func testSymlinksAreFollowedAndLoopsAreELOOP() throws {
        let (service, _) = makeService()
        try service.mkdir("/d".bytes, mode: 0o755, root)
        try service.writeFile("/d/f", "data")
        try service.symlink(target: "d/f".bytes, at: "/rel".bytes, root)
        try service.symlink(target: "/d".bytes, at: "/abs".bytes, root)
        XCTAssertEqual(try service.readFile("/rel"), "data")
        XCTAssertEqual(try service.readFile("/abs/f"), "data")
        XCTAssertEqual(try service.stat("/rel".bytes, followSymlinks: false, root).0.type, .symbolicLink)
        XCTAssertEqual(try service.readlink("/rel".bytes, root), "d/f".bytes)

        try service.symlink(target: "/loop2".bytes, at: "/loop1".bytes, root)
        try service.symlink(target: "/loop1".bytes, at: "/loop2".bytes, root)
        XCTAssertErrno(.tooManySymbolicLinkLevels, try service.stat("/loop1".bytes, root))
        XCTAssertErrno(.tooManySymbolicLinkLevels, try service.stat("/loop1/x".bytes, root))
        // lstat does not follow: the loop itself is fine to look at.
        XCTAssertEqual(try service.stat("/loop1".bytes, followSymlinks: false, root).0.type, .symbolicLink)
        // O_CREAT through a dangling symlink creates its target, as on Linux.
        try service.symlink(target: "d/created".bytes, at: "/dangling".bytes, root)
        let created = try service.open("/dangling".bytes, flags: OpenFlags([.create, .writeOnly]).rawValue, mode: 0o600, root)
        try service.close(created, root)
        XCTAssertEqual(try service.stat("/d/created".bytes, root).0.permissions, 0o600)
        // O_NOFOLLOW on a symlink: ELOOP, as Linux.
        XCTAssertErrno(.tooManySymbolicLinkLevels, try service.open("/rel".bytes, flags: OpenFlags.noFollow.rawValue, mode: 0, root))
    }

    func testSymlinkChainOfFortyResolvesAndFortyOneIsELOOP() throws {
        let (service, _) = makeService()
        try service.writeFile("/target", "x")
        try service.symlink(target: "/target".bytes, at: "/l0".bytes, root)
        for index in 1...40 { try service.symlink(target: "/l\(index - 1)".bytes, at: "/l\(index)".bytes, root) }
        XCTAssertEqual(try service.readFile("/l39"), "x")  // 40 links followed
        XCTAssertErrno(.tooManySymbolicLinkLevels, try service.readFile("/l40"))  // 41
    }

    func testDotDotAtRootAndAcrossMounts() throws {
        let (service, rootFS) = makeService()
        try service.mkdir("/mnt".bytes, mode: 0o755, root)
        try service.writeFile("/marker", "root fs")
        let tmp = MemoryFileSystem()
        try service.mount(tmp, at: "/mnt", source: "tmpfs")
        try service.mkdir("/mnt/sub".bytes, mode: 0o755, root)
        try service.writeFile("/mnt/sub/inner", "tmp fs")

        XCTAssertEqual(try service.readFile("/../../marker"), "root fs")
        XCTAssertEqual(try service.readFile("/mnt/sub/../../marker"), "root fs")
        XCTAssertEqual(try service.readFile("/mnt/../mnt/sub/inner"), "tmp fs")
        // /mnt is the tmpfs's root now, not the covered directory.
        let (attributes, device) = try service.stat("/mnt".bytes, root)
        XCTAssertEqual(attributes.inode, tmp.rootInode)
        XCTAssertNotEqual(device, try service.stat("/".bytes, root).1)
        XCTAssertEqual(try service.stat("/mnt/..".bytes, root).0.inode, rootFS.rootInode)
        // Renames and links do not cross file systems.
        XCTAssertErrno(.improperLink, try service.rename("/marker".bytes, to: "/mnt/marker".bytes, root))
        XCTAssertErrno(.improperLink, try service.link("/marker".bytes, to: "/mnt/marker".bytes, root))
        // A mount point cannot be removed or unmounted while in use.
        XCTAssertErrno(.resourceBusy, try service.rmdir("/mnt".bytes, root))
        let fd = try service.open("/mnt/sub/inner".bytes, flags: 0, mode: 0, root)
        XCTAssertErrno(.resourceBusy, try service.unmount("/mnt".bytes, root))
        try service.close(fd, root)
        XCTAssertErrno(.notPermitted, try service.unmount("/mnt".bytes, alice))
        try service.unmount("/mnt".bytes, root)
        XCTAssertTrue(tmp.isUnmounted)
        XCTAssertErrno(.noSuchFileOrDirectory, try service.stat("/mnt/sub".bytes, root))
    }

    func testTrailingSlashesAndEmptyPath() throws {
        let (service, _) = makeService()
        try service.mkdir("/dir/".bytes, mode: 0o755, root)
        try service.writeFile("/file", "x")
        XCTAssertEqual(try service.stat("/dir/".bytes, root).0.type, .directory)
        XCTAssertEqual(try service.stat("//dir///".bytes, root).0.type, .directory)
        XCTAssertErrno(.notDirectory, try service.stat("/file/".bytes, root))
        XCTAssertErrno(.notDirectory, try service.stat("/file/x".bytes, root))
        XCTAssertErrno(.notDirectory, try service.unlink("/file/".bytes, root))
        XCTAssertErrno(.noSuchFileOrDirectory, try service.stat([], root))
        XCTAssertErrno(.noSuchFileOrDirectory, try service.open([], flags: 0, mode: 0, root))
        XCTAssertErrno(.isDirectory, try service.open("/newfile/".bytes, flags: OpenFlags.create.rawValue, mode: 0o644, root))
    }

    func testOverLongPathsAndNamesAndNULBytes() throws {
        let (service, _) = makeService()
        let longName = String(repeating: "n", count: 256)
        XCTAssertErrno(.fileNameTooLong, try service.mkdir(("/" + longName).bytes, mode: 0o755, root))
        XCTAssertErrno(.fileNameTooLong, try service.stat(("/" + longName).bytes, root))
        try service.mkdir(("/" + String(repeating: "n", count: 255)).bytes, mode: 0o755, root)
        let longPath = String(repeating: "/a", count: 2048)  // 4096 bytes: PATH_MAX with its NUL exceeded
        XCTAssertErrno(.fileNameTooLong, try service.stat(longPath.bytes, root))
        XCTAssertErrno(.invalidArgument, try service.mkdir([0x2F, 0x61, 0x00, 0x62], mode: 0o755, root))
        XCTAssertErrno(.invalidArgument, try service.symlink(target: [0x61, 0x00], at: "/s".bytes, root))
        XCTAssertErrno(.noSuchFileOrDirectory, try service.symlink(target: [], at: "/s".bytes, root))
    }

    func testDotNamesGetLinuxErrors() throws {
        let (service, _) = makeService()
        try service.mkdir("/d".bytes, mode: 0o755, root)
        XCTAssertErrno(.fileExists, try service.mkdir("/".bytes, mode: 0o755, root))
        XCTAssertErrno(.fileExists, try service.mkdir("/d/.".bytes, mode: 0o755, root))
        XCTAssertErrno(.invalidArgument, try service.rmdir("/d/.".bytes, root))
        XCTAssertErrno(.directoryNotEmpty, try service.rmdir("/d/..".bytes, root))
        XCTAssertErrno(.resourceBusy, try service.rmdir("/".bytes, root))
        XCTAssertErrno(.isDirectory, try service.unlink("/d".bytes, root))
        XCTAssertErrno(.resourceBusy, try service.rename("/d/.".bytes, to: "/e".bytes, root))
    }

    func testRenameRules() throws {
        let (service, fs) = makeService()
        try service.mkdir("/a".bytes, mode: 0o755, root)
        try service.mkdir("/a/b".bytes, mode: 0o755, root)
        try service.mkdir("/full".bytes, mode: 0o755, root)
        try service.writeFile("/full/x", "x")
        try service.writeFile("/f", "f")
        try service.writeFile("/g", "g")
        XCTAssertErrno(.invalidArgument, try service.rename("/a".bytes, to: "/a/b/c".bytes, root))
        XCTAssertErrno(.directoryNotEmpty, try service.rename("/a".bytes, to: "/full".bytes, root))
        XCTAssertErrno(.notDirectory, try service.rename("/a".bytes, to: "/f".bytes, root))
        XCTAssertErrno(.isDirectory, try service.rename("/f".bytes, to: "/a".bytes, root))
        let replaced = try service.stat("/g".bytes, root).0.inode
        try service.rename("/f".bytes, to: "/g".bytes, root)
        XCTAssertEqual(try service.readFile("/g"), "f")
        XCTAssertErrno(.noSuchFileOrDirectory, try service.stat("/f".bytes, root))
        XCTAssertTrue(fs.evictedInodes.contains(replaced), "the replaced file had no descriptor: evicted at once")
        try service.rename("/a/b".bytes, to: "/b".bytes, root)
        XCTAssertEqual(try service.names("/"), ["a", "b", "full", "g"])
        XCTAssertEqual(try service.stat("/a".bytes, root).0.linkCount, 2)
    }
}
