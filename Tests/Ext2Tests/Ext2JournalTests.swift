import PlatformTestSupport
import Foundation
import SystemPackage
import VFSCore
import XCTest
@testable import Ext2

/// A file system's tree as path -> contents (directories as nil), lost+found left out.
typealias TreeModel = [String: [UInt8]?]

/// Crash consistency with the ext3 journal: a fixed workload crashed at every write, replayed,
/// checked against what was synced and by e2fsck; and our replay against e2fsprogs' own.
final class Ext2JournalTests: Ext2TestCase {
    /// The workload: creates, appends, mkdir, rename, unlink, block-aligned truncate, with syncs
    /// between some. Each step changes `model` as it changes the file system; the model at each
    /// successful sync goes to `synced`. Appends and block-aligned truncates only, so a file's
    /// bytes never change in place (overwrites in place may read new or old after a crash, as in
    /// ext3's data=ordered, and are left out of the exact check).
    struct Workload {
        var model: TreeModel = [:]
        /// The model at the last sync that returned.
        var synced: TreeModel = [:]
        /// The model at the sync (or unmount) the crash interrupted, if it was one.
        var interrupted: TreeModel? = nil
        var syncs = 0

        mutating func run(_ fs: FileSystem) throws {
            var step = 0
            func sync() throws {
                interrupted = model
                try fs.sync()
                synced = model
                interrupted = nil
                syncs += 1
            }
            func create(_ dir: String, _ name: String, _ bytes: [UInt8]) throws {
                let parent = try fs.resolve(dir)
                let file = try fs.create(FileName(name), in: parent, type: .regular, permissions: 0o644, uid: 0, gid: 0)
                model[dir + "/" + name] = [UInt8]()
                if !bytes.isEmpty { try append(dir + "/" + name, bytes, file) }
            }
            func append(_ path: String, _ bytes: [UInt8], _ known: InodeNumber? = nil) throws {
                let file = try known ?? fs.resolve(path)
                let old = (model[path] ?? nil) ?? []
                _ = try fs.write(file, at: UInt64(old.count), bytes)
                model[path] = old + bytes
            }
            step += 1
            try create("", "a", pattern(3000, seed: 1))
            _ = try fs.makeDirectory(FileName("d"), in: fs.rootInode, permissions: 0o755, uid: 0, gid: 0)
            model["/d"] = .some(nil)
            try create("/d", "b", pattern(40_000, seed: 2))
            try sync()
            try append("/a", pattern(20_000, seed: 3))
            try create("", "c", pattern(700, seed: 4))
            try sync()
            // rename across directories, replacing nothing
            _ = try fs.rename(FileName("c"), in: fs.rootInode, to: FileName("c2"), in: fs.resolve("/d"))
            model["/d/c2"] = model.removeValue(forKey: "/c")!
            let b = try fs.resolve("/d/b")
            try fs.truncate(b, to: 8192)
            model["/d/b"] = Array(model["/d/b"]!!.prefix(8192))
            try sync()
            // unlink (and evict, as the VFS does with no descriptor open)
            let gone = try fs.unlink(FileName("a"), in: fs.rootInode)
            try fs.evict(gone)
            model.removeValue(forKey: "/a")
            try create("", "e", pattern(30_000, seed: 5))
            _ = try fs.makeDirectory(FileName("f"), in: fs.resolve("/d"), permissions: 0o700, uid: 0, gid: 0)
            model["/d/f"] = .some(nil)
            try create("/d/f", "g", pattern(13_000, seed: 6))
            try sync()
            try append("/d/b", pattern(50_000, seed: 7))
            // rename replacing a file
            try create("", "h", pattern(100, seed: 8))
            if let replaced = try fs.rename(FileName("h"), in: fs.rootInode, to: FileName("e"), in: fs.rootInode) {
                try fs.evict(replaced)
            }
            model["/e"] = model.removeValue(forKey: "/h")!
            try sync()
            let g = try fs.unlink(FileName("g"), in: fs.resolve("/d/f"))
            try fs.evict(g)
            model.removeValue(forKey: "/d/f/g")
            let f = try fs.removeDirectory(FileName("f"), in: fs.resolve("/d"))
            try fs.evict(f)
            model.removeValue(forKey: "/d/f")
            try create("/d", "i", pattern(5000, seed: 9))
            // unsynced until unmount
            try append("/d/i", pattern(9000, seed: 10))
            interrupted = model
            try fs.unmount()
            synced = model
            interrupted = nil
        }
    }

    /// The tree on `fs` as a model.
    func tree(_ fs: FileSystem, _ directory: InodeNumber? = nil, _ path: String = "") throws -> TreeModel {
        var result: TreeModel = [:]
        for entry in try fs.entries(directory ?? fs.rootInode) {
            let name = String(decoding: entry.name.bytes, as: UTF8.self)
            guard name != ".", name != "..", !(path.isEmpty && name == "lost+found") else { continue }
            let full = path + "/" + name
            if entry.type == .directory {
                result[full] = .some(nil)
                result.merge(try tree(fs, entry.inode, full)) { a, _ in a }
            } else {
                result[full] = try fs.readAll(entry.inode)
            }
        }
        return result
    }

    func describe(_ model: TreeModel) -> String {
        model.keys.sorted().map { "\($0)\(model[$0]!.map { " (\($0.count) bytes)" } ?? "/")" }.joined(separator: ", ")
    }

    /// Runs the workload crashed after each write 0...total (every `every`th) on an image;
    /// returns how many crash points it ran and at how many e2fsck -fn found damage, after our
    /// own mount (and replay) and unmount.
    /// With `writeBackLog` (a plain ext2 image) the mount logs into memory that survives the
    /// crash, as the supervisor's CAP_PAGE_CACHE memfd survives vfs_server.
    func crashAtEveryWrite(_ image: String, blockSize: Int, journalled: Bool, oracle: Bool, every: Int = 1,
                           reordered: Bool = false, writeBackLog: Bool = false) throws -> (points: Int, damaged: Int) {
        let kind = writeBackLog ? "ext2 with a write-back log" : journalled ? "ext3" : "ext2"
        let protected = journalled || writeBackLog
        func newLog(_ process: CrashingStore) -> ProcessMemoryLog<MemoryBlockStore>? { writeBackLog ? ProcessMemoryLog(bytes: 256 << 10, process: process) : nil }
        let clean = try [UInt8](Data(contentsOf: URL(fileURLWithPath: image)))
        // Uninterrupted run: how many writes the workload makes, and its final tree.
        let full = CrashingStore(bytes: clean, crashAfter: .max)
        var reference = Workload()
        var figures = ""
        try reference.run(try Ext2.mount(store: full, readOnly: false, writeBackLog: newLog(full)) { line in
            if line.contains("commits") { figures = "; " + line }
        })
        let total = full.writes
        print("crash test (\(kind)\(reordered ? ", unflushed writes kept at random" : "")): the workload makes \(total) writes, \(reference.syncs) syncs\(figures)")

        var damaged = 0, oracles = 0, replays = 0
        var firstDamage: String? = nil
        var oracleTransactions = Set<String>()
        let crashed = directory + "/crashed.img"
        var points = 0
        for limit in stride(from: 0, through: total, by: every) {
            points += 1
            let store = CrashingStore(bytes: clean, crashAfter: limit, unflushedKept: reordered ? UInt64(limit) : nil)
            var workload = Workload()
            let logStore = newLog(store)
            do {
                try workload.run(try Ext2.mount(store: store, readOnly: false, writeBackLog: logStore) { _ in })
            } catch {
                XCTAssertTrue(store.crashed, "crash point \(limit): workload failed before the crash: \(error)")
            }
            try Data(store.durable).write(to: URL(fileURLWithPath: crashed))
            if journalled && oracle && oracles < 3, let commit = try committedTransaction(crashed),
               oracleTransactions.insert(commit).inserted {
                try compareWithE2fsprogsReplay(crashed, blockSize: blockSize, limit: limit)
                oracles += 1
            }

            logLines = []
            let fs = try mount(crashed, writeBackLog: logStore?.memory)
            if logLines.contains(where: { $0.contains("replayed") }) { replays += 1 }
            let recovered = try tree(fs)
            try fs.unmount()
            let check = try runTool("/usr/sbin/e2fsck", ["-fn", crashed])
            if check.status != 0 {
                damaged += 1
                if firstDamage == nil {
                    let problems = check.output.split(separator: "\n").filter { !$0.hasPrefix("Pass") && !$0.hasPrefix("e2fsck") }
                    firstDamage = "crash point \(limit): " + problems.prefix(4).joined(separator: " | ")
                }
            }
            guard protected else { continue }
            XCTAssertEqual(check.status, 0, "crash point \(limit): e2fsck -fn after replay:\n\(check.output)")
            let allowed = [workload.synced] + (workload.interrupted.map { [$0] } ?? [])
            XCTAssertTrue(allowed.contains(recovered),
                          "crash point \(limit): recovered \(describe(recovered)); synced \(describe(workload.synced))")
            if !allowed.contains(recovered) || check.status != 0 { break }
        }
        if let firstDamage { print("first damage seen by e2fsck -fn: \(firstDamage)") }
        if protected {
            print("crash test (\(kind)\(reordered ? ", unflushed writes kept at random" : "")): \(points) crash points, \(replays) replayed a committed transaction, \(oracles) compared with e2fsprogs' replay")
        }
        return (points, damaged)
    }

    /// The line naming the commit block in the journal of `image` (debugfs logdump, e2fsprogs'
    /// reading), nil when the log holds no committed transaction.
    func committedTransaction(_ image: String) throws -> String? {
        try debugfs(image, "logdump").split(separator: "\n").first { $0.contains("(commit block)") }.map(String.init)
    }

    /// e2fsck -fy replays a copy; our mount replays another: every block e2fsprogs' logdump
    /// names in the journal must then be the same in both (the superblock aside, whose
    /// mount times and counts each side sets its own way).
    func compareWithE2fsprogsReplay(_ image: String, blockSize: Int, limit: Int) throws {
        let dump = try debugfs(image, "logdump -a")
        var blocks = Set<UInt64>()
        for line in dump.split(separator: "\n") where line.contains("FS block") {
            let words = line.split(separator: " ")
            if let index = words.firstIndex(of: "block"), index + 1 < words.count, let block = UInt64(words[index + 1]) {
                blocks.insert(block)
            }
        }
        XCTAssertFalse(blocks.isEmpty, "crash point \(limit): logdump names no blocks:\n\(dump)")
        let theirs = directory + "/theirs.img", ours = directory + "/ours.img"
        try? FileManager.default.removeItem(atPath: theirs)
        try? FileManager.default.removeItem(atPath: ours)
        try FileManager.default.copyItem(atPath: image, toPath: theirs)
        try FileManager.default.copyItem(atPath: image, toPath: ours)
        let fsck = try runTool("/usr/sbin/e2fsck", ["-fy", theirs])
        XCTAssertTrue(fsck.output.contains("recovering journal"), "e2fsck did not replay:\n\(fsck.output)")
        XCTAssertTrue(fsck.status == 0 || fsck.status == 1, "e2fsck -fy exit \(fsck.status):\n\(fsck.output)")
        let fs = try mount(ours)
        try fs.unmount()
        let a = try [UInt8](Data(contentsOf: URL(fileURLWithPath: theirs)))
        let b = try [UInt8](Data(contentsOf: URL(fileURLWithPath: ours)))
        let superblockBlock = UInt64(1024 / blockSize)
        var equal = 0
        for block in blocks.sorted() where block != superblockBlock {
            let range = Int(block) * blockSize..<Int(block + 1) * blockSize
            XCTAssertEqual(Array(a[range]), Array(b[range]), "crash point \(limit): block \(block) differs after the two replays")
            if a[range] == b[range] { equal += 1 }
        }
        print("oracle at crash point \(limit): \(blocks.count) blocks in the journal (logdump); after e2fsck's replay and ours \(equal) of the \(blocks.count - (blocks.contains(superblockBlock) ? 1 : 0)) other than the superblock's are equal")
    }

    /// ext3 (mke2fs -t ext3): a crash at any write leaves, after our replay, exactly the tree of
    /// the last sync (or of the sync the crash interrupted), and an image e2fsck finds clean.
    func testCrashAtEveryWriteIsConsistentWithTheJournal() throws {
        // 1 KiB blocks (the superblock fills block 1) and 4 KiB (it shares block 0).
        for (blockSize, kib) in [(1024, 4096), (4096, 16384)] {
            let image = try makeImage("ext3-\(blockSize).img", blockSize: blockSize, kib: kib, type: "ext3")
            let (points, damaged) = try crashAtEveryWrite(image, blockSize: blockSize, journalled: true, oracle: true)
            XCTAssertEqual(damaged, 0)
            XCTAssertGreaterThan(points, 100)
        }
    }

    /// The same with a harsher crash: of the writes since the last flush, a random part reaches
    /// the disk (as after a power loss, or a SIGKILL with dirty pages in vfs_server's page cache,
    /// some of them already evicted). Only the flushes order anything then.
    func testCrashWithUnflushedWritesReorderedIsConsistentWithTheJournal() throws {
        let image = try makeImage("ext3-reordered.img", blockSize: 1024, kib: 4096, type: "ext3")
        let (points, damaged) = try crashAtEveryWrite(image, blockSize: 1024, journalled: true, oracle: false, reordered: true)
        XCTAssertEqual(damaged, 0)
        XCTAssertGreaterThan(points, 100)
    }

    /// Plain ext2 with a write-back log in memory that survives the crash (the supervisor's
    /// CAP_PAGE_CACHE memfd): a crash at any write leaves, after the next mount's replay, the tree
    /// of the last sync (or the interrupted one) and an image e2fsck finds clean; the image itself
    /// stays plain ext2 (no journal, no feature added).
    func testCrashAtEveryWriteIsConsistentWithAWriteBackLog() throws {
        for (blockSize, kib) in [(1024, 4096), (4096, 16384)] {
            let image = try makeImage("ext2-log-\(blockSize).img", blockSize: blockSize, kib: kib)
            let features = try runTool("/usr/sbin/dumpe2fs", ["-h", image]).output
                .split(separator: "\n").first { $0.hasPrefix("Filesystem features:") } ?? ""
            let (points, damaged) = try crashAtEveryWrite(image, blockSize: blockSize, journalled: false, oracle: false, writeBackLog: true)
            XCTAssertEqual(damaged, 0)
            XCTAssertGreaterThan(points, 100)
            let after = try runTool("/usr/sbin/dumpe2fs", ["-h", directory + "/crashed.img"]).output
                .split(separator: "\n").first { $0.hasPrefix("Filesystem features:") } ?? ""
            XCTAssertFalse(after.contains("has_journal") || after.contains("needs_recovery"), after.description)
            XCTAssertEqual(after, features, "the image's features changed")
        }
    }

    /// The same when, of the writes since the last flush, a random part reaches the disk: a
    /// SIGKILL with dirty pages in vfs_server's own page cache, some already evicted.
    func testCrashWithUnflushedWritesReorderedIsConsistentWithAWriteBackLog() throws {
        let image = try makeImage("ext2-log-reordered.img", blockSize: 1024, kib: 4096)
        let (points, damaged) = try crashAtEveryWrite(image, blockSize: 1024, journalled: false, oracle: false,
                                                      reordered: true, writeBackLog: true)
        XCTAssertEqual(damaged, 0)
        XCTAssertGreaterThan(points, 100)
    }

    /// The same workload on plain ext2 (write-through, no journal): printed, not asserted. Every
    /// fourth write (ext2 writes metadata piecemeal, so it makes three times the writes).
    func testCrashAtEveryWriteWithoutAJournalPrintsTheDamage() throws {
        let image = try makeImage("ext2.img", blockSize: 1024, kib: 4096)
        let (points, damaged) = try crashAtEveryWrite(image, blockSize: 1024, journalled: false, oracle: false, every: 4)
        print("crash test (ext2, no journal): e2fsck -fn found damage after \(damaged) of \(points) crash points (every 4th write)")
    }
}
