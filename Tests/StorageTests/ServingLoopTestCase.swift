import IPC
import XCTest
@testable import Storage
#if canImport(Glibc)
import Glibc
#endif

/// A BlockServer over a RAM device, served by a BlockServingLoop on a socket in a temporary
/// runtime directory, started before each test and stopped after it. Subclasses name the
/// device's namespaces.
class ServingLoopTestCase: XCTestCase {
    var directory = ""
    var device: MemoryBlockDevice!
    var block: BlockServer!
    var loop: BlockServingLoop!

    class var namespaces: [UInt32: BlockGeometry] { [:] }

    override func setUpWithError() throws {
        var template = Array("/tmp/limitless-serving-XXXXXX".utf8CString)
        directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        device = MemoryBlockDevice(namespaces: Self.namespaces)
        block = BlockServer(device: device)
        loop = BlockServingLoop(server: block, endpoint: try block.makeIPCServer(name: "storage", directory: directory))
        loop.wakeInterval = .milliseconds(20)
        loop.start()
    }

    override func tearDown() {
        loop?.stop()
        loop = nil
        block = nil
        device = nil
        _ = rmdir(directory)
    }
}
