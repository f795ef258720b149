import VFS
import VFSCore
import XCTest

/// A store that counts the reads reaching it.
private final class CountingStore: BlockStore {
    let inner: MemoryBlockStore
    var reads = 0
    var readBytes = 0
    var writes = 0
    init(_ inner: MemoryBlockStore) { self.inner = inner }
    var sectorSize: Int { inner.sectorSize }
    var capacity: UInt64 { inner.capacity }
    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(FSError) {
        reads += 1
        readBytes += buffer.count
        try inner.read(at: offset, into: buffer)
    }
    func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(FSError) {
        writes += 1
        try inner.write(at: offset, from: buffer)
    }
    func flush() throws(FSError) { try inner.flush() }
}

final class PageCacheTests: XCTestCase {
    private func pattern(_ count: Int, seed: UInt8) -> [UInt8] { (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 7) &+ seed } }

    func testWritesReachTheStoreOnlyOnWriteBackOrFlush() throws {
        let backing = MemoryBlockStore(bytes: [UInt8](repeating: 0, count: 1 << 20))
        let cache = PageCache(backing: backing, pageCount: 64)
        let data = pattern(10_000, seed: 3)
        try data.withUnsafeBytes { try cache.write(at: 4096, from: UnsafeRawBufferPointer(rebasing: $0[..<9728])) }
        XCTAssertEqual(Array(backing.bytes[4096..<(4096 + 9728)]), [UInt8](repeating: 0, count: 9728), "nothing written through")
        XCTAssertEqual(cache.dirtyPageCount, 3)
        var back = [UInt8](repeating: 0, count: 9728)
        try back.withUnsafeMutableBytes { try cache.read(at: 4096, into: $0) }
        XCTAssertEqual(back, Array(data[..<9728]), "reads see the cached writes")

        try cache.writeBack()
        XCTAssertEqual(Array(backing.bytes[4096..<(4096 + 9728)]), Array(data[..<9728]))
        XCTAssertEqual(cache.dirtyPageCount, 0)
        XCTAssertEqual(backing.flushCount, 0, "write-back alone does not flush the device")
        try cache.flush()
        XCTAssertEqual(backing.flushCount, 1)
    }

    func testSequentialReadsReadAhead() throws {
        let bytes = pattern(1 << 20, seed: 1)
        let counting = CountingStore(MemoryBlockStore(bytes: bytes))
        let cache = PageCache(backing: counting, pageCount: 128, readAheadPages: 8)
        var buffer = [UInt8](repeating: 0, count: 4096)
        for page in 0..<64 {
            try buffer.withUnsafeMutableBytes { try cache.read(at: UInt64(page * 4096), into: $0) }
            XCTAssertEqual(buffer, Array(bytes[(page * 4096)..<((page + 1) * 4096)]))
        }
        // First two misses single pages, then runs of 8: far fewer backing reads than pages.
        XCTAssertLessThanOrEqual(counting.reads, 10)
        XCTAssertGreaterThan(cache.pagesReadAhead, 50)
        XCTAssertGreaterThan(cache.hits, 50)

        // Random access does not trigger read-ahead.
        let random = CountingStore(MemoryBlockStore(bytes: bytes))
        let cold = PageCache(backing: random, pageCount: 128, readAheadPages: 8)
        for page in [40, 3, 200, 17, 99] {
            try buffer.withUnsafeMutableBytes { try cold.read(at: UInt64(page * 4096), into: $0) }
        }
        XCTAssertEqual(cold.pagesReadAhead, 0)
        XCTAssertEqual(random.readBytes, 5 * 4096)
    }

    func testEvictionUnderPressureKeepsDataCorrect() throws {
        let size = 512 * 1024
        let backing = MemoryBlockStore(bytes: [UInt8](repeating: 0, count: size))
        let cache = PageCache(backing: backing, pageCount: 8, readAheadPages: 2)
        var model = [UInt8](repeating: 0, count: size)
        var generator = SystemRandomNumberGenerator()
        for round in 0..<400 {
            let offset = Int.random(in: 0..<(size / 512 - 16), using: &generator) * 512
            let count = Int.random(in: 1...16, using: &generator) * 512
            if round % 3 == 0 {
                var buffer = [UInt8](repeating: 0, count: count)
                try buffer.withUnsafeMutableBytes { try cache.read(at: UInt64(offset), into: $0) }
                XCTAssertEqual(buffer, Array(model[offset..<(offset + count)]), "round \(round)")
            } else {
                let data = (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
                try data.withUnsafeBytes { try cache.write(at: UInt64(offset), from: $0) }
                model.replaceSubrange(offset..<(offset + count), with: data)
            }
        }
        XCTAssertGreaterThan(cache.evictions, 100)
        XCTAssertLessThanOrEqual(cache.cachedPageCount, 8)
        try cache.flush()
        XCTAssertEqual(backing.bytes, model)
    }

    func testFailedEvictionWriteKeepsTheDirtyPage() throws {
        let backing = MemoryBlockStore(bytes: [UInt8](repeating: 0, count: 64 * 1024))
        let cache = PageCache(backing: backing, pageCount: 2, readAheadPages: 1)
        let data = [UInt8](repeating: 9, count: 4096)
        try data.withUnsafeBytes { try cache.write(at: 0, from: $0) }
        try data.withUnsafeBytes { try cache.write(at: 4096, from: $0) }
        backing.failWrites = true
        XCTAssertThrowsError(try data.withUnsafeBytes { try cache.write(at: 8192, from: $0) })
        backing.failWrites = false
        try cache.flush()
        XCTAssertEqual(Array(backing.bytes[0..<8192]), [UInt8](repeating: 9, count: 8192), "nothing lost to the failed eviction")
        XCTAssertThrowsError(try cache.write(at: 1, from: UnsafeRawBufferPointer(start: nil, count: 0)), "unaligned")
    }
}
