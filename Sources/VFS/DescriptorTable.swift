import VFSCore

/// One open file: what a descriptor refers to (open(2)'s "open file description").
public final class OpenFile {
    public let vnode: VNode
    public let flags: OpenFlags
    public let isDirectory: Bool
    /// The file position (read, write, lseek); for a directory, the readdir cookie.
    public var offset: UInt64

    public init(vnode: VNode, flags: OpenFlags, isDirectory: Bool, offset: UInt64 = 0) {
        self.vnode = vnode
        self.flags = flags
        self.isDirectory = isDirectory
        self.offset = offset
    }
}

/// One client's descriptors: small integers, the lowest free one first (as POSIX requires of
/// open(2)), at most `limit` (EMFILE beyond, like RLIMIT_NOFILE).
public struct DescriptorTable {
    public static let defaultLimit = 1024
    public let limit: Int
    public private(set) var files: [Int32: OpenFile] = [:]

    public init(limit: Int = DescriptorTable.defaultLimit) { self.limit = limit }

    public var count: Int { files.count }
    public var isEmpty: Bool { files.isEmpty }

    public mutating func insert(_ file: OpenFile) throws(FSError) -> Int32 {
        guard files.count < limit else { throw FSError(.tooManyOpenFiles, "\(limit) descriptors open") }
        var descriptor: Int32 = 0
        while files[descriptor] != nil { descriptor += 1 }
        files[descriptor] = file
        return descriptor
    }

    /// Puts a restored descriptor back under its old number.
    public mutating func restore(_ file: OpenFile, as descriptor: Int32) { files[descriptor] = file }

    public func file(_ descriptor: Int32) throws(FSError) -> OpenFile {
        guard let file = files[descriptor] else { throw FSError(.badFileDescriptor, "descriptor \(descriptor) is not open") }
        return file
    }

    public mutating func remove(_ descriptor: Int32) throws(FSError) -> OpenFile {
        guard let file = files.removeValue(forKey: descriptor) else {
            throw FSError(.badFileDescriptor, "descriptor \(descriptor) is not open")
        }
        return file
    }
}

/// The descriptor tables of every client as a checkpoint (ServerKit's checkpoint store keeps the
/// bytes across a crash of vfs_server). Keyed by the client's kernel-verified pid: after a
/// restart, a client reconnecting from the same pid finds its descriptors where they were.
/// Mounts are named by their mount-point path (mount ids may differ after a restart).
///
/// Layout, little-endian: magic "VFSD", version u32, record count u32, then per descriptor:
/// pid i32, descriptor i32, flags u32, directory u8, offset u64, inode u64, path length u16,
/// mount path bytes; then a CRC-32 (IEEE) of everything before it.
public enum DescriptorCheckpoint {
    public static let magic: [UInt8] = Array("VFSD".utf8)
    public static let version: UInt32 = 1

    public struct Record: Equatable, Sendable {
        public var pid: Int32
        public var descriptor: Int32
        public var flags: UInt32
        public var isDirectory: Bool
        public var offset: UInt64
        public var inode: InodeNumber
        public var mountPath: String
        public init(pid: Int32, descriptor: Int32, flags: UInt32, isDirectory: Bool, offset: UInt64, inode: InodeNumber, mountPath: String) {
            self.pid = pid
            self.descriptor = descriptor
            self.flags = flags
            self.isDirectory = isDirectory
            self.offset = offset
            self.inode = inode
            self.mountPath = mountPath
        }
    }

    public static func encode(_ records: [Record]) -> [UInt8] {
        var bytes = magic
        append(&bytes, version)
        append(&bytes, UInt32(records.count))
        for record in records {
            append(&bytes, UInt32(bitPattern: record.pid))
            append(&bytes, UInt32(bitPattern: record.descriptor))
            append(&bytes, record.flags)
            bytes.append(record.isDirectory ? 1 : 0)
            append(&bytes, record.offset)
            append(&bytes, record.inode)
            let path = Array(record.mountPath.utf8)
            append(&bytes, UInt16(path.count))
            bytes += path
        }
        append(&bytes, crc32(bytes[...]))
        return bytes
    }

    /// The records, or EINVAL naming what is wrong (bad magic, version, truncation, checksum).
    public static func decode(_ bytes: [UInt8]) throws(FSError) -> [Record] {
        guard bytes.count >= 16, Array(bytes[0..<4]) == magic else { throw FSError(.invalidArgument, "descriptor checkpoint: bad magic") }
        let body = bytes[0..<(bytes.count - 4)]
        var reader = Reader(bytes: bytes, position: bytes.count - 4)
        guard try reader.u32() == crc32(body) else { throw FSError(.invalidArgument, "descriptor checkpoint: checksum mismatch") }
        reader = Reader(bytes: Array(body), position: 4)
        let version = try reader.u32()
        guard version == Self.version else { throw FSError(.invalidArgument, "descriptor checkpoint: version \(version)") }
        let count = try reader.u32()
        var records: [Record] = []
        for _ in 0..<count {
            let pid = Int32(bitPattern: try reader.u32())
            let descriptor = Int32(bitPattern: try reader.u32())
            let flags = try reader.u32()
            let isDirectory = try reader.bytes(1).first != 0
            let offset = try reader.u64()
            let inode = try reader.u64()
            let length = Int(try reader.u16())
            let path = String(decoding: try reader.bytes(length), as: UTF8.self)
            records.append(Record(pid: pid, descriptor: descriptor, flags: flags, isDirectory: isDirectory,
                                  offset: offset, inode: inode, mountPath: path))
        }
        guard reader.position == body.count else { throw FSError(.invalidArgument, "descriptor checkpoint: trailing bytes") }
        return records
    }

    struct Reader {
        let bytes: [UInt8]
        var position: Int
        mutating func bytes(_ count: Int) throws(FSError) -> ArraySlice<UInt8> {
            guard count <= bytes.count - position else { throw FSError(.invalidArgument, "descriptor checkpoint: truncated") }
            defer { position += count }
            return bytes[position..<(position + count)]
        }
        mutating func u16() throws(FSError) -> UInt16 { try bytes(2).reversed().reduce(0) { $0 << 8 | UInt16($1) } }
        mutating func u32() throws(FSError) -> UInt32 { try bytes(4).reversed().reduce(0) { $0 << 8 | UInt32($1) } }
        mutating func u64() throws(FSError) -> UInt64 { try bytes(8).reversed().reduce(0) { $0 << 8 | UInt64($1) } }
    }

    static func append<T: FixedWidthInteger>(_ bytes: inout [UInt8], _ value: T) {
        withUnsafeBytes(of: value.littleEndian) { bytes += $0 }
    }

    static func crc32(_ bytes: ArraySlice<UInt8>) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes {
            crc ^= UInt32(byte)
            for _ in 0..<8 { crc = crc & 1 != 0 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1 }
        }
        return ~crc
    }
}
