import Foundation
import IPC
import XCTest
@testable import Storage
#if canImport(Glibc)
import Glibc
#endif

/// The block server over a real IPCServer / IPCClient in a temporary runtime directory, with a
/// RAM block device.
final class BlockServerTests: XCTestCase {
    private var directory = ""
    private var device: MemoryBlockDevice!
    private var server: IPCServer!
    private var logged: LogBox!

    final class LogBox: @unchecked Sendable {
        private let lock = NSLock()
        private var lines: [String] = []
        func append(_ line: String) { lock.lock(); lines.append(line); lock.unlock() }
        var all: [String] { lock.lock(); defer { lock.unlock() }; return lines }
    }

    override func setUpWithError() throws {
        var template = Array("/tmp/limitless-storage-XXXXXX".utf8CString)
        directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        device = MemoryBlockDevice(namespaces: [
            1: BlockGeometry(blockSize: 512, blockCount: 8192),
            2: BlockGeometry(blockSize: 4096, blockCount: 1024),
        ])
    }

    func startServer(policy: BlockAccessPolicy = .acceptAll) throws {
        let box = LogBox()
        logged = box
        let block = BlockServer(device: device, policy: policy) { box.append($0) }
        server = try block.makeIPCServer(name: "storage", directory: directory)
        server.start()
    }

    override func tearDown() {
        server?.stop()
        server = nil
        device = nil
        _ = rmdir(directory)
    }

    static func pattern(_ count: Int, seed: UInt8) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed) &+ ($0 >> 9)) }
    }

    func testGeometryOpenAndErrors() throws {
        try startServer()
        let client = try BlockClient.connect(name: "storage", directory: directory)
        XCTAssertEqual(try client.geometry(1), .success(BlockGeometry(blockSize: 512, blockCount: 8192)))
        XCTAssertEqual(try client.geometry(2), .success(BlockGeometry(blockSize: 4096, blockCount: 1024)))
        XCTAssertEqual(try client.openNamespace(2), .success(BlockGeometry(blockSize: 4096, blockCount: 1024)))
        XCTAssertEqual(try client.openNamespace(3), .failure(.ENOENT))
        XCTAssertEqual(try client.read(1, lba: 8192, blocks: 1), .failure(.ERANGE))
        XCTAssertEqual(try client.read(2, lba: 1023, blocks: 2), .failure(.ERANGE))
        XCTAssertEqual(try client.read(2, lba: 0, blocks: 0), .failure(.EINVAL))
        XCTAssertEqual(try client.read(2, lba: 0, blocks: 17), .failure(.EMSGSIZE))
        XCTAssertEqual(try client.flush(1), .ok)
        XCTAssertEqual(device.flushes, 1)
    }

    func testInlineWriteReadBack() throws {
        try startServer()
        let client = try BlockClient.connect(name: "storage", directory: directory)
        let big = Self.pattern(64 * 1024, seed: 7)
        XCTAssertEqual(try big.withUnsafeBytes { try client.write(2, lba: 100, blocks: 16, data: $0) }, .ok)
        XCTAssertEqual(try client.read(2, lba: 100, blocks: 16), .success(big))
        let small = Self.pattern(512, seed: 9)
        XCTAssertEqual(try small.withUnsafeBytes { try client.write(1, lba: 8191, blocks: 1, data: $0) }, .ok)
        XCTAssertEqual(try client.read(1, lba: 8191, blocks: 1), .success(small))
        // Wrong data size and an out-of-range write change nothing.
        XCTAssertEqual(try small.withUnsafeBytes { try client.write(1, lba: 8191, blocks: 2, data: $0) }, .ERANGE)
        XCTAssertEqual(try small.withUnsafeBytes { try client.write(2, lba: 0, blocks: 1, data: $0) }, .EINVAL)
        // Trim zeroes (the RAM device's deallocated blocks read as zeroes).
        XCTAssertEqual(try client.trim(2, lba: 100, blocks: 8), .ok)
        XCTAssertEqual(try client.read(2, lba: 100, blocks: 16), .success([UInt8](repeating: 0, count: 32 * 1024) + Array(big[(32 * 1024)...])))
    }

    func testSharedMemoryReadAndWrite() throws {
        try startServer()
        let client = try BlockClient.connect(name: "storage", directory: directory)
        let size = 256 * 1024
        let region = try SharedMemory(size: size)
        let handle = try client.connection.share(region)
        let data = Self.pattern(size, seed: 3)
        data.withUnsafeBytes { UnsafeMutableRawPointer(mutating: region.bytes.baseAddress!).copyMemory(from: $0.baseAddress!, byteCount: size) }
        XCTAssertEqual(try client.write(2, lba: 10, blocks: 64, sharedHandle: handle, count: UInt32(size)), .ok)
        UnsafeMutableRawPointer(mutating: region.bytes.baseAddress!).initializeMemory(as: UInt8.self, repeating: 0, count: size)
        XCTAssertEqual(try client.read(2, lba: 10, blocks: 64, sharedHandle: handle, count: UInt32(size)), .ok)
        XCTAssertEqual(Array(region.bytes), data)
        // Inline read of the same range's start agrees.
        XCTAssertEqual(try client.read(2, lba: 10, blocks: 1), .success(Array(data[..<4096])))
        // A region too small for the read.
        XCTAssertEqual(try client.read(2, lba: 10, blocks: 65, sharedHandle: handle, count: UInt32(size)), .EINVAL)
        // A write-sealed region can be written from but not read into.
        let sealedHandle = try data.withUnsafeBytes { bytes in
            let sealed = try SharedMemory(sealedCopyOf: UnsafeRawBufferPointer(rebasing: bytes[..<4096]))
            return try client.connection.share(sealed)  // the server keeps its own descriptor
        }
        XCTAssertEqual(try client.write(2, lba: 0, blocks: 1, sharedHandle: sealedHandle, count: 4096), .ok)
        XCTAssertEqual(try client.read(2, lba: 0, blocks: 1, sharedHandle: sealedHandle, count: 4096), .EINVAL)
        XCTAssertEqual(try client.read(2, lba: 0, blocks: 1), .success(Array(data[..<4096])))
    }

    func testDeviceErrorIsEIOAndLogged() throws {
        try startServer()
        let client = try BlockClient.connect(name: "storage", directory: directory)
        device.failNext = "NVMe status sct 2 sc 0x81 (unrecovered read error)"
        XCTAssertEqual(try client.read(2, lba: 0, blocks: 1), .failure(.EIO))
        XCTAssertTrue(logged.all.contains { $0.contains("0x81") }, "\(logged.all)")
        XCTAssertEqual(try client.read(2, lba: 0, blocks: 1).map(\.count), .success(4096))
    }

    func testAccessPolicyPerUID() throws {
        let me = getuid()
        try startServer(policy: BlockAccessPolicy(readers: .uids([me]), writers: .uids([me &+ 1])))
        let client = try BlockClient.connect(name: "storage", directory: directory)
        XCTAssertEqual(try client.read(2, lba: 0, blocks: 1).map(\.count), .success(4096))
        let block = [UInt8](repeating: 1, count: 4096)
        XCTAssertEqual(try block.withUnsafeBytes { try client.write(2, lba: 0, blocks: 1, data: $0) }, .EACCES)
        XCTAssertEqual(try client.flush(2), .EACCES)
    }
}
