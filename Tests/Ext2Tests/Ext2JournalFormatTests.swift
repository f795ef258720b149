import PlatformTestSupport
import Foundation
import SystemPackage
import VFSCore
import XCTest
@testable import Ext2

/// Journal features this implementation does not write or replay, and what e2fsprogs reads of
/// the journal we write.
final class Ext2JournalFormatTests: Ext2TestCase {
    /// Sets big-endian word `offset` of the journal superblock (journal block 0).
    func setJournalSuperblockWord(_ image: String, _ offset: Int, _ value: UInt32) throws {
        let bmap = try debugfs(image, "bmap <8> 0").split(separator: "\n").last.map(String.init) ?? ""
        let block = try XCTUnwrap(UInt64(bmap.trimmingCharacters(in: .whitespaces)), "debugfs bmap said \(bmap)")
        let handle = try XCTUnwrap(FileHandle(forUpdatingAtPath: image))
        defer { try? handle.close() }
        try handle.seek(toOffset: block * 1024 + UInt64(offset))
        try handle.write(contentsOf: withUnsafeBytes(of: value.bigEndian) { Data($0) })
    }

    /// An empty journal with checksum v3: mounted read-only, the feature named. One that also
    /// holds transactions: refused (they cannot be replayed), the feature named.
    func testUnknownJournalFeaturesAreNamed() throws {
        let image = try makeImage("csum.img", blockSize: 1024, kib: 4096, type: "ext3")
        try setJournalSuperblockWord(image, 40, JournalFormat.incompatCsumV3)
        let fs = try mount(image)
        XCTAssertTrue(fs.isReadOnly)
        XCTAssertTrue(logLines.contains { $0.contains("mounting read-only") && $0.contains("journal_checksum_v3") }, "\(logLines)")
        XCTAssertFSError(.readOnlyFileSystem, try fs.create("x", in: fs.rootInode, type: .regular, permissions: 0o644, uid: 0, gid: 0))
        try fs.unmount()

        try setJournalSuperblockWord(image, 28, 1)  // s_start: the log holds transactions
        logLines = []
        XCTAssertFSError(.notSupported, try mount(image))
        XCTAssertTrue(logLines.contains { $0.contains("refusing to mount") && $0.contains("journal_checksum_v3") }, "\(logLines)")
    }

    /// The type df and the mount log show: "ext3" for an image with a journal (read-write or
    /// read-only), "ext2" for one without, and for the same image after `tune2fs -O ^has_journal`.
    func testTypeNameIsExt3WithAJournalAndExt2Without() throws {
        let journalled = try makeImage("typed3.img", blockSize: 1024, kib: 4096, type: "ext3")
        let readWrite = try mount(journalled)
        XCTAssertEqual(readWrite.typeName, "ext3")
        try readWrite.unmount()
        let readOnly = try mount(journalled, readOnly: true)
        XCTAssertEqual(readOnly.typeName, "ext3")
        try readOnly.unmount()
        XCTAssertEqual(try runTool("/usr/sbin/tune2fs", ["-O", "^has_journal", journalled]).status, 0)
        let stripped = try mount(journalled)
        XCTAssertEqual(stripped.typeName, "ext2")
        try stripped.unmount()
        let plain = try mount(try makeImage("typed2.img", blockSize: 1024, kib: 4096, type: "ext2"))
        XCTAssertEqual(plain.typeName, "ext2")
        try plain.unmount()
    }

    /// A journalled mount sets needs_recovery until unmount; a sync commits and checkpoints (the
    /// log is empty again, as e2fsprogs' logdump reads it); a clean unmount clears the flag and
    /// e2fsck finds the image clean.
    func testNeedsRecoveryWhileMountedAndCleanAfterUnmount() throws {
        let image = try makeImage("flag.img", blockSize: 1024, kib: 4096, type: "ext3")
        let crashing = CrashingStore(bytes: try [UInt8](Data(contentsOf: URL(fileURLWithPath: image))), crashAfter: .max)
        let fs = try Ext2.mount(store: crashing, readOnly: false) { _ in }
        try Data(crashing.backing.bytes).write(to: URL(fileURLWithPath: image))
        XCTAssertTrue(try runTool("/usr/sbin/dumpe2fs", ["-h", image]).output.contains("needs_recovery"))
        let file = try fs.create("f", in: fs.rootInode, type: .regular, permissions: 0o644, uid: 0, gid: 0)
        _ = try fs.write(file, at: 0, pattern(5000, seed: 3))
        try fs.sync()
        // The committed transaction is checkpointed and the log marked empty.
        try Data(crashing.backing.bytes).write(to: URL(fileURLWithPath: image))
        XCTAssertTrue(try debugfs(image, "logdump").contains("Journal starts at block 0"))
        try fs.unmount()
        try Data(crashing.backing.bytes).write(to: URL(fileURLWithPath: image))
        XCTAssertFalse(try runTool("/usr/sbin/dumpe2fs", ["-h", image]).output.contains("needs_recovery"))
        try assertClean(image)
        XCTAssertEqual(try debugfsContents(image, "/f"), pattern(5000, seed: 3))
    }

    /// A file unlinked while open (the VFS has not evicted it) when the server dies: the orphan
    /// list on disk names it, so e2fsprogs repairs nothing but that list, and our next mount keeps
    /// the inode readable (a restored descriptor may still use it) until it is evicted.
    func testUnlinkedOpenFileSurvivesACrashOnTheOrphanList() throws {
        let image = try makeImage("orphan.img", blockSize: 1024, kib: 4096, type: "ext3")
        let store = CrashingStore(bytes: try [UInt8](Data(contentsOf: URL(fileURLWithPath: image))), crashAfter: .max)
        let fs = try Ext2.mount(store: store, readOnly: false) { _ in }
        for name in ["kept", "open1", "open2"] {
            let file = try fs.create(FileName(name), in: fs.rootInode, type: .regular, permissions: 0o644, uid: 0, gid: 0)
            _ = try fs.write(file, at: 0, pattern(20_000, seed: 7))
        }
        let open1 = try fs.unlink("open1", in: fs.rootInode)
        let open2 = try fs.unlink("open2", in: fs.rootInode)
        try fs.sync()
        // The crash: the process is gone, the store keeps what was written.
        try Data(store.backing.bytes).write(to: URL(fileURLWithPath: image))
        let copy = directory + "/orphan-e2fsck.img"
        try FileManager.default.copyItem(atPath: image, toPath: copy)
        let repaired = try runTool("/usr/sbin/e2fsck", ["-fy", copy])
        XCTAssertTrue(repaired.status == 0 || repaired.status == 1, "e2fsck -fy: \(repaired.output)")
        XCTAssertTrue(repaired.output.contains("orphan"), "e2fsck -fy says nothing of the orphans:\n\(repaired.output)")
        try assertClean(copy)

        let again = try mount(image)
        XCTAssertTrue(logLines.contains { $0.contains("2 orphan inodes") }, "\(logLines)")
        XCTAssertEqual(try again.readAll(open1), pattern(20_000, seed: 7), "a restored descriptor still reads the unlinked file")
        try again.evict(open1)
        try again.unmount()  // frees open2, never evicted
        try assertClean(image)
        XCTAssertEqual(try dumpe2fsField(image, "Free inodes"), try dumpe2fsField(copy, "Free inodes"))
        XCTAssertEqual(try dumpe2fsField(image, "Free blocks"), try dumpe2fsField(copy, "Free blocks"))
        _ = open2
    }

    /// A log written by hand in the jbd2 format, as the kernel would leave it: transaction s
    /// logs blocks A (an escaped copy: it starts with the magic number) and B; s+1 logs C and
    /// revokes B; s+2 logs D but has no commit block. Our replay and e2fsck's must agree: A as
    /// logged (magic restored), B untouched (revoked), C as logged, D untouched (uncommitted).
    func testReplayOfSeveralTransactionsWithRevokeAndEscapeMatchesE2fsck() throws {
        let image = try makeImage("handmade.img", blockSize: 1024, kib: 4096, type: "ext3")
        let (a, b, c, d): (UInt32, UInt32, UInt32, UInt32) = (3900, 3901, 3902, 3903)
        for block in [a, b, c, d] {
            XCTAssertTrue(try debugfs(image, "testb \(block)").contains("not in use"), "block \(block) is in use")
        }
        func journalBlock(_ index: Int) throws -> UInt64 {
            let line = try debugfs(image, "bmap <8> \(index)").split(separator: "\n").last.map(String.init) ?? ""
            return try XCTUnwrap(UInt64(line.trimmingCharacters(in: .whitespaces)), "bmap said \(line)")
        }
        var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: image)))
        func put(_ block: UInt64, _ contents: [UInt8]) { bytes.replaceSubrange(Int(block) * 1024..<Int(block + 1) * 1024, with: contents) }
        func header(_ type: UInt32, _ sequence: UInt32) -> [UInt8] {
            var block = [UInt8](repeating: 0, count: 1024)
            JournalFormat.Header(blockType: type, sequence: sequence).store(into: &block)
            return block
        }
        func descriptor(_ sequence: UInt32, _ tags: [(UInt32, UInt32)]) -> [UInt8] {
            var block = header(JournalFormat.descriptorBlock, sequence)
            var offset = 12
            for (n, (target, flags)) in tags.enumerated() {
                block.setBE32(offset, target)
                block.setBE32(offset + 4, flags | (n == 0 ? 0 : JournalFormat.flagSameUUID) | (n == tags.count - 1 ? JournalFormat.flagLastTag : 0))
                offset += n == 0 ? 8 + 16 : 8
            }
            return block
        }
        let s: UInt32 = 7
        let original = Dictionary(uniqueKeysWithValues: [a, b, c, d].map { ($0, Array(bytes[Int($0) * 1024..<Int($0 + 1) * 1024])) })
        var copyA = pattern(1024, seed: 11)
        copyA.setBE32(0, JournalFormat.magic)
        var escapedA = copyA
        escapedA.setBE32(0, 0)
        let copyB = pattern(1024, seed: 12), copyC = pattern(1024, seed: 13), copyD = pattern(1024, seed: 14)
        var revoke = header(JournalFormat.revokeBlock, s + 1)
        revoke.setBE32(12, 16 + 4)
        revoke.setBE32(16, b)
        let log: [[UInt8]] = [
            descriptor(s, [(a, JournalFormat.flagEscape), (b, 0)]), escapedA, copyB, header(JournalFormat.commitBlock, s),
            descriptor(s + 1, [(c, 0)]), copyC, revoke, header(JournalFormat.commitBlock, s + 1),
            descriptor(s + 2, [(d, 0)]), copyD,
        ]
        for (index, block) in log.enumerated() { put(try journalBlock(1 + index), block) }
        // The journal superblock: s_sequence and s_start; the revoke feature; needs_recovery.
        let superblockAt = Int(try journalBlock(0)) * 1024
        var journalSuper = Array(bytes[superblockAt..<superblockAt + 1024])
        journalSuper.setBE32(24, s)
        journalSuper.setBE32(28, 1)
        journalSuper.setBE32(40, JournalFormat.incompatRevoke)
        bytes.replaceSubrange(superblockAt..<superblockAt + 1024, with: journalSuper)
        bytes[1024 + 96] |= UInt8(Features.incompatRecover)
        try Data(bytes).write(to: URL(fileURLWithPath: image))
        XCTAssertTrue(try debugfs(image, "logdump").contains("Found expected sequence 8, type 2 (commit block)"))

        let theirs = directory + "/handmade-e2fsck.img"
        try FileManager.default.copyItem(atPath: image, toPath: theirs)
        let fsck = try runTool("/usr/sbin/e2fsck", ["-fy", theirs])
        XCTAssertTrue(fsck.status == 0 || fsck.status == 1, "e2fsck -fy exit \(fsck.status):\n\(fsck.output)")
        logLines = []
        try mount(image).unmount()
        XCTAssertTrue(logLines.contains { $0.contains("replayed 2 committed transactions (sequence 7...8), 2 blocks, 1 revoked") }, "\(logLines)")
        try assertClean(image)
        let ours = try [UInt8](Data(contentsOf: URL(fileURLWithPath: image)))
        let e2fsck = try [UInt8](Data(contentsOf: URL(fileURLWithPath: theirs)))
        func block(_ bytes: [UInt8], _ number: UInt32) -> [UInt8] { Array(bytes[Int(number) * 1024..<Int(number + 1) * 1024]) }
        XCTAssertEqual(block(ours, a), copyA, "A replayed with its magic number restored")
        XCTAssertEqual(block(ours, b), original[b], "B revoked")
        XCTAssertEqual(block(ours, c), copyC)
        XCTAssertEqual(block(ours, d), original[d], "D's transaction never committed")
        for number in [a, b, c, d] { XCTAssertEqual(block(ours, number), block(e2fsck, number), "block \(number): our replay and e2fsck's differ") }
    }

    /// A log left by a crash, damaged at random (bytes of the journal superblock, descriptors,
    /// copies, commit blocks flipped): every mount either replays and works or fails with an
    /// FSError naming the problem, never a trap.
    func testDamagedLogsNeverTrap() throws {
        let image = try makeImage("flips.img", blockSize: 1024, kib: 4096, type: "ext3")
        let clean = try [UInt8](Data(contentsOf: URL(fileURLWithPath: image)))
        // The first crash point that leaves a committed transaction in the log.
        var crashed: [UInt8]? = nil
        for limit in 1...200 where crashed == nil {
            let store = CrashingStore(bytes: clean, crashAfter: limit)
            var workload = Ext2JournalTests.Workload()
            do { try workload.run(try Ext2.mount(store: store, readOnly: false) { _ in }) } catch {}
            try Data(store.backing.bytes).write(to: URL(fileURLWithPath: image))
            if try debugfs(image, "logdump").contains("(commit block)") { crashed = store.backing.bytes }
        }
        let base = try XCTUnwrap(crashed, "no crash point left a committed transaction")
        var logBlocks: [Int] = []
        for index in 0..<16 {
            let line = try debugfs(image, "bmap <8> \(index)").split(separator: "\n").last.map(String.init) ?? ""
            logBlocks.append(try XCTUnwrap(Int(line.trimmingCharacters(in: .whitespaces))))
        }
        var random = SplitMix(seed: 6)
        var mounted = 0, refused = 0
        for _ in 0..<300 {
            var bytes = base
            flipRandomBytes(&bytes, blocks: logBlocks, &random)
            if mountDamaged(bytes) != nil { mounted += 1 } else { refused += 1 }
        }
        print("damaged logs: \(mounted) mounted (replayed what still read as committed), \(refused) refused with an error")
        // Both ways out were taken: the flips reached what the replay checks.
        XCTAssertGreaterThan(mounted, 0)
        XCTAssertGreaterThan(refused, 0)
    }
}
