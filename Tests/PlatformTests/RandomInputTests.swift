import PlatformTestSupport
import XCTest
@testable import Platform

/// Config space and addresses come from outside (hardware, sysfs, users): random inputs must give
/// an answer or an error, never a crash or a hang.
final class RandomInputTests: XCTestCase {

    func testCapabilityWalksOfRandomConfigSpacesTerminate() throws {
        var random = SplitMix(state: 2026)
        for round in 0..<3000 {
            let size = round % 2 == 0 ? 256 : 4096
            var bytes = (0..<size).map { _ in UInt8.random(in: 0...255, using: &random) }
            bytes[PCIConfig.status] |= UInt8(PCIConfig.Status.capabilitiesList)  // always walk
            let capabilities = try PCICapabilities(reading: InMemoryConfigSpace(bytes: bytes))
            XCTAssertLessThanOrEqual(capabilities.standard.count, 48)
            XCTAssertLessThanOrEqual(capabilities.extended.count, (size - 256) / 4)
            if let msix = capabilities.msix { XCTAssertTrue((1...2048).contains(msix.tableSize)) }
        }
    }

    func testRandomAddressesParseOrAreRefusedAndRoundTrip() {
        var random = SplitMix(state: 7)
        let alphabet = Array("0123456789abcdefABCDEFxyz:.-\u{0} ")
        for _ in 0..<20000 {
            let length = Int.random(in: 0...16, using: &random)
            let text = String((0..<length).map { _ in alphabet.randomElement(using: &random)! })
            if let address = PCIAddress(text) {
                XCTAssertEqual(PCIAddress(address.description), address, text)
            }
        }
    }
}
