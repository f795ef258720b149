import CLimitless
import XCTest
@testable import Storage
#if canImport(Glibc)
import Glibc
#endif

/// A standby storage_server's serving warm-up (`BlockServingWarmUp`) runs before its activation,
/// where a standby must hold nothing but its supervisor channel: it leaves every descriptor as it
/// found it and takes its socket directory down again; and it does run the path (its server answers).
final class BlockServingWarmUpTests: XCTestCase {
    func openDescriptors() -> Set<Int32> {
        Set((0..<1024).filter { CL_fcntl_int($0, F_GETFD, 0) >= 0 })
    }

    func warmUpDirectories() -> Set<String> {
        guard let directory = opendir("/tmp") else { return [] }
        defer { closedir(directory) }
        var names: Set<String> = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name.hasPrefix("limitless-standby-block-") { names.insert(name) }
        }
        return names
    }

    func testTheWarmUpLeavesNoDescriptorAndNoDirectory() {
        let descriptors = openDescriptors()
        let directories = warmUpDirectories()
        XCTAssertTrue(BlockServingWarmUp.run(), "the warm-up's server answers its geometry, write and read")
        XCTAssertEqual(openDescriptors(), descriptors, "the warm-up leaves every descriptor as it found it")
        XCTAssertEqual(warmUpDirectories(), directories, "the warm-up removes its socket directory")
    }
}
