import ArgumentParser
import Glibc
import Supervision

/// The supervisor's wake descriptor, for the SIGTERM/SIGINT handler (which may only write to it).
nonisolated(unsafe) var shutdownDescriptor: Int32 = -1

@main
struct LimitlessSupervisor: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "limitless-supervisor",
        abstract: "Starts the Limitless servers, hands each its capabilities, restarts them and keeps their checkpoints.",
        discussion: """
            The configuration has one `start_server NAME PATH [ARGS...]` line per
            server, and that server's settings on indented lines below it:
              device LABEL SELECTOR        0000:00:03.0, 8086:10d3 or class=010802
              capabilities CAP_...         CAP_MMIO_<LABEL>, CAP_IRQ_<LABEL> name a device
              restart never|on-failure|always
                      [backoff=100ms] [max-backoff=30s] [limit=5/60s]
              user NAME    group NAME    depends NAME...
              checkpoint 5s    watchdog 1s
              standby yes                  a pre-started instance takes over at a restart
              page_cache_log 16M           size of the CAP_PAGE_CACHE memory, kept across restarts
            Quote arguments with spaces ("..." or '...'); # starts a comment.
            The example servers.conf in the repository documents every setting.

            Runs in the foreground: starts the servers in dependency order, restarts
            them by their policy, serves serverctl at RUNTIME_DIR/supervisor.sock,
            and on SIGTERM or SIGINT stops them in reverse order and exits 0.
            --check only validates the file, prints the start order and each
            server's grants and exits 0, or prints every error as
            FILE:LINE:COLUMN: message and exits 1.
            """)

    @Option(name: .long, help: "The configuration file.")
    var config: String = "/system/etc/servers.conf"

    @Flag(name: .long, help: "Validate the configuration and print the start order and grants; start nothing.")
    var check = false

    @Option(name: .long, help: "Where the control socket and servers' sockets live.")
    var runtimeDir: String = "/run/limitless"

    @Option(name: .long, help: "Where servers' logs are written (NAME.log); omit to keep them in memory only.")
    var logDir: String?

    @Option(name: .long, help: "Members of this group may start, stop, restart, grant and revoke (root always may).")
    var adminGroup: String = ControlAuthorization.defaultAdminGroup

    @Option(name: .long, help: "Seconds between SIGTERM and SIGKILL when stopping a server.")
    var stopTimeout: Int = 5

    @Option(name: .long, help: "Seconds a server has to register with the supervisor after it starts.")
    var startTimeout: Int = 10

    func run() throws {
        let configuration: SupervisorConfiguration
        do {
            configuration = try ConfigParser.load(path: config)
        } catch {
            for diagnostic in error.diagnostics { printError("\(diagnostic)") }
            printError("\(error.diagnostics.count) error\(error.diagnostics.count == 1 ? "" : "s") in \(config)")
            throw ExitCode(1)
        }
        if check {
            print(ConfigurationSummary(configuration).text, terminator: "")
            return
        }
        try supervise(configuration)
    }

    func supervise(_ configuration: SupervisorConfiguration) throws {
        let logs: LogStore
        do { logs = try LogStore(LogStore.Configuration(directory: logDir)) } catch {
            printError("limitless-supervisor: \(error)")
            throw ExitCode(1)
        }
        var options = Supervisor.Options()
        options.runtimeDirectory = runtimeDir
        options.stopGracePeriod = .seconds(max(0, stopTimeout))
        options.startTimeout = .seconds(max(1, startTimeout))
        // Signals are blocked while threads start, so only the handler below ever sees them.
        var blocked = sigset_t()
        sigemptyset(&blocked)
        sigaddset(&blocked, SIGTERM)
        sigaddset(&blocked, SIGINT)
        pthread_sigmask(SIG_BLOCK, &blocked, nil)
        signal(SIGPIPE, SIG_IGN)
        let supervisor: Supervisor
        let control: ControlServer
        do {
            supervisor = try Supervisor(configuration: configuration, options: options, logs: logs)
            control = try ControlServer(supervisor: supervisor, directory: runtimeDir,
                                        authorization: ControlAuthorization(adminGroup: adminGroup))
        } catch {
            printError("limitless-supervisor: \(error)")
            throw ExitCode(1)
        }
        control.start()
        shutdownDescriptor = supervisor.wakeDescriptor
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in
            var two: UInt64 = 2
            _ = write(shutdownDescriptor, &two, 8)
        }
        sigaction(SIGTERM, &action, nil)
        sigaction(SIGINT, &action, nil)
        pthread_sigmask(SIG_UNBLOCK, &blocked, nil)
        printError("limitless-supervisor: supervising \(configuration.servers.count) servers (\(configuration.startOrder.joined(separator: ", "))); "
            + "control socket \(runtimeDir)/supervisor.sock")
        supervisor.run()
        control.stop()
        printError("limitless-supervisor: all servers stopped")
    }
}

func printError(_ text: String) {
    var standardError = StandardError()
    print(text, to: &standardError)
}

struct StandardError: TextOutputStream {
    mutating func write(_ string: String) {
        var remaining = Array(string.utf8)[...]
        while !remaining.isEmpty {
            let written = remaining.withUnsafeBytes { Glibc.write(STDERR_FILENO, $0.baseAddress, $0.count) }
            if written < 0, errno == EINTR { continue }
            guard written > 0 else { return }
            remaining = remaining.dropFirst(written)
        }
    }
}
