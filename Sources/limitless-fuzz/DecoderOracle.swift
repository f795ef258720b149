import IPC

/// An independent model of what `Message.decode` must do with a datagram, written from the wire
/// format's specification (Message.swift's table and the decode contract), not from its code:
/// the fuzzer compares the two on every input, and checks the invariants of every accepted
/// message.
enum DecoderOracle {
    /// The registry's numbers, by range (MessageType.swift), kept separate on purpose.
    static func isRegistered(_ type: UInt32) -> Bool {
        switch type {
        case 0x0001...0x0005, 0x0100...0x0116, 0x0200...0x0208, 0x0300...0x0305, 0x0400...0x0404, 0x0500...0x050C: true
        default: false
        }
    }

    /// The refusal `decode` must give (its `MessageError.code`), or 0 to accept.
    static func expectedCode(_ input: UnsafeRawBufferPointer) -> UInt64 {
        let count = input.count
        if count < 64 { return 1 }
        if count > 64 + 65536 { return 2 }
        func u32(_ offset: Int) -> UInt32 {
            UInt32(input[offset]) | UInt32(input[offset + 1]) << 8 | UInt32(input[offset + 2]) << 16 | UInt32(input[offset + 3]) << 24
        }
        let flags = u32(8)
        if flags & ~UInt32(3) != 0 { return 3 }
        if !isRegistered(u32(0)) { return 4 }
        if flags & 1 == 0 && u32(60) != 0 { return 5 }
        if flags & 2 != 0 {
            if u32(48) == 0 { return 6 }
        } else {
            let pointer = UInt64(u32(48)) | UInt64(u32(52)) << 32
            let size = UInt64(u32(56))
            let payload = UInt64(count - 64)
            if pointer > payload || size > payload - pointer { return 7 }
        }
        return 0
    }

    static let kinds = ["accepted", "truncated", "oversized", "unknownFlags", "unknownType", "statusInRequest",
                        "zeroHandle", "dataOutsidePayload"]

    /// Decodes `input` and checks everything the model says; returns the outcome code (0
    /// accepted, else the error's code) or a description of the violation.
    static func check(_ input: UnsafeRawBufferPointer, scratch: UnsafeMutableRawBufferPointer, deep: Bool) -> Result<Int, Violation> {
        let expected = expectedCode(input)
        let message: Message
        do {
            message = try Message.decode(input)
        } catch {
            guard error.code == expected else {
                return .failure(Violation("decode refused with \(error) (code \(error.code)); the model expects "
                    + (expected == 0 ? "acceptance" : "code \(expected) (\(kinds[Int(expected)]))")))
            }
            // The refusal's details describe this input.
            let consistent: Bool
            switch error {
            case .truncated(let count): consistent = count == input.count
            case .oversized(let count, let limit): consistent = count == input.count && limit == Message.maxDatagramSize
            case .unknownFlags(let bits): consistent = bits != 0 && bits & 3 == 0
            case .unknownType(let type): consistent = !isRegistered(type)
            case .statusInRequest(let status): consistent = status != 0
            case .zeroHandle: consistent = true
            case .dataOutsidePayload(let offset, let size, let payload):
                consistent = payload == input.count - 64 && (offset > UInt64(payload) || UInt64(size) > UInt64(payload) - offset)
            }
            guard consistent else { return .failure(Violation("refusal \(error) does not describe the input")) }
            let status = error.status.rawValue
            guard status == 74 || status == 90 || status == 38 else { return .failure(Violation("refusal \(error) maps to status \(status)")) }
            if deep && error.description.isEmpty { return .failure(Violation("refusal \(error) has no description")) }
            return .success(Int(error.code))
        }
        guard expected == 0 else {
            return .failure(Violation("decode accepted \(message); the model expects code \(expected) (\(kinds[Int(expected)]))"))
        }
        // Invariants of an accepted message.
        message.encode(into: scratch)
        for index in 0..<Message.headerSize where scratch[index] != input[index] {
            return .failure(Violation("re-encoding the accepted header differs at byte \(index)"))
        }
        guard message.flags.rawValue & ~MessageFlags.known.rawValue == 0 else { return .failure(Violation("accepted unknown flags")) }
        guard message.type.isKnown, message.type.name != nil else { return .failure(Violation("accepted an unregistered type")) }
        guard message.flags.contains(.reply) || message.status.isOK else { return .failure(Violation("accepted a request with a status")) }
        let payload = input.count - Message.headerSize
        switch message.data {
        case .none:
            guard !message.flags.contains(.sharedData), message.dataSize == 0 else { return .failure(Violation("data .none for a message with data")) }
        case .inline(let offset, let count):
            guard offset >= 0, count > 0, offset <= payload, count <= payload - offset else {
                return .failure(Violation("inline data \(offset)+\(count) outside the \(payload)-byte payload"))
            }
            // The range can be sliced without trapping.
            let slice = UnsafeRawBufferPointer(rebasing: input[(Message.headerSize + offset)..<(Message.headerSize + offset + count)])
            guard slice.count == count else { return .failure(Violation("inline slice size")) }
        case .shared(let handle, let offset, let count):
            guard message.flags.contains(.sharedData), handle != 0, offset >= 0, count >= 0,
                  UInt64(handle) | UInt64(offset) << 32 == message.dataPointer, count == Int(message.dataSize)
            else { return .failure(Violation("shared data \(message.data) inconsistent with its header")) }
        }
        if deep {
            // A decoded message survives a round trip through encode + decode with its payload.
            let copy = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<input.count])
            copy.baseAddress!.advanced(by: Message.headerSize)
                .copyMemory(from: input.baseAddress!.advanced(by: Message.headerSize), byteCount: payload)
            guard let again = try? Message.decode(UnsafeRawBufferPointer(copy)), again == message else {
                return .failure(Violation("encode + decode of an accepted message does not round-trip"))
            }
        }
        return .success(0)
    }
}

struct Violation: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
