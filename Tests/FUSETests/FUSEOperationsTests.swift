import FUSEBridge
import IPC
import VFS
import VFSCore
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// FUSEOperations without the kernel: the calls libfuse would make, against an in-process
/// vfs_server (VFSServer on a tmpfs, over a real socket), and the conversions to C structs.
final class FUSEOperationsTests: XCTestCase {
    private var directory = ""
    private var endpoint: IPCServer?
    private var operations: FUSEOperations!
    /// Stopped servers, released only after the current one is stopped: IPCServer's deinit
    /// stops again through its closed eventfd's number, which may belong to the newer server.
    private var retired: [IPCServer] = []

    override func setUpWithError() throws {
        directory = makeTemporaryDirectory(self)
        let service = VFSService()
        try service.mount(MemoryFileSystem(rootPermissions: 0o1777), at: "/", source: "test")
        let endpoint = try VFSServer(service: service).makeIPCServer(name: "vfs", directory: directory)
        endpoint.start()
        self.endpoint = endpoint
        let directory = self.directory
        operations = FUSEOperations(connect: { () throws(VFSError) in try VFSClient.connect(name: "vfs", directory: directory) })
    }

    override func tearDown() {
        operations = nil
        endpoint?.stop()
        endpoint = nil
        retired.removeAll()
    }

    /// The negative errno libfuse would get from `body`.
    private func errno<T>(_ body: () throws(VFSError) -> T) -> Int32 {
        do {
            _ = try body()
            return 0
        } catch {
            return FUSEOperations.errno(error)
        }
    }

    func testFilesThroughHandles() throws {
        try operations.mkdir("/d", mode: 0o40755)  // FUSE passes the type bits too; they are dropped
        let fd = try operations.create("/d/f", flags: O_WRONLY | O_CREAT | 0o100000 /* O_LARGEFILE, as the kernel passes it */ | O_CLOEXEC, mode: 0o640)
        XCTAssertEqual(try operations.write(fd, Array("hello, fuse".utf8), offset: 0), 11)
        XCTAssertEqual(try operations.write(fd, Array("FUSE".utf8), offset: 7), 4, "pwrite at an offset")
        let big = (0..<200_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        XCTAssertEqual(try operations.write(fd, big, offset: 11), big.count, "over 64 KiB: the shared region")
        try operations.fsync(fd)
        XCTAssertEqual(try operations.getattr(nil, handle: fd).size, UInt64(11 + big.count), "fgetattr by handle")
        try operations.release(fd)

        let readFD = try operations.open("/d/f", flags: O_RDONLY)
        XCTAssertEqual(try operations.read(readFD, count: 11, offset: 0), Array("hello, FUSE".utf8))
        XCTAssertEqual(try operations.read(readFD, count: 131_072, offset: 11), Array(big[0..<131_072]))
        XCTAssertEqual(try operations.read(readFD, count: 100, offset: UInt64(11 + big.count)), [], "at the end: nothing")
        try operations.release(readFD)
        XCTAssertEqual(errno { () throws(VFSError) in try operations.release(readFD) }, -EBADF)

        let attributes = try operations.getattr("/d/f", handle: nil)
        XCTAssertEqual(attributes.type, .regular)
        XCTAssertEqual(attributes.permissions, 0o640)
        try operations.truncate("/d/f", handle: nil, size: 5)
        XCTAssertEqual(try operations.getattr("/d/f", handle: nil).size, 5)
        let rw = try operations.open("/d/f", flags: O_RDWR)
        try operations.truncate(nil, handle: rw, size: 2)
        XCTAssertEqual(try operations.read(rw, count: 10, offset: 0), Array("he".utf8), "ftruncate by handle")
        try operations.release(rw)
    }

    func testNamesAndErrnos() throws {
        XCTAssertEqual(errno { () throws(VFSError) in try operations.getattr("/missing", handle: nil) }, -ENOENT)
        XCTAssertEqual(errno { () throws(VFSError) in try operations.getattr(nil, handle: nil) }, -ENOENT, "no path, no handle")
        try operations.mkdir("/a", mode: 0o755)
        XCTAssertEqual(errno { () throws(VFSError) in try operations.mkdir("/a", mode: 0o755) }, -EEXIST)
        let fd = try operations.create("/a/x", flags: O_WRONLY, mode: 0o644)
        try operations.release(fd)
        XCTAssertEqual(errno { () throws(VFSError) in try operations.rmdir("/a") }, -ENOTEMPTY)
        XCTAssertEqual(errno { () throws(VFSError) in try operations.open("/a/x/y", flags: O_RDONLY) }, -ENOTDIR)
        XCTAssertEqual(errno { () throws(VFSError) in try operations.opendir("/a/x") }, -ENOTDIR)

        try operations.symlink(target: "a/x", at: "/s")
        XCTAssertEqual(try operations.readlink("/s"), "a/x")
        XCTAssertEqual(try operations.getattr("/s", handle: nil).type, .symbolicLink, "getattr does not follow (lstat)")
        try operations.link("/a/x", to: "/a/hard")
        XCTAssertEqual(try operations.getattr("/a/x", handle: nil).linkCount, 2)

        // rename: plain replaces; NOREPLACE refuses an existing target; EXCHANGE is not offered.
        let other = try operations.create("/a/y", flags: O_WRONLY, mode: 0o644)
        try operations.release(other)
        XCTAssertEqual(errno { () throws(VFSError) in try operations.rename("/a/y", to: "/a/x", flags: FUSEOperations.renameNoReplace) }, -EEXIST)
        XCTAssertEqual(errno { () throws(VFSError) in try operations.rename("/a/y", to: "/a/x", flags: FUSEOperations.renameExchange) }, -EINVAL)
        try operations.rename("/a/y", to: "/a/z", flags: FUSEOperations.renameNoReplace)
        try operations.rename("/a/z", to: "/a/x", flags: 0)
        XCTAssertEqual(errno { () throws(VFSError) in try operations.getattr("/a/z", handle: nil) }, -ENOENT)

        let dir = try operations.opendir("/a")
        let names = try operations.readdir("/a", handle: dir).map(\.name.description).sorted()
        XCTAssertEqual(names, [".", "..", "hard", "x"])
        XCTAssertEqual(try operations.readdir(nil, handle: dir).map(\.name.description).sorted(), names, "by handle when there is no path")
        try operations.release(dir)

        try operations.unlink("/a/x")
        try operations.unlink("/a/hard")
        try operations.rmdir("/a")
        XCTAssertEqual(errno { () throws(VFSError) in try operations.unlink("/a") }, -ENOENT)
    }

    func testModesOwnersTimes() throws {
        let fd = try operations.create("/f", flags: O_WRONLY, mode: 0o644)
        try operations.release(fd)
        try operations.chmod("/f", mode: 0o100600)
        XCTAssertEqual(try operations.getattr("/f", handle: nil).permissions, 0o600)
        try operations.chown("/f", uid: 123, gid: UInt32.max)  // chown(path, 123, -1)
        var attributes = try operations.getattr("/f", handle: nil)
        XCTAssertEqual(attributes.uid, 123)
        XCTAssertEqual(attributes.gid, 0, "gid -1 left unchanged")
        try operations.utimens("/f", access: timespec(tv_sec: 1_000_000, tv_nsec: 5), modification: timespec(tv_sec: 0, tv_nsec: FUSEOperations.utimeOmit))
        attributes = try operations.getattr("/f", handle: nil)
        XCTAssertEqual(attributes.accessTime, FileTime(seconds: 1_000_000, nanoseconds: 5))
        XCTAssertNotEqual(attributes.modificationTime.seconds, 1_000_000, "mtime omitted")
        XCTAssertEqual(FUSEOperations.timeChange(timespec(tv_sec: 0, tv_nsec: FUSEOperations.utimeNow)), .now)

        var st = stat()
        FUSEOperations.fill(&st, from: attributes)
        XCTAssertEqual(st.st_mode, S_IFREG | 0o600)
        XCTAssertEqual(st.st_uid, 123)
        XCTAssertEqual(UInt64(st.st_ino), attributes.inode)
        XCTAssertEqual(st.st_atim.tv_sec, 1_000_000)
        XCTAssertEqual(st.st_atim.tv_nsec, 5)

        let statistics = try operations.statfs("/")
        var sv = statvfs()
        FUSEOperations.fill(&sv, from: statistics)
        XCTAssertEqual(Int(sv.f_frsize), statistics.statistics.blockSize)
        XCTAssertEqual(UInt64(sv.f_blocks), statistics.statistics.totalBlocks)
        XCTAssertGreaterThan(sv.f_namemax, 0)
        XCTAssertEqual(sv.f_flag & UInt(ST_RDONLY), 0)
    }

    /// The server going away fails the request with ENOTCONN; once it is back, the next request
    /// connects again.
    func testReconnectsAfterTheServerWentAway() throws {
        try operations.mkdir("/before", mode: 0o755)
        endpoint?.stop()
        retired += endpoint.map { [$0] } ?? []
        XCTAssertEqual(errno { () throws(VFSError) in try operations.getattr("/before", handle: nil) }, -ENOTCONN)
        let service = VFSService()
        try service.mount(MemoryFileSystem(rootPermissions: 0o1777), at: "/", source: "test")
        try service.mkdir(Array("/after".utf8), mode: 0o755, .root)
        let again = try VFSServer(service: service).makeIPCServer(name: "vfs", directory: directory)
        again.start()
        endpoint = again
        XCTAssertEqual(try operations.getattr("/after", handle: nil).type, .directory)
    }

    func testMountOptions() throws {
        XCTAssertEqual(try FUSEMount.optionString(user: [], uid: 1000), "default_permissions,fsname=limitless-vfs,subtype=limitless")
        XCTAssertEqual(try FUSEMount.optionString(user: ["ro,noatime", "default_permissions"], uid: 1000),
                       "default_permissions,fsname=limitless-vfs,subtype=limitless,ro,noatime")
        XCTAssertThrowsError(try FUSEMount.optionString(user: ["ro,allow_other"], uid: 1000)) {
            XCTAssertTrue("\($0)".contains("allow_other refused"), "\($0)")
        }
        XCTAssertTrue(try FUSEMount.optionString(user: ["allow_other"], uid: 0).hasSuffix(",allow_other"), "root may")
        let directory = makeTemporaryDirectory(self)
        XCTAssertThrowsError(try FUSEMount.checkMountPoint(directory + "/missing")) {
            XCTAssertEqual("\($0)", "mount point '\(directory)/missing': No such file or directory")
        }
        XCTAssertEqual(try FUSEMount.checkMountPoint(directory + "/."), directory)
    }
}
