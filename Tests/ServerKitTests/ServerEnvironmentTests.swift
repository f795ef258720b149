import IPC
import ServerKit
import XCTest

final class ServerEnvironmentTests: XCTestCase {
    private let allOpen: (Int32) -> Bool = { _ in true }

    private func parseError(_ variables: [String: String], isOpen: (Int32) -> Bool = { _ in true }) -> ServerKitError? {
        do {
            _ = try ServerEnvironment.parse(variables, standaloneName: "t", isOpen: isOpen)
            return nil
        } catch {
            return error
        }
    }

    func testSupervisedEnvironmentParses() throws {
        let environment = try ServerEnvironment.parse([
            "LIMITLESS_SERVER_NAME": "storage_server", "LIMITLESS_CAPABILITIES": "CAP_MMIO_NVME0=5,CAP_BLOCK_READ=-1",
            "LIMITLESS_RUNTIME_DIR": "/tmp/rt", "LIMITLESS_INSTANCE": "3", "LIMITLESS_WATCHDOG_MS": "500",
        ], standaloneName: "unused", isOpen: allOpen)
        XCTAssertEqual(environment.mode, .supervised)
        XCTAssertEqual(environment.serverName, "storage_server")
        XCTAssertEqual(environment.capabilities.map(\.name), ["CAP_MMIO_NVME0", "CAP_BLOCK_READ"])
        XCTAssertEqual(environment.capabilities.map(\.fd), [5, -1])
        XCTAssertEqual(environment.runtimeDirectory, "/tmp/rt")
        XCTAssertEqual(environment.instance, 3)
        XCTAssertEqual(environment.watchdog, .milliseconds(500))
    }

    func testListenDescriptorIsCheckedAgainstTheReservedAndCapabilityDescriptors() throws {
        let named = ["LIMITLESS_SERVER_NAME": "s", "LIMITLESS_CAPABILITIES": "CAP_X=5"]
        let environment = try ServerEnvironment.parse(named.merging(["LIMITLESS_LISTEN_FD": "6"]) { $1 }, standaloneName: "t", isOpen: allOpen)
        XCTAssertEqual(environment.listenDescriptor, 6)
        XCTAssertNil(try ServerEnvironment.parse(named, standaloneName: "t", isOpen: allOpen).listenDescriptor)
        for bad in ["4", "5", "six", "-1"] {
            guard case .malformedVariable(let name, let value, _)? = parseError(named.merging(["LIMITLESS_LISTEN_FD": bad]) { $1 }) else {
                XCTFail("LIMITLESS_LISTEN_FD=\(bad) must be refused")
                continue
            }
            XCTAssertEqual(name, "LIMITLESS_LISTEN_FD")
            XCTAssertEqual(value, bad)
        }
        XCTAssertNotNil(parseError(named.merging(["LIMITLESS_LISTEN_FD": "6"]) { $1 }, isOpen: { $0 != 6 }), "not open")
        XCTAssertEqual(parseError(["LIMITLESS_LISTEN_FD": "6"]), .variableWithoutServerName("LIMITLESS_LISTEN_FD"))
    }

    func testNoServerNameIsStandalone() throws {
        let environment = try ServerEnvironment.parse([:], standaloneName: "by-hand", isOpen: { _ in false })
        XCTAssertEqual(environment.mode, .standalone)
        XCTAssertEqual(environment.serverName, "by-hand")
        XCTAssertEqual(environment.runtimeDirectory, IPCRuntime.defaultDirectory)
        XCTAssertNil(environment.watchdog)
        XCTAssertEqual(environment.instance, 1)
    }

    func testMalformedEnvironmentIsAClearError() {
        let named = ["LIMITLESS_SERVER_NAME": "s"]
        XCTAssertEqual(parseError(named.merging(["LIMITLESS_CAPABILITIES": "CAP_X"]) { $1 }), .malformedCapabilities("CAP_X"))
        XCTAssertEqual(parseError(named.merging(["LIMITLESS_CAPABILITIES": "cap_x=5"]) { $1 }), .malformedCapabilities("cap_x=5"))
        XCTAssertEqual(parseError(named.merging(["LIMITLESS_CAPABILITIES": "CAP_X=five"]) { $1 }), .malformedCapabilities("CAP_X=five"))
        XCTAssertEqual(parseError(named.merging(["LIMITLESS_CAPABILITIES": "CAP_X=5,CAP_X=6"]) { $1 }), .duplicateCapability("CAP_X"))
        XCTAssertEqual(parseError(named.merging(["LIMITLESS_CAPABILITIES": "CAP_X=3"]) { $1 }),
                       .capabilityReservedDescriptor(name: "CAP_X", fd: 3))
        XCTAssertEqual(parseError(named.merging(["LIMITLESS_CAPABILITIES": "CAP_X=7"]) { $1 }, isOpen: { $0 != 7 }),
                       .capabilityDescriptorNotOpen(name: "CAP_X", fd: 7))
        XCTAssertEqual(parseError(named.merging(["LIMITLESS_INSTANCE": "first"]) { $1 }),
                       .malformedVariable(name: "LIMITLESS_INSTANCE", value: "first", expected: "a start count of 1 or more"))
        if case .malformedVariable(let name, _, _)? = parseError(named.merging(["LIMITLESS_WATCHDOG_MS": "0"]) { $1 }) {
            XCTAssertEqual(name, "LIMITLESS_WATCHDOG_MS")
        } else {
            XCTFail("a zero watchdog must be refused")
        }
        if case .malformedVariable(let name, _, _)? = parseError(named.merging(["LIMITLESS_RUNTIME_DIR": "relative"]) { $1 }) {
            XCTAssertEqual(name, "LIMITLESS_RUNTIME_DIR")
        } else {
            XCTFail("a relative runtime directory must be refused")
        }
        XCTAssertEqual(parseError(named, isOpen: { $0 != 3 }), .supervisorChannelMissing)
        XCTAssertEqual(parseError(named, isOpen: { $0 != 4 }), .checkpointDescriptorMissing("it is not open"))
        XCTAssertEqual(parseError(["LIMITLESS_INSTANCE": "2"]), .variableWithoutServerName("LIMITLESS_INSTANCE"))

        let description = ServerKitError.malformedCapabilities("CAP_X").description
        XCTAssertTrue(description.contains("LIMITLESS_CAPABILITIES") && description.contains("CAP_NAME=FD"), description)
        XCTAssertTrue(ServerKitError.supervisorChannelMissing.description.contains("descriptor 3"))
    }

    func testMissingCapabilityNamesIt() throws {
        var options = ServerRuntime.Options()
        options.stopSignals = []
        let runtime = try ServerRuntime(
            environment: ServerEnvironment(mode: .standalone, serverName: "t", capabilities: [("CAP_BLOCK_READ", -1)]),
            options: options)
        XCTAssertTrue(runtime.has("CAP_BLOCK_READ"))
        XCTAssertFalse(runtime.has("CAP_BLOCK_WRITE"))
        XCTAssertEqual(try runtime.capability("CAP_BLOCK_READ"), -1)
        XCTAssertThrowsError(try runtime.capability("CAP_BLOCK_WRITE")) { error in
            XCTAssertEqual(error as? ServerKitError, .missingCapability("CAP_BLOCK_WRITE"))
            XCTAssertEqual("\(error)", "missing capability CAP_BLOCK_WRITE: grant it in servers.conf (capabilities CAP_BLOCK_WRITE)")
        }
    }

    func testStandaloneCheckpointSaveRestoreAndCorruption() throws {
        var options = ServerRuntime.Options()
        options.stopSignals = []
        let runtime = try ServerRuntime(environment: ServerEnvironment(mode: .standalone, serverName: "t"), options: options)
        XCTAssertEqual(runtime.loadCheckpoint(), .none)
        XCTAssertNil(runtime.restoreCheckpoint())
        XCTAssertEqual(try runtime.saveCheckpoint(Array("one".utf8), stateVersion: 7), 1)
        XCTAssertEqual(try runtime.saveCheckpoint(Array("two".utf8), stateVersion: 7), 2)
        XCTAssertEqual(runtime.restoreCheckpoint(), Array("two".utf8))
        XCTAssertEqual(runtime.loadCheckpoint(), .restored(bytes: Array("two".utf8), stateVersion: 7, sequence: 2))

        let store = runtime.checkpointStore
        let garbage = [UInt8](repeating: 0x5A, count: 64)
        for slot in 0..<2 {
            _ = garbage.withUnsafeBytes { pwrite(store.fileDescriptor.rawValue, $0.baseAddress, 64, off_t(store.slotOffset(slot))) }
        }
        guard case .corrupt(let reason) = runtime.loadCheckpoint() else { return XCTFail("a garbled store must read as corrupt") }
        XCTAssertTrue(reason.contains("bad magic"), reason)
        XCTAssertNil(runtime.restoreCheckpoint())
    }

    func testRequestStopEndsTheLoop() throws {
        var options = ServerRuntime.Options()
        options.stopSignals = []
        let runtime = try ServerRuntime(environment: ServerEnvironment(mode: .standalone, serverName: "t"), options: options)
        var ticks = 0
        let reason = runtime.runUntilStopped(tick: .milliseconds(1)) {
            ticks += 1
            if ticks == 3 { runtime.requestStop() }
        }
        XCTAssertEqual(reason, .requested)
        XCTAssertEqual(ticks, 3)
    }
}
