#if canImport(Glibc)
import Glibc
#endif

/// The kernel's log as /dev/kmsg gives it (Documentation/ABI/testing/dev-kmsg): one record per
/// read, "priority,sequence,timestamp,flags;message". Used to see what the IOMMU reported.
struct KernelLog {
    /// Records from now on only: opening and seeking to the end skips what came before.
    private let fd: Int32

    init?() {
        fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        lseek(fd, 0, SEEK_END)
    }

    /// Messages logged since `init` (or the last call).
    func newMessages() -> [String] {
        var messages: [String] = []
        var buffer = [UInt8](repeating: 0, count: 8192)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EPIPE { continue }  // records overwritten meanwhile: skip ahead
            guard count > 0 else { break }
            let record = String(decoding: buffer[0..<count], as: UTF8.self)
            if let separator = record.firstIndex(of: ";") {
                messages.append(String(record[record.index(after: separator)...].prefix { $0 != "\n" }))
            }
        }
        return messages
    }

    func close() { _ = Glibc.close(fd) }
}
