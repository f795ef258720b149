import XCTest
@testable import Platform

final class PCIAddressTests: XCTestCase {
    func testParsesFullAndShortForms() {
        XCTAssertEqual(PCIAddress("0000:00:14.0"), PCIAddress(domain: 0, bus: 0, device: 0x14, function: 0))
        XCTAssertEqual(PCIAddress("00:1f.3"), PCIAddress(domain: 0, bus: 0, device: 0x1F, function: 3))
        XCTAssertEqual(PCIAddress("10000:e3:00.1")?.domain, 0x10000)
    }

    func testPrintsCanonicalForm() {
        XCTAssertEqual(PCIAddress(domain: 0, bus: 0xA, device: 3, function: 7).description, "0000:0a:03.7")
        XCTAssertEqual(PCIAddress("00:14.0")?.description, "0000:00:14.0")
    }

    func testRejectsMalformedAddresses() {
        for bad in ["", "0000:00:14", "0000:00:20.0", "0000:00:14.8", "zz:00.0", "0000:000:14.0", "0000:00:14.0.1",
                    "0000:00:14.", ":00:14.0", "0000:00:14.0\0", "-1:00.0", "123456789:00:00.0"] {
            XCTAssertNil(PCIAddress(bad), "accepted \(bad.debugDescription)")
        }
    }

    func testOrdersByDomainBusDeviceFunction() {
        let sorted = ["0000:01:00.0", "0000:00:1f.3", "0001:00:00.0", "0000:00:02.0"].compactMap(PCIAddress.init).sorted()
        XCTAssertEqual(sorted.map(\.description), ["0000:00:02.0", "0000:00:1f.3", "0000:01:00.0", "0001:00:00.0"])
    }
}
