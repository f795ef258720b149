import IPC
import Platform
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Serves a block server's IPC endpoint on its own thread (as `IPCServer.start()` does) and, on
/// the same thread between wakeups, unmaps the registered buffers of clients that vanished: at
/// once when the connection count drops (a client went away), and at least once a second (a
/// client released a registered region, or died while others connected). While rings
/// (`BlockRing`) are attached it also polls them. Deferred message-path answers are sent by the
/// IPC server's completion poller, which wakes on the device's completion interrupt; a device
/// without one is polled (yielding the CPU between passes) while commands are in flight. The device, the registration table and the
/// rings are only ever touched from this one thread.
public final class BlockServingLoop: @unchecked Sendable {
    public let server: BlockServer
    public let endpoint: IPCServer
    private let stopping = Atomic<Bool>(false)
    private var thread: pthread_t?
    /// With rings: spin (rather than yield) while only the device can make progress. Off by
    /// default: measured under TCG, a server and its client sharing one CPU and yielding to each
    /// other beat both spinning (see Scripts/storage-bench.sh).
    public var spinWhileAwaitingDevice = false
    /// How long one wait for IPC activity lasts before the loop looks around.
    public var wakeInterval: Duration = .milliseconds(250)
    /// Run on this thread about once a second (storage_server: the controller health check).
    public var everySecond: (() -> Void)?

    public init(server: BlockServer, endpoint: IPCServer) {
        self.server = server
        self.endpoint = endpoint
    }

    /// Starts the serving thread.
    public func start() {
        precondition(thread == nil, "BlockServingLoop.start called twice")
        thread = startServingThread { self.run() }
    }

    private func run() {
        let clock = MonotonicClock()
        var lastSweep = clock.now()
        var lastCheck = lastSweep
        var lastConnections = endpoint.connectionCount
        var idleSince: UInt64 = 0
        var passes = 0
        while !stopping.load(ordering: .acquiring) {
            // With rings attached the loop polls them (no system call per I/O, like an NVMe
            // driver polling its completion queue) and looks at the socket every 256 passes; a
            // ring idle for 20 ms lets the loop sleep in epoll up to 1 ms at a time instead.
            var timeout = wakeInterval
            if server.ringCount > 0 {
                let work = server.pollRings()
                if work > 0 { idleSince = 0 }
                passes &+= 1
                if passes & 255 != 0 {
                    // Idle pass: spin while only the device can make progress; otherwise yield,
                    // so a client polling its completions on the same CPU runs at once (a
                    // wakeup across CPUs costs far more; measured under TCG, a server and a
                    // client polling on two CPUs did worse than the two sharing one). The spin
                    // is the next pass itself, without PAUSE: see BlockRingWorker.run.
                    if work == 0, !(spinWhileAwaitingDevice && server.ringsAwaitDevice) { sched_yield() }
                    continue
                }
                if work == 0 {
                    let now = clock.now()
                    if idleSince == 0 { idleSince = now }
                    if now &- idleSince > 20_000_000 { timeout = .milliseconds(1) } else { timeout = .zero }
                } else {
                    timeout = .zero
                }
            }
            if server.mustPollCompletions {
                timeout = .zero
                sched_yield()
            }
            guard endpoint.serveOnce(timeout: timeout) else { break }
            let connections = endpoint.connectionCount
            defer { lastConnections = connections }
            let now = clock.now()
            if let everySecond, now &- lastCheck >= 1_000_000_000 {
                lastCheck = now
                everySecond()
            }
            guard server.registered.count > 0 else { continue }
            if connections < lastConnections || now &- lastSweep >= 1_000_000_000 {
                server.sweepVanishedClients(connectionCount: connections)
                lastSweep = now
            }
        }
    }

    /// Stops serving: the thread ends within `wakeInterval`, commands in flight finish (their
    /// answers sent), every registered buffer is unmapped, then the endpoint disconnects its
    /// clients and removes its socket.
    public func stop() {
        stopping.store(true, ordering: .releasing)
        if let thread {
            pthread_join(thread, nil)
            self.thread = nil
        }
        server.drainDevice()
        server.unregisterAll()
        endpoint.stop()
    }
}
