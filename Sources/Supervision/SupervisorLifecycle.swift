import CLimitless
import Glibc
import IPC

/// The supervisor loop's work on servers: exits and deadlines, starting and stopping.
extension Supervisor {
    // MARK: Exits and deadlines

    func reap() {
        for server in servers where server.isAlive {
            var status: Int32 = 0
            let result = waitpid(server.pid, &status, WNOHANG)
            if result == server.pid || (result < 0 && errno == ECHILD) { exited(server, status: result < 0 ? nil : status) }
        }
        reapStandbys()
    }

    func exited(_ server: ServerProcess, status: Int32?) {
        drain(server, stream: .stdout, budget: .max)
        drain(server, stream: .stderr, budget: .max)
        if server.channel >= 0 { readChannel(server, budget: .max) }
        unwatch(&server.stdout)
        unwatch(&server.stderr)
        unwatch(&server.channel)
        unwatch(&server.exitNotifier)
        unwatch(&server.seccompListener)
        server.seccompDecisions = []
        server.stdoutBuffer = []
        server.stderrBuffer = []
        // Anything it forked is stopped with it.
        _ = kill(-server.pid, SIGKILL)
        forgetListenerPID(server)
        server.pid = 0
        server.registered = false
        server.deadline = nil
        server.killSent = false
        // The descriptors went with the process: nothing left to confirm.
        server.pendingRevokes = [:]

        var exit: ServerExit
        var text: String
        if let status {
            let signal = status & 0x7F
            exit = signal == 0 ? .exited(status: (status >> 8) & 0xFF) : .killed(signal: signal)
            text = signal == 0 ? exit.description : "killed by signal \(signal) (\(Self.signalName(signal)))"
        } else {
            exit = .exited(status: -1)
            text = "exit status unknown (already reaped)"
        }
        if let override = server.exitOverride {
            exit = override.exit
            text = override.text
        }
        server.exitOverride = nil
        let requested = server.stopRequested
        server.stopRequested = false
        server.lastExit = requested ? "stopped on request (\(text))" : text
        // The exit is logged before the quiesce so that the record's time is when the exit was
        // seen, and the quiesce gets its own record with its duration (restart phases, issue 4).
        note(server, requested || !exit.isFailure ? .info : .error, "instance \(server.instance) \(server.lastExit!)")
        // Its devices are quiesced (bus mastering off, interrupts off, DMA unmapped) before
        // anything restarts it: a dead driver's device must not DMA into memory that is reused.
        if let provider = options.capabilityProvider {
            let holding = (provider as? DeviceCapabilities)?.isHolding(server.name) ?? false
            let start = ContinuousClock.now
            let problems = provider.instanceExited(server.configuration)
            for problem in problems { note(server, .warning, problem) }
            if holding {
                note(server, .info, "devices quiesced in \(Self.microseconds(start.duration(to: .now))) us")
            }
        }
        // Dependents still running are told (a stop on request has stopped them first, unless it
        // is a restart of this server alone).
        notifyDependents(of: server, .down)

        if server.restartRequested {
            server.restartRequested = false
            server.wanted = true
            server.state = .inactive
            return
        }
        if requested || !server.wanted {
            server.state = .inactive
            return
        }
        // How long this instance ran: a long healthy run restarts without the backoff pause.
        let ranFor = server.startedMonotonic.map { $0.duration(to: .now) }
        switch server.tracker.serverExited(exit, ranFor: ranFor) {
        case .restart(let pause):
            server.restarts += 1
            server.state = .backoff
            server.deadline = .now + pause
            note(server, .notice, pause == .zero ? "restarting now (it ran \(ranFor.map { "\($0.nanosecondsValue / 1_000_000) ms" } ?? "?") before failing)"
                : "restarting in \(DurationText.format(pause))")
        case .stay(let reason):
            server.wanted = false
            server.state = .inactive
            note(server, .info, "not restarted: \(reason)")
        case .failed(let count, let period):
            server.wanted = false
            server.state = .failed
            let dependents = configuration.dependencies.dependents(of: server.name)
            note(server, .critical, "failed: \(count) restarts in \(DurationText.format(period)); not restarting"
                + (dependents.isEmpty ? "" : "; stopping \(dependents.joined(separator: ", "))"))
            notifyDependents(of: server, .failed)
            for name in dependents {
                guard let dependent = byName[name] else { continue }
                dependent.wanted = false
                if dependent.state == .backoff || dependent.state == .waiting { dependent.state = .inactive; dependent.deadline = nil }
                if dependent.isAlive { dependent.lastExit = "stopped: \(server.name) failed" }
            }
        }
    }

    func checkDeadlines() {
        let now = ContinuousClock.now
        checkRevokeDeadlines(now: now)
        for server in servers {
            switch server.state {
            case .starting where server.isAlive:
                if let deadline = server.deadline, now >= deadline, server.exitOverride == nil {
                    server.exitOverride = (.watchdogExpired, "did not register within \(DurationText.format(options.startTimeout))")
                    signal(server, SIGKILL)
                }
            case .running where server.isAlive && server.registered:
                if let interval = server.configuration.watchdogInterval, let last = server.lastHeartbeat,
                   now >= last + interval, server.exitOverride == nil {
                    server.exitOverride = (.watchdogExpired, "no heartbeat within \(DurationText.format(interval)) (watchdog)")
                    // Its own record, stamped when the watchdog fired (not when the exit is seen).
                    note(server, .warning, "watchdog: no heartbeat within \(DurationText.format(interval)); sending SIGKILL")
                    signal(server, SIGKILL)
                }
            case .stopping where server.isAlive:
                if let deadline = server.deadline, now >= deadline, !server.killSent {
                    server.killSent = true
                    note(server, .warning, "did not stop within \(DurationText.format(options.stopGracePeriod)) of SIGTERM; sending SIGKILL")
                    signal(server, SIGKILL)
                }
            default:
                break
            }
        }
    }

    func signal(_ server: ServerProcess, _ number: Int32) {
        guard server.isAlive else { return }
        _ = kill(-server.pid, number)  // its process group: anything it forked too
        _ = kill(server.pid, number)
    }

    // MARK: Starting and stopping

    /// Sends SIGTERM to unwanted servers whose dependents have all stopped (stop order).
    func stopUnwanted() {
        for server in servers where !server.wanted {
            if server.state == .backoff || server.state == .waiting {
                server.state = .inactive
                server.deadline = nil
            }
            guard server.isAlive, server.state != .stopping else { continue }
            let dependentsAlive = servers.contains { $0.isAlive && $0.configuration.dependencies.contains(server.name) }
            if dependentsAlive { continue }
            server.stopRequested = true
            server.state = .stopping
            server.deadline = .now + options.stopGracePeriod
            signal(server, SIGTERM)
        }
        for server in servers where server.restartRequested && server.isAlive && server.state != .stopping {
            server.stopRequested = true
            server.state = .stopping
            server.deadline = .now + options.stopGracePeriod
            signal(server, SIGTERM)
        }
    }

    /// Starts wanted servers whose dependencies are running, in start order.
    func startEligible() {
        guard !shuttingDown else { return }
        let now = ContinuousClock.now
        for name in configuration.startOrder {
            guard let server = byName[name], server.wanted, !server.isAlive else { continue }
            switch server.state {
            case .inactive, .waiting: break
            case .backoff where server.deadline.map({ now >= $0 }) ?? true: break
            default: continue
            }
            let ready = server.configuration.dependencies.allSatisfy { byName[$0]?.state == .running }
            if !ready {
                if server.state == .inactive { server.state = .waiting }
                continue
            }
            launch(server)
        }
    }

    /// Gives back the capability descriptors of servers that are neither running nor wanted
    /// (stopped, failed, not restarted, shut down). The provider ignores servers it holds nothing
    /// for.
    func releaseCapabilities() {
        guard let provider = options.capabilityProvider else { return }
        for server in servers where !server.wanted && !server.isAlive {
            for problem in provider.release(server.configuration) { note(server, .warning, problem) }
        }
    }

    func launch(_ server: ServerProcess) {
        let config = server.effectiveConfiguration
        // Device capabilities first: a server whose devices cannot be opened does not start.
        var provided = options.capabilityDescriptors(config)
        provided.merge(blockTokenDescriptors(for: config)) { _, token in token }
        if let provider = options.capabilityProvider {
            do {
                provided.merge(try provider.descriptors(for: config)) { _, device in device }
            } catch {
                note(server, .error, "cannot open its devices: \(error)")
                server.instance += 1
                server.exitOverride = (.exited(status: 127), "could not start: \(error)")
                startFailed(server)
                return
            }
        }
        do throws(LaunchError) {
            if server.checkpoint == nil {
                do {
                    server.checkpoint = try CheckpointStore(name: config.name, capacity: options.checkpointCapacity)
                } catch {
                    throw .systemCall("creating the checkpoint memfd (\(error))", ENOMEM)
                }
            }
            provided.merge(try pageCacheLogDescriptors(server, config)) { _, log in log }
            // What the instance gets from 4 up: the checkpoint, then the capabilities in the
            // order of the sorted grant list (descriptor 3, the channel, is the launch's own).
            var passed: [Int32] = [server.checkpoint!.fileDescriptor.rawValue]
            var capabilities: [(name: String, fd: Int32)] = []
            for capability in config.capabilities.sorted() {
                if let fd = provided[capability.description] {
                    capabilities.append((capability.description, SupervisorChannel.checkpointFD + Int32(passed.count)))
                    passed.append(fd)
                } else {
                    capabilities.append((capability.description, -1))
                }
            }
            let identity = try launchIdentity(server, config)
            // After the capabilities: the listening socket held across instances.
            var listenVariable: [String] = []
            if let listener = listenerForLaunch(server, identity: identity) {
                listenVariable = ["\(SupervisorChannel.listenVariable)=\(SupervisorChannel.checkpointFD + Int32(passed.count))"]
                passed.append(listener)
            }
            let instance = server.instance + 1
            var variables = [
                "\(SupervisorChannel.capabilitiesVariable)=\(SupervisorChannel.formatCapabilities(capabilities))",
                "\(SupervisorChannel.instanceVariable)=\(instance)",
            ]
            if let watchdog = config.watchdogInterval {
                variables.append("\(SupervisorChannel.watchdogVariable)=\(max(1, watchdog.nanosecondsValue / 1_000_000))")
            }
            variables += listenVariable
            let spawnStart = ContinuousClock.now
            let tokens = blockTokensServed(by: config)
            if let standby = server.standby,
               activate(standby, of: server, descriptors: passed, variables: variables, blockTokensFollowing: tokens.count) {
                server.instance = instance
                adopt(standby, into: server)
                recordListenerPID(server)
                // Behind the activation on its channel: the tokens of the grants it serves (a
                // standby drops anything that comes before its activation). The activation
                // announced how many, and the server waits for them all before it listens.
                queueBlockTokens(tokens, to: config, channel: server.channel)
                began(server, capabilities: capabilities)
                note(server, .info, "instance \(instance) activated standby pid \(standby.pid) (descriptors passed in "
                    + "\(Self.microseconds(spawnStart.duration(to: .now))) us)")
                return
            }
            var pair: [Int32] = [-1, -1]
            guard socketpair(AF_UNIX, CL_SOCK_SEQPACKET | CL_SOCK_CLOEXEC, 0, &pair) == 0 else {
                throw .systemCall("socketpair", errno)
            }
            defer { close(pair[1]) }
            // Waiting on its channel when it starts: the tokens of the grants it serves.
            queueBlockTokens(tokens, to: config, channel: pair[0])
            let process: ProcessLauncher.Process
            do throws(LaunchError) {
                process = try ProcessLauncher.launch(ProcessLauncher.Request(
                    path: config.path, arguments: config.arguments, environment: baseEnvironment(config) + variables,
                    inheritedDescriptors: [pair[1]] + passed, identity: identity))
            } catch {
                close(pair[0])
                throw error
            }
            _ = CL_fcntl_int(pair[0], F_SETFL, O_NONBLOCK)
            server.instance = instance
            server.pid = process.pid
            server.stdout = process.stdout
            server.stderr = process.stderr
            server.channel = pair[0]
            watch(process.stdout, token: token(server, kind: Self.stdoutKind))
            watch(process.stderr, token: token(server, kind: Self.stderrKind))
            watch(pair[0], token: token(server, kind: Self.channelKind))
            server.exitNotifier = exitNotifier(for: process.pid, token: token(server, kind: Self.exitKind))
            recordListenerPID(server)
            began(server, capabilities: capabilities)
            // posix_spawn returns once the child has exec'd (glibc waits for it), so this is the
            // fork + exec time.
            note(server, .info, "instance \(instance) started as pid \(process.pid) (spawned in \(Self.microseconds(spawnStart.duration(to: .now))) us)")
        } catch {
            // As good as an immediate exit: the restart policy decides (a wrong path ends failed).
            note(server, .error, "\(error)")
            server.instance += 1
            server.exitOverride = (.exited(status: 127), "could not start: \(error)")
            startFailed(server)
        }
    }

    /// The user and group to start `config`'s processes as (nil: the supervisor's own); warns
    /// once when not root and so unable to switch.
    func launchIdentity(_ server: ServerProcess, _ config: ServerConfiguration) throws(LaunchError) -> ProcessLauncher.Identity? {
        guard config.user != nil || config.group != nil else { return nil }
        if geteuid() == 0 { return try ProcessLauncher.resolveIdentity(user: config.user, group: config.group) }
        if server.instance == 0 && server.standby == nil {
            note(server, .warning, "not running as root: starting it as uid \(geteuid()), not as "
                + [config.user.map { "user \($0)" }, config.group.map { "group \($0)" }].compactMap { $0 }.joined(separator: ", "))
        }
        return nil
    }

    /// The environment every process of `config` starts with (instances add their capabilities,
    /// instance number and watchdog; a standby gets those at activation).
    func baseEnvironment(_ config: ServerConfiguration) -> [String] {
        [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "\(SupervisorChannel.serverNameVariable)=\(config.name)",
            "\(SupervisorChannel.runtimeDirectoryVariable)=\(options.runtimeDirectory)",
        ]
    }

    /// A pidfd for `pid`, watched with `token`; -1 where the kernel has none (the poll finds the
    /// exit then).
    func exitNotifier(for pid: pid_t, token: UInt64) -> Int32 {
        let pidfd = CL_pidfd_open(pid)
        guard pidfd >= 0 else { return -1 }
        _ = fcntl(pidfd, F_SETFD, FD_CLOEXEC)
        watch(pidfd, token: token)
        return pidfd
    }

    /// The new instance's bookkeeping, spawned or activated alike.
    func began(_ server: ServerProcess, capabilities: [(name: String, fd: Int32)]) {
        server.capabilities = capabilities
        server.startedAt = CheckpointStore.now()
        server.startedMonotonic = .now
        server.registered = false
        server.lastHeartbeat = nil
        server.killSent = false
        server.exitOverride = nil
        server.stopRequested = false
        if options.requireRegistration {
            server.state = .starting
            server.deadline = .now + options.startTimeout
        } else {
            server.state = .running
            server.deadline = nil
        }
    }

    func startFailed(_ server: ServerProcess) {
        let text = server.exitOverride?.text ?? "could not start"
        server.exitOverride = nil
        server.lastExit = text
        switch server.tracker.serverExited(.exited(status: 127)) {
        case .restart(let pause):
            server.restarts += 1
            server.state = .backoff
            server.deadline = .now + pause
        case .stay:
            server.wanted = false
            server.state = .inactive
        case .failed:
            server.wanted = false
            server.state = .failed
            notifyDependents(of: server, .failed)
            for name in configuration.dependencies.dependents(of: server.name) { byName[name]?.wanted = false }
        }
    }

    static func microseconds(_ duration: Duration) -> Int64 { duration.nanosecondsValue / 1000 }
}
