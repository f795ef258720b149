import PlatformTestSupport
import IPC
import Storage
import SystemPackage
import VFS
import VFSCore
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// The block backends: storage_server's protocol (in-process BlockServer over a RAM device)
/// and ext2 images made by mke2fs.
final class BackendTests: XCTestCase {
    private func serveDevice(_ device: MemoryBlockDevice) throws -> (IPCServer, BlockClient) {
        let directory = makeTemporaryDirectory(self)
        let endpoint = try BlockServer(device: device).makeIPCServer(name: "storage", directory: directory)
        endpoint.start()
        addTeardownBlock { endpoint.stop() }
        return (endpoint, try BlockClient.connect(name: "storage", directory: directory))
    }

    func testStorageBlockStoreRoundTripsSmallAndLargeTransfers() throws {
        let device = MemoryBlockDevice(namespaces: [1: BlockGeometry(blockSize: 512, blockCount: 8192)])
        let (_, client) = try serveDevice(device)
        let store = try StorageBlockStore(client: client, nsid: 1)
        XCTAssertEqual(store.sectorSize, 512)
        XCTAssertEqual(store.capacity, 8192 * 512)
        var generator = SystemRandomNumberGenerator()
        for count in [512, 64 * 1024, 64 * 1024 + 512, 1 << 20, (1 << 20) + 3 * 512 + (1 << 20)] {
            let data = (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
            let offset = UInt64(Int.random(in: 0..<1024, using: &generator) * 512)
            try data.withUnsafeBytes { try store.write(at: offset, from: $0) }
            var back = [UInt8](repeating: 0, count: count)
            try back.withUnsafeMutableBytes { try store.read(at: offset, into: $0) }
            XCTAssertEqual(back, data, "\(count) bytes at \(offset)")
            var direct = [UInt8](repeating: 0, count: count)
            try direct.withUnsafeMutableBytes { try device.read(nsid: 1, lba: offset / 512, blocks: count / 512, into: $0) }
            XCTAssertEqual(direct, data, "the device holds what was written")
        }
        try store.flush()
        XCTAssertEqual(device.flushes, 1)
        XCTAssertThrowsError(try [UInt8](repeating: 0, count: 512).withUnsafeBytes { try store.write(at: store.capacity, from: $0) })
        XCTAssertThrowsError(try StorageBlockStore(client: client, nsid: 9)) { error in
            XCTAssertEqual((error as? FSError)?.errno, .noSuchFileOrDirectory)
        }
    }

    /// An mke2fs image on the RAM device, the VFS on StorageBlockStore, files written and read
    /// back, a clean unmount, then e2fsck -fn on the device's bytes.
    func testExt2OnTheStorageServerPassesE2fsck() throws {
        let imagePath = try makeExt2Image(self, blocks: 8192)
        let image = try ImageFileStore(path: FilePath(imagePath), readOnly: true)
        var bytes = [UInt8](repeating: 0, count: Int(image.capacity))
        try bytes.withUnsafeMutableBytes { try image.read(at: 0, into: $0) }
        let blocks = bytes.count / 512
        let device = MemoryBlockDevice(namespaces: [1: BlockGeometry(blockSize: 512, blockCount: UInt64(blocks))])
        try bytes.withUnsafeBytes { try device.write(nsid: 1, lba: 0, blocks: blocks, from: $0) }
        let (_, client) = try serveDevice(device)
        let store = try StorageBlockStore(client: client, nsid: 1)
        let cache = PageCache(backing: store, pageCount: 256)
        let fs = try mountExt2OrSkip(cache)
        let service = VFSService()
        try service.mount(fs, at: "/", cache: cache, source: "storage")
        try service.mkdir("/data".bytes, mode: 0o755, root)
        var expected: [String: String] = [:]
        for index in 0..<20 {
            let text = String(repeating: "file \(index) ", count: index * 300 + 1)
            try service.writeFile("/data/f\(index)", text)
            expected["/data/f\(index)"] = text
        }
        try service.rename("/data/f0".bytes, to: "/data/renamed".bytes, root)
        expected["/data/renamed"] = expected.removeValue(forKey: "/data/f0")
        try service.unlink("/data/f1".bytes, root)
        expected["/data/f1"] = nil
        for (path, text) in expected { XCTAssertEqual(try service.readFile(path), text, path) }
        XCTAssertEqual(service.unmountAll(), [])

        var after = [UInt8](repeating: 0, count: bytes.count)
        try after.withUnsafeMutableBytes { try device.read(nsid: 1, lba: 0, blocks: blocks, into: $0) }
        let checked = try ImageFileStore.create(makeTemporaryDirectory(self) + "/device.img", after)
        guard let e2fsck = ChildProcess.systemTool("e2fsck") else { throw XCTSkip("e2fsck not installed") }
        let (status, output) = ChildProcess.run(e2fsck, ["-fn", checked])
        XCTAssertEqual(status, 0, output)
    }

    /// The VFS on an mke2fs image through the page cache: data reaches the image file only on
    /// fsync or unmount, and the result passes e2fsck.
    func testExt2ImageWriteBackAndE2fsck() throws {
        let imagePath = try makeExt2Image(self, blocks: 8192)
        let image = try ImageFileStore(path: FilePath(imagePath))
        let cache = PageCache(backing: image, pageCount: 512)
        let fs = try mountExt2OrSkip(cache)
        let service = VFSService()
        try service.mount(fs, at: "/", cache: cache, source: "image")
        try service.mkdir("/d".bytes, mode: 0o777, root)
        let marker = "WRITE-BACK-MARKER-" + String(repeating: "z", count: 3000)
        let fd = try service.open("/d/f".bytes, flags: OpenFlags([.create, .writeOnly]).rawValue, mode: 0o644, root)
        _ = try marker.bytes.withUnsafeBytes { try service.write(fd, from: $0, root) }
        XCTAssertFalse(ChildProcess.run("/bin/grep", ["-c", "WRITE-BACK-MARKER", imagePath]).1.hasPrefix("1"), "not on disk before fsync")
        try service.fsync(fd, root)
        XCTAssertTrue(ChildProcess.run("/bin/grep", ["-c", "WRITE-BACK-MARKER", imagePath]).1.hasPrefix("1"), "on disk after fsync")
        try service.close(fd, root)
        // Permission and lifetime rules on the real format too.
        try service.writeFile("/d/private", "p", alice, mode: 0o600)
        XCTAssertErrno(.permissionDenied, try service.readFile("/d/private", bob))
        let open = try service.open("/d/f".bytes, flags: 0, mode: 0, root)
        try service.unlink("/d/f".bytes, root)
        XCTAssertEqual(try service.readAll(open).count, marker.count)
        try service.close(open, root)
        XCTAssertEqual(service.unmountAll(), [])
        guard let e2fsck = ChildProcess.systemTool("e2fsck") else { throw XCTSkip("e2fsck not installed") }
        let (status, output) = ChildProcess.run(e2fsck, ["-fn", imagePath])
        XCTAssertEqual(status, 0, output)
    }
}

extension BackendTests {
    /// Write-back observed on a MemoryBlockStore under the page cache: file data reaches the
    /// store on the periodic tick (not before), and the rest on unmount.
    func testPeriodicWriteBackAndUnmountReachTheStore() throws {
        let imagePath = try makeExt2Image(self, blocks: 4096)
        let image = try ImageFileStore(path: FilePath(imagePath), readOnly: true)
        var bytes = [UInt8](repeating: 0, count: Int(image.capacity))
        try bytes.withUnsafeMutableBytes { try image.read(at: 0, into: $0) }
        let backing = MemoryBlockStore(bytes: bytes)
        let cache = PageCache(backing: backing, pageCount: 256)
        let service = VFSService()
        try service.mount(try mountExt2OrSkip(cache), at: "/", cache: cache, source: "memory")
        func onStore(_ marker: String) -> Bool {
            let needle = Array(marker.utf8)
            return backing.bytes.withUnsafeBufferPointer { haystack in
                (0...(haystack.count - needle.count)).contains { start in
                    haystack[start] == needle[0] && Array(haystack[start..<(start + needle.count)]) == needle
                }
            }
        }
        try service.writeFile("/timer", "TIMER-MARKER-" + String(repeating: "t", count: 2000))
        XCTAssertFalse(onStore("TIMER-MARKER-"), "still only in the page cache")
        XCTAssertGreaterThan(cache.dirtyPageCount, 0)
        service.tick()
        XCTAssertTrue(onStore("TIMER-MARKER-"), "the periodic write-back wrote it")
        XCTAssertEqual(cache.dirtyPageCount, 0)
        let flushes = backing.flushCount
        service.tick()
        XCTAssertEqual(backing.flushCount, flushes, "nothing written since: no write-back, no flush")

        try service.writeFile("/unmount", "UNMOUNT-MARKER-" + String(repeating: "u", count: 2000))
        XCTAssertFalse(onStore("UNMOUNT-MARKER-"))
        XCTAssertEqual(service.unmountAll(), [])
        XCTAssertTrue(onStore("UNMOUNT-MARKER-"), "unmount writes everything back")
        guard let e2fsck = ChildProcess.systemTool("e2fsck") else { throw XCTSkip("e2fsck not installed") }
        let checked = try ImageFileStore.create(makeTemporaryDirectory(self) + "/after.img", backing.bytes)
        let (status, output) = ChildProcess.run(e2fsck, ["-fn", checked])
        XCTAssertEqual(status, 0, output)
    }
}

extension ImageFileStore {
    /// Writes `bytes` to a new file at `path` (for handing device contents to e2fsck).
    static func create(_ path: String, _ bytes: [UInt8]) throws -> String {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { throw FSError(.ioError, "cannot create \(path)") }
        defer { close(fd) }
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        guard written == bytes.count else { throw FSError(.ioError, "short write to \(path)") }
        return path
    }
}
