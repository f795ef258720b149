import XCTest
@testable import Platform
import PlatformTestSupport

final class SysfsTests: XCTestCase {
    func testReadsBindingGroupNodeAndResources() throws {
        let tree = FakeSysfs()
        tree.addFunction("0000:00:03.0", vendor: 0x1B36, device: 0x0010, classCode: 0x010802, driver: "vfio-pci", group: 4, numaNode: 0,
                         resources: ["0x00000000fe800000 0x00000000fe803fff 0x0000000000140204",
                                     "0x0000000000000000 0x0000000000000000 0x0000000000000000",
                                     "0x000000000000c000 0x000000000000c03f 0x0000000000040101"])
        let sysfs = tree.sysfs
        let address = try XCTUnwrap(PCIAddress("0000:00:03.0"))
        XCTAssertEqual(sysfs.functionAddresses(), [address])
        XCTAssertEqual(sysfs.driver(of: address), "vfio-pci")
        XCTAssertEqual(sysfs.iommuGroup(of: address), 4)
        XCTAssertEqual(sysfs.numaNode(of: address), 0)
        XCTAssertTrue(sysfs.iommuEnabled)
        XCTAssertEqual(sysfs.iommuGroupMembers(4), [address])
        let resources = try sysfs.resources(of: address)
        XCTAssertEqual(resources.count, 2)
        XCTAssertEqual(resources[0].start, 0xFE80_0000)
        XCTAssertEqual(resources[0].size, 0x4000)
        XCTAssertTrue(resources[0].isMemory && resources[0].is64Bit)
        XCTAssertEqual(resources[1].index, 2)
        XCTAssertTrue(resources[1].isIO)
    }

    func testNoNUMAAndNoIOMMU() throws {
        let tree = FakeSysfs()
        tree.addFunction("0000:00:02.0", vendor: 0x8086, device: 0x10D3, classCode: 0x020000)
        let address = try XCTUnwrap(PCIAddress("0000:00:02.0"))
        XCTAssertNil(tree.sysfs.numaNode(of: address))
        XCTAssertNil(tree.sysfs.driver(of: address))
        XCTAssertNil(tree.sysfs.iommuGroup(of: address))
        XCTAssertFalse(tree.sysfs.iommuEnabled)
    }

    func testMalformedResourceLineIsReported() throws {
        let tree = FakeSysfs()
        tree.addFunction("0000:00:02.0", vendor: 0x8086, device: 0x10D3, classCode: 0x020000,
                         resources: ["0x00000000fe000000 garbage 0x0000000000040200"])
        let address = try XCTUnwrap(PCIAddress("0000:00:02.0"))
        XCTAssertThrowsError(try tree.sysfs.resources(of: address)) { error in
            guard case .malformedSysfs(let path, _)? = error as? PlatformError else { return XCTFail("\(error)") }
            XCTAssertTrue(path.hasSuffix("/resource"))
        }
    }

    func testEndBeforeStartIsMalformed() throws {
        let tree = FakeSysfs()
        tree.addFunction("0000:00:02.0", vendor: 0x8086, device: 0x10D3, classCode: 0x020000,
                         resources: ["0x00000000fe001000 0x00000000fe000000 0x0000000000040200"])
        XCTAssertThrowsError(try tree.sysfs.resources(of: PCIAddress("0000:00:02.0")!))
    }

    func testReadHexRejectsGarbage() {
        let tree = FakeSysfs()
        tree.writeFile("value", "0xzz\n")
        XCTAssertThrowsError(try tree.sysfs.readHex(tree.root + "/value"))
        tree.writeFile("value", "0x1b36\n")
        XCTAssertEqual(try tree.sysfs.readHex(tree.root + "/value"), 0x1B36)
    }
}

final class PCIEnumeratorTests: XCTestCase {
    func testEnumeratesThroughLibpciWithSysfsDetails() throws {
        let tree = FakeSysfs()
        tree.addFunction("0000:00:03.0", vendor: 0x1B36, device: 0x0010, classCode: 0x010802, driver: "vfio-pci", group: 4)
        tree.addFunction("0000:00:02.0", vendor: 0x8086, device: 0x10D3, classCode: 0x020000, driver: "e1000e", group: 3)
        let functions = try PCIEnumerator(sysfs: tree.sysfs).functions()
        XCTAssertEqual(functions.map(\.address.description), ["0000:00:02.0", "0000:00:03.0"])
        let nvme = functions[1]
        XCTAssertEqual(nvme.idPair, "1b36:0010")
        XCTAssertEqual(nvme.classCode, 0x010802)
        XCTAssertEqual(nvme.driver, "vfio-pci")
        XCTAssertEqual(nvme.iommuGroup, 4)
        XCTAssertEqual(functions[0].driver, "e1000e")
        if access("/usr/share/misc/pci.ids", R_OK) == 0 {
            XCTAssertEqual(functions[0].vendorName, "Intel Corporation")
        }
    }

    func testMissingSysfsIsAnErrorNotACrash() {
        XCTAssertThrowsError(try PCIEnumerator(sysfs: Sysfs(root: "/nonexistent-limitless")).functions()) { error in
            XCTAssertTrue("\(error)".contains("does not exist"), "\(error)")
        }
    }

    func testUnknownAddressIsDeviceNotFound() throws {
        let tree = FakeSysfs()
        tree.addFunction("0000:00:03.0", vendor: 0x1B36, device: 0x0010, classCode: 0x010802)
        XCTAssertThrowsError(try PCIEnumerator(sysfs: tree.sysfs).function(at: PCIAddress("0000:00:09.0")!)) { error in
            XCTAssertEqual(error as? PlatformError, .deviceNotFound(PCIAddress("0000:00:09.0")!))
        }
    }
}
