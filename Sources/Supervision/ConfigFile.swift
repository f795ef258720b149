import Glibc

/// Reads a configuration file whole, refusing what is not one (a directory, a device, something
/// huge) with a message that says what was given instead.
enum ConfigFile {
    struct Refusal: Error {
        var message: String
        init(_ message: String) { self.message = message }
    }

    static func read(path: String, limit: Int) -> Result<[UInt8], Refusal> {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK)
        guard fd >= 0 else {
            let code = errno
            switch code {
            case ENOENT: return .failure(Refusal("no such file; pass the configuration with --config PATH"))
            case EACCES: return .failure(Refusal("permission denied; the supervisor's user must be able to read it"))
            default: return .failure(Refusal("cannot open: \(String(cString: strerror(code))) (errno \(code))"))
            }
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            return .failure(Refusal("cannot stat: \(String(cString: strerror(errno)))"))
        }
        switch info.st_mode & S_IFMT {
        case S_IFREG: break
        case S_IFDIR: return .failure(Refusal("is a directory, not a configuration file; give the file, e.g. \(path)/servers.conf"))
        default: return .failure(Refusal("is not a regular file; give a configuration file"))
        }
        guard Int(info.st_size) <= limit else {
            return .failure(Refusal("the file is \(info.st_size) bytes; the limit is \(limit) bytes. Is this a configuration file?"))
        }
        var bytes = [UInt8](repeating: 0, count: Int(info.st_size) + 1)
        var filled = 0
        while filled < bytes.count {
            let count = bytes.withUnsafeMutableBytes { buffer in
                Glibc.read(fd, buffer.baseAddress! + filled, buffer.count - filled)
            }
            if count < 0, errno == EINTR { continue }
            guard count >= 0 else { return .failure(Refusal("cannot read: \(String(cString: strerror(errno)))")) }
            if count == 0 { break }
            filled += count
            // The file grew while being read: refuse rather than silently read part of it.
            if filled > limit { return .failure(Refusal("the file is over \(limit) bytes; the limit is \(limit) bytes")) }
        }
        return .success(Array(bytes[..<filled]))
    }
}
