import CLimitless
import Glibc
import IPC

/// A standby instance of a server (servers.conf `standby yes`): the server's binary, arguments
/// and user, started ahead of need, waiting before it takes its capabilities (`ServerKit`'s
/// `StandbyActivation`). Only a record for the supervisor's loop; touched under its lock.
final class StandbyInstance {
    let pid: pid_t
    /// Tells its events from an earlier standby's in the epoll tokens.
    let generation: Int
    var channel: Int32
    var stdout: Int32
    var stderr: Int32
    var exitNotifier: Int32 = -1
    var stdoutBuffer: [UInt8] = []
    var stderrBuffer: [UInt8] = []
    let startedMonotonic = ContinuousClock.now
    /// Sent MSG_SUPERVISOR_STANDBY_READY: waiting for activation. Only a ready one is activated.
    var ready = false
    /// Why the supervisor killed it (never activated then); nil while it is wanted.
    var killedBecause: String?
    /// The kill counts as a failure of the standby (it hung), which delays the next one.
    var killCountsAsFailure = false
    /// Before activation its output is logged as the server's with this in front.
    var logPrefix: String { "standby pid \(pid): " }

    init(pid: pid_t, generation: Int, channel: Int32, stdout: Int32, stderr: Int32) {
        self.pid = pid
        self.generation = generation
        self.channel = channel
        self.stdout = stdout
        self.stderr = stderr
    }
}

/// Standby instances: started once the server runs, activated in place of spawning a new instance
/// at a restart, replaced in the background after.
///
/// The standby gets descriptor 3 (its own channel) and nothing else: no checkpoint, no
/// capability, not counted as running, and no dependency notices or grants (they go to the
/// running instance). It runs as the server's user, so it holds nothing the server would not.
/// At a restart the usual clean-up runs first (exit logged, devices quiesced, restart policy and
/// backoff decided); then `launch` activates a ready standby instead of spawning: one
/// MSG_SUPERVISOR_STANDBY_ACTIVATE with the checkpoint memfd and the capability descriptors
/// (SCM_RIGHTS) and the variables a fresh instance would have been started with. A standby that
/// is dead, not ready yet, or cannot be sent to is never activated: the instance is spawned as
/// without a standby. One that exits, or does not become ready within the start timeout, is
/// replaced after a pause (1 s, doubling to 30 s while they keep failing). Stopping or restarting
/// the server (serverctl stop / restart, shutdown, failure) kills its standby too, so a restart
/// picks up a new binary.
extension Supervisor {
    static let standbyStdoutKind: UInt64 = 5
    static let standbyStderrKind: UInt64 = 6
    static let standbyChannelKind: UInt64 = 7
    static let standbyExitKind: UInt64 = 8
    static let standbyRetryPause: Duration = .seconds(1)
    static let standbyMaximumRetryPause: Duration = .seconds(30)
    /// How long after an instance registers its next standby starts: a standby's start (the
    /// spawn, the dynamic loader, its warm-up) takes the CPU for a while, and right after
    /// registering the instance is serving its first requests, often the clients that waited
    /// through the restart.
    static let standbyStartDelay: Duration = .milliseconds(250)
    /// The nice value a standby waits at until its activation (root supervisors only: only
    /// they can give it back its priority at the activation). Set on its main thread, which is
    /// the only one a server has before `ServerRuntime`.
    static let standbyNice: Int32 = 19

    /// Called when an instance registers: its next standby starts `standbyStartDelay` later
    /// (or later still, after a failure's pause).
    func deferStandbyStart(_ server: ServerProcess) {
        guard server.configuration.standby, server.standby == nil else { return }
        let start = ContinuousClock.now + Self.standbyStartDelay
        server.standbyRetryAt = max(server.standbyRetryAt ?? start, start)
    }

    func standbyToken(_ server: ServerProcess, _ standby: StandbyInstance, kind: UInt64) -> UInt64 {
        UInt64(UInt32(truncatingIfNeeded: standby.generation)) << 32 | UInt64(server.index) << 4 | kind
    }

    /// An epoll event for one of a standby's descriptors.
    func handleStandbyEvent(_ server: ServerProcess, kind: UInt64, generation: UInt32) {
        guard let standby = server.standby, UInt32(truncatingIfNeeded: standby.generation) == generation else { return }
        switch kind {
        case Self.standbyStdoutKind:
            drainPipe(&standby.stdout, buffer: &standby.stdoutBuffer, server: server, stream: .stdout, prefix: standby.logPrefix)
        case Self.standbyStderrKind:
            drainPipe(&standby.stderr, buffer: &standby.stderrBuffer, server: server, stream: .stderr, prefix: standby.logPrefix)
        case Self.standbyChannelKind: readStandbyChannel(server, standby)
        default: reapStandbys()
        }
    }

    /// Starts, stops and times out standbys; from the loop after `startEligible`.
    func maintainStandbys() {
        let now = ContinuousClock.now
        for server in servers {
            if let standby = server.standby {
                guard standby.killedBecause == nil else { continue }
                if !server.configuration.standby || !server.wanted || shuttingDown || server.restartRequested {
                    killStandby(server, standby, because: "stopped with the server")
                } else if !standby.ready, standby.startedMonotonic.duration(to: now) >= options.startTimeout {
                    killStandby(server, standby, because: "did not reach its activation point within "
                        + DurationText.format(options.startTimeout), failure: true)
                }
                continue
            }
            guard server.configuration.standby, server.wanted, !shuttingDown, !server.restartRequested,
                  server.isAlive, server.state == .running else { continue }
            if let retry = server.standbyRetryAt, now < retry { continue }
            launchStandby(server)
        }
    }

    func launchStandby(_ server: ServerProcess) {
        let config = server.configuration
        var pair: [Int32] = [-1, -1]
        do throws(LaunchError) {
            let identity = try launchIdentity(server, config)
            guard socketpair(AF_UNIX, CL_SOCK_SEQPACKET | CL_SOCK_CLOEXEC, 0, &pair) == 0 else {
                throw .systemCall("socketpair", errno)
            }
            defer { close(pair[1]) }
            let started = ContinuousClock.now
            let process = try ProcessLauncher.launch(ProcessLauncher.Request(
                path: config.path, arguments: config.arguments,
                environment: baseEnvironment(config) + standbyVariables(server),
                inheritedDescriptors: [pair[1]], identity: identity))
            _ = CL_fcntl_int(pair[0], F_SETFL, O_NONBLOCK)
            // Its warm-up waits behind whatever else runs; `activate` gives the priority back.
            if geteuid() == 0 { _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), id_t(process.pid), Self.standbyNice) }
            // Its start time is used: set only while no standby runs (`nextTimeout` takes it as
            // a deadline; left in the past it would keep the loop from ever sleeping).
            server.standbyRetryAt = nil
            server.standbyGeneration += 1
            let standby = StandbyInstance(pid: process.pid, generation: server.standbyGeneration, channel: pair[0],
                                          stdout: process.stdout, stderr: process.stderr)
            pair[0] = -1
            server.standby = standby
            watch(standby.stdout, token: standbyToken(server, standby, kind: Self.standbyStdoutKind))
            watch(standby.stderr, token: standbyToken(server, standby, kind: Self.standbyStderrKind))
            watch(standby.channel, token: standbyToken(server, standby, kind: Self.standbyChannelKind))
            standby.exitNotifier = exitNotifier(for: process.pid, token: standbyToken(server, standby, kind: Self.standbyExitKind))
            note(server, .info, "standby started as pid \(process.pid) (spawned in \(Self.microseconds(started.duration(to: .now))) us)")
        } catch {
            if pair[0] >= 0 { close(pair[0]) }
            standbyFailed(server, "standby could not start: \(error)")
        }
    }

    /// What a standby is started with beyond the base environment: `LIMITLESS_STANDBY=1`; the
    /// capability names an activation would pass now (names only: it builds its seccomp filter
    /// from them while it waits); and LD_BIND_NOW=1, so the dynamic linker resolves every
    /// library function at the standby's start rather than at each first call after its
    /// activation (milliseconds under an emulated CPU, on the restart's clock).
    func standbyVariables(_ server: ServerProcess) -> [String] {
        let names = server.effectiveConfiguration.capabilities.sorted().map(\.description)
        return ["\(SupervisorChannel.standbyVariable)=1",
                "\(SupervisorChannel.standbyCapabilitiesVariable)=\(names.joined(separator: ","))", "LD_BIND_NOW=1"]
    }

    /// Messages from a standby: only READY means something.
    func readStandbyChannel(_ server: ServerProcess, _ standby: StandbyInstance) {
        while standby.channel >= 0 {
            guard let (count, _) = receiveDatagram(&standby.channel) else { return }
            let message = try? Message.decode(UnsafeRawBufferPointer(rebasing: receiveBuffer[..<count]))
            if message?.type == .supervisorStandbyReady && !standby.ready {
                standby.ready = true
                server.standbyFailures = 0
                note(server, .info, "standby pid \(standby.pid) ready (\(standby.startedMonotonic.duration(to: .now).nanosecondsValue / 1_000_000) ms after its start)")
            } else {
                note(server, .warning, "ignored \(message.map { "\($0.type)" } ?? "a malformed message") from standby pid \(standby.pid)")
            }
        }
    }

    func killStandby(_ server: ServerProcess, _ standby: StandbyInstance, because reason: String, failure: Bool = false) {
        standby.killedBecause = reason
        standby.killCountsAsFailure = failure
        _ = kill(-standby.pid, SIGKILL)
        _ = kill(standby.pid, SIGKILL)
    }

    /// Reaps standbys that exited (from `reap`).
    func reapStandbys() {
        for server in servers {
            guard let standby = server.standby else { continue }
            var status: Int32 = 0
            let result = waitpid(standby.pid, &status, WNOHANG)
            if result == standby.pid || (result < 0 && errno == ECHILD) { standbyExited(server, standby, status: result < 0 ? nil : status) }
        }
    }

    func standbyExited(_ server: ServerProcess, _ standby: StandbyInstance, status: Int32?) {
        drainPipe(&standby.stdout, buffer: &standby.stdoutBuffer, server: server, stream: .stdout, budget: .max, prefix: standby.logPrefix)
        drainPipe(&standby.stderr, buffer: &standby.stderrBuffer, server: server, stream: .stderr, budget: .max, prefix: standby.logPrefix)
        readStandbyChannel(server, standby)
        unwatch(&standby.stdout)
        unwatch(&standby.stderr)
        unwatch(&standby.channel)
        unwatch(&standby.exitNotifier)
        _ = kill(-standby.pid, SIGKILL)
        server.standby = nil
        let how = status.map { ($0 & 0x7F) == 0 ? "exit status \(($0 >> 8) & 0xFF)" : "signal \($0 & 0x7F) (\(Self.signalName($0 & 0x7F)))" }
            ?? "exit status unknown"
        if let reason = standby.killedBecause, !standby.killCountsAsFailure {
            note(server, .info, "standby pid \(standby.pid) \(reason)")
            server.standbyRetryAt = nil
        } else {
            standbyFailed(server, "standby pid \(standby.pid) " + (standby.killedBecause.map { "\($0); killed" } ?? "exited before activation (\(how))"))
        }
    }

    /// Logs a standby's failure and sets when the next one may start.
    func standbyFailed(_ server: ServerProcess, _ text: String) {
        server.standbyFailures += 1
        var pause = Self.standbyRetryPause
        for _ in 1..<min(server.standbyFailures, 6) { pause = min(pause * 2, Self.standbyMaximumRetryPause) }
        server.standbyRetryAt = .now + pause
        note(server, .warning, "\(text); the next standby starts in \(DurationText.format(pause)) (restarts spawn meanwhile)")
    }

    /// Passes `standby` what an instance is started with; false (and it is killed, unless it is
    /// already dead) when it cannot take over: then the caller spawns. param1 announces the
    /// `blockTokensFollowing` block tokens the caller queues right behind it.
    func activate(_ standby: StandbyInstance, of server: ServerProcess, descriptors: [Int32], variables: [String],
                  blockTokensFollowing: Int = 0) -> Bool {
        guard standby.killedBecause == nil else { return false }
        var status: Int32 = 0
        let result = waitpid(standby.pid, &status, WNOHANG)
        if result == standby.pid || (result < 0 && errno == ECHILD) {
            standbyExited(server, standby, status: result < 0 ? nil : status)
            return false
        }
        guard standby.ready, standby.channel >= 0 else {
            note(server, .notice, "standby pid \(standby.pid) is not ready yet; starting a fresh instance")
            killStandby(server, standby, because: "replaced by a fresh instance (it was not ready when needed)")
            return false
        }
        if geteuid() == 0 {
            // The supervisor's own nice value, which a spawned instance would inherit.
            errno = 0
            let nice = getpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0)
            if errno == 0, setpriority(__priority_which_t(PRIO_PROCESS.rawValue), id_t(standby.pid), nice) != 0 {
                note(server, .warning, "could not give standby pid \(standby.pid) its priority back (nice \(nice)): "
                    + "\(String(cString: strerror(errno))); it runs at nice \(Self.standbyNice)")
            }
        }
        let payload = Array(variables.joined(separator: "\n").utf8)
        var message = Message(type: .supervisorStandbyActivate, param1: UInt64(blockTokensFollowing))
        message.setInlineData(count: UInt32(payload.count))
        let header = UnsafeMutableRawBufferPointer.allocate(byteCount: Message.headerSize, alignment: 16)
        defer { header.deallocate() }
        message.encode(into: header)
        let sent = payload.withUnsafeBytes { body in
            descriptors.withUnsafeBufferPointer { fds in
                CL_ipc_send(standby.channel, header.baseAddress, Message.headerSize, body.baseAddress, body.count,
                            fds.baseAddress, Int32(fds.count), CL_MSG_NOSIGNAL | CL_MSG_DONTWAIT)
            }
        }
        guard sent >= 0 else {
            let reason = String(cString: strerror(errno))
            note(server, .warning, "could not activate standby pid \(standby.pid): \(reason); starting a fresh instance")
            killStandby(server, standby, because: "killed after a failed activation (\(reason))")
            return false
        }
        return true
    }

    /// Makes the activated standby the server's instance: its pipes, channel and pidfd now carry
    /// the instance's tokens.
    func adopt(_ standby: StandbyInstance, into server: ServerProcess) {
        server.standby = nil
        server.pid = standby.pid
        server.stdout = standby.stdout
        server.stderr = standby.stderr
        server.channel = standby.channel
        server.exitNotifier = standby.exitNotifier
        server.stdoutBuffer = standby.stdoutBuffer
        server.stderrBuffer = standby.stderrBuffer
        for (fd, kind) in [(server.stdout, Self.stdoutKind), (server.stderr, Self.stderrKind), (server.channel, Self.channelKind),
                           (server.exitNotifier, Self.exitKind)] where fd >= 0 {
            watch(fd, token: token(server, kind: kind), retoken: true)
        }
    }
}
