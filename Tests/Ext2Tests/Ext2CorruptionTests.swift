import PlatformTestSupport
import Foundation
import SystemPackage
import VFSCore
import XCTest
@testable import Ext2

/// Damaged images: mounting or operating throws FSError (EUCLEAN, EIO, EINVAL ...), never traps.
final class Ext2CorruptionTests: Ext2TestCase {
    /// A populated 1 KiB-block image: nested directories, small and big files, both kinds of link.
    func populatedImage(_ name: String = "fs.img", kib: Int = 2048) throws -> String {
        let source = directory + "/src-\(name)"
        let fm = FileManager.default
        try fm.createDirectory(atPath: source + "/a/b/c", withIntermediateDirectories: true)
        try Data(pattern(300_000, seed: 1)).write(to: URL(fileURLWithPath: source + "/a/big"))
        try Data(pattern(5000, seed: 2)).write(to: URL(fileURLWithPath: source + "/a/b/medium"))
        for index in 0..<40 { try Data("small \(index)".utf8).write(to: URL(fileURLWithPath: source + "/a/b/c/f\(index)")) }
        try fm.createSymbolicLink(atPath: source + "/fast", withDestinationPath: "a/big")
        try fm.createSymbolicLink(atPath: source + "/slow", withDestinationPath: String(repeating: "s/", count: 60))
        return try makeImage(name, blockSize: 1024, kib: kib, options: ["-I", "128", "-N", "128"], populate: source)
    }

    func poke(_ path: String, at offset: UInt64, _ bytes: [UInt8]) throws {
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        try handle.seek(toOffset: offset)
        try handle.write(contentsOf: Data(bytes))
    }

    func firstBlock(_ image: String, _ path: String) throws -> UInt64 {
        let output = try debugfs(image, "blocks \(path)")
        return try XCTUnwrap(output.split(whereSeparator: { $0 == " " || $0 == "\n" }).compactMap { UInt64($0) }.first, output)
    }

    func assertThrowsCorruption<T>(_ body: @autoclosure () throws -> T, file: StaticString = #filePath, line: UInt = #line) {
        do {
            _ = try body()
            XCTFail("no error on a corrupt structure", file: file, line: line)
        } catch let error as FSError {
            XCTAssertTrue(error.isCorruption, "expected EUCLEAN, got \(error)", file: file, line: line)
        } catch {
            XCTFail("unexpected \(error)", file: file, line: line)
        }
    }

    func testBadMagicAndAbsurdGeometryAreRefused() throws {
        let image = try populatedImage()
        try poke(image, at: 1024 + 56, [0x34, 0x12])
        assertThrowsCorruption(try mount(image))
        try poke(image, at: 1024 + 56, [0x53, 0xEF])
        XCTAssertNoThrow(try mount(image, readOnly: true).unmount())
        try poke(image, at: 1024 + 32, [0, 0, 0, 0])  // s_blocks_per_group 0
        assertThrowsCorruption(try mount(image))
        try poke(image, at: 1024 + 32, [0, 0x20, 0, 0])  // 8192: fine for 1 KiB blocks
        try poke(image, at: 1024 + 24, [9, 0, 0, 0])  // s_log_block_size 9
        assertThrowsCorruption(try mount(image))
        XCTAssertTrue(logLines.contains { $0.contains("s_log_block_size") })
        // A device shorter than the file system says.
        let short = try makeImage("short.img", kib: 1024)
        try FileManager.default.setAttributes([:], ofItemAtPath: short)
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: short))
        try handle.truncate(atOffset: 512 * 1024)
        try handle.close()
        assertThrowsCorruption(try mount(short))
    }

    func testGarbageGroupDescriptorsAreRefused() throws {
        let clean = try populatedImage()
        var random = SplitMix(seed: 99)
        for _ in 0..<20 {
            var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: clean)))
            for index in 2048..<(2048 + 32) { bytes[index] = UInt8(truncatingIfNeeded: random.next()) }
            let store = MemoryBlockStore(bytes: bytes)
            XCTAssertThrowsError(try Ext2.mount(store: store, readOnly: false) { _ in }) { error in
                XCTAssertTrue((error as? FSError)?.isCorruption ?? false, "\(error)")
            }
        }
    }

    func testBadBlockPointersAreReported() throws {
        let image = try populatedImage()
        _ = try runTool("/usr/sbin/debugfs", ["-w", "-R", "sif /a/b/medium block[0] 9999999", image])
        _ = try runTool("/usr/sbin/debugfs", ["-w", "-R", "sif /a/big block[IND] 3", image])  // the descriptor table
        _ = try runTool("/usr/sbin/debugfs", ["-w", "-R", "sif /slow block[0] 4", image])
        let fs = try mount(image)
        assertThrowsCorruption(try fs.readAll(fs.resolve("/a/b/medium")))
        XCTAssertEqual(try fs.read(fs.resolve("/a/big"), at: 0, count: 100), Array(pattern(300_000, seed: 1).prefix(100)), "direct blocks still read")
        assertThrowsCorruption(try fs.read(fs.resolve("/a/big"), at: 20 * 1024, count: 100))
        assertThrowsCorruption(try fs.write(fs.resolve("/a/big"), at: 20 * 1024, [1, 2, 3]))
        assertThrowsCorruption(try fs.readSymbolicLink(fs.resolve("/slow")))
        // Removing the damaged files must not free metadata or trap.
        let free = try fs.statistics().freeBlocks
        let medium = try fs.unlink("medium", in: fs.resolve("/a/b"))
        try? fs.evict(medium)
        let big = try fs.unlink("big", in: fs.resolve("/a"))
        assertThrowsCorruption(try fs.evict(big))
        XCTAssertGreaterThanOrEqual(try fs.statistics().freeBlocks, free)
        XCTAssertFalse(logLines.isEmpty)
        try fs.unmount()
    }

    func testBadRecordLengthsAreReported() throws {
        for (value, what) in [([UInt8](arrayLiteral: 0, 0), "zero"), ([14, 0], "unaligned"), ([0, 8], "past the block"), ([12, 0], "shorter than the name")] {
            let image = try populatedImage("rec-\(what).img")
            let block = try firstBlock(image, "/a/b/c")
            // The second record ("..") starts at byte 12; its rec_len at 16. For the last case,
            // the third record's rec_len (at 24 + 4) is cut below its name.
            let offset = what == "shorter than the name" ? block * 1024 + 24 + 4 : block * 1024 + 16
            try poke(image, at: offset, what == "shorter than the name" ? [8, 0] : value)
            let fs = try mount(image)
            let c = try fs.resolve("/a/b/c")
            assertThrowsCorruption(try fs.entries(c))
            assertThrowsCorruption(try fs.lookup("f39", in: c))
            assertThrowsCorruption(try fs.create("new", in: c, type: .regular, permissions: 0o644, uid: 0, gid: 0))
            XCTAssertTrue(logLines.contains { $0.contains("rec_len") || $0.contains("name_len") }, "\(what): \(logLines)")
            try fs.unmount()
        }
    }

    /// A ".." chain that loops: moving a directory below it must not spin forever.
    func testDirectoryLoopIsDetected() throws {
        let image = try populatedImage()
        let aBlock = try firstBlock(image, "/a")
        let bInode = try XCTUnwrap(UInt32(statField(try debugfs(image, "stat /a/b"), "Inode") ?? ""))
        // /a's ".." now names /a/b, whose ".." names /a.
        try poke(image, at: aBlock * 1024 + 12, withUnsafeBytes(of: bInode.littleEndian) { Array($0) })
        let fs = try mount(image)
        let b = try fs.resolve("/a/b")
        let c = try fs.makeDirectory("elsewhere", in: fs.rootInode, permissions: 0o755, uid: 0, gid: 0)
        _ = c
        assertThrowsCorruption(try fs.rename("elsewhere", in: fs.rootInode, to: "x", in: b))
        try fs.unmount()
    }

    /// A store with 4096-byte sectors under 1 KiB blocks (every access widened and merged), and
    /// one whose writes fail: EIO, no trap, and what was written before stays consistent.
    func testLargeSectorsAndFailingWrites() throws {
        let path = try populatedImage()
        let store = MemoryBlockStore(bytes: try [UInt8](Data(contentsOf: URL(fileURLWithPath: path))), sectorSize: 4096)
        let fs = try Ext2.mount(store: store, readOnly: false) { _ in }
        let file = try fs.create("new", in: fs.rootInode, type: .regular, permissions: 0o644, uid: 0, gid: 0)
        let data = pattern(50_000, seed: 4)
        XCTAssertEqual(try fs.write(file, at: 333, data), data.count)
        XCTAssertEqual(try fs.read(file, at: 333, count: data.count), data)
        XCTAssertEqual(try fs.readAll(fs.resolve("/a/big")), pattern(300_000, seed: 1))
        _ = try fs.makeSymbolicLink("slow2", in: fs.rootInode, target: [UInt8](repeating: 0x62, count: 300), uid: 0, gid: 0)
        XCTAssertNil(try fs.rename("new", in: fs.rootInode, to: "moved", in: fs.resolve("/a/b")))
        try fs.unmount()
        try Data(store.bytes).write(to: URL(fileURLWithPath: path))
        try assertClean(path)
        XCTAssertEqual(try debugfsContents(path, "/a/b/moved"), [UInt8](repeating: 0, count: 333) + data)

        let failing = MemoryBlockStore(bytes: store.bytes)
        let second = try Ext2.mount(store: failing, readOnly: false) { _ in }
        failing.failWrites = true
        XCTAssertFSError(.ioError, try second.create("x", in: second.rootInode, type: .regular, permissions: 0o644, uid: 0, gid: 0))
        XCTAssertFSError(.ioError, try second.write(second.resolve("/a/b/moved"), at: 0, [1, 2, 3]))
        XCTAssertFSError(.ioError, try second.unmount())
        failing.failWrites = false
    }

    /// Random byte flips over the metadata area (superblock, descriptors, bitmaps, inode table,
    /// directory and indirect blocks): every outcome is an FSError or success, never a trap.
    func testRandomByteFlipsNeverTrap() throws {
        let clean = try [UInt8](Data(contentsOf: URL(fileURLWithPath: try populatedImage())))
        var random = SplitMix(seed: 4242)
        var mounted = 0, refused = 0, failed = 0
        for _ in 0..<300 {
            var bytes = clean
            let flips = Int(random.next() % 24) + 1
            for _ in 0..<flips {
                // Mostly the first 64 KiB (superblock to the first directory and file blocks).
                // Now and then the superblock and descriptor table only.
                let limit = random.next() % 4 == 0 ? bytes.count : (flips % 5 == 0 ? 3072 : 64 * 1024)
                let index = 1024 + Int(random.next() % UInt64(limit - 1024))
                bytes[index] ^= UInt8(truncatingIfNeeded: random.next() | 1)
            }
            let store = MemoryBlockStore(bytes: bytes)
            let fs: FileSystem
            do { fs = try Ext2.mount(store: store, readOnly: false) { _ in } } catch {
                // Damage is EUCLEAN; a feature word hit is ENOTSUP; a size past the device EIO.
                XCTAssertTrue(error.isCorruption || [.notSupported, .ioError].contains(error.errno), "\(error)")
                refused += 1
                continue
            }
            mounted += 1
            failed += exercise(fs, &random)
        }
        XCTAssertGreaterThan(mounted, 50)
        XCTAssertGreaterThan(refused, 5)
        XCTAssertGreaterThan(failed, 10, "some operations met the damage")
    }

    /// Walks the tree (each directory once), reads every file and link, makes a few changes,
    /// unmounts. Returns how many operations failed with FSError.
    func exercise(_ fs: FileSystem, _ random: inout SplitMix) -> Int {
        var failures = 0
        var seen = Set<InodeNumber>()
        var queue: [InodeNumber] = [fs.rootInode]
        var files: [(InodeNumber, InodeNumber, FileName)] = []
        var budget = 2000
        while let dir = queue.popLast(), budget > 0 {
            guard seen.insert(dir).inserted else { continue }
            do {
                for entry in try fs.entries(dir) where !entry.name.isDotOrDotDot {
                    budget -= 1
                    do {
                        let attributes = try fs.attributes(of: entry.inode)
                        switch attributes.type {
                        case .directory: queue.append(entry.inode)
                        case .symbolicLink: _ = try fs.readSymbolicLink(entry.inode)
                        case .regular:
                            _ = try fs.read(entry.inode, at: 0, count: Int(min(attributes.size, 400_000)))
                            files.append((dir, entry.inode, entry.name))
                        default: break
                        }
                    } catch { failures += 1 }
                }
            } catch { failures += 1 }
        }
        for (dir, file, name) in files.prefix(3) {
            do { try fs.write(file, at: random.next() % 70_000, pattern(3000, seed: 1)) } catch { failures += 1 }
            do { try fs.truncate(file, to: random.next() % 20_000) } catch { failures += 1 }
            do { try fs.evict(try fs.unlink(name, in: dir)) } catch { failures += 1 }
        }
        do {
            let new = try fs.create("fuzz-new", in: fs.rootInode, type: .regular, permissions: 0o644, uid: 0, gid: 0)
            try fs.write(new, at: 0, pattern(20_000, seed: 5))
            _ = try fs.makeDirectory("fuzz-dir", in: fs.rootInode, permissions: 0o755, uid: 0, gid: 0)
            _ = try fs.rename("fuzz-new", in: fs.rootInode, to: "moved", in: fs.resolve("fuzz-dir"))
        } catch { failures += 1 }
        do { try fs.unmount() } catch { failures += 1 }
        return failures
    }
}
