#if canImport(Glibc)
import Glibc
#endif

/// Descriptors this process has open now (entries of /proc/self/fd, the directory's own
/// included), or -1: tests compare it with a baseline to find leaks.
public func openDescriptorCount() -> Int {
    guard let dir = opendir("/proc/self/fd") else { return -1 }
    defer { closedir(dir) }
    var count = 0
    while readdir(dir) != nil { count += 1 }
    return count
}
