import ArgumentParser
import Glibc
import Supervision

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
            Quote arguments with spaces ("..." or '...'); # starts a comment.
            The example servers.conf in the repository documents every setting.

            Only --check works today: it validates the file, prints the start
            order and each server's grants and exits 0, or prints every error as
            FILE:LINE:COLUMN: message and exits 1. Starting servers is not
            implemented yet (exit status 2).
            """)

    @Option(name: .long, help: "The configuration file.")
    var config: String = "/system/etc/servers.conf"

    @Flag(name: .long, help: "Validate the configuration and print the start order and grants; start nothing.")
    var check = false

    func run() throws {
        let configuration: SupervisorConfiguration
        do {
            configuration = try ConfigParser.load(path: config)
        } catch {
            for diagnostic in error.diagnostics { printError("\(diagnostic)") }
            printError("\(error.diagnostics.count) error\(error.diagnostics.count == 1 ? "" : "s") in \(config)")
            throw ExitCode(1)
        }
        guard check else {
            printError("limitless-supervisor: \(config) is valid, but starting servers is not implemented yet "
                + "(issue 4, process control); only --check works today.")
            throw ExitCode(2)
        }
        print(ConfigurationSummary(configuration).text, terminator: "")
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
