import IPC
import SystemPackage
import VFS
import VFSCore
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// The whole path through IPC: VFSClient -> socket -> IPCServer -> VFSServer -> VFSService,
/// in-process, in a temporary runtime directory.
final class VFSIPCTests: XCTestCase {
    private var directory = ""
    private var endpoint: IPCServer?
    private var server: VFSServer?

    override func setUpWithError() throws {
        directory = makeTemporaryDirectory(self)
        let (service, _) = makeService()
        try service.mkdir("/tmp".bytes, mode: 0o1777, root)
        service.mountProvider = { (source, readOnly) throws(FSError) in
            guard source == "tmpfs" else { throw FSError(.noSuchFileOrDirectory, "only tmpfs here") }
            return MountSources.Mounted(fileSystem: MemoryFileSystem(readOnly: readOnly), cache: nil, description: "tmpfs")
        }
        let server = VFSServer(service: service)
        let endpoint = try server.makeIPCServer(name: "vfs", directory: directory)
        endpoint.start()
        self.server = server
        self.endpoint = endpoint
    }

    override func tearDown() {
        endpoint?.stop()
        endpoint = nil
    }

    private func connect() throws -> VFSClient { try VFSClient.connect(name: "vfs", directory: directory) }

    private func XCTAssertStatus<T>(_ status: IPCStatus, _ body: @autoclosure () throws -> T, file: StaticString = #filePath, line: UInt = #line) {
        do {
            _ = try body()
            XCTFail("expected \(status), got success", file: file, line: line)
        } catch let error as VFSError {
            XCTAssertEqual(error.status, status, "\(error)", file: file, line: line)
        } catch {
            XCTFail("expected \(status), got \(error)", file: file, line: line)
        }
    }

    func testOperationsThroughTheClient() throws {
        let client = try connect()
        try client.mkdir("/tmp/d")
        let small = Array("hello, vfs".utf8)
        try client.writeFile("/tmp/d/small", small)
        XCTAssertEqual(try client.readFile("/tmp/d/small"), small)
        // 3 MiB + change: through the shared region, in several requests.
        var generator = SystemRandomNumberGenerator()
        let large = (0..<(3 << 20) + 12345).map { _ in UInt8.random(in: 0...255, using: &generator) }
        try client.writeFile("/tmp/d/large", large)
        XCTAssertEqual(try client.readFile("/tmp/d/large"), large)
        XCTAssertEqual(try client.stat("/tmp/d/large").size, UInt64(large.count))

        let fd = try client.open("/tmp/d/large")
        XCTAssertEqual(try client.seek(fd, offset: 100_000, whence: .set), 100_000)
        XCTAssertEqual(try client.read(fd, count: 70_000), Array(large[100_000..<170_000]), "over 64 KiB: shared region")
        XCTAssertEqual(try client.read(fd, count: 10, at: 5), Array(large[5..<15]), "pread")
        XCTAssertEqual(try client.fstat(fd).size, UInt64(large.count))
        XCTAssertEqual(server!.withService { $0.descriptorCount(getpid()) }, 1, "the table is keyed by our kernel-verified pid")
        try client.close(fd)
        XCTAssertStatus(.EBADF, try client.close(fd))

        try client.symlink(target: "d/small", at: "/tmp/link")
        XCTAssertEqual(try client.readlink("/tmp/link"), "d/small")
        XCTAssertEqual(try client.readFile("/tmp/link"), small)
        try client.link("/tmp/d/small", to: "/tmp/hard")
        XCTAssertEqual(try client.stat("/tmp/hard").linkCount, 2)
        try client.rename("/tmp/hard", to: "/tmp/moved")
        try client.chmod("/tmp/moved", mode: 0o600)
        XCTAssertEqual(try client.stat("/tmp/moved").permissions, 0o600)
        try client.chown("/tmp/moved", uid: 5, gid: nil)
        XCTAssertEqual(try client.stat("/tmp/moved").uid, 5)
        try client.utimes("/tmp/moved", access: .omit, modification: .set(FileTime(seconds: 1234, nanoseconds: 5)))
        XCTAssertEqual(try client.stat("/tmp/moved").modificationTime, FileTime(seconds: 1234, nanoseconds: 5))
        try client.truncate("/tmp/moved", to: 5)
        XCTAssertEqual(try client.readFile("/tmp/d/small"), Array(small[..<5]))
        XCTAssertEqual(Set(try client.list("/tmp").map(\.name.description)), [".", "..", "d", "link", "moved"])
        let statistics = try client.statfs("/tmp")
        XCTAssertEqual(statistics.typeName, "tmpfs")
        XCTAssertEqual(statistics.mountPoint, "/")

        XCTAssertStatus(.ENOENT, try client.stat("/tmp/none"))
        XCTAssertStatus(.ENOTEMPTY, try client.rmdir("/tmp/d"))
        XCTAssertStatus(.EEXIST, try client.mkdir("/tmp/d"))
        XCTAssertStatus(.EISDIR, try client.unlink("/tmp/d"))
        XCTAssertStatus(.ENOTDIR, try client.rmdir("/tmp/moved"))
        XCTAssertStatus(.ENAMETOOLONG, try client.mkdir("/tmp/" + String(repeating: "x", count: 256)))
        XCTAssertStatus(.ELOOP, try { try client.symlink(target: "/tmp/self", at: "/tmp/self"); _ = try client.stat("/tmp/self") }())

        // Mounts over IPC (root only; this test may not run as root).
        if getuid() == 0 {
            try client.mkdir("/tmp/m")
            try client.mount(source: "tmpfs", at: "/tmp/m")
            try client.writeFile("/tmp/m/f", small)
            XCTAssertStatus(.EXDEV, try client.rename("/tmp/m/f", to: "/tmp/f"))
            try client.unmount("/tmp/m")
            XCTAssertStatus(.ENOENT, try client.stat("/tmp/m/f"))
        }

        try client.unlink("/tmp/d/large")
        try client.unlink("/tmp/d/small")
        try client.rmdir("/tmp/d")
    }

    /// A server that restarts from a checkpoint gives a reconnecting client (same pid) its
    /// descriptors back, positions included.
    /// read(into:) fills the caller's buffer: inline (up to 64 KiB), through the shared region
    /// (more, in several requests), short at the end of the file, with or without an offset, and
    /// the file position moves as with the array form.
    func testReadIntoACallersBuffer() throws {
        let client = try connect()
        let bytes = (0..<(2 << 20) + 777).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 11) }
        try client.writeFile("/tmp/into", bytes)
        let fd = try client.open("/tmp/into")
        defer { try? client.close(fd) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: (1 << 20) + 4096, alignment: 64)
        defer { buffer.deallocate() }
        func read(_ count: Int, at offset: UInt64? = nil) throws -> [UInt8] {
            let part = UnsafeMutableRawBufferPointer(rebasing: buffer[..<count])
            part.initializeMemory(as: UInt8.self, repeating: 0xEE)
            let n = try client.read(fd, into: part, at: offset)
            return Array(part[..<n])
        }
        XCTAssertEqual(try read(1000), Array(bytes[0..<1000]), "inline, from the position")
        XCTAssertEqual(try read(65_536), Array(bytes[1000..<66_536]), "inline, the largest")
        XCTAssertEqual(try read((1 << 20) + 4096), Array(bytes[66_536..<(66_536 + (1 << 20) + 4096)]), "shared region, two requests")
        XCTAssertEqual(try read(300, at: 5), Array(bytes[5..<305]), "pread leaves the position")
        XCTAssertEqual(try client.seek(fd, offset: 0, whence: .current), UInt64(66_536 + (1 << 20) + 4096))
        XCTAssertEqual(try read(200_000, at: UInt64(bytes.count - 100)), Array(bytes[(bytes.count - 100)...]), "short at the end")
        XCTAssertEqual(try read(10, at: UInt64(bytes.count) + 5), [], "past the end")
        XCTAssertStatus(.EBADF, try client.read(9999, into: buffer))
    }

    func testDescriptorsSurviveARestartFromTheCheckpoint() throws {
        let client = try connect()
        try client.writeFile("/tmp/survivor", Array("0123456789".utf8))
        let fd = try client.open("/tmp/survivor")
        XCTAssertEqual(try client.read(fd, count: 3), Array("012".utf8))
        let (checkpoint, fileSystem) = server!.withService { service in
            (DescriptorCheckpoint.encode(service.checkpointRecords()), service.mounts.mount(0)!.fileSystem)
        }
        endpoint?.stop()  // the old server is gone; its client sees a dead connection
        client.timeout = .seconds(2)
        XCTAssertThrowsError(try client.stat("/tmp"))

        let restarted = VFSService()
        try restarted.mount(fileSystem, at: "/", source: "same file system")
        XCTAssertEqual(restarted.restore(try DescriptorCheckpoint.decode(checkpoint)).0, 1)
        let newServer = VFSServer(service: restarted)
        let newEndpoint = try newServer.makeIPCServer(name: "vfs", directory: directory)
        newEndpoint.start()
        endpoint = newEndpoint
        server = newServer
        let again = try connect()
        XCTAssertEqual(try again.read(fd, count: 100), Array("3456789".utf8), "same descriptor, same position")
        try again.close(fd)
    }

    func testBadRequestsGetErrorRepliesAndTheServerCarriesOn() throws {
        let raw = try IPCClient.connect(name: "vfs", directory: directory)
        func status(_ message: Message, _ payload: [UInt8] = []) throws -> IPCStatus {
            var message = message
            if !payload.isEmpty { message.setInlineData(count: UInt32(payload.count)) }
            return try payload.withUnsafeBytes { try raw.sendReceive(message, payload: $0).status }
        }
        // Two-path request whose first length runs past the data: truncated.
        XCTAssertEqual(try status(Message(type: .vfsRename, param3: 100), Array("/a/b".utf8)), .EBADMSG)
        // Inline read over 64 KiB without a shared region.
        XCTAssertEqual(try status(Message(type: .vfsRead, param1: 0, param2: 1 << 20, param3: VFSProtocol.currentPosition)), .EINVAL)
        // A path with a NUL byte, an impossible whence, a bad descriptor, absurd flags, bad ids.
        XCTAssertEqual(try status(Message(type: .vfsOpen), [0x2F, 0x00, 0x61]), .EINVAL)
        XCTAssertEqual(try status(Message(type: .vfsSeek, param1: 0, param3: 9)), .EBADF, "no descriptor 0 yet")
        XCTAssertEqual(try status(Message(type: .vfsClose, param1: UInt64.max)), .EBADF)
        XCTAssertEqual(try status(Message(type: .vfsOpen, param1: 1 << 40), Array("/x".utf8)), .EINVAL)
        XCTAssertEqual(try status(Message(type: .vfsChown, param1: 1 << 33), Array("/tmp".utf8)), .EINVAL)
        XCTAssertEqual(try status(Message(type: .vfsReadDirectory, param1: 3)), .EBADF)
        // A path given through shared memory is refused (it could change under the server).
        let memory = try SharedMemory(size: 4096)
        let handle = try raw.share(memory)
        var shared = Message(type: .vfsMkdir)
        shared.setSharedData(handle: handle, count: 4)
        XCTAssertEqual(try raw.sendReceive(shared).status, .EBADMSG)
        // Not a VFS request at all.
        XCTAssertEqual(try status(Message(type: .blockRead)), .ENOSYS)
        // Empty path.
        XCTAssertEqual(try status(Message(type: .vfsStat)), .ENOENT)
        // Fuzz: random params on every VFS type, random small payloads; every one gets a reply.
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<500 {
            let type = MessageType(rawValue: UInt32.random(in: 0x0100...0x0116, using: &generator))
            let payload = (0..<Int.random(in: 0...40, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            let message = Message(type: type, param1: UInt64.random(in: 0...8, using: &generator),
                                  param2: UInt64.random(in: 0...UInt64.max, using: &generator), param3: UInt64.random(in: 0...64, using: &generator))
            _ = try status(message, payload)
        }
        // Still serving, correctly.
        let client = try connect()
        XCTAssertEqual(try client.stat("/tmp").type, .directory)
    }

    /// The same random operations through the VFS and on a real directory of the host: the
    /// same errno for each, and the same tree at the end.
    func testRandomOperationsMatchARealDirectory() throws {
        let client = try connect()
        let real = makeTemporaryDirectory(self)
        try client.mkdir("/tmp/r")
        var seed: UInt64 = 0x5EED_1234
        func next(_ bound: Int) -> Int {
            seed = seed &* 6364136223846793005 &+ 1442695040888963407
            return Int((seed >> 33) % UInt64(bound))
        }
        let names = ["a", "b", "c"]
        func randomPath() -> String {
            (0..<(1 + next(2))).map { _ in names[next(names.count)] }.joined(separator: "/")
        }
        func realErrno(_ result: Int32) -> Int32 { result < 0 ? errno : 0 }
        func vfsErrno(_ body: () throws(VFSError) -> Void) -> Int32 {
            do { try body(); return 0 } catch { return error.status.rawValue }
        }
        for step in 0..<400 {
            let path = randomPath(), other = randomPath()
            let vfsPath = "/tmp/r/" + path, realPath = real + "/" + path
            let vfsOther = "/tmp/r/" + other, realOther = real + "/" + other
            let content = Array("step \(step) ".utf8) + [UInt8](repeating: UInt8(step % 256), count: next(3000))
            let expected: Int32, got: Int32, what: String
            switch next(7) {
            case 0:
                what = "write \(path)"
                expected = realErrno({
                    let fd = open(realPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
                    guard fd >= 0 else { return -1 }
                    defer { close(fd) }
                    return content.withUnsafeBytes { Int32(Glibc.write(fd, $0.baseAddress, $0.count)) }
                }())
                got = vfsErrno { () throws(VFSError) in try client.writeFile(vfsPath, content) }
            case 1:
                what = "mkdir \(path)"
                expected = realErrno(mkdir(realPath, 0o755))
                got = vfsErrno { () throws(VFSError) in try client.mkdir(vfsPath) }
            case 2:
                what = "rmdir \(path)"
                expected = realErrno(rmdir(realPath))
                got = vfsErrno { () throws(VFSError) in try client.rmdir(vfsPath) }
            case 3:
                what = "unlink \(path)"
                expected = realErrno(unlink(realPath))
                got = vfsErrno { () throws(VFSError) in try client.unlink(vfsPath) }
            case 4:
                what = "rename \(path) \(other)"
                expected = realErrno(rename(realPath, realOther))
                got = vfsErrno { () throws(VFSError) in try client.rename(vfsPath, to: vfsOther) }
            case 5:
                what = "truncate \(path)"
                let size = next(5000)
                expected = realErrno(truncate(realPath, off_t(size)))
                got = vfsErrno { () throws(VFSError) in try client.truncate(vfsPath, to: UInt64(size)) }
            default:
                what = "append \(path)"
                expected = realErrno({
                    let fd = open(realPath, O_WRONLY | O_APPEND)
                    guard fd >= 0 else { return -1 }
                    defer { close(fd) }
                    return content.withUnsafeBytes { Int32(Glibc.write(fd, $0.baseAddress, $0.count)) }
                }())
                got = vfsErrno { () throws(VFSError) in
                    let fd = try client.open(vfsPath, flags: [.writeOnly, .append])
                    defer { try? client.close(fd) }
                    try client.write(fd, content)
                }
            }
            XCTAssertEqual(got, expected, "step \(step): \(what)")
        }
        // The trees match: names, kinds and contents.
        func compare(_ relative: String) throws {
            let realNames = try listReal(real + relative)
            let vfsNames = try client.list("/tmp/r" + relative).map(\.name.description).filter { $0 != "." && $0 != ".." }.sorted()
            XCTAssertEqual(vfsNames, realNames, "directory \(relative)")
            for name in realNames {
                let child = relative + "/" + name
                var info = stat()
                XCTAssertEqual(lstat(real + child, &info), 0)
                if info.st_mode & S_IFMT == S_IFDIR {
                    XCTAssertEqual(try client.stat("/tmp/r" + child).type, .directory)
                    try compare(child)
                } else {
                    XCTAssertEqual(try client.readFile("/tmp/r" + child), try readReal(real + child), child)
                }
            }
        }
        try compare("")
    }

    private func listReal(_ path: String) throws -> [String] {
        guard let dir = opendir(path) else { throw POSIXErrorCode(rawValue: errno).map { POSIXError($0) } ?? POSIXError(.EIO) }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    private func readReal(_ path: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw POSIXError(.ENOENT) }
        defer { close(fd) }
        var data: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { return data }
            data += buffer[..<n]
        }
    }
}
