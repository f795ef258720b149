import XCTest
import Platform
@testable import DeviceCatalog

final class DeviceCatalogTests: XCTestCase {
    func function(_ ids: (UInt16, UInt16), _ classCode: UInt32, driver: String? = nil) -> PCIFunctionInfo {
        PCIFunctionInfo(address: PCIAddress("0000:00:03.0")!, vendorID: ids.0, deviceID: ids.1, classCode: classCode, driver: driver)
    }

    func testMatchesByClassAndByIDs() {
        let catalog = DeviceCatalog()
        XCTAssertEqual(catalog.entry(for: function((0x1B36, 0x0010), 0x010802))?.server, "storage_server")
        XCTAssertEqual(catalog.entry(for: function((0x8086, 0xA0ED), 0x0C0330))?.server, "usb_server")
        XCTAssertEqual(catalog.entry(for: function((0x8086, 0x10D3), 0x020000))?.server, "network_server")
        XCTAssertNil(catalog.entry(for: function((0x8086, 0x1533), 0x020000)), "only the e1000e NIC is listed")
        XCTAssertNil(catalog.entry(for: function((0x1B36, 0x0011), 0x010601)), "AHCI is not NVMe")
    }

    func testTheMostSpecificEntryWins() {
        let catalog = DeviceCatalog(entries: [
            .init(match: .classCode(0x020000, mask: 0xFF0000), server: "generic", driver: "any", available: true),
            .init(match: .ids(vendor: 0x8086, device: 0x10D3), server: "specific", driver: "e1000e", available: true),
        ])
        XCTAssertEqual(catalog.entry(for: function((0x8086, 0x10D3), 0x020000))?.server, "specific")
    }

    func testTableTellsHowToBindASupportedDevice() {
        let nvme = function((0x1B36, 0x0010), 0x010802, driver: "nvme")
        let row = DeviceRow(function: nvme, entry: DeviceCatalog().entry(for: nvme))
        XCTAssertEqual(row.hint, "sudo ./Scripts/bind.sh 0000:00:03.0")
        let table = DeviceRow.table([row], iommuEnabled: true)
        XCTAssertTrue(table.contains("storage_server"), table)
        XCTAssertTrue(table.contains("0000:00:03.0: to drive it, sudo ./Scripts/bind.sh 0000:00:03.0"), table)
        let ready = DeviceRow(function: function((0x1B36, 0x0010), 0x010802, driver: "vfio-pci"), entry: row.entry)
        XCTAssertNil(ready.hint)
    }

    func testJSONEscapesNames() {
        var named = function((0x1B36, 0x0010), 0x010802)
        named.deviceName = "Quote \" and \\ and \u{1}"
        let json = DeviceRow.json([DeviceRow(function: named, entry: nil)])
        XCTAssertTrue(json.contains(#""device_name": "Quote \" and \\ and \u0001""#), json)
        XCTAssertTrue(json.contains(#""driver": null"#))
    }
}
