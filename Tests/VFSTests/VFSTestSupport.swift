import PlatformTestSupport
import SystemPackage
import VFS
import VFSCore
import XCTest
#if canImport(Glibc)
import Glibc
#endif

let root = Credentials.root
let alice = Credentials(pid: 1001, uid: 1000, gid: 1000)
let bob = Credentials(pid: 1002, uid: 1001, gid: 1001)

extension String {
    var bytes: [UInt8] { Array(utf8) }
}

/// A service with a tmpfs root (mode 1777 like /tmp, so unprivileged users can create).
func makeService(rootMode: UInt32 = 0o1777) -> (VFSService, MemoryFileSystem) {
    let service = VFSService()
    let fs = MemoryFileSystem(rootPermissions: rootMode)
    try! service.mount(fs, at: "/", source: "test")
    return (service, fs)
}

/// Asserts that `body` throws an FSError with `errno`.
func XCTAssertErrno<T>(_ errno: Errno, _ body: @autoclosure () throws -> T, _ message: String = "",
                       file: StaticString = #filePath, line: UInt = #line) {
    do {
        _ = try body()
        XCTFail("expected \(errno), got success \(message)", file: file, line: line)
    } catch let error as FSError {
        XCTAssertEqual(error.errno, errno, "\(message) (\(error))", file: file, line: line)
    } catch {
        XCTFail("expected \(errno), got \(error) \(message)", file: file, line: line)
    }
}

extension VFSService {
    func writeFile(_ path: String, _ text: String, _ credentials: Credentials = root, mode: UInt32 = 0o644) throws {
        let fd = try open(path.bytes, flags: (OpenFlags.writeOnly.union([.create, .truncate])).rawValue, mode: mode, credentials)
        _ = try text.bytes.withUnsafeBytes { try write(fd, from: $0, credentials) }
        try close(fd, credentials)
    }

    func readFile(_ path: String, _ credentials: Credentials = root) throws -> String {
        let fd = try open(path.bytes, flags: 0, mode: 0, credentials)
        defer { try? close(fd, credentials) }
        return try readAll(fd, credentials)
    }

    func readAll(_ fd: Int32, _ credentials: Credentials = root) throws -> String {
        var result: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = try buffer.withUnsafeMutableBytes { try read(fd, into: $0, credentials) }
            if n == 0 { return String(decoding: result, as: UTF8.self) }
            result += buffer[..<n]
        }
    }

    func names(_ path: String, _ credentials: Credentials = root) throws -> [String] {
        let fd = try open(path.bytes, flags: OpenFlags.directory.rawValue, mode: 0, credentials)
        defer { try? close(fd, credentials) }
        var names: [String] = []
        _ = try readDirectory(fd, credentials) { names.append($0.name.description); return true }
        return names.filter { $0 != "." && $0 != ".." }.sorted()
    }
}

/// A temporary directory removed at the end of the test.
func makeTemporaryDirectory(_ test: XCTestCase) -> String {
    var template = Array("/tmp/vfs-test-XXXXXX".utf8CString)
    let path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    test.addTeardownBlock { _ = ChildProcess.run("/bin/rm", ["-rf", path]) }
    return path
}

/// An ext2 image made by the real mke2fs: `blocks` 1 KiB blocks; `type` "ext3" adds a journal.
func makeExt2Image(_ test: XCTestCase, blocks: Int = 8192, blockSize: Int = 1024, type: String = "ext2") throws -> String {
    guard let mke2fs = ChildProcess.systemTool("mke2fs") else { throw XCTSkip("mke2fs not installed") }
    let path = makeTemporaryDirectory(test) + "/fs.img"
    let (status, output) = ChildProcess.run(mke2fs, ["-q", "-F", "-t", type, "-b", String(blockSize), path, String(blocks)])
    guard status == 0 else { throw XCTSkip("mke2fs failed: \(output)") }
    return path
}

/// Ext2.mount on `store`, or a skip while the ext2 library is not there yet (branch ext2 not
/// merged: its mount throws ENOTSUP).
func mountExt2OrSkip(_ store: BlockStore, readOnly: Bool = false) throws -> FileSystem {
    do {
        return try Ext2Mount.mount(store, readOnly: readOnly)
    } catch let error as FSError where error.errno == .notSupported {
        throw XCTSkip("ext2 is not built on this branch yet: \(error)")
    }
}

import Ext2
enum Ext2Mount {
    static func mount(_ store: BlockStore, readOnly: Bool) throws -> FileSystem {
        try Ext2.mount(store: store, readOnly: readOnly, log: { _ in })
    }
}
