import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// A test case with its own runtime directory (where servers put NAME.sock and NAME.pid), made
/// fresh before each test and removed with everything in it afterwards.
class RuntimeDirectoryTestCase: XCTestCase {
    private(set) var directory = ""

    override func setUp() {
        super.setUp()
        var template = Array("/tmp/limitless-ipc-XXXXXX".utf8CString)
        directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: directory)
        super.tearDown()
    }
}
