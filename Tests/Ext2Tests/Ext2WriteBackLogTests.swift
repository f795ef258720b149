import PlatformTestSupport
import Foundation
import SystemPackage
import VFSCore
import XCTest
@testable import Ext2

/// The write-back log of a plain ext2 mount (WriteBackLog.swift) apart from crashes (those are
/// in Ext2JournalTests): which logs are refused and what the mount does then, and that the image
/// stays plain ext2.
final class Ext2WriteBackLogTests: Ext2TestCase {
    func newLog() -> MemoryBlockStore { MemoryBlockStore(bytes: [UInt8](repeating: 0, count: 256 << 10)) }

    /// Mounts `image` read-write without a log and leaves it mounted (as a crash would): s_state
    /// says not cleanly unmounted.
    func leaveUnclean(_ image: String) throws {
        let fs = try mount(image)
        _ = try fs.create("x", in: fs.rootInode, type: .regular, permissions: 0o644, uid: 0, gid: 0)
        try fs.sync()
        let state = try fileSystemState(image)
        XCTAssertTrue(state.contains("not clean"), state)
    }

    func fileSystemState(_ image: String) throws -> String {
        try runTool("/usr/sbin/dumpe2fs", ["-h", image]).output.split(separator: "\n")
            .first { $0.hasPrefix("Filesystem state:") }.map(String.init) ?? ""
    }

    /// A new log (all zero) gets a jbd2 superblock naming the file system's UUID; the mount says
    /// which protection it has; the image keeps its features and is clean after unmount.
    func testANewLogNamesTheFileSystemAndTheImageStaysPlainExt2() throws {
        let image = try makeImage("plain.img", blockSize: 1024, kib: 4096)
        let features = try runTool("/usr/sbin/dumpe2fs", ["-h", image]).output.split(separator: "\n").first { $0.hasPrefix("Filesystem features:") }
        let log = newLog()
        let fs = try mount(image, writeBackLog: log)
        XCTAssertEqual(fs.typeName, "ext2")
        XCTAssertTrue(logLines.contains { $0.contains("write-back log in supervisor-held memory (256 KiB)") }, "\(logLines)")
        XCTAssertFalse(logLines.contains { $0.contains("no journal") }, "\(logLines)")
        let file = try fs.create("f", in: fs.rootInode, type: .regular, permissions: 0o644, uid: 0, gid: 0)
        _ = try fs.write(file, at: 0, pattern(5000, seed: 3))
        try fs.sync()
        try fs.unmount()
        XCTAssertEqual(Array(log.bytes[0..<4]), [0xC0, 0x3B, 0x39, 0x98], "jbd2 magic")
        XCTAssertEqual(JournalSuperblock(raw: Array(log.bytes[0..<1024])).uuid, fs.superblock.uuid)
        XCTAssertEqual(JournalSuperblock(raw: Array(log.bytes[0..<1024])).start, 0, "the log is empty after unmount")
        try assertClean(image)
        let after = try runTool("/usr/sbin/dumpe2fs", ["-h", image]).output.split(separator: "\n").first { $0.hasPrefix("Filesystem features:") }
        XCTAssertEqual(after, features)
        XCTAssertEqual(try debugfsContents(image, "/f"), pattern(5000, seed: 3))
    }

    /// Without a log: the old warning.
    func testWithoutALogTheMountWarnsAsBefore() throws {
        let fs = try mount(try makeImage("nolog.img", blockSize: 1024, kib: 4096))
        XCTAssertTrue(logLines.contains { $0.contains("ext2: no journal") }, "\(logLines)")
        try fs.unmount()
    }

    /// Another file system's log (another UUID) is never replayed here. On a cleanly unmounted
    /// image nothing in it can be needed: a new log starts. On one that was not cleanly
    /// unmounted the log may have been its own last commit: the mount goes read-only, saying so.
    func testAForeignLogIsRefused() throws {
        let other = try makeImage("other.img", blockSize: 1024, kib: 4096)
        let log = newLog()
        let first = try mount(other, writeBackLog: log)
        try first.unmount()
        let otherUUID = JournalSuperblock(raw: Array(log.bytes[0..<1024])).uuid

        let clean = try makeImage("clean.img", blockSize: 1024, kib: 4096)
        logLines = []
        let fs = try mount(clean, writeBackLog: log)
        XCTAssertFalse(fs.isReadOnly)
        XCTAssertTrue(logLines.contains { $0.contains("write-back log refused") && $0.contains("belongs to the file system with UUID")
            && $0.contains("starting a new log") }, "\(logLines)")
        try fs.unmount()
        XCTAssertNotEqual(JournalSuperblock(raw: Array(log.bytes[0..<1024])).uuid, otherUUID)
        XCTAssertEqual(JournalSuperblock(raw: Array(log.bytes[0..<1024])).uuid, fs.superblock.uuid)

        // The log is now clean.img's; other.img, left not cleanly unmounted, refuses it.
        try leaveUnclean(other)
        logLines = []
        let refused = try mount(other, writeBackLog: log)
        XCTAssertTrue(refused.isReadOnly)
        XCTAssertTrue(logLines.contains { $0.contains("write-back log refused") && $0.contains("mounting read-only")
            && $0.contains("e2fsck -fy") }, "\(logLines)")
        XCTAssertFSError(.readOnlyFileSystem, try refused.create("y", in: refused.rootInode, type: .regular, permissions: 0o644, uid: 0, gid: 0))
        try refused.unmount()
        XCTAssertEqual(JournalSuperblock(raw: Array(log.bytes[0..<1024])).uuid, fs.superblock.uuid, "the refused log is left as it was")
    }

    /// A damaged log (no jbd2 superblock, or one whose fields do not fit the region): refused the
    /// same way, and never trusted for a replay.
    func testADamagedLogIsRefused() throws {
        let image = try makeImage("damaged.img", blockSize: 1024, kib: 4096)
        let log = newLog()
        for index in 0..<1024 { log.bytes[index] = UInt8(truncatingIfNeeded: index &* 7 &+ 1) }
        let fs = try mount(image, writeBackLog: log)
        XCTAssertFalse(fs.isReadOnly, "a clean image needs nothing from the log")
        XCTAssertTrue(logLines.contains { $0.contains("write-back log refused: it is damaged") && $0.contains("starting a new log") }, "\(logLines)")
        try fs.unmount()

        // s_maxlen larger than the region, on an image not cleanly unmounted.
        try leaveUnclean(image)
        log.bytes.withUnsafeMutableBytes { $0.storeBytes(of: UInt32(100_000).bigEndian, toByteOffset: 16, as: UInt32.self) }
        logLines = []
        let refused = try mount(image, writeBackLog: log)
        XCTAssertTrue(refused.isReadOnly)
        XCTAssertTrue(logLines.contains { $0.contains("write-back log refused: it is damaged") && $0.contains("mounting read-only") }, "\(logLines)")
        try refused.unmount()
    }

    /// Whether the log's first transaction has its commit block (1 KiB blocks).
    func holdsACommit(_ log: BlockStore) throws -> Bool {
        let superblock = JournalSuperblock(raw: try Ext2FileSystem.readBytes(log, at: 0, count: 1024))
        guard superblock.start != 0 else { return false }
        for position in superblock.start..<superblock.maxLength {
            guard let header = JournalFormat.Header(try Ext2FileSystem.readBytes(log, at: UInt64(position) * 1024, count: 1024)),
                  header.sequence == superblock.sequence else { continue }
            if header.blockType == JournalFormat.commitBlock { return true }
        }
        return false
    }

    /// A crash of a workload on `image` at the first write after which the memory log (made by
    /// `memory` for each try) holds a committed transaction: the image then, and the log.
    func crashWithACommittedTransaction<Memory: BlockStore>(_ image: String, memory: () throws -> Memory) throws -> (image: [UInt8], log: Memory) {
        let clean = try [UInt8](Data(contentsOf: URL(fileURLWithPath: image)))
        for limit in 1...400 {
            let store = CrashingStore(bytes: clean, crashAfter: limit)
            let log = ProcessMemoryLog(memory: try memory(), process: store)
            do {
                let fs = try Ext2.mount(store: store, readOnly: false, writeBackLog: log) { _ in }
                for n in 0..<20 {
                    let file = try fs.create(FileName("f\(n)"), in: fs.rootInode, type: .regular, permissions: 0o644, uid: 0, gid: 0)
                    _ = try fs.write(file, at: 0, pattern(2000, seed: UInt8(n)))
                    try fs.sync()
                }
            } catch {}
            if try holdsACommit(log.memory) { return (store.durable, log.memory) }
        }
        throw XCTSkip("no crash point left a committed transaction in the log")
    }

    /// A log holding a committed transaction is replayed only on the image it was written for,
    /// as that mount left it: after e2fsck -fy (the image cleanly unmounted since) it is stale
    /// and a new log starts; after another mount (another s_mnt_count) it is stale and the image,
    /// not cleanly unmounted, mounts read-only. As it was left, it is replayed.
    func testAStaleLogIsNeverReplayed() throws {
        let path = try makeImage("stale.img", blockSize: 1024, kib: 4096)
        let committed = try crashWithACommittedTransaction(path) { newLog() }
        let crashed = (image: committed.image, log: committed.log.bytes)

        try Data(crashed.image).write(to: URL(fileURLWithPath: path))
        _ = try runTool("/usr/sbin/e2fsck", ["-fy", path])
        let repaired = MemoryBlockStore(bytes: crashed.log)
        let fs = try mount(path, writeBackLog: repaired)
        XCTAssertFalse(fs.isReadOnly)
        XCTAssertFalse(logLines.contains { $0.contains("replayed") }, "\(logLines)")
        XCTAssertTrue(logLines.contains { $0.contains("it is stale") && $0.contains("cleanly unmounted since") && $0.contains("starting a new log") }, "\(logLines)")
        try fs.unmount()
        try assertClean(path)

        try Data(crashed.image).write(to: URL(fileURLWithPath: path))
        let elsewhere = try mount(path)  // another mount: s_mnt_count + 1, left mounted (not clean)
        try elsewhere.sync()
        logLines = []
        let refused = try mount(path, writeBackLog: MemoryBlockStore(bytes: crashed.log))
        XCTAssertTrue(refused.isReadOnly)
        XCTAssertTrue(logLines.contains { $0.contains("it is stale") && $0.contains("mounting read-only") }, "\(logLines)")
        XCTAssertFalse(logLines.contains { $0.contains("replayed") }, "\(logLines)")

        try Data(crashed.image).write(to: URL(fileURLWithPath: path))
        logLines = []
        let replayed = try mount(path, writeBackLog: MemoryBlockStore(bytes: crashed.log))
        XCTAssertFalse(replayed.isReadOnly)
        XCTAssertTrue(logLines.contains { $0.contains("write-back log: replayed") && !$0.contains("replayed 0 blocks") }, "\(logLines)")
        try replayed.unmount()
        try assertClean(path)
    }

    /// The log in shared memory (`SharedMemoryStore`, as vfs_server maps the CAP_PAGE_CACHE
    /// memfd): a crash leaves a committed transaction there; a new mapping of the same file, as
    /// the next instance makes, replays it, and the synced files read back.
    func testALogInSharedMemoryIsReplayedThroughTheNextMapping() throws {
        let path = try makeImage("shared.img", blockSize: 1024, kib: 4096)
        let backing = directory + "/log.mem"
        func mapping() throws -> SharedMemoryStore {
            let fd = open(backing, O_RDWR | O_CREAT | O_TRUNC, 0o600)
            defer { close(fd) }
            XCTAssertEqual(ftruncate(fd, 256 << 10), 0)
            return try SharedMemoryStore(mapping: fd, what: "the test's log")
        }
        let crashed = try crashWithACommittedTransaction(path, memory: mapping)
        try Data(crashed.image).write(to: URL(fileURLWithPath: path))
        let fd = open(backing, O_RDWR)
        let again = try SharedMemoryStore(mapping: fd, what: "the test's log")
        close(fd)
        logLines = []
        let fs = try mount(path, writeBackLog: again)
        XCTAssertTrue(logLines.contains { $0.contains("write-back log: replayed") && !$0.contains("replayed 0 blocks") }, "\(logLines)")
        XCTAssertEqual(try fs.readAll(try fs.resolve("/f0")), pattern(2000, seed: 0), "the first file was synced before the crash")
        try fs.unmount()
        try assertClean(path)
        _ = crashed.log  // the crashed process's mapping lived until here
    }

    /// A read-only mount never replays (that writes the image) but says when the log holds a
    /// transaction for it; the next read-write mount replays it.
    func testAReadOnlyMountSaysWhenTheLogHoldsATransaction() throws {
        let path = try makeImage("readonly.img", blockSize: 1024, kib: 4096)
        let crashed = try crashWithACommittedTransaction(path) { newLog() }
        try Data(crashed.image).write(to: URL(fileURLWithPath: path))
        logLines = []
        let readOnly = try mount(path, readOnly: true, writeBackLog: crashed.log)
        XCTAssertTrue(logLines.contains { $0.contains("holds a transaction not yet replayed") }, "\(logLines)")
        try readOnly.unmount()
        logLines = []
        let writable = try mount(path, writeBackLog: crashed.log)
        XCTAssertTrue(logLines.contains { $0.contains("write-back log: replayed") && !$0.contains("replayed 0 blocks") }, "\(logLines)")
        XCTAssertFalse(logLines.contains { $0.contains("not yet replayed") }, "\(logLines)")
        try writable.unmount()
        try assertClean(path)
    }

    /// vfs_server with several ext2 mounts splits the CAP_PAGE_CACHE memory into equal parts, one
    /// log each, in command-line order: the parts are disjoint, a crash's committed transaction in
    /// one part is replayed by the next mapping's same part, and the other image's log beside it
    /// is its own (no refusal, nothing replayed).
    func testSeveralMountsKeepTheirLogsInTheirOwnPartsOfOneMemory() throws {
        let first = try makeImage("first.img", blockSize: 1024, kib: 4096)
        let second = try makeImage("second.img", blockSize: 1024, kib: 4096)
        let backing = directory + "/logs.mem"
        func parts(truncate: Bool) throws -> [SharedMemoryStore] {
            let fd = open(backing, O_RDWR | O_CREAT | (truncate ? O_TRUNC : 0), 0o600)
            defer { close(fd) }
            if truncate { XCTAssertEqual(ftruncate(fd, (512 << 10) + 100), 0) }
            return try SharedMemoryStore.slices(of: fd, count: 2, what: "the test's logs")
        }
        let layout = try parts(truncate: true)
        XCTAssertEqual(layout.map(\.capacity), [256 << 10, 256 << 10], "equal parts, whole pages")
        try [UInt8](repeating: 0xA5, count: 4096).withUnsafeBytes { try layout[1].write(at: 0, from: $0) }
        var firstPage = [UInt8](repeating: 1, count: 4096)
        try firstPage.withUnsafeMutableBytes { try layout[0].read(at: 0, into: $0) }
        XCTAssertTrue(firstPage.allSatisfy { $0 == 0 }, "a write to part 2 does not show in part 1")

        let crashed = try crashWithACommittedTransaction(first) { try parts(truncate: true)[0] }
        try Data(crashed.image).write(to: URL(fileURLWithPath: first))
        let again = try parts(truncate: false)
        logLines = []
        let other = try mount(second, writeBackLog: again[1])
        XCTAssertFalse(logLines.contains { $0.contains("refused") || $0.contains("replayed") }, "\(logLines)")
        _ = try other.create(FileName("beside"), in: other.rootInode, type: .regular, permissions: 0o644, uid: 0, gid: 0)
        try other.unmount()
        logLines = []
        let replayed = try mount(first, writeBackLog: again[0])
        XCTAssertTrue(logLines.contains { $0.contains("write-back log: replayed") && !$0.contains("replayed 0 blocks") }, "\(logLines)")
        XCTAssertEqual(try replayed.readAll(try replayed.resolve("/f0")), pattern(2000, seed: 0), "the first file was synced before the crash")
        try replayed.unmount()
        try assertClean(first)
        try assertClean(second)
        _ = crashed.log
    }

    /// A log left by a crash, damaged at random (bytes of its superblock, descriptors, copies and
    /// commit block flipped): every mount replays and works, refuses the log (read-only, as the
    /// image was not cleanly unmounted), or fails with an FSError saying why; never a trap.
    func testDamagedLogsNeverTrap() throws {
        let path = try makeImage("flips.img", blockSize: 1024, kib: 4096)
        let crashed = try crashWithACommittedTransaction(path) { newLog() }
        var random = SplitMix(seed: 7)
        var replayed = 0, readOnly = 0, refused = 0
        for _ in 0..<300 {
            var log = crashed.log.bytes
            flipRandomBytes(&log, blocks: Array(0..<16), &random)
            switch mountDamaged(crashed.image, writeBackLog: MemoryBlockStore(bytes: log)) {
            case true?: readOnly += 1
            case false?: replayed += 1
            case nil: refused += 1
            }
        }
        print("damaged write-back logs: \(replayed) mounted read-write, \(readOnly) refused (mounted read-only), \(refused) mounts failed with an error")
        XCTAssertGreaterThan(replayed, 0)
        XCTAssertGreaterThan(readOnly, 0)
    }

    /// Too small a region: the mount is refused with a line saying how much it needs.
    func testATooSmallLogIsRefused() throws {
        let image = try makeImage("small.img", blockSize: 4096, kib: 8192)
        XCTAssertFSError(.invalidArgument, try mount(image, writeBackLog: MemoryBlockStore(bytes: [UInt8](repeating: 0, count: 64 << 10))))
        XCTAssertTrue(logLines.contains { $0.contains("fewer than 64 blocks") && $0.contains("page_cache_log") }, "\(logLines)")
    }

    /// A file unlinked while open goes on the orphan list in the same commit as the unlink, so
    /// after a crash the restarted mount knows it (and e2fsck, which reads s_last_orphan on any
    /// revision 1 file system, finds the image consistent).
    func testUnlinkedOpenFileSurvivesACrashOnTheOrphanList() throws {
        let image = try makeImage("orphan.img", blockSize: 1024, kib: 4096)
        let log = newLog()
        let fs = try mount(image, writeBackLog: log)
        let file = try fs.create("open", in: fs.rootInode, type: .regular, permissions: 0o644, uid: 0, gid: 0)
        _ = try fs.write(file, at: 0, pattern(3000, seed: 9))
        _ = try fs.unlink("open", in: fs.rootInode)
        try fs.sync()
        // Crash: no unmount, no evict.
        logLines = []
        let again = try mount(image, writeBackLog: log)
        XCTAssertTrue(logLines.contains { $0.contains("orphan inodes") && $0.contains("\(file)") }, "\(logLines)")
        XCTAssertEqual(try again.readAll(file), pattern(3000, seed: 9))
        try again.unmount()
        try assertClean(image)
    }
}
