import CLimitless
#if canImport(Glibc)
import Glibc
#endif

/// The two futex operations the rings need, on a 32-bit word in shared memory. Process-shared
/// futexes (no FUTEX_PRIVATE_FLAG): the kernel keys the word by its page in the memfd, so the same
/// word mapped at different addresses in two processes is one futex.
enum Futex {
    enum WaitResult { case woken, valueChanged, timedOut, interrupted }

    /// Sleeps while `word` holds `expected`, for at most `timeoutNanoseconds`.
    static func wait(_ word: UnsafeMutablePointer<UInt32>, expected: UInt32, timeoutNanoseconds: UInt64) -> WaitResult {
        let result = CL_futex_wait(word, expected, Int64(clamping: timeoutNanoseconds))
        switch result {
        case 0: return .woken
        case -EAGAIN: return .valueChanged
        case -ETIMEDOUT: return .timedOut
        default: return .interrupted  // EINTR; EFAULT cannot happen on a word inside our mapping
        }
    }

    /// Wakes every process sleeping on `word` (a ring has one consumer; "all" costs nothing more).
    @discardableResult
    static func wakeAll(_ word: UnsafeMutablePointer<UInt32>) -> Int {
        Int(CL_futex_wake(word, Int32.max))
    }
}
