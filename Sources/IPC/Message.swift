/// The seed's message header, field for field (`type, sender_pid, flags, param1, param2, param3,
/// data_ptr, data_size`), with four fields added, as a fixed little-endian layout of 64 bytes
/// (one cache line). A datagram is this header followed by 0...`Message.maxInlinePayload` bytes of
/// inline payload.
///
/// | Offset | Size | Field        | Notes                                                              |
/// |-------:|-----:|--------------|--------------------------------------------------------------------|
/// |      0 |    4 | `type`       | u32, a `MessageType` from the registry                             |
/// |      4 |    4 | `sender_pid` | i32, set by the receiver from SO_PEERCRED; whatever was sent is ignored |
/// |      8 |    4 | `flags`      | u32, `MessageFlags`; unknown bits are refused                      |
/// |     12 |    4 | `sender_uid` | u32, added: from SO_PEERCRED like the pid (servers check permissions) |
/// |     16 |    4 | `sender_gid` | u32, added: from SO_PEERCRED                                       |
/// |     20 |    4 | `sequence`   | u32, added: chosen by the client, copied into the reply, so replies to asynchronous sends match their requests |
/// |     24 |    8 | `param1`     | u64 (64 bits: file offsets and LBAs need them)                     |
/// |     32 |    8 | `param2`     | u64                                                                |
/// |     40 |    8 | `param3`     | u64                                                                |
/// |     48 |    8 | `data_ptr`   | u64: inline, the offset of the data in the payload; with `.sharedData`, handle (low 32 bits) and byte offset into that region (high 32 bits) |
/// |     56 |    4 | `data_size`  | u32, length of the data (inline: at most the payload)              |
/// |     60 |    4 | `status`     | i32, added: a reply's errno-style `IPCStatus`; 0 in requests       |
///
/// The seed's `data_ptr` was a pointer, which means nothing in another address space; here it is
/// an offset or a handle, and the decoder checks that it points inside what was actually sent.
public struct Message: Equatable, Sendable {
    public static let headerSize = 64
    /// The most inline payload a datagram may carry; larger data goes through shared memory
    /// (`SharedMemory`, `IPCClient.share`). 64 KiB keeps a datagram within the default socket
    /// buffers (net.core.wmem_default is 208 KiB) so a reply never has to be split.
    public static let maxInlinePayload = 64 * 1024
    public static let maxDatagramSize = headerSize + maxInlinePayload

    public var type: MessageType
    public var senderPID: Int32
    public var flags: MessageFlags
    public var senderUID: UInt32
    public var senderGID: UInt32
    public var sequence: UInt32
    public var param1: UInt64
    public var param2: UInt64
    public var param3: UInt64
    public var dataPointer: UInt64
    public var dataSize: UInt32
    public var status: IPCStatus

    public init(type: MessageType, flags: MessageFlags = [], param1: UInt64 = 0, param2: UInt64 = 0,
                param3: UInt64 = 0, dataPointer: UInt64 = 0, dataSize: UInt32 = 0, sequence: UInt32 = 0,
                status: IPCStatus = .ok, senderPID: Int32 = 0, senderUID: UInt32 = 0, senderGID: UInt32 = 0) {
        self.type = type
        self.senderPID = senderPID
        self.flags = flags
        self.senderUID = senderUID
        self.senderGID = senderGID
        self.sequence = sequence
        self.param1 = param1
        self.param2 = param2
        self.param3 = param3
        self.dataPointer = dataPointer
        self.dataSize = dataSize
        self.status = status
    }

    /// Where the message's data is.
    public enum Data: Equatable, Sendable {
        case none
        /// `count` bytes at `offset` in the inline payload.
        case inline(offset: Int, count: Int)
        /// `count` bytes at `offset` in the shared-memory region named by `handle`.
        case shared(handle: UInt32, offset: Int, count: Int)
    }

    public var data: Data {
        if flags.contains(.sharedData) {
            return .shared(handle: UInt32(truncatingIfNeeded: dataPointer), offset: Int(dataPointer >> 32),
                           count: Int(dataSize))
        }
        return dataSize == 0 ? .none : .inline(offset: Int(dataPointer), count: Int(dataSize))
    }

    /// Points the message at `count` bytes at `offset` of a shared-memory region (`handle` from
    /// `IPCClient.share`).
    public mutating func setSharedData(handle: UInt32, offset: UInt32 = 0, count: UInt32) {
        flags.insert(.sharedData)
        dataPointer = UInt64(offset) << 32 | UInt64(handle)
        dataSize = count
    }

    /// Points the message at `count` bytes at `offset` of its inline payload.
    public mutating func setInlineData(offset: UInt32 = 0, count: UInt32) {
        flags.remove(.sharedData)
        dataPointer = UInt64(offset)
        dataSize = count
    }

    // MARK: Encoding

    /// Writes the 64-byte header to the start of `buffer`. Allocates nothing.
    public func encode(into buffer: UnsafeMutableRawBufferPointer) {
        precondition(buffer.count >= Self.headerSize, "a message header needs 64 bytes")
        buffer.storeBytes(of: type.rawValue.littleEndian, toByteOffset: 0, as: UInt32.self)
        buffer.storeBytes(of: senderPID.littleEndian, toByteOffset: 4, as: Int32.self)
        buffer.storeBytes(of: flags.rawValue.littleEndian, toByteOffset: 8, as: UInt32.self)
        buffer.storeBytes(of: senderUID.littleEndian, toByteOffset: 12, as: UInt32.self)
        buffer.storeBytes(of: senderGID.littleEndian, toByteOffset: 16, as: UInt32.self)
        buffer.storeBytes(of: sequence.littleEndian, toByteOffset: 20, as: UInt32.self)
        buffer.storeBytes(of: param1.littleEndian, toByteOffset: 24, as: UInt64.self)
        buffer.storeBytes(of: param2.littleEndian, toByteOffset: 32, as: UInt64.self)
        buffer.storeBytes(of: param3.littleEndian, toByteOffset: 40, as: UInt64.self)
        buffer.storeBytes(of: dataPointer.littleEndian, toByteOffset: 48, as: UInt64.self)
        buffer.storeBytes(of: dataSize.littleEndian, toByteOffset: 56, as: UInt32.self)
        buffer.storeBytes(of: status.rawValue.littleEndian, toByteOffset: 60, as: Int32.self)
    }

    // MARK: Decoding

    /// Decodes and validates a whole datagram (header plus inline payload). Allocates nothing.
    /// Checks: the header is complete; the datagram is within `maxDatagramSize`; no unknown flag
    /// bits; the type is in the registry; requests carry status 0; inline data lies inside the
    /// payload; shared data names a non-zero handle. Handles themselves are checked against the
    /// connection's table by the server (`IPCStatus.EBADF`).
    public static func decode(_ datagram: UnsafeRawBufferPointer) throws(MessageError) -> Message {
        guard datagram.count >= headerSize else { throw .truncated(count: datagram.count) }
        guard datagram.count <= maxDatagramSize else { throw .oversized(count: datagram.count, limit: maxDatagramSize) }
        let message = Message(unvalidatedHeader: datagram)
        let unknownFlags = message.flags.rawValue & ~MessageFlags.known.rawValue
        guard unknownFlags == 0 else { throw .unknownFlags(unknownFlags) }
        guard message.type.isKnown else { throw .unknownType(message.type.rawValue) }
        if !message.flags.contains(.reply) && !message.status.isOK {
            throw .statusInRequest(message.status.rawValue)
        }
        let payload = datagram.count - headerSize
        if message.flags.contains(.sharedData) {
            guard UInt32(truncatingIfNeeded: message.dataPointer) != 0 else { throw .zeroHandle }
        } else {
            guard message.dataPointer <= UInt64(payload), UInt64(message.dataSize) <= UInt64(payload) - message.dataPointer
            else { throw .dataOutsidePayload(offset: message.dataPointer, size: message.dataSize, payload: payload) }
        }
        return message
    }

    /// Reads the header fields without any check (the caller has verified 64 bytes are there).
    init(unvalidatedHeader b: UnsafeRawBufferPointer) {
        type = MessageType(rawValue: UInt32(littleEndian: b.loadUnaligned(fromByteOffset: 0, as: UInt32.self)))
        senderPID = Int32(littleEndian: b.loadUnaligned(fromByteOffset: 4, as: Int32.self))
        flags = MessageFlags(rawValue: UInt32(littleEndian: b.loadUnaligned(fromByteOffset: 8, as: UInt32.self)))
        senderUID = UInt32(littleEndian: b.loadUnaligned(fromByteOffset: 12, as: UInt32.self))
        senderGID = UInt32(littleEndian: b.loadUnaligned(fromByteOffset: 16, as: UInt32.self))
        sequence = UInt32(littleEndian: b.loadUnaligned(fromByteOffset: 20, as: UInt32.self))
        param1 = UInt64(littleEndian: b.loadUnaligned(fromByteOffset: 24, as: UInt64.self))
        param2 = UInt64(littleEndian: b.loadUnaligned(fromByteOffset: 32, as: UInt64.self))
        param3 = UInt64(littleEndian: b.loadUnaligned(fromByteOffset: 40, as: UInt64.self))
        dataPointer = UInt64(littleEndian: b.loadUnaligned(fromByteOffset: 48, as: UInt64.self))
        dataSize = UInt32(littleEndian: b.loadUnaligned(fromByteOffset: 56, as: UInt32.self))
        status = IPCStatus(rawValue: Int32(littleEndian: b.loadUnaligned(fromByteOffset: 60, as: Int32.self)))
    }

    /// The sequence number of a datagram too damaged to decode, if its bytes reach that far, so an
    /// error reply can still be matched to the request.
    static func salvageSequence(_ datagram: UnsafeRawBufferPointer) -> UInt32 {
        guard datagram.count >= 24 else { return 0 }
        return UInt32(littleEndian: datagram.loadUnaligned(fromByteOffset: 20, as: UInt32.self))
    }
}

/// The header's flag bits. Bits not listed are reserved and must be zero.
public struct MessageFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// The message answers the request with the same sequence number.
    public static let reply = MessageFlags(rawValue: 1 << 0)
    /// `data_ptr` names a shared-memory handle (and offset), not an offset into the inline payload.
    public static let sharedData = MessageFlags(rawValue: 1 << 1)

    public static let known: MessageFlags = [.reply, .sharedData]
}

/// Why a datagram was refused by `Message.decode`. The server sends the `code` back in the error
/// reply's param1 (status EBADMSG or EMSGSIZE) so the client can tell what it did wrong.
public enum MessageError: Error, Equatable, Sendable, CustomStringConvertible {
    case truncated(count: Int)
    case oversized(count: Int, limit: Int)
    case unknownFlags(UInt32)
    case unknownType(UInt32)
    case statusInRequest(Int32)
    case zeroHandle
    case dataOutsidePayload(offset: UInt64, size: UInt32, payload: Int)

    public var code: UInt64 {
        switch self {
        case .truncated: 1
        case .oversized: 2
        case .unknownFlags: 3
        case .unknownType: 4
        case .statusInRequest: 5
        case .zeroHandle: 6
        case .dataOutsidePayload: 7
        }
    }

    /// The status an error reply carries for this refusal.
    public var status: IPCStatus {
        switch self {
        case .oversized: .EMSGSIZE
        case .unknownType: .ENOSYS
        default: .EBADMSG
        }
    }

    public var description: String {
        switch self {
        case .truncated(let count):
            return "truncated message: \(count) bytes, a header alone is \(Message.headerSize); encode with Message.encode(into:)."
        case .oversized(let count, let limit):
            return "message of \(count) bytes exceeds the \(limit)-byte limit; pass data over \(Message.maxInlinePayload) bytes "
                + "through shared memory (IPCClient.share, Message.setSharedData)."
        case .unknownFlags(let bits):
            return "unknown flag bits 0x\(String(bits, radix: 16)) in the header; only MessageFlags.known may be set."
        case .unknownType(let type):
            return "message type 0x\(String(type, radix: 16)) is not in the registry (MessageType.swift); add it there first."
        case .statusInRequest(let status):
            return "a request carries status \(status); only replies (flag .reply) may have a non-zero status."
        case .zeroHandle:
            return "shared data names handle 0, which is never issued; use the handle IPCClient.share returned."
        case .dataOutsidePayload(let offset, let size, let payload):
            return "data_ptr \(offset) + data_size \(size) lies outside the \(payload)-byte inline payload; "
                + "set them with Message.setInlineData to a range of the payload sent."
        }
    }
}
