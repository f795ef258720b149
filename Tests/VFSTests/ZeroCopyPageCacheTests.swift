import PlatformTestSupport
import Dispatch
import IPC
import Storage
import SystemPackage
import VFS
import VFSCore
import XCTest

/// The page cache's pool registered with storage_server: misses, read-ahead, write-back and
/// evictions are block requests naming pool offsets (zero copy), on an in-process BlockServer
/// over a RAM device whose fake IOMMU only lets "DMA" reach mapped client memory.
final class ZeroCopyPageCacheTests: XCTestCase {

    /// A block device without DMA to client memory (like UIO): the server refuses registration.
    private final class CopyOnlyDevice: BlockDevice {
        let inner: MemoryBlockDevice
        init(_ inner: MemoryBlockDevice) { self.inner = inner }
        var namespaceIDs: [UInt32] { inner.namespaceIDs }
        func geometry(_ nsid: UInt32) -> BlockGeometry? { inner.geometry(nsid) }
        func read(nsid: UInt32, lba: UInt64, blocks: Int, into buffer: UnsafeMutableRawBufferPointer) throws(BlockDeviceError) {
            try inner.read(nsid: nsid, lba: lba, blocks: blocks, into: buffer)
        }
        func write(nsid: UInt32, lba: UInt64, blocks: Int, from buffer: UnsafeRawBufferPointer) throws(BlockDeviceError) {
            try inner.write(nsid: nsid, lba: lba, blocks: blocks, from: buffer)
        }
        func flush(nsid: UInt32) throws(BlockDeviceError) { try inner.flush(nsid: nsid) }
        func trim(nsid: UInt32, lba: UInt64, blocks: Int) throws(BlockDeviceError) { try inner.trim(nsid: nsid, lba: lba, blocks: blocks) }
    }

    private final class ServerBox: @unchecked Sendable {
        var servers: [(BlockServer, IPCServer)] = []
        let lock = NSLock()
        func add(_ server: BlockServer, _ endpoint: IPCServer) { lock.lock(); servers.append((server, endpoint)); lock.unlock() }
        func stopAll() { lock.lock(); servers.forEach { $0.1.stop() }; lock.unlock() }
        var last: BlockServer? { lock.lock(); defer { lock.unlock() }; return servers.last?.0 }
        var count: Int { lock.lock(); defer { lock.unlock() }; return servers.count }
    }

    private struct Restart: @unchecked Sendable {
        let device: BlockDevice
        let directory: String
        let box: ServerBox
    }

    private static func serve(_ device: BlockDevice, _ directory: String, into box: ServerBox) throws {
        let server = BlockServer(device: device)
        let endpoint = try server.makeIPCServer(name: "storage", directory: directory)
        endpoint.start()
        box.add(server, endpoint)
    }

    /// An mke2fs image copied onto a RAM device's namespace 1.
    private func deviceWithExt2(blocks: Int = 8192) throws -> (MemoryBlockDevice, Int) {
        let imagePath = try makeExt2Image(self, blocks: blocks)
        let image = try ImageFileStore(path: FilePath(imagePath), readOnly: true)
        var bytes = [UInt8](repeating: 0, count: Int(image.capacity))
        try bytes.withUnsafeMutableBytes { try image.read(at: 0, into: $0) }
        let sectors = bytes.count / 512
        let device = MemoryBlockDevice(namespaces: [1: BlockGeometry(blockSize: 512, blockCount: UInt64(sectors))])
        try bytes.withUnsafeBytes { try device.write(nsid: 1, lba: 0, blocks: sectors, from: $0) }
        return (device, sectors)
    }

    private func e2fsck(_ device: MemoryBlockDevice, sectors: Int) throws {
        var after = [UInt8](repeating: 0, count: sectors * 512)
        try after.withUnsafeMutableBytes { try device.read(nsid: 1, lba: 0, blocks: sectors, into: $0) }
        let checked = try ImageFileStore.create(makeTemporaryDirectory(self) + "/device.img", after)
        guard let e2fsck = ChildProcess.systemTool("e2fsck") else { throw XCTSkip("e2fsck not installed") }
        let (status, output) = ChildProcess.run(e2fsck, ["-fn", checked])
        XCTAssertEqual(status, 0, output)
    }

    /// Random whole-file writes, overwrites, appends at odd offsets and reads through ext2 on a
    /// small cache (evictions, read-ahead, write-back all happen), then e2fsck on the device.
    /// Every page I/O named the registered pool and went zero copy; nothing inline, no copy.
    func testExt2ThroughTheRegisteredPoolIsCorrectAndZeroCopy() throws {
        let (device, sectors) = try deviceWithExt2()
        let directory = makeTemporaryDirectory(self)
        let box = ServerBox()
        addTeardownBlock { box.stopAll() }
        try Self.serve(device, directory, into: box)
        let store = try StorageBlockStore(client: try BlockClient.connect(name: "storage", directory: directory), nsid: 1)
        let cache = PageCache(backing: store, pageCount: 64)
        XCTAssertTrue(cache.usesDirectPageIO)
        XCTAssertTrue(store.isPagePoolRegistered, store.pagePoolDescription)
        XCTAssertEqual(device.clientMappings.count, 1, "the pool is mapped for the device once")
        XCTAssertFalse(PageCache(backing: store, pageCount: 8).usesDirectPageIO, "a store provides one pool")

        let service = VFSService()
        try service.mount(try mountExt2OrSkip(cache), at: "/", cache: cache, source: "storage")
        try service.mkdir("/r".bytes, mode: 0o755, root)
        var generator = SplitMix(state: 0x5EED_0006)
        var expected: [String: [UInt8]] = [:]
        func randomBytes(_ count: Int) -> [UInt8] { (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) } }
        for step in 0..<120 {
            let name = "/r/f\(Int.random(in: 0..<12, using: &generator))"
            switch Int.random(in: 0..<4, using: &generator) {
            case 0, 1:  // (over)write at a random offset, possibly extending, possibly page-unaligned
                let old = expected[name] ?? []
                let offset = old.isEmpty ? 0 : Int.random(in: 0...old.count, using: &generator)
                let data = randomBytes(Int.random(in: 1...(step % 10 == 0 ? 300_000 : 20_000), using: &generator))
                let fd = try service.open(name.bytes, flags: OpenFlags([.create, .writeOnly]).rawValue, mode: 0o644, root)
                var written = 0
                while written < data.count {
                    written += try data.withUnsafeBytes {
                        try service.write(fd, from: UnsafeRawBufferPointer(rebasing: $0[written...]), at: UInt64(offset + written), root)
                    }
                }
                try service.close(fd, root)
                var new = old
                if new.count < offset + data.count { new += [UInt8](repeating: 0, count: offset + data.count - new.count) }
                new.replaceSubrange(offset..<(offset + data.count), with: data)
                expected[name] = new
            case 2:  // read the whole file back
                guard let want = expected[name] else { continue }
                XCTAssertEqual(try readBytes(service, name, count: want.count + 10), want, "step \(step) \(name)")
            default:  // cold cache: the next reads come from the device (read-ahead included)
                service.tick()
                cache.dropCleanPages()
            }
        }
        for (name, want) in expected { XCTAssertEqual(try readBytes(service, name, count: want.count + 10), want, name) }
        XCTAssertEqual(service.unmountAll(), [])
        try e2fsck(device, sectors: sectors)

        XCTAssertGreaterThan(cache.evictions, 0)
        XCTAssertGreaterThan(cache.pagesReadAhead, 0)
        XCTAssertGreaterThan(cache.pagesWrittenBack, 0)
        // Every backing request of the cache was page I/O on the pool, and zero copy.
        XCTAssertEqual(store.pageRequests, cache.backingReads + cache.backingWrites)
        XCTAssertGreaterThan(store.pageRequests, 0)
        XCTAssertEqual(store.zeroCopyReplies, store.pageRequests, "each page request's reply says zero copy")
        XCTAssertEqual(box.last?.zeroCopyTransfers, UInt64(store.pageRequests), "the server moved each one straight to the pool")
        XCTAssertEqual(device.directTransfers, store.pageRequests, "the device touched only mapped pool memory")
        XCTAssertEqual(store.inlineWrites, 0, "no write-back went inline")
        XCTAssertEqual(store.bytesCopied, 0, "nothing copied through the transfer region")
    }

    private func readBytes(_ service: VFSService, _ path: String, count: Int) throws -> [UInt8] {
        let fd = try service.open(path.bytes, flags: 0, mode: 0, root)
        defer { try? service.close(fd, root) }
        var buffer = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = try buffer.withUnsafeMutableBytes { try service.read(fd, into: UnsafeMutableRawBufferPointer(rebasing: $0[done...]), root) }
            if n == 0 { break }
            done += n
        }
        return Array(buffer[..<done])
    }

    /// Page-level random I/O straight on the cache (scattered slots split runs; evictions of
    /// dirty pages; write-back; dropped pages re-read) against a reference array and, at the
    /// end, the device's bytes.
    func testRandomPageIOMatchesAReference() throws {
        let sectors = 4096  // 2 MiB
        let device = MemoryBlockDevice(namespaces: [1: BlockGeometry(blockSize: 512, blockCount: UInt64(sectors))])
        let directory = makeTemporaryDirectory(self)
        let box = ServerBox()
        addTeardownBlock { box.stopAll() }
        try Self.serve(device, directory, into: box)
        let store = try StorageBlockStore(client: try BlockClient.connect(name: "storage", directory: directory), nsid: 1)
        let cache = PageCache(backing: store, pageCount: 48, readAheadPages: 8)
        XCTAssertTrue(cache.usesDirectPageIO)
        var reference = [UInt8](repeating: 0, count: sectors * 512)
        var generator = SplitMix(state: 42)
        for step in 0..<1500 {
            let offset = Int.random(in: 0..<(sectors - 1), using: &generator) * 512
            let count = min(Int.random(in: 1...40, using: &generator) * 512, reference.count - offset)
            switch Int.random(in: 0..<10, using: &generator) {
            case 0..<4:
                let data = (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
                try data.withUnsafeBytes { try cache.write(at: UInt64(offset), from: $0) }
                reference.replaceSubrange(offset..<(offset + count), with: data)
            case 4..<8:
                var back = [UInt8](repeating: 0, count: count)
                try back.withUnsafeMutableBytes { try cache.read(at: UInt64(offset), into: $0) }
                XCTAssertEqual(back, Array(reference[offset..<(offset + count)]), "step \(step): \(count) at \(offset)")
            case 8:
                try cache.writeBack()
            default:
                cache.dropCleanPages()
            }
            // Sequential sweeps now and then: long read-ahead runs into whatever slots are free.
            if step % 300 == 299 {
                var back = [UInt8](repeating: 0, count: 64 * 1024)
                for start in stride(from: 0, to: reference.count, by: back.count) {
                    try back.withUnsafeMutableBytes { try cache.read(at: UInt64(start), into: $0) }
                    XCTAssertEqual(back, Array(reference[start..<(start + back.count)]), "sweep at \(start)")
                }
            }
        }
        try cache.flush()
        var onDevice = [UInt8](repeating: 0, count: reference.count)
        try onDevice.withUnsafeMutableBytes { try device.read(nsid: 1, lba: 0, blocks: sectors, into: $0) }
        XCTAssertTrue(onDevice == reference, "the device holds what was written")
        XCTAssertGreaterThan(cache.pagesReadAhead, 0)
        XCTAssertGreaterThan(cache.evictions, 0)
        XCTAssertEqual(store.zeroCopyReplies, store.pageRequests)
        XCTAssertEqual(device.directTransfers, store.pageRequests)
        XCTAssertEqual(store.inlineWrites, 0)
        XCTAssertEqual(store.bytesCopied, 0)
    }

    /// A device the server cannot map client memory for (UIO-like): registration is refused
    /// (ENOTSUP), the pool still lives in the shared region and page I/O still names it; the
    /// server copies, this side does not.
    func testARefusedRegistrationStillUsesThePoolWithoutClientCopies() throws {
        let sectors = 2048
        let inner = MemoryBlockDevice(namespaces: [1: BlockGeometry(blockSize: 512, blockCount: UInt64(sectors))])
        let directory = makeTemporaryDirectory(self)
        let box = ServerBox()
        addTeardownBlock { box.stopAll() }
        try Self.serve(CopyOnlyDevice(inner), directory, into: box)
        let store = try StorageBlockStore(client: try BlockClient.connect(name: "storage", directory: directory), nsid: 1)
        let cache = PageCache(backing: store, pageCount: 16)
        XCTAssertTrue(cache.usesDirectPageIO)
        XCTAssertFalse(store.isPagePoolRegistered)
        XCTAssertTrue(store.pagePoolDescription.contains("not registered"), store.pagePoolDescription)
        let data = (0..<(200 * 1024)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        try data.withUnsafeBytes { try cache.write(at: 4096, from: $0) }
        try cache.flush()
        cache.dropCleanPages()
        var back = [UInt8](repeating: 0, count: data.count)
        try back.withUnsafeMutableBytes { try cache.read(at: 4096, into: $0) }
        XCTAssertEqual(back, data)
        var onDevice = [UInt8](repeating: 0, count: data.count)
        try onDevice.withUnsafeMutableBytes { try inner.read(nsid: 1, lba: 8, blocks: data.count / 512, into: $0) }
        XCTAssertEqual(onDevice, data)
        XCTAssertGreaterThan(store.pageRequests, 0)
        XCTAssertEqual(store.zeroCopyReplies, 0, "the server said it copied")
        XCTAssertEqual(store.inlineWrites, 0)
        XCTAssertEqual(store.bytesCopied, 0)
    }

    /// storage_server restarts while the cache holds dirty pages: the store reconnects, shares
    /// and registers the pool again, and write-back and misses carry on zero copy on the new
    /// server.
    func testThePoolIsRegisteredAgainAfterAStorageServerRestart() throws {
        let (device, sectors) = try deviceWithExt2(blocks: 4096)
        let directory = makeTemporaryDirectory(self)
        let box = ServerBox()
        addTeardownBlock { box.stopAll() }
        try Self.serve(device, directory, into: box)
        let store = try StorageBlockStore(name: "storage", directory: directory, nsid: 1)
        let cache = PageCache(backing: store, pageCount: 128)
        XCTAssertTrue(store.isPagePoolRegistered)
        let service = VFSService()
        try service.mount(try mountExt2OrSkip(cache), at: "/", cache: cache, source: "storage")
        let before = String(repeating: "before the restart ", count: 4000)
        try service.writeFile("/before", before)
        service.tick()  // on the device
        let during = String(repeating: "written while the server was down ", count: 3000)
        try service.writeFile("/during", during)  // dirty in the cache only
        XCTAssertGreaterThan(cache.dirtyPageCount, 0)

        box.stopAll()  // the server dies; its registrations go with it
        let restarted = expectation(description: "restarted")
        let restart = Restart(device: device, directory: directory, box: box)
        DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(200)) {
            do { try Self.serve(restart.device, restart.directory, into: restart.box) } catch { XCTFail("restart: \(error)") }
            restarted.fulfill()
        }
        service.tick()  // write-back of /during: reconnects, registers the pool again, resends
        wait(for: [restarted], timeout: 30)
        XCTAssertEqual(box.count, 2)
        XCTAssertEqual(store.reconnects, 1)
        XCTAssertEqual(store.poolRegistrations, 2, "registered on the first server and again on the new one")
        XCTAssertTrue(store.isPagePoolRegistered)
        XCTAssertEqual(cache.dirtyPageCount, 0)
        let newServer = try XCTUnwrap(box.last)
        XCTAssertGreaterThan(newServer.zeroCopyTransfers, 0, "write-back after the restart went zero copy")

        cache.dropCleanPages()
        let transfersBefore = newServer.zeroCopyTransfers
        XCTAssertEqual(try service.readFile("/before"), before)
        XCTAssertEqual(try service.readFile("/during"), during)
        XCTAssertGreaterThan(newServer.zeroCopyTransfers, transfersBefore, "misses after the restart went zero copy")
        XCTAssertEqual(service.unmountAll(), [])
        XCTAssertEqual(store.zeroCopyReplies, store.pageRequests)
        XCTAssertEqual(store.inlineWrites, 0)
        try e2fsck(device, sectors: sectors)
    }
    /// vfs_server --storage (MountSources.storage): the mount's cache takes the registered pool,
    /// and the log says so.
    func testVfsServersStorageMountUsesTheRegisteredPool() throws {
        let (device, sectors) = try deviceWithExt2(blocks: 4096)
        let directory = makeTemporaryDirectory(self)
        let box = ServerBox()
        addTeardownBlock { box.stopAll() }
        try Self.serve(device, directory, into: box)
        final class Lines { var all: [String] = [] }
        let lines = Lines()
        // In a function of its own so the mount, its cache and its store are gone afterwards.
        func mountWriteUnmount() throws {
            let mounted = try MountSources.storage(name: "storage", directory: directory, nsid: 1, readOnly: false, cachePages: 64,
                                                   log: { lines.all.append($0) })
            let cache = try XCTUnwrap(mounted.cache)
            XCTAssertTrue(cache.usesDirectPageIO)
            XCTAssertTrue(lines.all.contains { $0.contains("page cache pool: 262144 bytes registered with the storage server (zero copy)") },
                          "\(lines.all)")
            let service = VFSService()
            try service.mount(mounted.fileSystem, at: "/", cache: cache, source: "storage")
            try service.writeFile("/hello", String(repeating: "zero copy ", count: 1000))
            XCTAssertEqual(service.unmountAll(), [])
        }
        try mountWriteUnmount()
        let transfers = try XCTUnwrap(box.last).zeroCopyTransfers
        XCTAssertGreaterThan(transfers, 0)
        // The store's last word (vfs_server's log after the unmount) agrees with the server.
        XCTAssertTrue(lines.all.contains { $0.hasSuffix("\(transfers) page requests (\(transfers) zero copy), 0 inline writes, 0 bytes copied, 0 reconnects") },
                      "\(lines.all)")
        try e2fsck(device, sectors: sectors)
    }
}
