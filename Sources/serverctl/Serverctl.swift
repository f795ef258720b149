import ArgumentParser
import DeviceCatalog
import Glibc
import Platform
import Supervision

@main
struct Serverctl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serverctl",
        abstract: "Inspect and control Limitless servers and the devices they drive.",
        discussion: """
            Server commands talk to limitless-supervisor through RUNTIME_DIR/supervisor.sock
            (--runtime-dir, else $LIMITLESS_RUNTIME_DIR, else /run/limitless). Anyone may list,
            read status, capabilities and logs; start, stop, restart, grant and revoke need root
            or the limitless-admin group.
            """,
        subcommands: [List.self, Status.self, Start.self, Stop.self, Restart.self, Logs.self, Caps.self, Stats.self, Grant.self,
                      Revoke.self, Devices.self])
}

struct Devices: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List every PCI function, its binding, IOMMU group and the server that would drive it.")

    @Flag(name: .long, help: "Print JSON for scripts.")
    var json = false

    @Flag(name: .long, help: "Only functions a Limitless server supports.")
    var supported = false

    @Option(name: .long, help: ArgumentHelp("Read sysfs from this directory instead of /sys.", visibility: .hidden))
    var sysfsRoot = "/sys"

    func run() throws {
        let sysfs = Sysfs(root: sysfsRoot)
        let catalog = DeviceCatalog()
        var functions = try PCIEnumerator(sysfs: sysfs).functions()
        if supported { functions = functions.filter { catalog.entry(for: $0) != nil } }
        let rows = functions.map { DeviceRow(function: $0, entry: catalog.entry(for: $0)) }
        print(json ? DeviceRow.json(rows) : DeviceRow.table(rows, iommuEnabled: sysfs.iommuEnabled))
    }
}

// MARK: Server control

struct ControlOptions: ParsableArguments {
    @Option(name: .long, help: "The supervisor's runtime directory (default: $LIMITLESS_RUNTIME_DIR or /run/limitless).")
    var runtimeDir: String?

    @Flag(name: .long, help: "Print JSON for scripts.")
    var json = false

    var directory: String {
        if let runtimeDir { return runtimeDir }
        if let value = getenv("LIMITLESS_RUNTIME_DIR"), value.pointee != 0 { return String(cString: value) }
        return "/run/limitless"
    }

    func client() throws -> ControlClient {
        do { return try ControlClient(directory: directory) } catch { throw fail(error) }
    }
}

/// Prints the error and exits with status 1 (ArgumentParser would add "Error: ").
func fail(_ error: any Error) -> ExitCode {
    var standardError = StandardError()
    print("serverctl: \(error)", to: &standardError)
    return ExitCode(1)
}

struct StandardError: TextOutputStream {
    mutating func write(_ string: String) { _ = string.withCString { Glibc.write(2, $0, strlen($0)) } }
}

func now() -> Int64 { CheckpointStore.now() }

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List every configured server and its state.")
    @OptionGroup var options: ControlOptions

    func run() throws {
        let statuses: [ServerStatus]
        do { statuses = try options.client().statuses(.list) } catch let error as ExitCode { throw error } catch { throw fail(error) }
        print(options.json ? ControlFormatting.json(statuses) : ControlFormatting.list(statuses, now: now()), terminator: options.json ? "\n" : "")
    }
}

/// status, start, stop, restart and caps: a command on one server answered with its status.
protocol ServerCommand: ParsableCommand {
    static var command: ControlCommand { get }
    var options: ControlOptions { get }
    var name: String { get }
    func render(_ status: ServerStatus) -> String
}

extension ServerCommand {
    func run() throws {
        let statuses: [ServerStatus]
        do { statuses = try options.client().statuses(Self.command, name: name) } catch let error as ExitCode { throw error } catch { throw fail(error) }
        guard let status = statuses.first else { throw fail(ControlError.transport("an empty reply")) }
        print(options.json ? ControlFormatting.json(status) : render(status), terminator: options.json ? "\n" : "")
    }
    func render(_ status: ServerStatus) -> String { ControlFormatting.status(status, now: now()) }
}

struct Status: ServerCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show a server's state, pid, uptime, restarts, last exit, device, capabilities and checkpoint age.")
    static let command = ControlCommand.status
    @OptionGroup var options: ControlOptions
    @Argument(help: "The server's name in servers.conf.") var name: String
}

struct Start: ServerCommand {
    static let configuration = CommandConfiguration(abstract: "Start a server (and what it depends on); clears a failed state.")
    static let command = ControlCommand.start
    @OptionGroup var options: ControlOptions
    @Argument(help: "The server's name in servers.conf.") var name: String
}

struct Stop: ServerCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stop a server and the servers depending on it (SIGTERM, then SIGKILL after the grace period).")
    static let command = ControlCommand.stop
    @OptionGroup var options: ControlOptions
    @Argument(help: "The server's name in servers.conf.") var name: String
}

struct Restart: ServerCommand {
    static let configuration = CommandConfiguration(abstract: "Stop a server and start it again; its checkpoint is kept.")
    static let command = ControlCommand.restart
    @OptionGroup var options: ControlOptions
    @Argument(help: "The server's name in servers.conf.") var name: String
}

struct Caps: ServerCommand {
    static let configuration = CommandConfiguration(abstract: "Show the capabilities a server is granted and their descriptors.")
    static let command = ControlCommand.caps
    @OptionGroup var options: ControlOptions
    @Argument(help: "The server's name in servers.conf.") var name: String
    func render(_ status: ServerStatus) -> String { ControlFormatting.capabilities(status) }
}

struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show a server's CPU time, memory (resident, peak, locked), threads, descriptors, faults and log counters.",
        discussion: "The supervisor reads the figures from /proc/PID of the running instance; its log counters beside them.")
    @OptionGroup var options: ControlOptions
    @Argument(help: "The server's name in servers.conf.") var name: String

    func run() throws {
        let statistics: ServerStatistics
        do { statistics = try options.client().statistics(name: name) } catch let error as ExitCode { throw error } catch { throw fail(error) }
        print(options.json ? ControlFormatting.json(statistics) : ControlFormatting.statistics(statistics, now: now()),
              terminator: options.json ? "\n" : "")
    }
}

struct Logs: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show a server's log lines kept by the supervisor, oldest first.")
    @OptionGroup var options: ControlOptions
    @Argument(help: "The server's name in servers.conf.") var name: String
    @Option(name: .short, help: "Only the newest N lines.") var n: Int?
    @Option(name: .long, help: "Only lines since T: a duration ago (10m, 30s) or a time (2026-11-27T14:40:51.000000000Z).")
    var since: String?
    @Flag(name: [.short, .long], help: "Keep printing new lines as they arrive, until interrupted (as journalctl -f).")
    var follow = false

    func run() throws {
        var sinceTime: Int64?
        if let since {
            guard let parsed = Logs.parseSince(since, now: now()) else {
                throw ValidationError("--since \(since): give a duration ago (10m, 30s, 2h) or a time like 2026-11-27T14:40:51.000000000Z")
            }
            sinceTime = parsed
        }
        let result: (records: [LogRecord], omitted: UInt64)
        do { result = try options.client().logs(name: name, last: n, since: sinceTime) } catch let error as ExitCode { throw error } catch { throw fail(error) }
        print(options.json ? ControlFormatting.json(result.records) : ControlFormatting.logs(result.records, omitted: result.omitted),
              terminator: options.json ? "\n" : "")
        guard follow else { return }
        // Ask again for what came after the newest line shown; lines with the same timestamp as
        // it were all in the last answer, so the next question starts one nanosecond later.
        var newest = result.records.last?.timestamp ?? sinceTime ?? now()
        while true {
            usleep(200_000)
            let more: [LogRecord]
            do { more = try options.client().logs(name: name, last: nil, since: newest + 1).records } catch let error as ExitCode { throw error } catch { throw fail(error) }
            guard !more.isEmpty else { continue }
            print(options.json ? ControlFormatting.json(more) : ControlFormatting.logs(more), terminator: options.json ? "\n" : "")
            fflush(nil)
            newest = more.last!.timestamp
        }
    }

    static func parseSince(_ text: String, now: Int64) -> Int64? {
        if let time = LogTimestamp.parse(Substring(text)) { return time }
        let units: [(String, Int64)] = [("ms", 1_000_000), ("s", 1_000_000_000), ("m", 60_000_000_000), ("h", 3_600_000_000_000), ("d", 86_400_000_000_000)]
        for (suffix, scale) in units where text.hasSuffix(suffix) {
            if let value = Int64(text.dropLast(suffix.count)), value >= 0 { return now - value * scale }
        }
        return nil
    }
}

/// grant and revoke: a change of capabilities answered with the server's capabilities after it.
protocol CapabilityCommand: ParsableCommand {
    static var command: ControlCommand { get }
    var options: ControlOptions { get }
    var name: String { get }
    var capabilities: [String] { get }
}

extension CapabilityCommand {
    func run() throws {
        let statuses: [ServerStatus]
        do {
            statuses = try options.client().statuses(Self.command, name: name, capabilities: capabilities)
        } catch let error as ExitCode { throw error } catch { throw fail(error) }
        guard let status = statuses.first else { throw fail(ControlError.transport("an empty reply")) }
        print(options.json ? ControlFormatting.json(status) : ControlFormatting.capabilities(status), terminator: options.json ? "\n" : "")
    }
}

struct Grant: CapabilityCommand {
    static let configuration = CommandConfiguration(
        abstract: "Grant capabilities to a server now and to its later instances.",
        discussion: """
            The supervisor opens what each capability stands for (a VFIO device or container for \
            CAP_MMIO_<DEV>, CAP_IRQ_<DEV>, CAP_PCI_CONFIG, CAP_DMA_ALLOC) and passes the descriptor to the \
            running server, which confirms. Needs root or the limitless-admin group. Lasts until the \
            supervisor restarts (servers.conf is not changed).
            """)
    static let command = ControlCommand.grant
    @OptionGroup var options: ControlOptions
    @Argument(help: "The server's name in servers.conf.") var name: String
    @Argument(help: "Capabilities, e.g. CAP_IRQ_NVME0 CAP_DMA_ALLOC.") var capabilities: [String]
}

struct Revoke: CapabilityCommand {
    static let configuration = CommandConfiguration(
        abstract: "Withdraw capabilities from a server; one that does not confirm in time is restarted without them.",
        discussion: """
            The running server is told to close the descriptors and confirm. A process cannot be forced \
            to close a descriptor, so a server that has not confirmed within the revoke deadline (5s) \
            is restarted, and its new instance starts without the capabilities. Needs root or the \
            limitless-admin group. Lasts until the supervisor restarts (servers.conf is not changed).
            """)
    static let command = ControlCommand.revoke
    @OptionGroup var options: ControlOptions
    @Argument(help: "The server's name in servers.conf.") var name: String
    @Argument(help: "Capabilities, e.g. CAP_IRQ_NVME0.") var capabilities: [String]
}
