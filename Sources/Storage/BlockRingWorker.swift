import Platform
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// One more serving thread of `storage_server --queues N`: it owns one I/O queue pair (its
/// `server` is a `BlockServer` over an `NVMeBlockDevice` on that queue) and the rings
/// (`BlockRing`) the message thread hands it, and is the only thread that touches either, so the
/// I/O path takes no lock and allocates nothing.
///
/// The message thread (`BlockServingLoop`) talks to it through a mailbox looked at once per
/// pass (one atomic load when empty): attach a ring, detach one (answered once its commands
/// have completed, so the caller may unmap the ring's pages), the rights a ring's client
/// presented, pause (answered once the thread has parked: nothing of its queue is touched until
/// `resume`, so a controller reset may re-create the queue and re-issue its commands).
public final class BlockRingWorker: @unchecked Sendable {
    /// The ring server on this thread's queue.
    public let server: BlockServer
    /// The thread's name in logs: `ring thread K`, its queue's id.
    public let label: String

    /// A ring's state moves to the worker with `attach` and is never touched by the sender
    /// again (hence unchecked).
    enum Command: @unchecked Sendable {
        case attach(BlockRingServerState, tokens: [BlockCapabilityTokens.Presented]?)
        case detach(client: UInt64, handle: UInt32)
        case rights(client: UInt64, tokens: [BlockCapabilityTokens.Presented]?)
        case pause
    }

    private struct Mailbox {
        var commands: [(sequence: UInt64, command: Command)] = []
        var nextSequence: UInt64 = 0
    }

    private let mailbox = Mutex(Mailbox())
    /// The last command posted and the last one done: equal when the mailbox is empty.
    private let posted = Atomic<UInt64>(0)
    private let handled = Atomic<UInt64>(0)
    private let pauseRequested = Atomic<Bool>(false)
    private let stopping = Atomic<Bool>(false)
    private var thread: pthread_t?
    /// Spin (rather than yield) while only the device can make progress (`--ring-wait spin`).
    public var spinWhileAwaitingDevice = false

    public init(server: BlockServer, label: String) {
        self.server = server
        self.label = label
        server.defersAnswers = false
    }

    public func start() {
        precondition(thread == nil, "BlockRingWorker.start called twice")
        thread = startServingThread { self.run() }
    }

    /// Ends the thread (rings still attached stay with `server`; their commands are drained).
    public func stop() {
        stopping.store(true, ordering: .releasing)
        pauseRequested.store(false, ordering: .releasing)
        if let thread {
            pthread_join(thread, nil)
            self.thread = nil
        }
        server.drainDevice()
    }

    // MARK: Requests from the message thread

    /// Hands a ring over (not waited for: the thread takes it within a pass or a millisecond).
    func attach(_ ring: BlockRingServerState, tokens: [BlockCapabilityTokens.Presented]?) {
        _ = post(.attach(ring, tokens: tokens))
    }

    /// Stops serving a ring; returns once no command of it is on the device.
    func detach(client: UInt64, handle: UInt32) {
        waitFor(post(.detach(client: client, handle: handle)))
    }

    /// The tokens `client` has presented now (its rings are checked with them).
    func updateRights(client: UInt64, tokens: [BlockCapabilityTokens.Presented]?) {
        _ = post(.rights(client: client, tokens: tokens))
    }

    /// Parks the thread; returns once it touches neither its queue nor its rings.
    public func pause() {
        pauseRequested.store(true, ordering: .releasing)
        waitFor(post(.pause))
    }

    public func resume() {
        pauseRequested.store(false, ordering: .releasing)
    }

    /// Not running (not started, or stopped): the caller is the only thread and does it itself.
    private func post(_ command: Command) -> UInt64 {
        guard thread != nil, !stopping.load(ordering: .acquiring) else {
            perform(command)
            return 0
        }
        let sequence = mailbox.withLock { box in
            box.nextSequence += 1
            box.commands.append((box.nextSequence, command))
            return box.nextSequence
        }
        posted.store(sequence, ordering: .releasing)
        return sequence
    }

    private func waitFor(_ sequence: UInt64) {
        while handled.load(ordering: .acquiring) < sequence {
            if stopping.load(ordering: .acquiring) && thread == nil { return }
            usleep(50)
        }
    }

    // MARK: The thread

    private func run() {
        let clock = MonotonicClock()
        var idleSince: UInt64 = 0
        let descriptor = (server.device as? any QueuedBlockDevice)?.completionDescriptor
        while !stopping.load(ordering: .acquiring) {
            if posted.load(ordering: .acquiring) != handled.load(ordering: .relaxed) { takeMail() }
            if server.ringCount == 0 {
                usleep(1000)
                continue
            }
            if descriptor != nil { server.consumeDeviceSignal() }
            if server.pollRings() > 0 {
                idleSince = 0
                continue
            }
            if server.ringsAwaitDevice {
                // Only the device can make progress: sleep on this queue's MSI-X vector (a
                // bounded wait, so the mailbox is looked at), or poll (`--poll`).
                if let descriptor {
                    var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
                    _ = poll(&entry, 1, 1)
                } else if !spinWhileAwaitingDevice {
                    sched_yield()
                }
                // Spinning is the next pass itself, as the in-process driver polls its CQ: no
                // PAUSE (CL_cpu_relax). Under QEMU TCG, PAUSE ends the vCPU's translation-block
                // run ("let another CPU run", target/i386/tcg/misc_helper.c helper_pause) and
                // the vCPU thread takes the big QEMU lock again, which the emulated NVMe
                // controller needs to fetch our command and post its completion.
                continue
            }
            // Waiting for the clients: yield, and after 20 ms of nothing sleep 1 ms at a time.
            let now = clock.now()
            if idleSince == 0 { idleSince = now }
            if now &- idleSince > 20_000_000 { usleep(1000) } else { sched_yield() }
        }
    }

    private func takeMail() {
        let commands = mailbox.withLock { box in
            let taken = box.commands
            box.commands.removeAll(keepingCapacity: true)
            return taken
        }
        for (sequence, command) in commands {
            if case .pause = command {
                handled.store(sequence, ordering: .releasing)
                while pauseRequested.load(ordering: .acquiring), !stopping.load(ordering: .acquiring) { usleep(100) }
                continue
            }
            perform(command)
            handled.store(sequence, ordering: .releasing)
        }
    }

    private func perform(_ command: Command) {
        switch command {
        case .attach(let ring, let tokens): server.adoptRing(ring, tokens: tokens)
        case .detach(let client, let handle): server.dropRing(client: client, handle: handle)
        case .rights(let client, let tokens): server.replaceRights(client: client, tokens: tokens)
        case .pause: break
        }
    }
}
