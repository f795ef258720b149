import XCTest
import VFSCore
@testable import VFS
#if canImport(Glibc)
import Glibc
#endif

/// limitless-fs prints times the way coreutils does (ls --time-style=long-iso, stat), in the
/// local zone; the test pins the zone to UTC.
final class FileToolFormatTests: XCTestCase {
    override func setUp() {
        setenv("TZ", "UTC", 1)
        tzset()
    }

    func testLongListingShowsTheModificationTimeAsADate() {
        let time = FileTime(seconds: 1_795_798_417, nanoseconds: 5)
        let attributes = FileAttributes(inode: 12, type: .regular, permissions: 0o640, linkCount: 1, uid: 7, gid: 8,
                                        size: 22623, blocks512: 48, accessTime: time, modificationTime: time, changeTime: time)
        XCTAssertEqual(FileTool.longListing(attributes, name: "README.md"),
                       "-rw-r-----   1     7     8      22623 2026-11-27 16:53 README.md")
        XCTAssertEqual(FileTool.timestamp(time, precise: true), "2026-11-27 16:53:37.000000005 +0000")
        XCTAssertTrue(FileTool.statReport(attributes, path: "/README.md").contains("Modify: 2026-11-27 16:53:37.000000005 +0000"))
    }
}
