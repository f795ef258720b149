import SystemPackage

/// Why a file-system operation failed: a POSIX error number (what a client gets back, unchanged,
/// as the reply's status) and a detail for the server's log. File systems throw these; the VFS
/// passes `errno` to the client and logs `detail` where the cause is the image, not the caller
/// (EIO, EUCLEAN).
public struct FSError: Error, Equatable, CustomStringConvertible {
    public var errno: Errno
    public var detail: String

    public init(_ errno: Errno, _ detail: String = "") {
        self.errno = errno
        self.detail = detail
    }

    /// The image itself is inconsistent (bad block pointer, looping directory, bad record length).
    /// Linux reports these as EUCLEAN ("Structure needs cleaning"); swift-system has no constant.
    public static func corrupted(_ detail: String) -> FSError { FSError(Errno(rawValue: 117), detail) }
    public static func io(_ detail: String) -> FSError { FSError(.ioError, detail) }

    public var isCorruption: Bool { errno.rawValue == 117 }

    public var description: String {
        let name = errno.rawValue == 117 ? "EUCLEAN" : "\(errno)"
        return detail.isEmpty ? name : "\(name): \(detail)"
    }
}
