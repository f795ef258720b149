/// One server as the configuration describes it: what to run, what it may touch, and how it is
/// looked after. Values only; starting the process is the process controller's job.
public struct ServerConfiguration: Hashable, Sendable {
    /// Unique name; also the name of its log files and checkpoint memfd.
    public var name: String
    /// Absolute path of the executable.
    public var path: String
    /// Arguments after the path (argv[1...]).
    public var arguments: [String]
    /// The PCI functions it drives, by label (`NVME0`), in the order written.
    public var devices: [Device]
    /// What it is granted; a set, printed sorted.
    public var capabilities: Set<Capability>
    public var restart: RestartPolicy
    /// User and group to run as, by name or number; nil keeps the supervisor's default.
    public var user: String?
    public var group: String?
    /// Servers that must be running before this one starts.
    public var dependencies: [String]
    /// How often the server is asked to checkpoint; nil: never.
    public var checkpointInterval: Duration?
    /// How often it must report alive; nil: no watchdog.
    public var watchdogInterval: Duration?
    /// Keep a second instance started ahead of need, waiting before it takes its capabilities,
    /// to take over when the running one exits (`Supervisor+Standby`).
    public var standby: Bool = false
    /// The supervisor binds and listens on RUNTIME_DIR/NAME.sock and passes the socket to every
    /// instance (`SupervisorListeners`); servers.conf `listen no` for a server that serves no
    /// socket under its name.
    public var listens: Bool = true
    /// Bytes of the memfd CAP_PAGE_CACHE stands for (`PageCacheLog`): servers.conf
    /// `page_cache_log SIZE`.
    public var pageCacheLogSize: Int = PageCacheLog.defaultSize
    /// Where it was declared, for messages about it later.
    public var location: SourceLocation

    public struct Device: Hashable, Sendable, CustomStringConvertible {
        public var label: String
        public var selector: DeviceSelector
        public init(label: String, selector: DeviceSelector) {
            self.label = label
            self.selector = selector
        }
        public var description: String { "\(label) \(selector)" }
    }

    public init(
        name: String, path: String, arguments: [String] = [], devices: [Device] = [],
        capabilities: Set<Capability> = [], restart: RestartPolicy = RestartPolicy(), user: String? = nil,
        group: String? = nil, dependencies: [String] = [], checkpointInterval: Duration? = nil,
        watchdogInterval: Duration? = nil, location: SourceLocation = SourceLocation(file: "", line: 0)
    ) {
        self.name = name
        self.path = path
        self.arguments = arguments
        self.devices = devices
        self.capabilities = capabilities
        self.restart = restart
        self.user = user
        self.group = group
        self.dependencies = dependencies
        self.checkpointInterval = checkpointInterval
        self.watchdogInterval = watchdogInterval
        self.location = location
    }
}

/// A whole, validated configuration: every server, and the order to start and stop them.
public struct SupervisorConfiguration: Sendable {
    /// In the order the file declares them.
    public var servers: [ServerConfiguration]
    public var dependencies: DependencyGraph

    /// Dependencies before dependents; ties keep the file's order.
    public var startOrder: [String] { dependencies.startOrder }
    /// The reverse: dependents stop before what they depend on.
    public var stopOrder: [String] { dependencies.stopOrder }

    public subscript(name: String) -> ServerConfiguration? { servers.first { $0.name == name } }

    public init(servers: [ServerConfiguration]) throws(DependencyGraph.Problems) {
        self.servers = servers
        self.dependencies = try DependencyGraph(servers.map { ($0.name, $0.dependencies) })
    }
}

/// A place in a configuration file. Lines and columns count from 1; column 0 means "the line",
/// line 0 "the file as a whole" (it could not be read).
public struct SourceLocation: Hashable, Sendable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var column: Int
    public init(file: String, line: Int, column: Int = 0) {
        self.file = file
        self.line = line
        self.column = column
    }
    public var description: String {
        line == 0 ? file : column > 0 ? "\(file):\(line):\(column)" : "\(file):\(line)"
    }
}
