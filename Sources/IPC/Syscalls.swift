import CLimitless
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Runs a system call that returns -1 and sets errno on failure, retrying on EINTR (a signal
/// interrupted it, nothing failed).
@inline(__always)
func retryingEINTR<T: BinaryInteger>(_ call: () -> T) -> Result<T, Errno> {
    while true {
        let value = call()
        if value != -1 { return .success(value) }
        let code = CL_errno()
        if code != EINTR { return .failure(Errno(rawValue: code)) }
    }
}

/// As `retryingEINTR`, throwing `IPCError.systemCall` named for the call.
@inline(__always)
func sys<T: BinaryInteger>(_ name: String, _ call: () -> T) throws(IPCError) -> T {
    switch retryingEINTR(call) {
    case .success(let value): return value
    case .failure(let errno): throw .systemCall(name, errno)
    }
}

func closeDescriptor(_ fd: Int32) {
    // close(2) must not be retried on EINTR on Linux: the descriptor is gone either way.
    if fd >= 0 { _ = Glibc.close(fd) }
}

/// Monotonic clock in nanoseconds, for timeouts.
func monotonicNanoseconds() -> Int64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
}

extension Duration {
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}
