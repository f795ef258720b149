import PlatformTestSupport
import XCTest
@testable import IPC

final class MessageTests: XCTestCase {
    private func encoded(_ message: Message, payload: [UInt8] = []) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Message.headerSize)
        bytes.withUnsafeMutableBytes { message.encode(into: $0) }
        return bytes + payload
    }

    private func decode(_ bytes: [UInt8]) throws -> Message {
        try bytes.withUnsafeBytes { try Message.decode($0) }
    }

    func testHeaderRoundTripsAndLayoutIsLittleEndianAtDocumentedOffsets() throws {
        var message = Message(type: .vfsRead, param1: 0x1122_3344_5566_7788, param2: 2, param3: 3, sequence: 77,
                              senderPID: 1234, senderUID: 1000, senderGID: 100)
        message.setInlineData(offset: 2, count: 3)
        let bytes = encoded(message, payload: [9, 9, 1, 2, 3])
        XCTAssertEqual(try decode(bytes), message)
        XCTAssertEqual(Array(bytes[0..<4]), [0x01, 0x01, 0, 0])               // type 0x101
        XCTAssertEqual(Array(bytes[4..<8]), [0xD2, 0x04, 0, 0])               // sender_pid 1234
        XCTAssertEqual(Array(bytes[20..<24]), [77, 0, 0, 0])                  // sequence
        XCTAssertEqual(Array(bytes[24..<32]), [0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11])
        XCTAssertEqual(Array(bytes[48..<56]), [2, 0, 0, 0, 0, 0, 0, 0])       // data_ptr
        XCTAssertEqual(Array(bytes[56..<60]), [3, 0, 0, 0])                   // data_size
        XCTAssertEqual(message.data, .inline(offset: 2, count: 3))

        var shared = Message(type: .blockWrite)
        shared.setSharedData(handle: 7, offset: 4096, count: 512)
        XCTAssertEqual(try decode(encoded(shared)).data, .shared(handle: 7, offset: 4096, count: 512))
        let reply = Message(type: .blockWrite, flags: .reply, sequence: 3, status: .EBUSY)
        XCTAssertEqual(try decode(encoded(reply)).status, .EBUSY)
    }

    func testDecoderRejectsEveryKindOfBadHeader() {
        func expect(_ bytes: [UInt8], _ error: MessageError, file: StaticString = #filePath, line: UInt = #line) {
            XCTAssertThrowsError(try decode(bytes), file: file, line: line) { XCTAssertEqual($0 as? MessageError, error, file: file, line: line) }
        }
        expect([], .truncated(count: 0))
        expect(Array(encoded(Message(type: .vfsOpen)).prefix(63)), .truncated(count: 63))
        expect(encoded(Message(type: .vfsOpen), payload: [UInt8](repeating: 0, count: Message.maxInlinePayload + 1)),
               .oversized(count: Message.maxDatagramSize + 1, limit: Message.maxDatagramSize))
        expect(encoded(Message(type: .vfsOpen, flags: MessageFlags(rawValue: 0x80))), .unknownFlags(0x80))
        expect(encoded(Message(type: MessageType(rawValue: 0x9999))), .unknownType(0x9999))
        expect(encoded(Message(type: .vfsOpen, status: .ENOENT)), .statusInRequest(2))
        var zero = Message(type: .vfsWrite)
        zero.setSharedData(handle: 0, count: 10)
        expect(encoded(zero), .zeroHandle)
        expect(encoded(Message(type: .vfsWrite, dataPointer: 2, dataSize: 4), payload: [1, 2, 3, 4, 5]),
               .dataOutsidePayload(offset: 2, size: 4, payload: 5))
        expect(encoded(Message(type: .vfsWrite, dataPointer: UInt64.max, dataSize: 1), payload: [1]),
               .dataOutsidePayload(offset: UInt64.max, size: 1, payload: 1))
        expect(encoded(Message(type: .vfsWrite, dataPointer: 0, dataSize: UInt32.max)),
               .dataOutsidePayload(offset: 0, size: UInt32.max, payload: 0))
        for error in [MessageError.truncated(count: 1), .zeroHandle, .unknownType(5)] {
            XCTAssertFalse(error.description.isEmpty)
        }
    }

    func testIsKnownMatchesTheRegistryForEveryNumber() {
        var known = 0
        for raw in UInt32(0)...0xFFFF {
            let type = MessageType(rawValue: raw)
            XCTAssertEqual(type.isKnown, type.name != nil, "0x\(String(raw, radix: 16))")
            if type.isKnown { known += 1 }
        }
        XCTAssertGreaterThan(known, 60)
    }

    func testRegistryHasUniqueNamesInSubsystemRanges() {
        let types: [MessageType] = [
            .ipcShare, .ipcRelease, .ipcPing, .ipcError,
            .vfsOpen, .vfsRead, .vfsWrite, .vfsClose, .vfsStat, .vfsMkdir, .vfsRmdir, .vfsUnlink,
            .blockOpenNamespace, .blockGeometry, .blockRead, .blockWrite, .blockFlush, .blockTrim,
            .usbListDevices, .usbDeviceDescriptor, .usbControlTransfer, .usbBulkTransfer, .usbInterruptTransfer, .usbResetPort,
            .powerGetState, .powerSetState, .powerGetCPUFrequency, .powerSetCPUFrequency, .powerACPIRead,
            .supervisorRegister, .supervisorHeartbeat, .supervisorLog, .supervisorCheckpointSave,
            .supervisorCheckpointRestore, .supervisorCapabilityGrant,
        ]
        XCTAssertEqual(Set(types.compactMap(\.name)).count, types.count)
        XCTAssertEqual(MessageType.vfsOpen.name, "MSG_VFS_OPEN")
        XCTAssertEqual(MessageType.vfsUnlink.name, "MSG_VFS_UNLINK")
        XCTAssertTrue(types.filter { $0.name!.hasPrefix("MSG_BLOCK") }.allSatisfy { $0.rawValue >> 8 == 2 })
        XCTAssertEqual(IPCStatus.EBUSY.rawValue, EBUSY)
        XCTAssertEqual(IPCStatus.ENOENT.description, "ENOENT")
    }

    /// Random datagrams through the decoder: an answer or an error, never a crash.
    func testHundredThousandRandomDatagramsNeverCrashTheDecoder() {
        var random = SplitMix(state: 2026)
        var buffer = [UInt8](repeating: 0, count: Message.headerSize + 256)
        var accepted = 0
        for round in 0..<100_000 {
            let count = Int(random.next() % UInt64(buffer.count + 1))
            for index in 0..<count { buffer[index] = UInt8(truncatingIfNeeded: random.next()) }
            if round % 2 == 0 && count >= Message.headerSize {
                // Make half of them plausible so validation past the first checks is exercised.
                buffer[0] = 0x01; buffer[1] = UInt8(random.next() % 6); buffer[2] = 0; buffer[3] = 0
                buffer[8] = UInt8(random.next() % 4); buffer[9] = 0; buffer[10] = 0; buffer[11] = 0
                for index in 60..<64 { buffer[index] = 0 }
                for index in 51..<56 { buffer[index] = 0 }
                buffer[57] = 0; buffer[58] = 0; buffer[59] = 0
            }
            let decoded = buffer.withUnsafeBytes { raw in try? Message.decode(UnsafeRawBufferPointer(rebasing: raw[..<count])) }
            if let message = decoded {
                accepted += 1
                if case .inline(let offset, let size) = message.data {
                    XCTAssertLessThanOrEqual(offset + size, count - Message.headerSize)
                }
            }
        }
        XCTAssertGreaterThan(accepted, 0)
    }
}

