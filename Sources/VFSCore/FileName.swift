import SystemPackage

/// One path component as the file system stores it: bytes, not a String (POSIX names are byte
/// strings; an image made elsewhere may hold names that are not UTF-8, and they must round-trip).
/// Validated on construction: not empty, at most `maxLength` bytes, no '/' and no NUL.
/// "." and ".." are valid names here (lookup answers them); creating them is refused by the
/// file system with EEXIST.
public struct FileName: Hashable, Sendable, CustomStringConvertible, ExpressibleByStringLiteral {
    public static let maxLength = 255
    public let bytes: [UInt8]

    /// Throws EINVAL for an empty name or one holding '/' or NUL, ENAMETOOLONG past 255 bytes.
    public init<Bytes: Collection>(validating bytes: Bytes) throws(FSError) where Bytes.Element == UInt8 {
        guard !bytes.isEmpty else { throw FSError(.invalidArgument, "empty file name") }
        guard bytes.count <= Self.maxLength else {
            throw FSError(.fileNameTooLong, "file name of \(bytes.count) bytes (limit \(Self.maxLength))")
        }
        guard !bytes.contains(0x2F), !bytes.contains(0) else {
            throw FSError(.invalidArgument, "file name holds '/' or NUL")
        }
        self.bytes = Array(bytes)
    }

    public init(_ string: String) throws(FSError) { try self.init(validating: Array(string.utf8)) }

    /// For literals in code and tests; a literal that is not a valid name is a programming error.
    public init(stringLiteral value: String) {
        do { try self.init(value) } catch { preconditionFailure("invalid file name literal \(value): \(error)") }
    }

    public static let dot: FileName = "."
    public static let dotDot: FileName = ".."
    public var isDotOrDotDot: Bool { bytes == [0x2E] || bytes == [0x2E, 0x2E] }

    /// UTF-8 where valid; invalid bytes shown as U+FFFD (for display only, never for lookups).
    public var description: String { String(decoding: bytes, as: UTF8.self) }
}
