import PlatformTestSupport
import Foundation
import SystemPackage
import VFSCore
import XCTest
@testable import Ext2

/// Output and exit status of a tool run.
struct ToolResult {
    var status: Int32
    var output: String
}

/// Runs a program (e2fsprogs here) and collects stdout and stderr together.
func runTool(_ path: String, _ arguments: [String]) throws -> ToolResult {
    let (status, output) = try ChildProcess.output(path, arguments)
    return ToolResult(status: status, output: output)
}

/// A test case with a temporary directory, images made by the real mke2fs, and checks by the
/// real e2fsck and debugfs.
class Ext2TestCase: XCTestCase {
    var directory = ""
    var logLines: [String] = []

    override func setUpWithError() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/sbin/mke2fs") else {
            throw XCTSkip("e2fsprogs (mke2fs) is not installed")
        }
        directory = NSTemporaryDirectory() + "ext2tests-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        logLines = []
    }

    override func tearDownWithError() throws {
        if !directory.isEmpty { try? FileManager.default.removeItem(atPath: directory) }
    }

    /// A fresh ext2 image of `kib` KiB with `blockSize`-byte blocks (mke2fs defaults otherwise);
    /// `type` "ext3" adds mke2fs's default journal.
    func makeImage(_ name: String = "fs.img", blockSize: Int = 1024, kib: Int = 8192, options: [String] = [],
                   populate: String? = nil, type: String = "ext2") throws -> String {
        let path = directory + "/" + name
        var arguments = ["-q", "-t", type, "-b", "\(blockSize)", "-F"] + options
        if let populate { arguments += ["-d", populate] }
        arguments += [path, "\(kib)k"]
        let result = try runTool("/usr/sbin/mke2fs", arguments)
        XCTAssertEqual(result.status, 0, "mke2fs failed: \(result.output)")
        return path
    }

    func mount(_ path: String, readOnly: Bool = false, writeBackLog: BlockStore? = nil) throws -> Ext2FileSystem {
        let store = try ImageFileStore(path: FilePath(path), readOnly: readOnly)
        let fs = try Ext2.mount(store: store, readOnly: readOnly, writeBackLog: writeBackLog) { [weak self] line in self?.logLines.append(line) }
        return try XCTUnwrap(fs as? Ext2FileSystem)
    }

    /// Flips 1 to 8 random bytes of `bytes` in the 1 KiB blocks `blocks`, mostly in a block's
    /// first 64 bytes (headers and tags, where a flip matters most).
    func flipRandomBytes(_ bytes: inout [UInt8], blocks: [Int], _ random: inout SplitMix) {
        for _ in 0..<(1 + Int(random.next() % 8)) {
            let block = blocks[Int(random.next() % UInt64(blocks.count))]
            let offset = random.next() % 4 == 0 ? Int(random.next() % 1024) : Int(random.next() % 64)
            bytes[block * 1024 + offset] ^= UInt8(truncatingIfNeeded: random.next() | 1)
        }
    }

    /// Mounts a damaged image read-write, lists the root and unmounts: whether it mounted
    /// read-only, nil when the mount failed (with an FSError that must say why).
    func mountDamaged(_ image: [UInt8], writeBackLog: BlockStore? = nil) -> Bool? {
        do {
            let fs = try Ext2.mount(store: MemoryBlockStore(bytes: image), readOnly: false, writeBackLog: writeBackLog) { _ in }
            let readOnly = (fs as? Ext2FileSystem)?.isReadOnly ?? false
            _ = try? fs.entries(fs.rootInode)
            try? fs.unmount()
            return readOnly
        } catch {
            // Ext2.mount throws FSError only (typed throws); a refusal must say why.
            XCTAssertFalse(error.detail.isEmpty, "a refusal says why")
            return nil
        }
    }

    /// e2fsck -fn must find nothing to fix (exit status 0).
    func assertClean(_ path: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let result = try runTool("/usr/sbin/e2fsck", ["-fn", path])
        XCTAssertEqual(result.status, 0, "e2fsck -fn found problems:\n\(result.output)", file: file, line: line)
    }

    func debugfs(_ path: String, _ command: String) throws -> String {
        let result = try runTool("/usr/sbin/debugfs", ["-R", command, path])
        return result.output
    }

    /// The file's bytes as debugfs reads them (dump to a file, so binary data survives).
    func debugfsContents(_ path: String, _ file: String) throws -> [UInt8] {
        let out = directory + "/dump-\(UInt32.random(in: 0...UInt32.max))"
        _ = try runTool("/usr/sbin/debugfs", ["-R", "dump \(file) \(out)", path])
        defer { try? FileManager.default.removeItem(atPath: out) }
        return try [UInt8](Data(contentsOf: URL(fileURLWithPath: out)))
    }

    /// A field of `debugfs stat` output, e.g. "Links", "Size", "User", "Mode".
    func statField(_ stat: String, _ field: String) -> String? {
        guard let range = stat.range(of: field + ":") else { return nil }
        let rest = stat[range.upperBound...].drop { $0 == " " }
        return String(rest.prefix { $0 != " " && $0 != "\n" && $0 != "\t" })
    }

    /// The seconds of a time in `debugfs stat` output ("mtime: 0x5f5e1000:00000000 -- ...").
    func statTime(_ stat: String, _ field: String) -> Int64? {
        guard let range = stat.range(of: " \(field): 0x") else { return nil }
        let hex = stat[range.upperBound...].prefix { $0.isHexDigit }
        return Int64(hex, radix: 16)
    }

    func dumpe2fsField(_ path: String, _ field: String) throws -> UInt64? {
        let result = try runTool("/usr/sbin/dumpe2fs", ["-h", path])
        for line in result.output.split(separator: "\n") where line.hasPrefix(field + ":") {
            return UInt64(line.dropFirst(field.count + 1).trimmingCharacters(in: .whitespaces))
        }
        return nil
    }
}

/// Path walking and whole-file helpers over a FileSystem.
extension FileSystem {
    func resolve(_ path: String) throws(FSError) -> InodeNumber {
        var inode = rootInode
        for part in path.split(separator: "/") {
            inode = try lookup(try FileName(String(part)), in: inode)
        }
        return inode
    }

    func readAll(_ inode: InodeNumber) throws(FSError) -> [UInt8] {
        let size = Int(try attributes(of: inode).size)
        var bytes = [UInt8](repeating: 0, count: size)
        var failure: FSError? = nil
        var got = 0
        bytes.withUnsafeMutableBytes { raw in
            do throws(FSError) { got = try read(inode, at: 0, into: raw) } catch { failure = error }
        }
        if let failure { throw failure }
        return Array(bytes.prefix(got))
    }

    @discardableResult
    func write(_ inode: InodeNumber, at offset: UInt64, _ bytes: [UInt8]) throws(FSError) -> Int {
        var failure: FSError? = nil
        var written = 0
        bytes.withUnsafeBytes { raw in
            do throws(FSError) { written = try write(inode, at: offset, from: raw) } catch { failure = error }
        }
        if let failure { throw failure }
        return written
    }

    func read(_ inode: InodeNumber, at offset: UInt64, count: Int) throws(FSError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0xAA, count: count)
        var failure: FSError? = nil
        var got = 0
        bytes.withUnsafeMutableBytes { raw in
            do throws(FSError) { got = try read(inode, at: offset, into: raw) } catch { failure = error }
        }
        if let failure { throw failure }
        return Array(bytes.prefix(got))
    }

    func entries(_ directory: InodeNumber) throws(FSError) -> [DirectoryEntry] {
        var list: [DirectoryEntry] = []
        try readDirectory(directory, from: 0) { entry, _ in
            list.append(entry)
            return true
        }
        return list
    }
}

func pattern(_ count: Int, seed: UInt8) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed) &+ $0 >> 8) }
}

/// Asserts that `body` throws an FSError with `errno`.
func XCTAssertFSError<T>(_ errno: Errno, _ body: @autoclosure () throws -> T, _ message: String = "",
                         file: StaticString = #filePath, line: UInt = #line) {
    do {
        _ = try body()
        XCTFail("expected \(errno), got success. \(message)", file: file, line: line)
    } catch let error as FSError {
        XCTAssertEqual(error.errno, errno, "wrong errno: \(error). \(message)", file: file, line: line)
    } catch {
        XCTFail("unexpected error \(error)", file: file, line: line)
    }
}
