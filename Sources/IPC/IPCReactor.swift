import CLimitless
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Readiness for the async API: one thread of its own waits in epoll for every descriptor an
/// async call is waiting on, and resumes that call's continuation when the descriptor is ready
/// or its deadline has passed. So an `await` on a socket never blocks a thread of Swift's
/// cooperative pool (which has as many threads as cores: two blocked calls would stall every
/// task on this machine).
///
/// Each wait is one EPOLLONESHOT registration, removed when it fires, times out or is
/// cancelled; epoll is level-triggered at registration, so data that arrived between the
/// caller's failed attempt and the registration is reported at once.
final class IPCReactor: Sendable {
    static let shared = IPCReactor()

    enum Interest { case readable, writable }

    private struct Waiter {
        var fd: Int32
        var deadline: Int64?  // CLOCK_MONOTONIC ns
        var continuation: CheckedContinuation<Bool, Never>
    }

    private struct State {
        var waiters: [UInt64: Waiter] = [:]
        var nextID: UInt64 = 1
        /// Cancelled before they were registered.
        var cancelled: Set<UInt64> = []
    }

    private let state = Mutex(State())
    private let epollFD: Int32
    private let wakeFD: Int32

    private init() {
        epollFD = epoll_create1(Int32(EPOLL_CLOEXEC))
        wakeFD = CL_eventfd(0, CL_EFD_CLOEXEC | CL_EFD_NONBLOCK)
        precondition(epollFD >= 0 && wakeFD >= 0, "IPCReactor: epoll_create1 or eventfd failed (errno \(CL_errno()))")
        var event = epoll_event()
        event.events = UInt32(EPOLLIN.rawValue)
        event.data.u64 = 0
        _ = epoll_ctl(epollFD, EPOLL_CTL_ADD, wakeFD, &event)
        var thread = pthread_t()
        let context = Unmanaged.passRetained(self).toOpaque()
        let result = pthread_create(&thread, nil, { context in
            Unmanaged<IPCReactor>.fromOpaque(context!).takeRetainedValue().run()
            return nil
        }, context)
        precondition(result == 0, "IPCReactor: pthread_create failed: \(result)")
        pthread_detach(thread)
    }

    /// Suspends until `fd` is ready for `interest` (true) or `deadline` passes (false), or the
    /// task is cancelled (false; the caller checks `Task.isCancelled`).
    func wait(_ fd: Int32, for interest: Interest, deadline: Int64?) async -> Bool {
        let id = state.withLock { state in
            defer { state.nextID += 1 }
            return state.nextID
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                let registered: Bool = state.withLock { state in
                    if state.cancelled.remove(id) != nil { return false }
                    var event = epoll_event()
                    let readiness = interest == .readable ? EPOLLIN.rawValue : EPOLLOUT.rawValue
                    event.events = UInt32(readiness | EPOLLRDHUP.rawValue | EPOLLONESHOT.rawValue)
                    event.data.u64 = id
                    // Under the lock: the thread cannot fire before the waiter is recorded.
                    guard epoll_ctl(epollFD, EPOLL_CTL_ADD, fd, &event) == 0 else { return false }
                    state.waiters[id] = Waiter(fd: fd, deadline: deadline, continuation: continuation)
                    return true
                }
                if !registered {
                    // Cancelled already, or epoll refused the descriptor (closed, say): report
                    // "ready" so the caller's next attempt meets the real error, unless cancelled.
                    continuation.resume(returning: !Task.isCancelled)
                    return
                }
                if deadline != nil { wake() }  // the thread recomputes its timeout
            }
        } onCancel: {
            let waiter: Waiter? = state.withLock { state in
                guard let waiter = state.waiters.removeValue(forKey: id) else {
                    state.cancelled.insert(id)
                    return nil
                }
                _ = epoll_ctl(epollFD, EPOLL_CTL_DEL, waiter.fd, nil)
                return waiter
            }
            waiter?.continuation.resume(returning: false)
        }
    }

    private func wake() {
        var one: UInt64 = 1
        _ = write(wakeFD, &one, 8)
    }

    private func run() {
        var events = [epoll_event](repeating: epoll_event(), count: 64)
        while true {
            let timeout = state.withLock { state -> Int32 in
                let now = monotonicNanoseconds()
                var nearest: Int64 = .max
                for waiter in state.waiters.values { if let deadline = waiter.deadline { nearest = min(nearest, deadline) } }
                if nearest == .max { return -1 }
                return Int32(clamping: max(0, (nearest - now + 999_999) / 1_000_000))
            }
            let count = events.withUnsafeMutableBufferPointer { epoll_wait(epollFD, $0.baseAddress, 64, timeout) }
            var ready: [CheckedContinuation<Bool, Never>] = []
            var expired: [CheckedContinuation<Bool, Never>] = []
            state.withLock { state in
                for index in 0..<max(0, Int(count)) {
                    let id = events[index].data.u64
                    if id == 0 {
                        var value: UInt64 = 0
                        _ = read(wakeFD, &value, 8)
                        continue
                    }
                    guard let waiter = state.waiters.removeValue(forKey: id) else { continue }
                    _ = epoll_ctl(epollFD, EPOLL_CTL_DEL, waiter.fd, nil)
                    ready.append(waiter.continuation)
                }
                let now = monotonicNanoseconds()
                for (id, waiter) in state.waiters {
                    guard let deadline = waiter.deadline, now >= deadline else { continue }
                    state.waiters[id] = nil
                    _ = epoll_ctl(epollFD, EPOLL_CTL_DEL, waiter.fd, nil)
                    expired.append(waiter.continuation)
                }
            }
            for continuation in ready { continuation.resume(returning: true) }
            for continuation in expired { continuation.resume(returning: false) }
        }
    }
}
