import PlatformTestSupport
import Foundation
import SystemPackage
import VFSCore
import XCTest
@testable import Ext2

/// A seeded random sequence of operations applied both to an ext2 image and to a real directory;
/// each operation must succeed or fail alike (same errno), and at the end the two trees must
/// hold the same names, types, sizes, contents and link targets, and e2fsck must pass.
final class Ext2RandomizedTests: Ext2TestCase {
    var fs: Ext2FileSystem!
    var real = ""
    var dirs: [String] = [""]   // paths relative to the root, "" is the root
    var files: [String] = []    // regular files and symlinks
    var random = SplitMix(seed: 0)

    func testRandomOperationsMatchARealDirectory() throws {
        for (seed, blockSize) in [(UInt64(20261127), 1024), (UInt64(7), 4096), (UInt64(1234), 2048)] {
            try runSequence(seed: seed, blockSize: blockSize, operations: 2000)
        }
    }

    /// The same on an ext3 image: metadata goes through the journal (commits on the remounts'
    /// unmounts and when a transaction reaches the journal's limit).
    func testRandomOperationsMatchARealDirectoryWithAJournal() throws {
        try runSequence(seed: 20261128, blockSize: 1024, operations: 2000, type: "ext3")
        let commits = logLines.filter { $0.contains("journal:") && $0.contains("commits") }
        XCTAssertFalse(commits.isEmpty, "no journal figures logged at unmount")
        for line in commits { print(line) }
    }

    func runSequence(seed: UInt64, blockSize: Int, operations: Int, type: String = "ext2") throws {
        random = SplitMix(seed: seed)
        dirs = [""]
        files = []
        real = directory + "/real-\(seed)"
        try FileManager.default.createDirectory(atPath: real, withIntermediateDirectories: true)
        let image = try makeImage("random-\(seed).img", blockSize: blockSize, kib: 32768, type: type)
        fs = try mount(image)
        // lost+found exists on the image only; leave it out of the comparison.
        for index in 0..<operations {
            // Every 500 operations: unmount, check, mount again (state must survive a remount).
            if index > 0 && index % 500 == 0 {
                try fs.unmount()
                try assertClean(image)
                fs = try mount(image)
            }
            if let description = try step(index) {
                XCTFail("seed \(seed), step \(index): \(description)")
                return
            }
        }
        try compareTrees(ext2: fs.rootInode, real: real, path: "")
        try fs.unmount()
        try assertClean(image)
    }

    func pick<T>(_ items: [T]) -> T { items[Int(random.next() % UInt64(items.count))] }
    func chance(_ percent: UInt64) -> Bool { random.next() % 100 < percent }

    func randomName() -> String {
        if chance(5) { return String(repeating: "long", count: 30) + "\(random.next() % 4)" }
        return pick(["a", "b", "c", "d", "e", "f", "g", "file", "dir", "x.txt"])
    }

    func inode(of path: String) throws -> InodeNumber { try fs.resolve(path) }
    func parentAndName(_ path: String) -> (String, String) {
        guard let slash = path.lastIndex(of: "/") else { return ("", path) }
        return (String(path[..<slash]), String(path[path.index(after: slash)...]))
    }
    func join(_ dir: String, _ name: String) -> String { dir.isEmpty ? name : dir + "/" + name }

    /// The errno of a libc call (0 on success).
    func posix(_ result: Int32) -> Int32 { result < 0 ? errno : 0 }
    func ext2<T>(_ body: () throws -> T) throws -> (Int32, T?) {
        do { return (0, try body()) } catch let error as FSError { return (error.errno.rawValue, nil) }
    }

    func evictIfUnlinked(_ number: InodeNumber?) throws {
        guard let number else { return }
        if try fs.attributes(of: number).linkCount == 0 { try fs.evict(number) }
    }

    /// Runs one random operation on both sides; returns a description of a mismatch, if any.
    func step(_ index: Int) throws -> String? {
        let kind = random.next() % 100
        switch kind {
        case 0..<15:  // create
            let path = join(pick(dirs), randomName())
            let (dirPath, name) = parentAndName(path)
            let expected = posix({ let fd = open(real + "/" + path, O_CREAT | O_EXCL | O_WRONLY, 0o644); if fd >= 0 { close(fd) }; return fd }())
            let (got, _) = try ext2 { try fs.create(try FileName(name), in: try inode(of: dirPath), type: .regular, permissions: 0o644, uid: 0, gid: 0) }
            if expected != got { return "create \(path): real errno \(expected), ext2 \(got)" }
            if got == 0 { files.append(path) }
        case 15..<40:  // write at a random offset
            guard !files.isEmpty else { return nil }
            let path = pick(files)
            let offset = random.next() % (chance(10) ? 2_000_000 : 70_000)
            let count = Int(random.next() % 20_000) + 1
            let data = pattern(count, seed: UInt8(truncatingIfNeeded: random.next()))
            var isLink = stat()
            lstat(real + "/" + path, &isLink)
            if isLink.st_mode & S_IFMT == S_IFLNK { return nil }
            let fd = open(real + "/" + path, O_WRONLY)
            guard fd >= 0 else { return "open \(path) for write: errno \(errno)" }
            let written = data.withUnsafeBytes { pwrite(fd, $0.baseAddress, count, off_t(offset)) }
            close(fd)
            let (got, count2) = try ext2 { try fs.write(try inode(of: path), at: offset, data) }
            if got != 0 || count2 != written { return "write \(path) at \(offset): real \(written), ext2 errno \(got) count \(String(describing: count2))" }
        case 40..<50:  // truncate
            guard !files.isEmpty else { return nil }
            let path = pick(files)
            var info = stat()
            lstat(real + "/" + path, &info)
            if info.st_mode & S_IFMT == S_IFLNK { return nil }
            let size = random.next() % 150_000
            let expected = posix(Glibc.truncate(real + "/" + path, off_t(size)))
            let (got, _) = try ext2 { try fs.truncate(try inode(of: path), to: size) }
            if expected != got { return "truncate \(path) to \(size): real \(expected), ext2 \(got)" }
        case 50..<60:  // mkdir
            let path = join(pick(dirs), randomName())
            let (dirPath, name) = parentAndName(path)
            let expected = posix(mkdir(real + "/" + path, 0o755))
            let (got, _) = try ext2 { try fs.makeDirectory(try FileName(name), in: try inode(of: dirPath), permissions: 0o755, uid: 0, gid: 0) }
            if expected != got { return "mkdir \(path): real \(expected), ext2 \(got)" }
            if got == 0 { dirs.append(path) }
        case 60..<66:  // rmdir
            guard dirs.count > 1 else { return nil }
            let path = pick(Array(dirs.dropFirst()))
            let (dirPath, name) = parentAndName(path)
            let expected = posix(rmdir(real + "/" + path))
            let (got, removed) = try ext2 { try fs.removeDirectory(try FileName(name), in: try inode(of: dirPath)) }
            if expected != got { return "rmdir \(path): real \(expected), ext2 \(got)" }
            if got == 0 {
                try fs.evict(removed!)
                dirs.removeAll { $0 == path }
            }
        case 66..<76:  // unlink
            guard !files.isEmpty else { return nil }
            let path = pick(files)
            let (dirPath, name) = parentAndName(path)
            let expected = posix(unlink(real + "/" + path))
            let (got, removed) = try ext2 { try fs.unlink(try FileName(name), in: try inode(of: dirPath)) }
            if expected != got { return "unlink \(path): real \(expected), ext2 \(got)" }
            if got == 0 {
                try evictIfUnlinked(removed!)
                files.removeAll { $0 == path }
            }
        case 76..<88:  // rename
            let fromFile = !files.isEmpty && (dirs.count == 1 || chance(60))
            guard fromFile || dirs.count > 1 else { return nil }
            let source = fromFile ? pick(files) : pick(Array(dirs.dropFirst()))
            let target = chance(30) ? (chance(50) && !files.isEmpty ? pick(files) : pick(dirs.count > 1 ? Array(dirs.dropFirst()) : [randomName()]))
                                    : join(pick(dirs), randomName())
            let (sourceDir, sourceName) = parentAndName(source)
            let (targetDir, targetName) = parentAndName(target)
            let expected = posix(Glibc.rename(real + "/" + source, real + "/" + target))
            let (got, replaced) = try ext2 {
                try fs.rename(try FileName(sourceName), in: try inode(of: sourceDir), to: try FileName(targetName), in: try inode(of: targetDir))
            }
            if expected != got { return "rename \(source) -> \(target): real \(expected), ext2 \(got)" }
            if got == 0 {
                try evictIfUnlinked(replaced ?? nil)
                if source != target {
                    files.removeAll { $0 == target }
                    dirs.removeAll { $0 == target }
                    if fromFile {
                        files.removeAll { $0 == source }
                        files.append(target)
                    } else {
                        let prefix = source + "/"
                        dirs = dirs.map { $0 == source ? target : ($0.hasPrefix(prefix) ? target + "/" + $0.dropFirst(prefix.count) : $0) }
                        files = files.map { $0.hasPrefix(prefix) ? target + "/" + $0.dropFirst(prefix.count) : $0 }
                    }
                }
            }
        case 88..<94:  // hard link (sometimes of a directory: EPERM)
            let source = !files.isEmpty && chance(85) ? pick(files) : pick(dirs)
            let path = join(pick(dirs), randomName())
            let (dirPath, name) = parentAndName(path)
            var info = stat()
            lstat(real + "/" + source, &info)
            let expected = posix(Glibc.link(real + "/" + source, real + "/" + path))
            let (got, _) = try ext2 { try fs.link(try inode(of: source), as: try FileName(name), in: try inode(of: dirPath)) }
            if expected != got { return "link \(source) as \(path): real \(expected), ext2 \(got)" }
            if got == 0 { files.append(path) }
        default:  // symlink
            let path = join(pick(dirs), randomName())
            let (dirPath, name) = parentAndName(path)
            let target = chance(50) ? "t-\(random.next() % 1000)" : String(repeating: "deep/", count: Int(random.next() % 100) + 12)
            let expected = posix(symlink(target, real + "/" + path))
            let (got, _) = try ext2 { try fs.makeSymbolicLink(try FileName(name), in: try inode(of: dirPath), target: Array(target.utf8), uid: 0, gid: 0) }
            if expected != got { return "symlink \(path): real \(expected), ext2 \(got)" }
            if got == 0 { files.append(path) }
        }
        return nil
    }

    func compareTrees(ext2 directory: InodeNumber, real path: String, path relative: String) throws {
        var ext2Names: [String: DirectoryEntry] = [:]
        for entry in try fs.entries(directory) where !entry.name.isDotOrDotDot {
            if relative.isEmpty && entry.name.description == "lost+found" { continue }
            ext2Names[entry.name.description] = entry
        }
        let realNames = try FileManager.default.contentsOfDirectory(atPath: path)
        XCTAssertEqual(Set(ext2Names.keys), Set(realNames), "names in /\(relative)")
        for name in realNames {
            guard let entry = ext2Names[name] else { continue }
            let full = path + "/" + name
            var info = stat()
            XCTAssertEqual(lstat(full, &info), 0)
            let attributes = try fs.attributes(of: entry.inode)
            XCTAssertEqual(attributes.type, entry.type, "entry type of /\(relative)/\(name)")
            switch info.st_mode & S_IFMT {
            case S_IFDIR:
                XCTAssertEqual(attributes.type, .directory, "/\(relative)/\(name)")
                try compareTrees(ext2: entry.inode, real: full, path: relative + "/" + name)
            case S_IFLNK:
                XCTAssertEqual(attributes.type, .symbolicLink, "/\(relative)/\(name)")
                let target = try FileManager.default.destinationOfSymbolicLink(atPath: full)
                XCTAssertEqual(try fs.readSymbolicLink(entry.inode), Array(target.utf8))
            default:
                XCTAssertEqual(attributes.type, .regular, "/\(relative)/\(name)")
                XCTAssertEqual(attributes.size, UInt64(info.st_size), "size of /\(relative)/\(name)")
                XCTAssertEqual(attributes.linkCount, UInt32(info.st_nlink), "links of /\(relative)/\(name)")
                let contents = try [UInt8](Data(contentsOf: URL(fileURLWithPath: full)))
                XCTAssertTrue(try fs.readAll(entry.inode) == contents, "contents of /\(relative)/\(name)")
            }
        }
    }
}
