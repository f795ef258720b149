import ArgumentParser
import Ext2
import Foundation
import PlatformTestSupport
import VFSCore

/// The ext2 fuzz: an image made by the real mke2fs from a generated tree, then per iteration a
/// copy in memory with its metadata damaged (byte flips, fields set to interesting values), a
/// mount, a walk reading everything, a few changes, an unmount. A trap is the failure signal
/// (the process dies); an FSError with an errno the damage cannot explain, or an answer that
/// contradicts another, is a violation.
struct Ext2Command: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ext2",
        abstract: "Mount damaged copies of an ext2 image and use them; nothing may trap.",
        discussion: """
        Needs mke2fs (e2fsprogs). Iteration i is generated from (seed, i) alone, so a failure is \
        reproduced with --seed S --first-iteration i --iterations 1. Exit status: 0 no violation, \
        1 a violation, 2 setup failed (mke2fs missing).
        """)

    @Option(help: "Damaged images to try.")
    var iterations = 5000
    @Option(help: "Seed (default: random, printed).")
    var seed: UInt64?
    @Option(help: "Index of the first iteration (to reproduce one).")
    var firstIteration: UInt64 = 0
    @Option(help: "Block size of the image (1024, 2048 or 4096).")
    var blockSize = 1024
    @Option(help: "Image size in KiB (above 8192 with 1 KiB blocks, the image has several groups).")
    var imageKib = 1024

    func run() throws {
        let seed = self.seed ?? randomSeed()
        guard [1024, 2048, 4096].contains(blockSize) else { throw ValidationError("--block-size: 1024, 2048 or 4096") }
        let template: Ext2Template
        do { template = try Ext2Template(blockSize: blockSize, kib: imageKib) } catch {
            print("limitless-fuzz ext2: setup failed: \(error)")
            throw ExitCode(2)
        }
        print("limitless-fuzz ext2: seed \(seed), \(iterations) iterations, image \(template.image.count / 1024) KiB, \(blockSize)-byte blocks, \(template.metadataBlocks.count) metadata blocks")
        var fuzz = Ext2Fuzz(template: template)
        let start = monotonicSeconds()
        for index in 0..<iterations {
            let iteration = firstIteration &+ UInt64(index)
            var random = SplitMix64(seed: seed, iteration: iteration)
            if let violation = fuzz.iterate(&random) {
                print("INVARIANT VIOLATION: \(violation)")
                print("reproduce: limitless-fuzz ext2 --seed \(seed) --first-iteration \(iteration) --iterations 1 --block-size \(blockSize) --image-kib \(imageKib)")
                throw ExitCode(1)
            }
        }
        let elapsed = monotonicSeconds() - start
        print("iterations: \(iterations) in \(Double(Int(elapsed * 100)) / 100) s")
        print("mounted: \(fuzz.mounted), refused: \(fuzz.refused) (\(Ext2Fuzz.format(fuzz.refusals)))")
        print("operations: \(fuzz.succeeded) succeeded, \(fuzz.failed) failed (\(Ext2Fuzz.format(fuzz.failures)))")
        print("violations: 0")
    }
}

/// The clean image and where its metadata lies.
struct Ext2Template {
    let image: [UInt8]
    let blockSize: Int
    /// Superblock to the end of the first inode table, plus every directory and indirect block.
    let metadataBlocks: [Int]

    init(blockSize: Int, kib: Int) throws {
        guard let mke2fs = ChildProcess.systemTool("mke2fs") else { throw FuzzSetupError("mke2fs not found (install e2fsprogs)") }
        let directory = NSTemporaryDirectory() + "limitless-fuzz-ext2-\(getpid())"
        let fm = FileManager.default
        defer { try? fm.removeItem(atPath: directory) }
        let tree = directory + "/tree"
        try fm.createDirectory(atPath: tree + "/a/b/c", withIntermediateDirectories: true)
        try fm.createDirectory(atPath: tree + "/d/e", withIntermediateDirectories: true)
        func fill(_ count: Int, _ seed: UInt8) -> Data { Data((0..<count).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ Int(seed)) }) }
        try fill(300_000, 1).write(to: URL(fileURLWithPath: tree + "/a/big"))
        try fill(20_000, 2).write(to: URL(fileURLWithPath: tree + "/a/b/medium"))
        for index in 0..<60 { try fill(index * 37, UInt8(index)).write(to: URL(fileURLWithPath: tree + "/a/b/c/file-\(index)")) }
        try fill(5, 3).write(to: URL(fileURLWithPath: tree + "/d/e/tiny"))
        // A sparse file whose data sits past 64 MiB: triple-indirect blocks with 1 KiB blocks.
        let sparse = FileManager.default.createFile(atPath: tree + "/d/sparse", contents: nil)
        guard sparse, let handle = FileHandle(forWritingAtPath: tree + "/d/sparse") else { throw FuzzSetupError("cannot make the sparse file") }
        try handle.seek(toOffset: 70 << 20)
        try handle.write(contentsOf: fill(3000, 9))
        try handle.close()
        // A directory of more than 12 blocks (an indirect block) with 1 KiB blocks.
        try fm.createDirectory(atPath: tree + "/wide", withIntermediateDirectories: true)
        for index in 0..<150 { try Data().write(to: URL(fileURLWithPath: tree + "/wide/" + String(repeating: "w", count: 100) + "\(index)")) }
        try fm.createSymbolicLink(atPath: tree + "/fast", withDestinationPath: "a/big")
        try fm.createSymbolicLink(atPath: tree + "/d/slow", withDestinationPath: String(repeating: "long/", count: 30))
        let path = directory + "/image"
        // A fixed UUID, hash seed and creation time, so the image (and an iteration's damage)
        // is the same on every run: --seed and --first-iteration reproduce a failure.
        let uuid = "6e1f9c3a-1d2b-4c5d-8e9f-0a1b2c3d4e5f"
        let made = try ChildProcess.output(
            mke2fs, ["-q", "-t", "ext2", "-b", "\(blockSize)", "-I", "128", "-N", "256", "-U", uuid, "-E", "hash_seed=\(uuid)",
                     "-d", tree, "-F", path, "\(kib)k"],
            environment: ["E2FSPROGS_FAKE_TIME": "1700000000"])
        guard made.status == 0 else { throw FuzzSetupError("mke2fs failed: \(made.output)") }
        image = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        self.blockSize = blockSize
        metadataBlocks = Ext2Template.metadata(image, blockSize)
    }

    /// Reads the clean image's layout (ext2 superblock, first group descriptor, inode table) to
    /// find the blocks worth damaging.
    static func metadata(_ image: [UInt8], _ blockSize: Int) -> [Int] {
        func le32(_ offset: Int) -> Int { Int(image[offset]) | Int(image[offset + 1]) << 8 | Int(image[offset + 2]) << 16 | Int(image[offset + 3]) << 24 }
        func le16(_ offset: Int) -> Int { Int(image[offset]) | Int(image[offset + 1]) << 8 }
        let firstData = le32(1024 + 20)
        let inodesPerGroup = le32(1024 + 40)
        let inodeSize = le16(1024 + 88)
        let descriptor = (firstData + 1) * blockSize
        let inodeTable = le32(descriptor + 8)
        let tableBlocks = (inodesPerGroup * inodeSize + blockSize - 1) / blockSize
        var blocks = Array(max(1, firstData)..<(inodeTable + tableBlocks))
        for index in 0..<inodesPerGroup {
            let inode = inodeTable * blockSize + index * inodeSize
            let mode = le16(inode) & 0o170000
            guard mode == 0o040000 || mode == 0o100000 else { continue }
            // Directories: every block is metadata; files: the indirect blocks, all levels.
            func indirect(_ block: Int, depth: Int, data: Bool) {
                guard block > 0, (block + 1) * blockSize <= image.count else { return }
                if depth == 0 {
                    if data { blocks.append(block) }
                    return
                }
                blocks.append(block)
                for index in 0..<(blockSize / 4) { indirect(le32(block * blockSize + 4 * index), depth: depth - 1, data: data) }
            }
            let directory = mode == 0o040000
            for slot in 0..<15 {
                indirect(le32(inode + 40 + 4 * slot), depth: max(0, slot - 11), data: directory)
            }
        }
        return blocks
    }
}

struct FuzzSetupError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

struct Ext2Fuzz {
    let template: Ext2Template
    var mounted = 0, refused = 0, succeeded = 0, failed = 0
    var refusals: [Int32: Int] = [:]
    var failures: [Int32: Int] = [:]

    init(template: Ext2Template) { self.template = template }

    /// What damage can explain: the image is inconsistent (EUCLEAN), a size or block number
    /// points past the device (EIO), a damaged count or size (ENOSPC, EFBIG), a damaged feature
    /// word (EROFS after a forced read-only mount), and the ordinary answers of the operations.
    static let expected: Set<Int32> = [117, 5, 28, 27, 30, 2, 17, 20, 21, 39, 31]
    static let expectedAtMount: Set<Int32> = [117, 5, 95]

    static func format(_ counts: [Int32: Int]) -> String {
        counts.sorted { $0.key < $1.key }.map { "\(name($0.key)) \($0.value)" }.joined(separator: ", ")
    }

    static func name(_ errno: Int32) -> String {
        [117: "EUCLEAN", 5: "EIO", 28: "ENOSPC", 27: "EFBIG", 30: "EROFS", 2: "ENOENT", 17: "EEXIST", 20: "ENOTDIR",
         21: "EISDIR", 39: "ENOTEMPTY", 31: "EMLINK", 95: "ENOTSUP", 22: "EINVAL"][errno] ?? "errno \(errno)"
    }

    mutating func damage(_ bytes: inout [UInt8], _ random: inout SplitMix64) {
        let blocks = template.metadataBlocks
        let blockSize = template.blockSize
        let edits = 1 + random.below(random.chance(20) ? 40 : 6)
        for _ in 0..<edits {
            let offset: Int
            switch random.below(100) {
            case 0..<20:
                // The superblock: 1024 bytes at byte 1024 whatever the block size.
                offset = 1024 + random.below(1024)
            case 20..<30:
                // The first group descriptors, in the block after the superblock's.
                offset = (blockSize == 1024 ? 2 : 1) * blockSize + random.below(64)
            default:
                offset = random.pick(blocks) * blockSize + random.below(blockSize)
            }
            guard offset + 4 <= bytes.count else { continue }
            if random.chance(50) {
                bytes[offset] ^= UInt8(truncatingIfNeeded: random.next() | 1)
            } else {
                // A field set to an interesting value (aligned 2 or 4 bytes, little-endian).
                let aligned = offset & ~3
                let value: UInt32 = random.pick([0, 1, 2, 3, 11, 0xFF, 0xFFFF, 0x7FFF_FFFF, 0xFFFF_FFFF, 0x8000_0000,
                                                 UInt32(truncatingIfNeeded: random.next()), UInt32(random.below(4096))])
                let width = random.chance(50) ? 2 : 4
                for index in 0..<width { bytes[aligned + index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
            }
        }
    }

    /// One damaged image, start to finish. Returns a violation, if any.
    mutating func iterate(_ random: inout SplitMix64) -> String? {
        var bytes = template.image
        damage(&bytes, &random)
        let store = MemoryBlockStore(bytes: bytes)
        let fs: FileSystem
        do { fs = try Ext2.mount(store: store, readOnly: random.chance(10)) { _ in } } catch {
            refused += 1
            refusals[error.errno.rawValue, default: 0] += 1
            return Self.expectedAtMount.contains(error.errno.rawValue) ? nil : "mount refused with \(error)"
        }
        mounted += 1
        let walker = Walker(fs: fs)
        if let violation = walker.run(&random) { return violation }
        succeeded += walker.succeeded
        failed += walker.failed
        for (errno, count) in walker.failures { failures[errno, default: 0] += count }
        return nil
    }
}

/// Walks and changes one mounted, damaged file system.
final class Walker {
    let fs: FileSystem
    var succeeded = 0, failed = 0
    var failures: [Int32: Int] = [:]
    var violation: String? = nil

    init(fs: FileSystem) { self.fs = fs }

    /// Runs `body`; an FSError is counted (and is a violation if damage cannot explain it).
    func attempt<T>(_ what: String, _ body: () throws(FSError) -> T) -> T? {
        do {
            let result = try body()
            succeeded += 1
            return result
        } catch {
            failed += 1
            failures[error.errno.rawValue, default: 0] += 1
            if !Ext2Fuzz.expected.contains(error.errno.rawValue) && violation == nil {
                violation = "\(what) failed with an unexpected \(error)"
            }
            return nil
        }
    }

    func check(_ condition: Bool, _ what: @autoclosure () -> String) {
        if !condition && violation == nil { violation = what() }
    }

    func run(_ random: inout SplitMix64) -> String? {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
        defer { buffer.deallocate() }
        var seen = Set<InodeNumber>()
        var queue: [InodeNumber] = [fs.rootInode]
        var files: [(directory: InodeNumber, name: FileName, inode: InodeNumber)] = []
        var budget = 3000
        while let directory = queue.popLast(), budget > 0 {
            guard seen.insert(directory).inserted else { continue }
            var entries: [DirectoryEntry] = []
            _ = attempt("readDirectory \(directory)") { () throws(FSError) in
                try fs.readDirectory(directory, from: 0) { entry, _ in
                    entries.append(entry)
                    return entries.count < 1000
                }
            }
            var firstByName: [FileName: InodeNumber] = [:]
            for entry in entries where firstByName[entry.name] == nil { firstByName[entry.name] = entry.inode }
            for entry in entries where !entry.name.isDotOrDotDot {
                budget -= 1
                if budget <= 0 { break }
                // lookup finds the first record of a name, as readDirectory lists it (checked
                // for a sample of a big directory: each lookup is a linear scan).
                if entries.count <= 40 || entry.inode % 8 == 0, let found = attempt("lookup", { () throws(FSError) in try fs.lookup(entry.name, in: directory) }) {
                    check(found == firstByName[entry.name], "lookup \(entry.name) in \(directory) gave \(found), readDirectory \(String(describing: firstByName[entry.name]))")
                }
                guard let attributes = attempt("attributes", { () throws(FSError) in try fs.attributes(of: entry.inode) }) else { continue }
                switch attributes.type {
                case .directory:
                    queue.append(entry.inode)
                case .symbolicLink:
                    _ = attempt("readSymbolicLink") { () throws(FSError) in try fs.readSymbolicLink(entry.inode) }
                case .regular:
                    files.append((directory, entry.name, entry.inode))
                    // The first MiB and the last 64 KiB (past the indirect levels of big files).
                    var offset: UInt64 = 0
                    if attributes.size > 1 << 20 {
                        let tail = attributes.size - 65536
                        if let count = attempt("read tail", { () throws(FSError) in try fs.read(entry.inode, at: tail, into: buffer) }) {
                            check(count == 65536, "read of the last 64 KiB of inode \(entry.inode) gave \(count) bytes")
                        }
                    }
                    while offset < min(attributes.size, 1 << 20) {
                        guard let count = attempt("read", { () throws(FSError) in try fs.read(entry.inode, at: offset, into: buffer) }) else { break }
                        check(UInt64(count) == min(UInt64(buffer.count), attributes.size - offset),
                              "read of inode \(entry.inode) at \(offset) gave \(count) bytes (size \(attributes.size))")
                        if count == 0 { break }
                        offset += UInt64(count)
                    }
                default:
                    break
                }
            }
            if violation != nil { return violation }
        }
        if !fs.isReadOnly { change(files, &random, buffer) }
        _ = attempt("statistics") { () throws(FSError) in
            let stats = try fs.statistics()
            check(stats.freeBlocks <= stats.totalBlocks && stats.freeInodes <= stats.totalInodes, "statistics \(stats)")
        }
        _ = attempt("unmount") { () throws(FSError) in try fs.unmount() }
        return violation
    }

    /// A few writes (read back), truncates, removals and creations.
    func change(_ files: [(directory: InodeNumber, name: FileName, inode: InodeNumber)], _ random: inout SplitMix64,
                         _ buffer: UnsafeMutableRawBufferPointer) {
        for _ in 0..<min(files.count, 3) {
            let file = random.pick(files)
            let offset = UInt64(random.below(400_000))
            let count = 1 + random.below(buffer.count)
            for index in 0..<count { buffer[index] = UInt8(truncatingIfNeeded: index &+ Int(offset)) }
            let data = UnsafeRawBufferPointer(rebasing: buffer[0..<count])
            // No read-back check here: damage may map two logical blocks of this file (or its
            // indirect block) to one physical block, which no cheap check can rule out.
            _ = attempt("write") { () throws(FSError) in try fs.write(file.inode, at: offset, from: data) }
            _ = attempt("truncate") { () throws(FSError) in try fs.truncate(file.inode, to: UInt64(random.below(100_000))) }
        }
        for file in files.prefix(2) {
            if let removed = attempt("unlink", { () throws(FSError) in try fs.unlink(file.name, in: file.directory) }) {
                _ = attempt("evict") { () throws(FSError) in try fs.evict(removed) }
            }
        }
        let root = fs.rootInode
        if let new = attempt("create", { () throws(FSError) in try fs.create("fuzz-file", in: root, type: .regular, permissions: 0o644, uid: 0, gid: 0) }) {
            // A file this run made has blocks only the allocator handed out (bitmap bits set one
            // by one), so what it writes must read back, holes and indirect blocks included.
            let offset = UInt64(random.pick([0, 5000, 100_000, 300_000]))
            let count = 1 + random.below(30_000)
            for index in 0..<count { buffer[index] = UInt8(truncatingIfNeeded: index &* 13 &+ 1) }
            let expected = Array(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
            if let written = attempt("write new", { () throws(FSError) in try fs.write(new, at: offset, from: UnsafeRawBufferPointer(rebasing: buffer[0..<count])) }),
               written > 0 {
                buffer.initializeMemory(as: UInt8.self, repeating: 0)
                let back = attempt("read new") { () throws(FSError) in
                    try fs.read(new, at: offset, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<written]))
                }
                check(back == written && Array(UnsafeRawBufferPointer(rebasing: buffer[0..<written])) == Array(expected.prefix(written)),
                      "new file \(new): wrote \(written) bytes at \(offset), read back \(String(describing: back)) different ones")
                if offset > 0, let hole = attempt("read hole", { () throws(FSError) in try fs.read(new, at: 0, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<1000])) }) {
                    check(hole == 1000 && buffer[0..<1000].allSatisfy { $0 == 0 }, "new file \(new): the hole before \(offset) does not read as zeroes")
                }
            }
            if let dir = attempt("mkdir", { () throws(FSError) in try fs.makeDirectory("fuzz-dir", in: root, permissions: 0o755, uid: 0, gid: 0) }) {
                _ = attempt("rename") { () throws(FSError) in try fs.rename("fuzz-file", in: root, to: "moved", in: dir) }
                _ = attempt("symlink") { () throws(FSError) in try fs.makeSymbolicLink("link", in: dir, target: Array(repeating: 0x61, count: 100), uid: 0, gid: 0) }
            }
        }
    }
}
