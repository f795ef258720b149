/// The 64-byte header in front of every checkpoint, little-endian:
///
///     offset  size  field
///          0     4  magic "LMCK"
///          4     2  format version (1)
///          6     2  header size (64)
///          8     4  state version: the server's own schema number for the payload
///         12     4  reserved, zero
///         16     8  sequence number: 1 for the first save, +1 per save; the highest valid wins
///         24     8  payload length in bytes
///         32     8  timestamp: nanoseconds since the Unix epoch (CLOCK_REALTIME) at save
///         40     4  CRC-32C of the payload
///         44    16  reserved, zero
///         60     4  CRC-32C of bytes 0..<60 of this header
///
/// The header has its own checksum so a flipped bit in the sequence number or the length is
/// caught before either is trusted.
public struct CheckpointHeader: Hashable, Sendable {
    public static let magic: UInt32 = 0x4B43_4D4C  // "LMCK" read as a little-endian UInt32
    public static let formatVersion: UInt16 = 1
    public static let size = 64

    public var stateVersion: UInt32
    public var sequence: UInt64
    public var length: UInt64
    public var timestamp: Int64
    public var payloadChecksum: UInt32

    public init(stateVersion: UInt32, sequence: UInt64, length: UInt64, timestamp: Int64, payloadChecksum: UInt32) {
        self.stateVersion = stateVersion
        self.sequence = sequence
        self.length = length
        self.timestamp = timestamp
        self.payloadChecksum = payloadChecksum
    }

    /// Field offsets, for tests that damage one field at a time.
    public enum Offset {
        public static let magic = 0, formatVersion = 4, headerSize = 6, stateVersion = 8, sequence = 16, length = 24
        public static let timestamp = 32, payloadChecksum = 40, headerChecksum = 60
    }

    public var bytes: [UInt8] {
        var bytes = [UInt8](repeating: 0, count: CheckpointHeader.size)
        bytes.store(CheckpointHeader.magic, at: Offset.magic)
        bytes.store(CheckpointHeader.formatVersion, at: Offset.formatVersion)
        bytes.store(UInt16(CheckpointHeader.size), at: Offset.headerSize)
        bytes.store(stateVersion, at: Offset.stateVersion)
        bytes.store(sequence, at: Offset.sequence)
        bytes.store(length, at: Offset.length)
        bytes.store(UInt64(bitPattern: timestamp), at: Offset.timestamp)
        bytes.store(payloadChecksum, at: Offset.payloadChecksum)
        bytes.store(CRC32C.checksum(Array(bytes[..<Offset.headerChecksum])), at: Offset.headerChecksum)
        return bytes
    }

    /// Decodes and checks a header; `capacity` is the most payload a slot holds.
    static func decode(_ bytes: [UInt8], capacity: Int) -> Result<CheckpointHeader, CheckpointCorruption.Reason> {
        guard bytes.count == size else { return .failure(.truncated(needed: size, available: bytes.count)) }
        let magic: UInt32 = bytes.load(at: Offset.magic)
        guard magic == CheckpointHeader.magic else { return .failure(.badMagic(found: magic)) }
        let stored: UInt32 = bytes.load(at: Offset.headerChecksum)
        let computed = CRC32C.checksum(Array(bytes[..<Offset.headerChecksum]))
        guard stored == computed else { return .failure(.headerChecksum(stored: stored, computed: computed)) }
        let version: UInt16 = bytes.load(at: Offset.formatVersion)
        let headerSize: UInt16 = bytes.load(at: Offset.headerSize)
        guard version == formatVersion, headerSize == size else {
            return .failure(.unsupportedFormat(version: version, headerSize: headerSize))
        }
        let header = CheckpointHeader(
            stateVersion: bytes.load(at: Offset.stateVersion), sequence: bytes.load(at: Offset.sequence),
            length: bytes.load(at: Offset.length), timestamp: Int64(bitPattern: bytes.load(at: Offset.timestamp)),
            payloadChecksum: bytes.load(at: Offset.payloadChecksum))
        guard header.length <= UInt64(capacity) else { return .failure(.lengthBeyondSlot(length: header.length, capacity: capacity)) }
        return .success(header)
    }
}

extension [UInt8] {
    mutating func store<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        withUnsafeMutableBytes { $0.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self) }
    }

    func load<T: FixedWidthInteger>(at offset: Int) -> T {
        withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: T.self)) }
    }
}
