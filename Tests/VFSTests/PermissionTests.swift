import SystemPackage
import VFS
import VFSCore
import XCTest

final class PermissionTests: XCTestCase {
    func testOwnerGroupOtherClassesDecide() throws {
        let (service, _) = makeService()
        try service.writeFile("/private", "secret", alice, mode: 0o600)
        XCTAssertEqual(try service.readFile("/private", alice), "secret")
        XCTAssertErrno(.permissionDenied, try service.readFile("/private", bob))
        XCTAssertEqual(try service.readFile("/private", root), "secret", "root reads anything")

        // The owner class decides for the owner even when "other" would allow more.
        try service.writeFile("/odd", "x", alice, mode: 0o007)
        XCTAssertErrno(.permissionDenied, try service.readFile("/odd", alice))
        XCTAssertEqual(try service.readFile("/odd", bob), "x")

        // Group class.
        let carol = Credentials(pid: 1003, uid: 1002, gid: 1000)
        try service.writeFile("/group", "g", alice, mode: 0o640)
        XCTAssertEqual(try service.readFile("/group", carol), "g")
        XCTAssertErrno(.permissionDenied, try service.open("/group".bytes, flags: OpenFlags.writeOnly.rawValue, mode: 0, carol))
        XCTAssertErrno(.permissionDenied, try service.open("/group".bytes, flags: OpenFlags.truncate.rawValue, mode: 0, carol))
    }

    func testSearchPermissionOnEveryDirectoryWalked() throws {
        let (service, _) = makeService()
        try service.mkdir("/home".bytes, mode: 0o755, root)
        try service.mkdir("/home/alice".bytes, mode: 0o700, root)
        try service.chown("/home/alice".bytes, uid: 1000, gid: 1000, root)
        try service.writeFile("/home/alice/notes", "n", alice, mode: 0o644)
        XCTAssertEqual(try service.readFile("/home/alice/notes", alice), "n")
        XCTAssertErrno(.permissionDenied, try service.stat("/home/alice/notes".bytes, bob))
        XCTAssertErrno(.permissionDenied, try service.names("/home/alice", bob))
        // Root passes search permission, but exec needs an x bit on a regular file.
        XCTAssertEqual(try service.stat("/home/alice/notes".bytes, root).0.size, 1)
        XCTAssertNoThrow(try Permissions.check(try service.stat("/home".bytes, root).0, .execute, root))
        XCTAssertErrno(.permissionDenied, try Permissions.check(try service.stat("/home/alice/notes".bytes, root).0, .execute, root))
        // Creating needs write on the directory.
        XCTAssertErrno(.permissionDenied, try service.mkdir("/home/bobdir".bytes, mode: 0o755, bob))
        XCTAssertErrno(.permissionDenied, try service.writeFile("/home/new", "x", bob))
        XCTAssertErrno(.permissionDenied, try service.unlink("/home/alice/notes".bytes, bob))
    }

    func testStickyDirectoryProtectsOthersFiles() throws {
        let (service, _) = makeService(rootMode: 0o1777)
        try service.writeFile("/alices", "a", alice)
        try service.writeFile("/bobs", "b", bob)
        XCTAssertErrno(.notPermitted, try service.unlink("/alices".bytes, bob))
        XCTAssertErrno(.notPermitted, try service.rename("/alices".bytes, to: "/mine".bytes, bob))
        XCTAssertErrno(.notPermitted, try service.rename("/bobs".bytes, to: "/alices".bytes, bob), "replacing another's file")
        try service.unlink("/bobs".bytes, bob)
        try service.unlink("/alices".bytes, root)
        XCTAssertEqual(try service.names("/"), [])
    }

    func testChmodChownUtimesRules() throws {
        let (service, _) = makeService()
        try service.writeFile("/f", "x", alice)
        XCTAssertErrno(.notPermitted, try service.chmod("/f".bytes, mode: 0o777, bob))
        try service.chmod("/f".bytes, mode: 0o2755, alice)
        XCTAssertEqual(try service.stat("/f".bytes, root).0.permissions, 0o2755, "alice's own group: setgid kept")
        XCTAssertErrno(.notPermitted, try service.chown("/f".bytes, uid: 1001, gid: nil, alice), "only root gives files away")
        XCTAssertErrno(.notPermitted, try service.chown("/f".bytes, uid: nil, gid: 1001, alice), "not alice's group")
        try service.chown("/f".bytes, uid: 1001, gid: 1001, root)
        let attributes = try service.stat("/f".bytes, root).0
        XCTAssertEqual([attributes.uid, attributes.gid], [1001, 1001])
        XCTAssertEqual(attributes.permissions & 0o2000, 0, "chown clears setgid on a group-executable file")
        let when = FileTime(seconds: 1_000_000, nanoseconds: 5)
        XCTAssertErrno(.notPermitted, try service.utimes("/f".bytes, access: .set(when), modification: .set(when), alice))
        try service.utimes("/f".bytes, access: .omit, modification: .set(when), bob)
        XCTAssertEqual(try service.stat("/f".bytes, root).0.modificationTime, when)
    }

    func testReadOnlyMountIsEROFSAfterExistenceChecks() throws {
        let service = VFSService()
        let fs = MemoryFileSystem()
        try service.mount(fs, at: "/", source: "test")
        try service.mkdir("/ro".bytes, mode: 0o755, root)
        let sealed = MemoryFileSystem()
        try service.mount(sealed, at: "/ro", readOnly: true, source: "ro")
        XCTAssertErrno(.readOnlyFileSystem, try service.mkdir("/ro/x".bytes, mode: 0o755, root))
        XCTAssertErrno(.fileExists, try service.mkdir("/ro".bytes, mode: 0o755, root))
        XCTAssertErrno(.readOnlyFileSystem, try service.writeFile("/ro/f", "x"))
        XCTAssertEqual(try service.statfs("/ro".bytes, root).1.isReadOnly, true)
    }
}
