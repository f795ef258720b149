import CLimitless
import IPC
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The watchdog heartbeat: a thread that sends MSG_SUPERVISOR_HEARTBEAT every `interval` (half
/// the watchdog deadline) until stopped. Sends never block: a full channel skips a beat rather
/// than stalling the thread. `paused` stops the beats without stopping the thread (to simulate a
/// hang, or while the server knows it is stuck and wants the supervisor to notice).
final class Heartbeat: Sendable {
    let interval: Duration
    private let link: SupervisorLink
    private let wakeFD: Int32
    let paused = Atomic<Bool>(false)
    let beatsSent = Atomic<Int>(0)
    private let thread = Mutex<pthread_t?>(nil)

    init(link: SupervisorLink, interval: Duration) {
        self.link = link
        self.interval = interval
        wakeFD = CL_eventfd(0, CL_EFD_CLOEXEC | CL_EFD_NONBLOCK)
    }

    deinit { _ = Glibc.close(wakeFD) }

    func start() {
        thread.withLock { thread in
            guard thread == nil else { return }
            let context = Unmanaged.passRetained(self).toOpaque()
            var handle = pthread_t()
            let result = pthread_create(&handle, nil, { context in
                let heartbeat = Unmanaged<Heartbeat>.fromOpaque(context!).takeRetainedValue()
                heartbeat.run()
                return nil
            }, context)
            precondition(result == 0, "pthread_create for the heartbeat failed: \(result)")
            thread = handle
        }
    }

    /// Stops the thread and waits for it.
    func stop() {
        var one: UInt64 = 1
        _ = write(wakeFD, &one, 8)
        let handle = thread.withLock { thread in
            defer { thread = nil }
            return thread
        }
        if let handle { pthread_join(handle, nil) }
    }

    /// One beat now (also what the thread sends). False if the channel was full.
    @discardableResult
    func beat() -> Bool {
        guard case .sent = try? link.trySend(Message(type: .supervisorHeartbeat)) else { return false }
        beatsSent.add(1, ordering: .relaxed)
        return true
    }

    private func run() {
        let timeout = milliseconds(interval)
        while true {
            var entry = pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0)
            let ready = poll(&entry, 1, timeout)
            if ready > 0 { return }
            if ready < 0 && CL_errno() != EINTR { return }
            if !paused.load(ordering: .relaxed) { beat() }
        }
    }
}
