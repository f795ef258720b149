import PlatformTestSupport
import Glibc
import SystemPackage
import XCTest
@testable import Supervision

final class CheckpointStoreTests: XCTestCase {
    func pwriteBytes(_ store: CheckpointStore, _ bytes: [UInt8], at offset: Int) {
        let written = bytes.withUnsafeBytes { pwrite(store.fileDescriptor.rawValue, $0.baseAddress, $0.count, off_t(offset)) }
        XCTAssertEqual(written, bytes.count)
    }

    func preadBytes(_ store: CheckpointStore, count: Int, at offset: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let got = bytes.withUnsafeMutableBytes { pread(store.fileDescriptor.rawValue, $0.baseAddress, $0.count, off_t(offset)) }
        XCTAssertEqual(got, count)
        return bytes
    }

    /// Rewrites a header field of `slot` and, if asked, recomputes the header checksum so the
    /// damage reaches the checks after it.
    func damage<T: FixedWidthInteger>(_ store: CheckpointStore, slot: Int, field: Int, value: T, fixChecksum: Bool) {
        var header = preadBytes(store, count: CheckpointHeader.size, at: store.slotOffset(slot))
        header.store(value, at: field)
        if fixChecksum {
            header.store(CRC32C.checksum(Array(header[..<CheckpointHeader.Offset.headerChecksum])), at: CheckpointHeader.Offset.headerChecksum)
        }
        pwriteBytes(store, header, at: store.slotOffset(slot))
    }

    func corruptionReasons(_ store: CheckpointStore, file: StaticString = #filePath, line: UInt = #line) throws -> [CheckpointCorruption.Reason] {
        let result = try store.load()
        guard case .corrupt(let problems) = result else {
            XCTFail("expected corruption, got \(result)", file: file, line: line)
            return []
        }
        XCTAssertTrue(result.description.hasPrefix("corrupt: starting fresh ("), file: file, line: line)
        return problems.map(\.reason)
    }

    func testCRC32CKnownAnswer() {
        // The check value from the CRC catalogue (and RFC 3720's test vectors).
        XCTAssertEqual(CRC32C.checksum(Array("123456789".utf8)), 0xE306_9283)
        XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0, count: 32)), 0x8A91_36AA)
        let text = Array("a longer text that crosses the eight-byte stride several times".utf8)
        XCTAssertEqual(CRC32C.checksum(Array(text[20...]), continuing: CRC32C.checksum(Array(text[..<20]))), CRC32C.checksum(text))
    }

    func testAnEmptyStoreSaysSo() throws {
        let store = try CheckpointStore(name: "empty", capacity: 4096)
        XCTAssertEqual(try store.load(), .empty)
    }

    func testSaveLoadRoundTrip() throws {
        let store = try CheckpointStore(name: "roundtrip", capacity: 4096)
        let state = Array("inode table v3".utf8)
        XCTAssertEqual(try store.save(state, stateVersion: 3, timestamp: 1_700_000_000_000_000_000), 1)
        let checkpoint = try XCTUnwrap(try store.load().checkpoint)
        XCTAssertEqual(checkpoint.bytes, state)
        XCTAssertEqual(checkpoint.stateVersion, 3)
        XCTAssertEqual(checkpoint.sequence, 1)
        XCTAssertEqual(checkpoint.timestamp, 1_700_000_000_000_000_000)
        // An empty checkpoint is a valid one.
        try store.save([], stateVersion: 4)
        XCTAssertEqual(try store.load().checkpoint?.bytes, [])
        XCTAssertEqual(try store.load().checkpoint?.sequence, 2)
    }

    func testGenerationsAlternateSlotsAndTheNewestWins() throws {
        let store = try CheckpointStore(name: "generations", capacity: 4096)
        for generation in 1...5 {
            XCTAssertEqual(try store.save([UInt8(generation)], stateVersion: 1), UInt64(generation))
            let checkpoint = try XCTUnwrap(try store.load().checkpoint)
            XCTAssertEqual(checkpoint.bytes, [UInt8(generation)])
            XCTAssertEqual(checkpoint.slot, (generation - 1) % 2)
        }
    }

    func testEveryDamagedFieldIsDetected() throws {
        typealias Offset = CheckpointHeader.Offset
        func fresh() throws -> CheckpointStore {
            let store = try CheckpointStore(name: "damage", capacity: 4096)
            try store.save(Array("state".utf8), stateVersion: 7)
            return store
        }
        var store = try fresh()
        damage(store, slot: 0, field: Offset.magic, value: UInt32(0x1234_5678), fixChecksum: true)
        XCTAssertEqual(try corruptionReasons(store), [.badMagic(found: 0x1234_5678)])

        // Any field changed behind the header checksum's back.
        for field in [Offset.formatVersion, Offset.headerSize, Offset.stateVersion, Offset.sequence, Offset.length,
                      Offset.timestamp, Offset.payloadChecksum, Offset.headerChecksum] {
            store = try fresh()
            // The byte's complement: a fixed value could equal what is there (the timestamp's low
            // byte is 0xEE one time in 256), changing nothing.
            let original = preadBytes(store, count: CheckpointHeader.size, at: store.slotOffset(0))[field]
            damage(store, slot: 0, field: field, value: ~original, fixChecksum: false)
            guard case .headerChecksum? = try corruptionReasons(store).first else { return XCTFail("field at \(field) not detected") }
        }

        store = try fresh()
        damage(store, slot: 0, field: Offset.formatVersion, value: UInt16(2), fixChecksum: true)
        XCTAssertEqual(try corruptionReasons(store), [.unsupportedFormat(version: 2, headerSize: 64)])

        store = try fresh()
        damage(store, slot: 0, field: Offset.length, value: UInt64(1 << 40), fixChecksum: true)
        XCTAssertEqual(try corruptionReasons(store), [.lengthBeyondSlot(length: 1 << 40, capacity: 4096)])

        store = try fresh()
        damage(store, slot: 0, field: Offset.length, value: UInt64(4), fixChecksum: true)
        guard case .payloadChecksum? = try corruptionReasons(store).first else { return XCTFail("shortened length not detected") }

        store = try fresh()
        damage(store, slot: 0, field: Offset.payloadChecksum, value: UInt32(1), fixChecksum: true)
        guard case .payloadChecksum? = try corruptionReasons(store).first else { return XCTFail("payload checksum not checked") }

        store = try fresh()
        pwriteBytes(store, [UInt8(ascii: "S")], at: store.slotOffset(0) + CheckpointHeader.size)
        guard case .payloadChecksum? = try corruptionReasons(store).first else { return XCTFail("payload damage not detected") }
    }

    func testDamageToTheNewestFallsBackToThePreviousGeneration() throws {
        let store = try CheckpointStore(name: "fallback", capacity: 4096)
        try store.save([1], stateVersion: 1)
        try store.save([2], stateVersion: 1)
        pwriteBytes(store, [0xFF], at: store.slotOffset(1) + CheckpointHeader.size)
        let result = try store.load()
        guard case .restored(let checkpoint, let problems) = result else { return XCTFail("\(result)") }
        XCTAssertEqual(checkpoint.bytes, [1])
        XCTAssertEqual(problems.map(\.slot), [1])
        // The next save goes to the damaged slot, not over the good one.
        XCTAssertEqual(try store.save([3], stateVersion: 1), 2)
        XCTAssertEqual(try store.load().checkpoint?.bytes, [3])
        XCTAssertEqual(try store.load().checkpoint?.slot, 1)
    }

    func testATornSaveLeavesThePreviousGeneration() throws {
        let payload = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let store = try CheckpointStore(name: "torn", capacity: 1 << 20)
        try store.save(payload, stateVersion: 1)  // slot 0
        try store.save(payload.reversed(), stateVersion: 1)  // slot 1
        // A crash while writing generation 3 to slot 0: cleared header, half the payload.
        pwriteBytes(store, [UInt8](repeating: 0, count: CheckpointHeader.size), at: store.slotOffset(0))
        pwriteBytes(store, [UInt8](repeating: 0xAB, count: 50_000), at: store.slotOffset(0) + CheckpointHeader.size)
        guard case .restored(let checkpoint, let problems) = try store.load() else { return XCTFail("lost both generations") }
        XCTAssertEqual(checkpoint.sequence, 2)
        XCTAssertEqual(checkpoint.bytes, payload.reversed())
        XCTAssertEqual(problems, [])

        // Worse: a new header landed over a half-written payload (writes reordered). The
        // checksum catches it and generation 2 still wins.
        let header = CheckpointHeader(
            stateVersion: 1, sequence: 3, length: UInt64(payload.count), timestamp: 0,
            payloadChecksum: CRC32C.checksum([UInt8](repeating: 0xCD, count: payload.count)))
        pwriteBytes(store, header.bytes, at: store.slotOffset(0))
        guard case .restored(let fallback, let skipped) = try store.load() else { return XCTFail("lost both generations") }
        XCTAssertEqual(fallback.sequence, 2)
        guard case .payloadChecksum? = skipped.first?.reason else { return XCTFail("\(skipped)") }
    }

    func testTruncatedFileIsDetected() throws {
        let directory = try TemporaryDirectory()
        let fd = open(directory.path + "/checkpoint", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        XCTAssertGreaterThanOrEqual(fd, 0)
        let store = CheckpointStore(adopting: FileDescriptor(rawValue: fd), capacity: 4096)
        XCTAssertEqual(try store.load(), .empty)
        try store.save([UInt8](repeating: 9, count: 1000), stateVersion: 1)
        XCTAssertEqual(ftruncate(fd, off_t(CheckpointHeader.size + 10)), 0)
        XCTAssertEqual(try corruptionReasons(store), [.truncated(needed: 1000, available: 10)])
        XCTAssertEqual(ftruncate(fd, 20), 0)
        XCTAssertEqual(try corruptionReasons(store), [.truncated(needed: 64, available: 20)])
    }

    func testAdoptingAStoreContinuesItsSequence() throws {
        let directory = try TemporaryDirectory()
        let path = directory.path + "/checkpoint"
        do {
            let store = CheckpointStore(adopting: FileDescriptor(rawValue: open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)), capacity: 4096)
            try store.save([1], stateVersion: 1)
            try store.save([2], stateVersion: 1)
        }
        let reopened = CheckpointStore(adopting: FileDescriptor(rawValue: open(path, O_RDWR | O_CLOEXEC)), capacity: 4096)
        XCTAssertEqual(try reopened.save([3], stateVersion: 1), 3)
        XCTAssertEqual(try reopened.load().checkpoint?.slot, 0)
    }

    func testSizesUpToSeveralMiB() throws {
        var random = SplitMix(state: 11)
        let capacity = 4 << 20
        let store = try CheckpointStore(name: "large", capacity: capacity)
        for size in [1, 4095, 4096, 4097, 1 << 20, capacity] {
            let payload = (0..<size).map { _ in UInt8.random(in: 0...255, using: &random) }
            try store.save(payload, stateVersion: UInt32(size))
            let checkpoint = try XCTUnwrap(try store.load().checkpoint)
            XCTAssertEqual(checkpoint.bytes.count, size)
            XCTAssertTrue(checkpoint.bytes == payload, "payload of \(size) bytes came back different")
        }
        XCTAssertThrowsError(try store.save([UInt8](repeating: 0, count: capacity + 1), stateVersion: 1)) { error in
            XCTAssertEqual(error as? CheckpointError, .tooLarge(size: capacity + 1, capacity: capacity))
        }
    }

    func testTheMemfdIsSealedAgainstResizing() throws {
        let store = try CheckpointStore(name: "sealed", capacity: 4096)
        XCTAssertNotEqual(ftruncate(store.fileDescriptor.rawValue, 0), 0, "a server given the memfd could shrink it")
        XCTAssertNotEqual(ftruncate(store.fileDescriptor.rawValue, 1 << 30), 0, "a server given the memfd could grow it")
    }
}
