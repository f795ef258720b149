import CLimitless
#if canImport(Glibc)
import Glibc
#endif

/// SIGTERM (and SIGINT) turned into a readable eventfd, so a server's loop can wait for "stop" with
/// poll like any other event. The handler only writes to the eventfd (async-signal-safe) and is
/// installed with SA_RESTART, so no thread's blocking call fails with EINTR because of it. Works
/// whatever the threads' signal masks are, unlike signalfd.
enum StopSignal {
    /// The eventfd the handler writes to; set once before the handler is installed.
    nonisolated(unsafe) private static var descriptor: Int32 = -1

    /// Installs the handler for `signals` (once per process; later calls reuse the eventfd).
    static func install(_ signals: [Int32]) -> Int32 {
        if descriptor < 0 { descriptor = CL_eventfd(0, CL_EFD_CLOEXEC | CL_EFD_NONBLOCK) }
        for signo in signals {
            var action = sigaction()
            action.__sigaction_handler = .init(sa_handler: { _ in
                let saved = CL_errno()
                var one: UInt64 = 1
                _ = write(StopSignal.descriptor, &one, 8)
                CL_set_errno(saved)
            })
            action.sa_flags = SA_RESTART
            sigemptyset(&action.sa_mask)
            sigaction(signo, &action, nil)
        }
        // A process started from a thread that blocks them (a Swift concurrency worker, a
        // launcher that forgot to reset its mask) inherits the blocked mask, and would never
        // see SIGTERM: unblock them in this (the main) thread, so at least it takes them.
        var mask = sigset_t()
        sigemptyset(&mask)
        for signo in signals { sigaddset(&mask, signo) }
        pthread_sigmask(SIG_UNBLOCK, &mask, nil)
        return descriptor
    }
}
