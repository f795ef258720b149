import Foundation
import SystemPackage
import VFSCore
import XCTest
@testable import Ext2

final class Ext2OperationTests: Ext2TestCase {
    /// A tree made by `mke2fs -d` reads back exactly: names, types, sizes, contents, link targets.
    func testReadsATreeMadeByMke2fs() throws {
        let source = directory + "/tree"
        let fm = FileManager.default
        try fm.createDirectory(atPath: source + "/sub/deeper", withIntermediateDirectories: true)
        let big = pattern(300_000, seed: 7)
        try Data(big).write(to: URL(fileURLWithPath: source + "/sub/big.bin"))
        try Data("hello\n".utf8).write(to: URL(fileURLWithPath: source + "/hello.txt"))
        try Data().write(to: URL(fileURLWithPath: source + "/sub/deeper/empty"))
        for index in 0..<150 {
            try Data("file \(index)".utf8).write(to: URL(fileURLWithPath: source + "/sub/many-\(index)-with-a-longer-name"))
        }
        try fm.createSymbolicLink(atPath: source + "/fast", withDestinationPath: "hello.txt")
        let longTarget = String(repeating: "long/", count: 30) + "target"
        try fm.createSymbolicLink(atPath: source + "/slow", withDestinationPath: longTarget)
        for blockSize in [1024, 4096] {
            let image = try makeImage("tree-\(blockSize).img", blockSize: blockSize, kib: 8192, populate: source)
            let fs = try mount(image, readOnly: true)
            XCTAssertEqual(try fs.readAll(fs.resolve("/sub/big.bin")), big)
            XCTAssertEqual(try fs.readAll(fs.resolve("/hello.txt")), Array("hello\n".utf8))
            XCTAssertEqual(try fs.attributes(of: fs.resolve("/sub/deeper/empty")).size, 0)
            XCTAssertEqual(try fs.readSymbolicLink(fs.resolve("/fast")), Array("hello.txt".utf8))
            XCTAssertEqual(try fs.readSymbolicLink(fs.resolve("/slow")), Array(longTarget.utf8))
            let names = Set(try fs.entries(fs.resolve("/sub")).map(\.name.description))
            XCTAssertEqual(names.count, 150 + 4)  // ".", "..", "deeper", "big.bin" and the 150
            XCTAssertTrue(names.contains("many-149-with-a-longer-name"))
            XCTAssertEqual(try fs.readAll(fs.resolve("/sub/many-77-with-a-longer-name")), Array("file 77".utf8))
            var types: [String: VFSCore.FileType] = [:]
            for entry in try fs.entries(fs.rootInode) { types[entry.name.description] = entry.type }
            XCTAssertEqual(types["sub"], .directory)
            XCTAssertEqual(types["fast"], .symbolicLink)
            XCTAssertEqual(types["hello.txt"], .regular)
            XCTAssertEqual(try fs.lookup("..", in: fs.resolve("/sub/deeper")), try fs.resolve("/sub"))
            XCTAssertFSError(.noSuchFileOrDirectory, try fs.resolve("/nope"))
            XCTAssertFSError(.notDirectory, try fs.lookup("x", in: fs.resolve("/hello.txt")))
            XCTAssertFSError(.isDirectory, try fs.read(fs.rootInode, at: 0, count: 10))
            try fs.unmount()
            try assertClean(image)
        }
    }

    /// A directory with an htree index (dir_index; e2fsck -D builds one) reads linearly, and
    /// changing it drops the index flag so e2fsck and the kernel read it linearly too.
    func testIndexedDirectoryIsReadAndChangedLinearly() throws {
        let source = directory + "/indexed"
        try FileManager.default.createDirectory(atPath: source + "/sub", withIntermediateDirectories: true)
        for index in 0..<200 { try Data("\(index)".utf8).write(to: URL(fileURLWithPath: source + "/sub/file-with-a-long-name-\(index)")) }
        let image = try makeImage(blockSize: 1024, kib: 4096, populate: source)
        let optimize = try runTool("/usr/sbin/e2fsck", ["-fyD", image])
        XCTAssertLessThanOrEqual(optimize.status, 1, optimize.output)
        XCTAssertTrue(try debugfs(image, "stat /sub").contains("Flags: 0x1000"), "e2fsck -D did not index the directory")
        let fs = try mount(image)
        let sub = try fs.resolve("/sub")
        XCTAssertEqual(try fs.entries(sub).count, 202)
        XCTAssertEqual(try fs.readAll(fs.lookup("file-with-a-long-name-123", in: sub)), Array("123".utf8))
        for index in 0..<50 { try fs.evict(try fs.unlink(try FileName("file-with-a-long-name-\(index)"), in: sub)) }
        for index in 0..<80 { _ = try fs.create(try FileName("added-\(index)"), in: sub, type: .regular, permissions: 0o644, uid: 0, gid: 0) }
        XCTAssertEqual(try fs.entries(sub).count, 202 - 50 + 80)
        try fs.unmount()
        try assertClean(image)
        XCTAssertTrue(try debugfs(image, "stat /sub").contains("Flags: 0x0"))
        let listing = try debugfs(image, "ls /sub")
        XCTAssertTrue(listing.contains("added-79"))
        // A removed entry that opened its block keeps its name with inode 0 (as Linux leaves it),
        // and `debugfs ls` lists such entries too; so ask by name instead.
        for index in [0, 7, 49] {
            XCTAssertTrue(try debugfs(image, "stat /sub/file-with-a-long-name-\(index)").contains("File not found"))
        }
        XCTAssertFalse(try debugfs(image, "stat /sub/file-with-a-long-name-50").contains("File not found"))
    }

    /// Revision 0 (128-byte inodes, no features) and revision 1 without any optional feature
    /// (no filetype byte in entries, no large_file: 2 GiB - 1 is the largest file).
    func testRevisionZeroAndFeaturelessImages() throws {
        for options in [["-r", "0"], ["-O", "^filetype,^large_file,^resize_inode,^dir_index,^ext_attr,^sparse_super"]] {
            let image = try makeImage("plain-\(options[0]).img", blockSize: 1024, kib: 4096, options: options)
            let fs = try mount(image)
            let dir = try fs.makeDirectory("dir", in: fs.rootInode, permissions: 0o755, uid: 1, gid: 2)
            let file = try fs.create("file", in: dir, type: .regular, permissions: 0o600, uid: 1, gid: 2)
            let data = pattern(300_000, seed: 11)
            XCTAssertEqual(try fs.write(file, at: 0, data), data.count)
            _ = try fs.makeSymbolicLink("link", in: dir, target: Array(String(repeating: "z", count: 100).utf8), uid: 0, gid: 0)
            XCTAssertNil(try fs.rename("file", in: dir, to: "renamed", in: fs.rootInode))
            XCTAssertEqual(try fs.entries(dir).map(\.type), [.unknown, .unknown, .unknown], "no filetype byte: types unknown")
            XCTAssertFSError(.fileTooLarge, try fs.write(file, at: UInt64(Int32.max), [1]))
            XCTAssertEqual(try fs.write(file, at: UInt64(Int32.max) - 2, [1, 2, 3, 4, 5]), 2, "up to the limit")
            XCTAssertEqual(try fs.attributes(of: file).size, UInt64(Int32.max))
            try fs.truncate(file, to: UInt64(data.count))
            XCTAssertFSError(.fileTooLarge, try fs.truncate(file, to: 1 << 31))
            try fs.unmount()
            try assertClean(image)
            XCTAssertEqual(try debugfsContents(image, "/renamed"), data)
        }
    }

    /// EXT2_LINK_MAX (32000): one more name or subdirectory is EMLINK. The counts are set near the
    /// limit with debugfs rather than made one by one.
    func testLinkLimit() throws {
        let image = try makeImage()
        let setup = try mount(image)
        _ = try setup.create("f", in: setup.rootInode, type: .regular, permissions: 0o644, uid: 0, gid: 0)
        _ = try setup.makeDirectory("d", in: setup.rootInode, permissions: 0o755, uid: 0, gid: 0)
        try setup.unmount()
        _ = try runTool("/usr/sbin/debugfs", ["-w", "-R", "sif /f links_count 31999", image])
        _ = try runTool("/usr/sbin/debugfs", ["-w", "-R", "sif /d links_count 32000", image])
        let fs = try mount(image)
        let f = try fs.resolve("/f")
        try fs.link(f, as: "g", in: fs.rootInode)
        XCTAssertEqual(try fs.attributes(of: f).linkCount, 32000)
        XCTAssertFSError(.tooManyLinks, try fs.link(f, as: "h", in: fs.rootInode))
        XCTAssertFSError(.tooManyLinks, try fs.makeDirectory("sub", in: fs.resolve("/d"), permissions: 0o755, uid: 0, gid: 0))
        // A 255-byte name is the longest ext2 stores.
        let longest = try FileName(String(repeating: "n", count: 255))
        let node = try fs.create(longest, in: fs.rootInode, type: .characterDevice, permissions: 0o600, uid: 0, gid: 0)
        XCTAssertEqual(try fs.lookup(longest, in: fs.rootInode), node)
        XCTAssertEqual(try fs.attributes(of: node).type, .characterDevice)
        XCTAssertFSError(.fileNameTooLong, try FileName(String(repeating: "n", count: 256)))
        try fs.unmount()
        XCTAssertTrue(try debugfs(image, "ls /").contains(String(repeating: "n", count: 255)))
    }

    /// A directory of more than 12 blocks maps its later blocks through an indirect block.
    func testDirectoryBeyondTheDirectBlocks() throws {
        let image = try makeImage(blockSize: 1024, kib: 8192)
        let fs = try mount(image)
        let dir = try fs.makeDirectory("big", in: fs.rootInode, permissions: 0o755, uid: 0, gid: 0)
        let names = (0..<600).map { String(repeating: "q", count: 56) + String(format: "%04d", $0) }
        for name in names { _ = try fs.create(try FileName(name), in: dir, type: .regular, permissions: 0o644, uid: 0, gid: 0) }
        XCTAssertGreaterThan(try fs.attributes(of: dir).size, 12 * 1024)
        XCTAssertEqual(try fs.entries(dir).count, 602)
        XCTAssertNoThrow(try fs.lookup(try FileName(names[599]), in: dir))
        try fs.sync()
        try assertClean(image)
        for name in names { try fs.evict(try fs.unlink(try FileName(name), in: dir)) }
        XCTAssertEqual(try fs.removeDirectory("big", in: fs.rootInode), dir)
        try fs.evict(dir)
        try fs.unmount()
        try assertClean(image)
    }

    /// readDirectory resumes from a cookie with neither loss nor repetition.
    func testReadDirectoryCookiesResume() throws {
        let image = try makeImage()
        let fs = try mount(image)
        for index in 0..<100 { _ = try fs.create(try FileName("entry-\(index)"), in: fs.rootInode, type: .regular, permissions: 0o644, uid: 0, gid: 0) }
        var seen: [String] = []
        var cookie: UInt64 = 0
        var finished = false
        while !finished {
            var got = 0
            try fs.readDirectory(fs.rootInode, from: cookie) { entry, next in
                seen.append(entry.name.description)
                cookie = next
                got += 1
                return got < 7
            }
            finished = got < 7
        }
        XCTAssertEqual(seen.count, 100 + 3)  // ".", "..", "lost+found"
        XCTAssertEqual(Set(seen).count, seen.count)
        try fs.unmount()
        try assertClean(image)
    }

    func testCreateWriteReadOnEveryBlockSize() throws {
        for blockSize in [1024, 2048, 4096] {
            let image = try makeImage("rw-\(blockSize).img", blockSize: blockSize)
            let fs = try mount(image)
            let dir = try fs.makeDirectory("docs", in: fs.rootInode, permissions: 0o750, uid: 1000, gid: 100)
            let file = try fs.create("notes.txt", in: dir, type: .regular, permissions: 0o640, uid: 1000, gid: 100)
            let data = pattern(3 * blockSize + 123, seed: UInt8(blockSize >> 10))
            XCTAssertEqual(try fs.write(file, at: 0, data), data.count)
            // Unaligned overwrite in the middle, then an append.
            let middle = pattern(blockSize + 7, seed: 99)
            XCTAssertEqual(try fs.write(file, at: 100, middle), middle.count)
            var expected = data
            expected.replaceSubrange(100..<(100 + middle.count), with: middle)
            try fs.write(file, at: UInt64(expected.count), [1, 2, 3])
            expected += [1, 2, 3]
            XCTAssertEqual(try fs.readAll(file), expected)
            XCTAssertEqual(try fs.read(file, at: 5, count: 10), Array(expected[5..<15]))
            XCTAssertEqual(try fs.read(file, at: UInt64(expected.count), count: 10), [])
            XCTAssertFSError(.fileExists, try fs.create("notes.txt", in: dir, type: .regular, permissions: 0o644, uid: 0, gid: 0))
            XCTAssertFSError(.fileExists, try fs.makeDirectory("docs", in: fs.rootInode, permissions: 0o755, uid: 0, gid: 0))
            XCTAssertFSError(.fileExists, try fs.create(".", in: dir, type: .regular, permissions: 0o644, uid: 0, gid: 0))
            let attributes = try fs.attributes(of: file)
            XCTAssertEqual(attributes.size, UInt64(expected.count))
            XCTAssertEqual(attributes.blocks512, UInt64((expected.count + blockSize - 1) / blockSize * (blockSize / 512)))
            try fs.unmount()
            try assertClean(image)
            XCTAssertEqual(try debugfsContents(image, "/docs/notes.txt"), expected)
            let stat = try debugfs(image, "stat /docs/notes.txt")
            XCTAssertEqual(statField(stat, "Size"), "\(expected.count)")
            XCTAssertEqual(statField(stat, "Mode"), "0640")
            XCTAssertEqual(statField(stat, "User"), "1000")
            XCTAssertEqual(statField(stat, "Group"), "100")
            XCTAssertEqual(statField(stat, "Links"), "1")
            let dirStat = try debugfs(image, "stat /docs")
            XCTAssertEqual(statField(dirStat, "Links"), "2")
            XCTAssertEqual(statField(dirStat, "Mode"), "0750")
            // The next mount sees the same.
            let again = try mount(image, readOnly: true)
            XCTAssertEqual(try again.readAll(again.resolve("/docs/notes.txt")), expected)
            try again.unmount()
        }
    }

    /// 64 KiB blocks: a record spanning a whole block stores rec_len 65535 (ext2 EXT2_MAX_REC_LEN).
    func testSixtyFourKiBBlocks() throws {
        let image = try makeImage(blockSize: 65536, kib: 32768)
        let fs = try mount(image)
        let dir = try fs.makeDirectory("d", in: fs.rootInode, permissions: 0o755, uid: 0, gid: 0)
        for index in 0..<100 { _ = try fs.create(try FileName("f\(index)"), in: dir, type: .regular, permissions: 0o644, uid: 0, gid: 0) }
        for index in 0..<100 where index % 2 == 1 { try fs.evict(try fs.unlink(try FileName("f\(index)"), in: dir)) }
        let file = try fs.lookup("f0", in: dir)
        let data = pattern(200_000, seed: 64)
        XCTAssertEqual(try fs.write(file, at: 70_000, data), data.count)
        XCTAssertEqual(try fs.read(file, at: 70_000, count: data.count), data)
        XCTAssertEqual(try fs.entries(dir).count, 52)
        try fs.unmount()
        try assertClean(image)
        XCTAssertEqual(Array(try debugfsContents(image, "/d/f0").suffix(data.count)), data)
    }

    /// 1 KiB blocks: 12 direct, 256 single, 65536 double, then triple indirect blocks.
    func testLargeAndSparseFilesReachTripleIndirectBlocks() throws {
        let image = try makeImage(blockSize: 1024, kib: 16384, options: ["-I", "128"])
        let fs = try mount(image)
        let before = try fs.statistics().freeBlocks
        let file = try fs.create("sparse", in: fs.rootInode, type: .regular, permissions: 0o644, uid: 0, gid: 0)
        let kib: UInt64 = 1024
        let pieces: [(UInt64, [UInt8])] = [
            (5 * kib + 10, pattern(3000, seed: 1)),            // direct blocks
            (100 * kib + 1, pattern(2048, seed: 2)),           // single indirect
            (2000 * kib - 7, pattern(5000, seed: 3)),          // double indirect
            ((12 + 256 + 65536 + 300) * kib + 3, pattern(4000, seed: 4)),  // triple indirect
        ]
        for (offset, bytes) in pieces { XCTAssertEqual(try fs.write(file, at: offset, bytes), bytes.count) }
        let size = pieces.last!.0 + UInt64(pieces.last!.1.count)
        XCTAssertEqual(try fs.attributes(of: file).size, size)
        for (offset, bytes) in pieces { XCTAssertEqual(try fs.read(file, at: offset, count: bytes.count), bytes) }
        XCTAssertEqual(try fs.read(file, at: 50 * kib, count: 4096), [UInt8](repeating: 0, count: 4096), "a hole reads zeroes")
        // A run of whole blocks (contiguous read and write paths) across the single/double boundary.
        let run = pattern(600 * 1024, seed: 5)
        XCTAssertEqual(try fs.write(file, at: 10 * kib, run), run.count)
        XCTAssertEqual(try fs.read(file, at: 10 * kib, count: run.count), run)
        try fs.sync()
        try assertClean(image)
        let dumped = try debugfsContents(image, "/sparse")
        XCTAssertEqual(UInt64(dumped.count), size)
        XCTAssertEqual(Array(dumped[(10 * 1024)..<(10 * 1024 + run.count)]), run)
        for (offset, bytes) in pieces.suffix(2) { XCTAssertEqual(Array(dumped[Int(offset)..<(Int(offset) + bytes.count)]), bytes) }

        // Truncate down into the single-indirect range: the rest is freed, the tail zeroed.
        try fs.truncate(file, to: 100 * kib + 500)
        XCTAssertEqual(try fs.attributes(of: file).size, 100 * kib + 500)
        XCTAssertEqual(try fs.read(file, at: 100 * kib + 1, count: 499), Array(run[(90 * 1024 + 1)..<(90 * 1024 + 500)]))
        // Up again: what lies past the old end reads zeroes.
        try fs.truncate(file, to: 300 * kib)
        XCTAssertEqual(try fs.read(file, at: 100 * kib + 500, count: 2000), [UInt8](repeating: 0, count: 2000))
        try fs.truncate(file, to: 0)
        XCTAssertEqual(try fs.attributes(of: file).blocks512, 0)
        XCTAssertEqual(try fs.statistics().freeBlocks, before, "every block (data and indirect) came back")
        XCTAssertFSError(.fileTooLarge, try fs.truncate(file, to: 1 << 45))
        try fs.unmount()
        try assertClean(image)
        let stat = try debugfs(image, "stat /sparse")
        XCTAssertEqual(statField(stat, "Size"), "0")
        XCTAssertEqual(statField(stat, "Blockcount"), "0")
    }

    func testMakeAndRemoveDirectories() throws {
        let image = try makeImage(blockSize: 2048)
        let fs = try mount(image)
        let rootLinks = try fs.attributes(of: fs.rootInode).linkCount
        let a = try fs.makeDirectory("a", in: fs.rootInode, permissions: 0o755, uid: 0, gid: 0)
        let b = try fs.makeDirectory("b", in: a, permissions: 0o755, uid: 0, gid: 0)
        XCTAssertEqual(try fs.attributes(of: fs.rootInode).linkCount, rootLinks + 1)
        XCTAssertEqual(try fs.attributes(of: a).linkCount, 3)
        XCTAssertEqual(try fs.lookup("..", in: b), a)
        XCTAssertEqual(try fs.lookup(".", in: b), b)
        _ = try fs.create("f", in: b, type: .regular, permissions: 0o644, uid: 0, gid: 0)
        XCTAssertFSError(.directoryNotEmpty, try fs.removeDirectory("b", in: a))
        XCTAssertFSError(.notDirectory, try fs.removeDirectory("f", in: b))
        XCTAssertFSError(.isDirectory, try fs.unlink("b", in: a))
        XCTAssertFSError(.invalidArgument, try fs.removeDirectory(".", in: b))
        XCTAssertFSError(.directoryNotEmpty, try fs.removeDirectory("..", in: b))
        let f = try fs.unlink("f", in: b)
        try fs.evict(f)
        XCTAssertEqual(try fs.removeDirectory("b", in: a), b)
        try fs.evict(b)
        XCTAssertEqual(try fs.attributes(of: a).linkCount, 2)
        XCTAssertFSError(.noSuchFileOrDirectory, try fs.lookup("b", in: a))
        // Many entries: the directory grows past one block and shrinks by merging records.
        for index in 0..<300 { _ = try fs.create(try FileName("file-number-\(index)"), in: a, type: .regular, permissions: 0o600, uid: 0, gid: 0) }
        XCTAssertGreaterThan(try fs.attributes(of: a).size, 2048)
        for index in stride(from: 0, to: 300, by: 2) { try fs.evict(try fs.unlink(try FileName("file-number-\(index)"), in: a)) }
        XCTAssertEqual(try fs.entries(a).count, 150 + 2)
        try fs.unmount()
        try assertClean(image)
        XCTAssertEqual(statField(try debugfs(image, "stat /a"), "Links"), "2")
    }

    /// An open-but-unlinked file keeps its blocks until evict.
    func testUnlinkKeepsTheInodeUntilEvict() throws {
        let image = try makeImage()
        let fs = try mount(image)
        let free0 = try fs.statistics()
        let file = try fs.create("victim", in: fs.rootInode, type: .regular, permissions: 0o644, uid: 0, gid: 0)
        let data = pattern(40_000, seed: 9)
        try fs.write(file, at: 0, data)
        let used = try fs.statistics()
        XCTAssertEqual(try fs.unlink("victim", in: fs.rootInode), file)
        XCTAssertFSError(.noSuchFileOrDirectory, try fs.lookup("victim", in: fs.rootInode))
        XCTAssertEqual(try fs.attributes(of: file).linkCount, 0)
        XCTAssertEqual(try fs.readAll(file), data, "data stays readable until evict")
        XCTAssertEqual(try fs.statistics().freeBlocks, used.freeBlocks)
        try fs.write(file, at: 40_000, [7])
        try fs.evict(file)
        XCTAssertEqual(try fs.statistics().freeBlocks, free0.freeBlocks)
        XCTAssertEqual(try fs.statistics().freeInodes, free0.freeInodes)
        // One left unevicted is freed by unmount (and logged), so the image stays clean.
        let forgotten = try fs.create("forgotten", in: fs.rootInode, type: .regular, permissions: 0o644, uid: 0, gid: 0)
        try fs.write(forgotten, at: 0, data)
        _ = try fs.unlink("forgotten", in: fs.rootInode)
        // Evict of a linked inode is a no-op.
        let kept = try fs.create("kept", in: fs.rootInode, type: .regular, permissions: 0o644, uid: 0, gid: 0)
        try fs.evict(kept)
        XCTAssertEqual(try fs.lookup("kept", in: fs.rootInode), kept)
        try fs.unmount()
        XCTAssertTrue(logLines.contains { $0.contains("inode \(forgotten) was unlinked but never evicted") }, "\(logLines)")
        try assertClean(image)
    }

    func testRenameFilesAndDirectories() throws {
        let image = try makeImage(blockSize: 4096)
        let fs = try mount(image)
        let root = fs.rootInode
        let a = try fs.makeDirectory("a", in: root, permissions: 0o755, uid: 0, gid: 0)
        let b = try fs.makeDirectory("b", in: root, permissions: 0o755, uid: 0, gid: 0)
        let file = try fs.create("f", in: a, type: .regular, permissions: 0o644, uid: 0, gid: 0)
        try fs.write(file, at: 0, Array("payload".utf8))
        // Same directory, then across directories.
        XCTAssertNil(try fs.rename("f", in: a, to: "g", in: a))
        XCTAssertEqual(try fs.lookup("g", in: a), file)
        XCTAssertNil(try fs.rename("g", in: a, to: "h", in: b))
        XCTAssertEqual(try fs.lookup("h", in: b), file)
        XCTAssertFSError(.noSuchFileOrDirectory, try fs.lookup("g", in: a))
        // Replacing a file: the old target loses its link and is returned.
        let other = try fs.create("other", in: b, type: .regular, permissions: 0o644, uid: 0, gid: 0)
        XCTAssertEqual(try fs.rename("h", in: b, to: "other", in: b), other)
        XCTAssertEqual(try fs.attributes(of: other).linkCount, 0)
        try fs.evict(other)
        XCTAssertEqual(try fs.readAll(fs.resolve("/b/other")), Array("payload".utf8))
        // A hard link renamed onto its twin: nothing happens.
        try fs.link(file, as: "twin", in: b)
        XCTAssertNil(try fs.rename("twin", in: b, to: "other", in: b))
        XCTAssertEqual(try fs.lookup("twin", in: b), file)
        XCTAssertEqual(try fs.unlink("twin", in: b), file)
        // Directories across parents: ".." follows, link counts move.
        let sub = try fs.makeDirectory("sub", in: a, permissions: 0o755, uid: 0, gid: 0)
        _ = try fs.create("inside", in: sub, type: .regular, permissions: 0o644, uid: 0, gid: 0)
        XCTAssertNil(try fs.rename("sub", in: a, to: "moved", in: b))
        XCTAssertEqual(try fs.lookup("..", in: sub), b)
        XCTAssertEqual(try fs.attributes(of: a).linkCount, 2)
        XCTAssertEqual(try fs.attributes(of: b).linkCount, 3)
        // Into its own subtree: EINVAL.
        let deep = try fs.makeDirectory("deep", in: sub, permissions: 0o755, uid: 0, gid: 0)
        XCTAssertFSError(.invalidArgument, try fs.rename("moved", in: b, to: "x", in: deep))
        XCTAssertFSError(.invalidArgument, try fs.rename("moved", in: b, to: "x", in: sub))
        // Kinds must match; a non-empty directory is not replaced.
        let empty = try fs.makeDirectory("empty", in: a, permissions: 0o755, uid: 0, gid: 0)
        XCTAssertFSError(.notDirectory, try fs.rename("moved", in: b, to: "other", in: b))
        XCTAssertFSError(.isDirectory, try fs.rename("other", in: b, to: "empty", in: a))
        XCTAssertFSError(.directoryNotEmpty, try fs.rename("empty", in: a, to: "moved", in: b))
        XCTAssertFSError(.noSuchFileOrDirectory, try fs.rename("missing", in: a, to: "x", in: a))
        XCTAssertFSError(.invalidArgument, try fs.rename("..", in: a, to: "x", in: a))
        // Replacing an empty directory by a directory from another parent.
        XCTAssertEqual(try fs.rename("moved", in: b, to: "empty", in: a), empty)
        XCTAssertEqual(try fs.attributes(of: empty).linkCount, 0)
        try fs.evict(empty)
        XCTAssertEqual(try fs.lookup("..", in: sub), a)
        XCTAssertEqual(try fs.attributes(of: a).linkCount, 3)
        XCTAssertEqual(try fs.attributes(of: b).linkCount, 2)
        try fs.unmount()
        try assertClean(image)
        XCTAssertTrue(try debugfs(image, "ls -l /a/empty").contains("inside"))
        XCTAssertEqual(try debugfsContents(image, "/b/other"), Array("payload".utf8))
    }

    func testHardLinks() throws {
        let image = try makeImage()
        let fs = try mount(image)
        let file = try fs.create("one", in: fs.rootInode, type: .regular, permissions: 0o644, uid: 0, gid: 0)
        let dir = try fs.makeDirectory("d", in: fs.rootInode, permissions: 0o755, uid: 0, gid: 0)
        try fs.write(file, at: 0, Array("shared".utf8))
        try fs.link(file, as: "two", in: dir)
        XCTAssertEqual(try fs.attributes(of: file).linkCount, 2)
        XCTAssertFSError(.notPermitted, try fs.link(dir, as: "dirlink", in: fs.rootInode))
        XCTAssertFSError(.fileExists, try fs.link(file, as: "one", in: fs.rootInode))
        XCTAssertEqual(try fs.unlink("one", in: fs.rootInode), file)
        try fs.evict(file)  // still linked from d/two: a no-op
        XCTAssertEqual(try fs.readAll(fs.resolve("/d/two")), Array("shared".utf8))
        try fs.link(file, as: "three", in: fs.rootInode)
        try fs.unmount()
        try assertClean(image)
        XCTAssertEqual(statField(try debugfs(image, "stat /d/two"), "Links"), "2")
        XCTAssertEqual(try debugfsContents(image, "/three"), Array("shared".utf8))
    }

    func testFastAndSlowSymbolicLinks() throws {
        for blockSize in [1024, 4096] {
            let image = try makeImage("links-\(blockSize).img", blockSize: blockSize)
            let fs = try mount(image)
            let short = Array("../short/target".utf8)
            let long = Array((String(repeating: "x", count: 59) + "/" + String(repeating: "y", count: 200)).utf8)
            let fast = try fs.makeSymbolicLink("fast", in: fs.rootInode, target: short, uid: 5, gid: 6)
            let slow = try fs.makeSymbolicLink("slow", in: fs.rootInode, target: long, uid: 5, gid: 6)
            XCTAssertEqual(try fs.readSymbolicLink(fast), short)
            XCTAssertEqual(try fs.readSymbolicLink(slow), long)
            XCTAssertEqual(try fs.attributes(of: fast).blocks512, 0)
            XCTAssertEqual(try fs.attributes(of: slow).blocks512, UInt64(blockSize / 512))
            XCTAssertEqual(try fs.attributes(of: slow).type, .symbolicLink)
            XCTAssertFSError(.noSuchFileOrDirectory, try fs.makeSymbolicLink("empty", in: fs.rootInode, target: [], uid: 0, gid: 0))
            XCTAssertFSError(.fileNameTooLong, try fs.makeSymbolicLink("huge", in: fs.rootInode, target: [UInt8](repeating: 0x61, count: blockSize), uid: 0, gid: 0))
            XCTAssertFSError(.invalidArgument, try fs.readSymbolicLink(fs.rootInode))
            try fs.unmount()
            try assertClean(image)
            XCTAssertTrue(try debugfs(image, "stat /fast").contains("Fast link dest: \"../short/target\""))
            XCTAssertEqual(try debugfsContents(image, "/slow"), long)
            // Removing both frees what the slow one held.
            let again = try mount(image)
            try again.evict(try again.unlink("slow", in: again.rootInode))
            try again.evict(try again.unlink("fast", in: again.rootInode))
            try again.unmount()
            try assertClean(image)
        }
    }

    func testChmodChownUtimes() throws {
        let image = try makeImage(blockSize: 1024, kib: 4096, options: ["-I", "256"])
        let fs = try mount(image)
        let file = try fs.create("f", in: fs.rootInode, type: .regular, permissions: 0o644, uid: 0, gid: 0)
        let changed = try fs.setAttributes(of: file, AttributeChanges(
            permissions: 0o4751, uid: 70000, gid: 1234,
            accessTime: FileTime(seconds: 1_000_000_000, nanoseconds: 5), modificationTime: FileTime(seconds: 1_234_567_890, nanoseconds: 123_456_789)))
        XCTAssertEqual(changed.permissions, 0o4751)
        XCTAssertEqual(changed.uid, 70000)
        XCTAssertEqual(changed.modificationTime, FileTime(seconds: 1_234_567_890, nanoseconds: 123_456_789))
        // Times before 1970 and past 2038 round-trip in 256-byte inodes (epoch bits); absurd ones
        // are stored truncated, not trapped on.
        for seconds: Int64 in [-1, -2_000_000_000, 5_000_000_000, Int64.max, Int64.min] {
            let set = try fs.setAttributes(of: file, AttributeChanges(modificationTime: FileTime(seconds: seconds, nanoseconds: 999_999_999)))
            if seconds > -(1 << 33) && seconds < 1 << 33 { XCTAssertEqual(set.modificationTime, FileTime(seconds: seconds, nanoseconds: 999_999_999)) }
        }
        _ = try fs.setAttributes(of: file, AttributeChanges(modificationTime: FileTime(seconds: 1_234_567_890, nanoseconds: 123_456_789)))
        let node = try fs.create("pipe", in: fs.rootInode, type: .fifo, permissions: 0o600, uid: 1, gid: 1)
        XCTAssertEqual(try fs.attributes(of: node).type, .fifo)
        XCTAssertFSError(.invalidArgument, try fs.create("d", in: fs.rootInode, type: .directory, permissions: 0o600, uid: 1, gid: 1))
        for (name, type) in [("chr", FileType.characterDevice), ("blk", .blockDevice), ("sock", .socket)] {
            XCTAssertEqual(try fs.attributes(of: fs.create(try FileName(name), in: fs.rootInode, type: type, permissions: 0o600, uid: 0, gid: 0)).type, type)
        }
        try fs.unmount()
        try assertClean(image)
        let stat = try debugfs(image, "stat /f")
        XCTAssertEqual(statField(stat, "Mode"), "04751")
        XCTAssertEqual(statField(stat, "User"), "70000")
        XCTAssertEqual(statField(stat, "Group"), "1234")
        XCTAssertEqual(statTime(stat, "mtime"), 1_234_567_890)
        XCTAssertEqual(statTime(stat, "atime"), 1_000_000_000)
        XCTAssertTrue(try debugfs(image, "stat /pipe").contains("Type: FIFO"))
    }

    /// Filling the disk gives ENOSPC (a short write first), leaves it consistent, and freeing
    /// space makes writes work again.
    func testENOSPCAndRecovery() throws {
        let image = try makeImage(blockSize: 1024, kib: 1024)
        let fs = try mount(image)
        let file = try fs.create("fill", in: fs.rootInode, type: .regular, permissions: 0o644, uid: 0, gid: 0)
        let chunk = pattern(64 * 1024, seed: 3)
        var total: UInt64 = 0
        var sawShortWrite = false
        while true {
            do {
                let n = try fs.write(file, at: total, chunk)
                total += UInt64(n)
                if n < chunk.count { sawShortWrite = true }
            } catch {
                XCTAssertEqual(error.errno, .noSpace)
                break
            }
        }
        XCTAssertTrue(sawShortWrite)
        XCTAssertEqual(try fs.statistics().freeBlocks, 0)
        XCTAssertFSError(.noSpace, try fs.makeDirectory("d", in: fs.rootInode, permissions: 0o755, uid: 0, gid: 0))
        XCTAssertEqual(try fs.attributes(of: file).size, total)
        XCTAssertEqual(try fs.read(file, at: total - 100, count: 100), Array(chunk[Int((total - 100) % UInt64(chunk.count))...].prefix(100)))
        try fs.sync()
        try assertClean(image)
        try fs.truncate(file, to: total / 2)
        let small = try fs.create("small", in: fs.rootInode, type: .regular, permissions: 0o644, uid: 0, gid: 0)
        XCTAssertEqual(try fs.write(small, at: 0, chunk), chunk.count)
        _ = try fs.makeDirectory("d", in: fs.rootInode, permissions: 0o755, uid: 0, gid: 0)
        try fs.unmount()
        try assertClean(image)
        XCTAssertEqual(try debugfsContents(image, "/small"), chunk)
    }

    /// Running out of inodes is ENOSPC too, and nothing leaks on the way.
    func testInodeExhaustion() throws {
        let image = try makeImage(blockSize: 1024, kib: 2048, options: ["-N", "32"])
        let fs = try mount(image)
        var made: [FileName] = []
        while true {
            let name = try FileName("n\(made.count)")
            do {
                if made.count % 3 == 0 {
                    _ = try fs.makeDirectory(name, in: fs.rootInode, permissions: 0o755, uid: 0, gid: 0)
                } else {
                    _ = try fs.create(name, in: fs.rootInode, type: .regular, permissions: 0o644, uid: 0, gid: 0)
                }
                made.append(name)
            } catch {
                XCTAssertEqual(error.errno, .noSpace)
                break
            }
        }
        XCTAssertEqual(try fs.statistics().freeInodes, 0)
        XCTAssertGreaterThan(made.count, 10)
        try fs.sync()
        try assertClean(image)
        for (index, name) in made.enumerated() {
            try fs.evict(index % 3 == 0 ? try fs.removeDirectory(name, in: fs.rootInode) : try fs.unlink(name, in: fs.rootInode))
        }
        XCTAssertEqual(try fs.statistics().freeInodes, 32 - 11)
        try fs.unmount()
        try assertClean(image)
    }

    /// Files with an extended-attribute block (ext_attr, i_file_acl; 128-byte inodes keep
    /// attributes there): shared blocks lose one reference per evicted inode, the last frees it.
    func testExtendedAttributeBlocksAreReleased() throws {
        let image = try makeImage(blockSize: 1024, kib: 2048, options: ["-I", "128"])
        let setup = try mount(image)
        for name in ["one", "two"] {
            let file = try setup.create(try FileName(name), in: setup.rootInode, type: .regular, permissions: 0o644, uid: 0, gid: 0)
            try setup.write(file, at: 0, pattern(3000, seed: 1))
        }
        try setup.unmount()
        for name in ["one", "two"] {
            _ = try runTool("/usr/sbin/debugfs", ["-w", "-R", "ea_set /\(name) user.note same-value", image])
        }
        try assertClean(image)
        let acl = try XCTUnwrap(statField(try debugfs(image, "stat /one"), "File ACL"))
        let shared = statField(try debugfs(image, "stat /two"), "File ACL") == acl
        XCTAssertNotEqual(acl, "0", "debugfs put the attribute in a block")
        let fs = try mount(image)
        let before = try fs.statistics().freeBlocks
        let one = try fs.resolve("/one")
        XCTAssertEqual(try fs.attributes(of: one).blocks512, 3 * 2 + 2, "three data blocks and the attribute block")
        try fs.evict(try fs.unlink("one", in: fs.rootInode))
        try fs.evict(try fs.unlink("two", in: fs.rootInode))
        // Six data blocks, and one attribute block if the two inodes shared it (else two).
        XCTAssertEqual(try fs.statistics().freeBlocks - before, shared ? 7 : 8)
        try fs.unmount()
        try assertClean(image)
    }

    func testStatisticsAgreeWithDumpe2fs() throws {
        let image = try makeImage(blockSize: 2048, kib: 8192)
        let fs = try mount(image)
        let dir = try fs.makeDirectory("d", in: fs.rootInode, permissions: 0o755, uid: 0, gid: 0)
        let file = try fs.create("f", in: dir, type: .regular, permissions: 0o644, uid: 0, gid: 0)
        try fs.write(file, at: 0, pattern(100_000, seed: 1))
        let stats = try fs.statistics()
        try fs.unmount()
        try assertClean(image)
        XCTAssertEqual(stats.blockSize, 2048)
        XCTAssertEqual(stats.totalBlocks, try dumpe2fsField(image, "Block count"))
        XCTAssertEqual(stats.freeBlocks, try dumpe2fsField(image, "Free blocks"))
        XCTAssertEqual(stats.totalInodes, try dumpe2fsField(image, "Inode count"))
        XCTAssertEqual(stats.freeInodes, try dumpe2fsField(image, "Free inodes"))
        XCTAssertEqual(stats.freeBlocks - stats.availableBlocks, try dumpe2fsField(image, "Reserved block count"))
        XCTAssertEqual(stats.maxNameLength, 255)
    }

    func testMountStateAndReadOnly() throws {
        let image = try makeImage()
        let count0 = try dumpe2fsField(image, "Mount count") ?? 0
        let fs = try mount(image)
        let result = try runTool("/usr/sbin/dumpe2fs", ["-h", image])
        XCTAssertTrue(result.output.contains("Filesystem state:         not clean"), result.output)
        XCTAssertEqual(try dumpe2fsField(image, "Mount count"), count0 + 1)
        try fs.unmount()
        XCTAssertTrue(try runTool("/usr/sbin/dumpe2fs", ["-h", image]).output.contains("Filesystem state:         clean"))
        XCTAssertFSError(.badFileDescriptor, try fs.statistics())

        let ro = try mount(image, readOnly: true)
        XCTAssertTrue(ro.isReadOnly)
        XCTAssertFSError(.readOnlyFileSystem, try ro.create("x", in: ro.rootInode, type: .regular, permissions: 0o644, uid: 0, gid: 0))
        XCTAssertFSError(.readOnlyFileSystem, try ro.makeDirectory("x", in: ro.rootInode, permissions: 0o755, uid: 0, gid: 0))
        XCTAssertFSError(.readOnlyFileSystem, try ro.setAttributes(of: ro.rootInode, AttributeChanges(permissions: 0o700)))
        XCTAssertFSError(.readOnlyFileSystem, try ro.rename("lost+found", in: ro.rootInode, to: "y", in: ro.rootInode))
        XCTAssertFSError(.readOnlyFileSystem, try ro.removeDirectory("lost+found", in: ro.rootInode))
        XCTAssertFSError(.readOnlyFileSystem, try ro.truncate(ro.rootInode, to: 0))
        try ro.unmount()
        XCTAssertEqual(try dumpe2fsField(image, "Mount count"), count0 + 1, "a read-only mount writes nothing")
        try assertClean(image)
    }

    /// Unknown INCOMPAT features refuse the mount, naming them; unknown RO_COMPAT ones force
    /// read-only and say so in the log.
    func testFeatureChecks() throws {
        let image = try makeImage()
        func patchSuperblockWord(_ offset: UInt64, or bits: UInt32) throws {
            let handle = try FileHandle(forUpdating: URL(fileURLWithPath: image))
            defer { try? handle.close() }
            try handle.seek(toOffset: 1024 + offset)
            var word = try handle.read(upToCount: 4)!.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
            word |= bits
            try handle.seek(toOffset: 1024 + offset)
            try handle.write(contentsOf: withUnsafeBytes(of: word) { Data($0) })
        }
        try patchSuperblockWord(96, or: 0x8000_0040)  // extent + an unassigned bit
        do {
            _ = try mount(image)
            XCTFail("mounted with unknown incompatible features")
        } catch let error as FSError {
            XCTAssertEqual(error.errno, .notSupported)
            XCTAssertTrue(error.detail.contains("extent"), error.detail)
            XCTAssertTrue(error.detail.contains("0x80000000"), error.detail)
        }
        XCTAssertTrue(logLines.contains { $0.contains("extent") })

        let second = try makeImage("ro.img")
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: second))
        try handle.seek(toOffset: 1024 + 100)
        var word = try handle.read(upToCount: 4)!.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
        word |= 0x0100_0000
        try handle.seek(toOffset: 1024 + 100)
        try handle.write(contentsOf: withUnsafeBytes(of: word) { Data($0) })
        try handle.close()
        logLines = []
        let fs = try mount(second)
        XCTAssertTrue(fs.isReadOnly)
        XCTAssertTrue(logLines.contains { $0.contains("read-only") && $0.contains("0x1000000") }, "\(logLines)")
        XCTAssertFSError(.readOnlyFileSystem, try fs.create("x", in: fs.rootInode, type: .regular, permissions: 0o644, uid: 0, gid: 0))
        XCTAssertNoThrow(try fs.entries(fs.rootInode))
        try fs.unmount()
    }
}
