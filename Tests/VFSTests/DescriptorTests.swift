import SystemPackage
import VFS
import VFSCore
import XCTest

final class DescriptorTests: XCTestCase {
    private func write(_ service: VFSService, _ fd: Int32, _ text: String, at offset: UInt64? = nil) throws -> Int {
        try text.bytes.withUnsafeBytes { try service.write(fd, from: $0, at: offset, root) }
    }

    func testAppendExclusiveTruncate() throws {
        let (service, _) = makeService()
        try service.writeFile("/log", "one\n")
        let fd = try service.open("/log".bytes, flags: OpenFlags([.writeOnly, .append]).rawValue, mode: 0, root)
        _ = try service.seek(fd, offset: 0, whence: 0, root)
        XCTAssertEqual(try write(service, fd, "two\n"), 4)
        XCTAssertEqual(try write(service, fd, "three\n", at: 0), 6, "O_APPEND wins over the offset, as on Linux")
        try service.close(fd, root)
        XCTAssertEqual(try service.readFile("/log"), "one\ntwo\nthree\n")

        XCTAssertErrno(.fileExists, try service.open("/log".bytes, flags: OpenFlags([.create, .exclusive, .writeOnly]).rawValue, mode: 0o644, root))
        let created = try service.open("/new".bytes, flags: OpenFlags([.create, .exclusive, .writeOnly]).rawValue, mode: 0o640, root)
        try service.close(created, root)
        XCTAssertEqual(try service.stat("/new".bytes, root).0.permissions, 0o640)

        let truncating = try service.open("/log".bytes, flags: OpenFlags([.writeOnly, .truncate]).rawValue, mode: 0, root)
        XCTAssertEqual(try service.fstat(truncating, root).0.size, 0)
        try service.close(truncating, root)
        XCTAssertEqual(try service.readFile("/log"), "")
    }

    func testSeekReadAtEOFAndAccessModes() throws {
        let (service, _) = makeService()
        try service.writeFile("/f", "0123456789")
        let fd = try service.open("/f".bytes, flags: 0, mode: 0, root)
        var buffer = [UInt8](repeating: 0, count: 4)
        XCTAssertEqual(try service.seek(fd, offset: 3, whence: 0, root), 3)
        XCTAssertEqual(try buffer.withUnsafeMutableBytes { try service.read(fd, into: $0, root) }, 4)
        XCTAssertEqual(String(decoding: buffer, as: UTF8.self), "3456")
        XCTAssertEqual(try service.seek(fd, offset: -2, whence: 1, root), 5)
        XCTAssertEqual(try service.seek(fd, offset: -1, whence: 2, root), 9)
        XCTAssertEqual(try buffer.withUnsafeMutableBytes { try service.read(fd, into: $0, root) }, 1)
        XCTAssertEqual(try buffer.withUnsafeMutableBytes { try service.read(fd, into: $0, root) }, 0, "EOF reads 0")
        XCTAssertEqual(try service.seek(fd, offset: 100, whence: 0, root), 100)
        XCTAssertEqual(try buffer.withUnsafeMutableBytes { try service.read(fd, into: $0, root) }, 0, "past EOF reads 0")
        XCTAssertErrno(.invalidArgument, try service.seek(fd, offset: -101, whence: 1, root))
        XCTAssertErrno(.invalidArgument, try service.seek(fd, offset: 0, whence: 3, root))
        XCTAssertErrno(.badFileDescriptor, try self.write(service, fd, "x"), "read-only descriptor")
        try service.close(fd, root)
        XCTAssertErrno(.badFileDescriptor, try service.close(fd, root))
        XCTAssertErrno(.badFileDescriptor, try service.fstat(fd, root))

        // Writing past the end leaves a hole that reads as zeroes.
        let writer = try service.open("/f".bytes, flags: OpenFlags.readWrite.rawValue, mode: 0, root)
        _ = try service.seek(writer, offset: 12, whence: 0, root)
        _ = try write(service, writer, "Z")
        XCTAssertEqual(try service.fstat(writer, root).0.size, 13)
        try service.close(writer, root)
        XCTAssertEqual(Array(try service.readFile("/f").utf8), Array("0123456789".utf8) + [0, 0] + Array("Z".utf8))
        XCTAssertErrno(.isDirectory, try service.open("/".bytes, flags: OpenFlags.writeOnly.rawValue, mode: 0, root))
        XCTAssertErrno(.notDirectory, try service.open("/f".bytes, flags: OpenFlags.directory.rawValue, mode: 0, root))
    }

    func testDescriptorsAreLowestFreeAndPerClient() throws {
        let (service, _) = makeService()
        try service.writeFile("/f", "x")
        let a0 = try service.open("/f".bytes, flags: 0, mode: 0, alice)
        let a1 = try service.open("/f".bytes, flags: 0, mode: 0, alice)
        let b0 = try service.open("/f".bytes, flags: 0, mode: 0, bob)
        XCTAssertEqual([a0, a1, b0], [0, 1, 0])
        try service.close(a0, alice)
        XCTAssertEqual(try service.open("/f".bytes, flags: 0, mode: 0, alice), 0)
        XCTAssertErrno(.badFileDescriptor, try service.close(1, bob), "bob has no descriptor 1: alice's are not his")
        service.closeAll(alice.pid)
        XCTAssertEqual(service.descriptorCount(alice.pid), 0)
        XCTAssertEqual(service.descriptorCount(bob.pid), 1)
    }

    func testUnlinkWhileOpenKeepsDataUntilLastClose() throws {
        let (service, fs) = makeService()
        try service.writeFile("/doomed", "still here")
        let inode = try service.stat("/doomed".bytes, root).0.inode
        let first = try service.open("/doomed".bytes, flags: 0, mode: 0, root)
        let second = try service.open("/doomed".bytes, flags: 0, mode: 0, root)
        try service.unlink("/doomed".bytes, root)
        XCTAssertErrno(.noSuchFileOrDirectory, try service.stat("/doomed".bytes, root))
        XCTAssertTrue(fs.holds(inode))
        XCTAssertEqual(try service.readAll(first), "still here")
        XCTAssertEqual(try service.fstat(first, root).0.linkCount, 0)
        try service.close(first, root)
        XCTAssertTrue(fs.holds(inode), "one descriptor still holds it")
        XCTAssertEqual(try service.readAll(second), "still here")
        try service.close(second, root)
        XCTAssertFalse(fs.holds(inode), "evicted on the last close")
        XCTAssertEqual(fs.evictedInodes, [inode])

        // Without a descriptor, unlink evicts at once.
        try service.writeFile("/brief", "x")
        let brief = try service.stat("/brief".bytes, root).0.inode
        try service.unlink("/brief".bytes, root)
        XCTAssertFalse(fs.holds(brief))
    }

    func testHardLinksKeepTheInodeAlive() throws {
        let (service, fs) = makeService()
        try service.writeFile("/a", "shared")
        try service.link("/a".bytes, to: "/b".bytes, root)
        XCTAssertEqual(try service.stat("/a".bytes, root).0.linkCount, 2)
        try service.unlink("/a".bytes, root)
        XCTAssertEqual(try service.readFile("/b"), "shared")
        XCTAssertTrue(fs.evictedInodes.isEmpty)
        XCTAssertErrno(.notPermitted, try service.link("/".bytes, to: "/rootlink".bytes, root))
    }

    func testReaddirResumesWhereItStopped() throws {
        let (service, _) = makeService()
        for index in 0..<50 { try service.writeFile("/f\(index)", "") }
        let fd = try service.open("/".bytes, flags: OpenFlags.directory.rawValue, mode: 0, root)
        var seen: [String] = []
        var atEnd = false
        while !atEnd {
            var taken = 0
            atEnd = try service.readDirectory(fd, root) { entry in
                guard taken < 7 else { return false }
                taken += 1
                seen.append(entry.name.description)
                return true
            }
        }
        XCTAssertEqual(seen.count, 52)
        XCTAssertEqual(Set(seen).count, 52, "no entry twice")
        _ = try service.seek(fd, offset: 0, whence: 0, root)
        var again = 0
        _ = try service.readDirectory(fd, root) { _ in again += 1; return true }
        XCTAssertEqual(again, 52, "rewind starts over")
        try service.close(fd, root)
    }

    func testTruncateAndFtruncate() throws {
        let (service, _) = makeService()
        try service.writeFile("/f", "0123456789")
        try service.truncate("/f".bytes, to: 4, root)
        XCTAssertEqual(try service.readFile("/f"), "0123")
        let reader = try service.open("/f".bytes, flags: 0, mode: 0, root)
        XCTAssertErrno(.invalidArgument, try service.truncate(descriptor: reader, to: 0, root))
        let writer = try service.open("/f".bytes, flags: OpenFlags.writeOnly.rawValue, mode: 0, root)
        try service.truncate(descriptor: writer, to: 6, root)
        XCTAssertEqual(Array(try service.readFile("/f").utf8), Array("0123".utf8) + [0, 0])
        XCTAssertErrno(.isDirectory, try service.truncate("/".bytes, to: 0, root))
        try service.writeFile("/mine", "x", alice, mode: 0o644)
        XCTAssertErrno(.permissionDenied, try service.truncate("/mine".bytes, to: 0, bob))
    }

    func testTmpfsFullIsENOSPC() throws {
        let service = VFSService()
        try service.mount(MemoryFileSystem(maxBytes: 100), at: "/", source: "small")
        let fd = try service.open("/f".bytes, flags: OpenFlags([.create, .writeOnly]).rawValue, mode: 0o644, root)
        XCTAssertErrno(.noSpace, try [UInt8](repeating: 1, count: 101).withUnsafeBytes { try service.write(fd, from: $0, root) })
        XCTAssertEqual(try [UInt8](repeating: 1, count: 100).withUnsafeBytes { try service.write(fd, from: $0, root) }, 100)
    }

    func testCheckpointRoundTripAndRestore() throws {
        let (service, _) = makeService()
        try service.writeFile("/f", "0123456789", mode: 0o666)
        let fd = try service.open("/f".bytes, flags: OpenFlags.readWrite.rawValue, mode: 0, alice)
        _ = try service.seek(fd, offset: 4, whence: 0, alice)
        let dir = try service.open("/".bytes, flags: OpenFlags.directory.rawValue, mode: 0, bob)
        let bytes = DescriptorCheckpoint.encode(service.checkpointRecords())
        let records = try DescriptorCheckpoint.decode(bytes)
        XCTAssertEqual(records, service.checkpointRecords())
        XCTAssertEqual(records.count, 2)

        // A restarted server with the same mounts gives each pid its descriptors back.
        let restarted = VFSService()
        try restarted.mount(try XCTUnwrap(service.mounts.mount(0)).fileSystem, at: "/", source: "same")
        XCTAssertEqual(restarted.restore(records).0, 2)
        XCTAssertEqual(try restarted.readAll(fd, alice), "456789")
        XCTAssertNoThrow(try restarted.close(dir, bob))
        XCTAssertErrno(.badFileDescriptor, try restarted.close(fd, bob))

        // Corrupt checkpoints are refused, whatever is damaged.
        var flipped = bytes
        flipped[20] ^= 0x40
        XCTAssertErrno(.invalidArgument, try DescriptorCheckpoint.decode(flipped))
        XCTAssertErrno(.invalidArgument, try DescriptorCheckpoint.decode(Array(bytes.dropLast(5))))
        XCTAssertErrno(.invalidArgument, try DescriptorCheckpoint.decode(Array("XXXX".utf8) + bytes.dropFirst(4)))
        XCTAssertErrno(.invalidArgument, try DescriptorCheckpoint.decode([]))
        XCTAssertEqual(try DescriptorCheckpoint.decode(DescriptorCheckpoint.encode([])), [])
    }
}
