import CLimitless
import IPC
#if canImport(Glibc)
import Glibc
#endif

/// What the supervisor told the server at exec (SupervisorChannel's contract), validated.
///
/// A server is *supervised* when LIMITLESS_SERVER_NAME is set: then descriptors 3 (supervisor
/// channel) and 4 (checkpoint memfd) must be open. Without it the server runs *standalone* (by
/// hand, for development): logs go to stderr, checkpoints live only in the process, and
/// capabilities may still be passed through LIMITLESS_CAPABILITIES.
public struct ServerEnvironment: Equatable, Sendable {
    public enum Mode: Equatable, Sendable {
        case supervised
        case standalone
    }

    public var mode: Mode
    public var serverName: String
    /// Granted capabilities in the order given; -1 for a grant without a descriptor.
    public var capabilities: [(name: String, fd: Int32)]
    public var runtimeDirectory: String
    /// 1 for the first start, then counting restarts.
    public var instance: UInt64
    /// The heartbeat deadline; nil: no watchdog.
    public var watchdog: Duration?
    /// The listening socket the supervisor holds for this server (socket activation); nil: the
    /// server binds its own.
    public var listenDescriptor: Int32?

    public init(mode: Mode, serverName: String, capabilities: [(name: String, fd: Int32)] = [],
                runtimeDirectory: String = IPCRuntime.defaultDirectory, instance: UInt64 = 1, watchdog: Duration? = nil,
                listenDescriptor: Int32? = nil) {
        self.mode = mode
        self.serverName = serverName
        self.capabilities = capabilities
        self.runtimeDirectory = runtimeDirectory
        self.instance = instance
        self.watchdog = watchdog
        self.listenDescriptor = listenDescriptor
    }

    public static func == (lhs: ServerEnvironment, rhs: ServerEnvironment) -> Bool {
        lhs.mode == rhs.mode && lhs.serverName == rhs.serverName && lhs.runtimeDirectory == rhs.runtimeDirectory
            && lhs.instance == rhs.instance && lhs.watchdog == rhs.watchdog && lhs.listenDescriptor == rhs.listenDescriptor
            && lhs.capabilities.map(\.name) == rhs.capabilities.map(\.name) && lhs.capabilities.map(\.fd) == rhs.capabilities.map(\.fd)
    }

    /// Reads and validates this process's environment and inherited descriptors.
    /// A standby instance (`LIMITLESS_STANDBY` set) first waits here for its activation, which
    /// puts its descriptors and variables in place (`StandbyActivation`).
    public static func current(standaloneName: String) throws(ServerKitError) -> ServerEnvironment {
        if StandbyActivation.isStandby { try StandbyActivation.awaitActivation() }
        var variables: [String: String] = [:]
        for name in [SupervisorChannel.serverNameVariable, SupervisorChannel.capabilitiesVariable,
                     SupervisorChannel.runtimeDirectoryVariable, SupervisorChannel.instanceVariable,
                     SupervisorChannel.watchdogVariable, SupervisorChannel.listenVariable] {
            if let value = getenv(name) { variables[name] = String(cString: value) }
        }
        return try parse(variables, standaloneName: standaloneName, isOpen: isDescriptorOpen)
    }

    /// Validates `variables` (the LIMITLESS_* ones); `isOpen` says whether a descriptor is open
    /// (tests pass their own).
    public static func parse(_ variables: [String: String], standaloneName: String,
                             isOpen: (Int32) -> Bool) throws(ServerKitError) -> ServerEnvironment {
        let name = variables[SupervisorChannel.serverNameVariable]
        let mode: Mode = name == nil ? .standalone : .supervised
        if mode == .standalone {
            for variable in [SupervisorChannel.instanceVariable, SupervisorChannel.watchdogVariable,
                             SupervisorChannel.listenVariable] where variables[variable] != nil {
                throw .variableWithoutServerName(variable)
            }
        }
        let serverName = name ?? standaloneName
        guard !serverName.isEmpty, serverName.utf8.count <= 64,
              serverName.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F && $0 != 0x2F }) else {
            throw .malformedVariable(name: SupervisorChannel.serverNameVariable, value: serverName,
                                     expected: "a server name from servers.conf (printable, no spaces or slashes, at most 64 bytes)")
        }

        var capabilities: [(name: String, fd: Int32)] = []
        if let text = variables[SupervisorChannel.capabilitiesVariable] {
            guard let parsed = SupervisorChannel.parseCapabilities(text) else { throw .malformedCapabilities(text) }
            var seen = Set<String>()
            for capability in parsed {
                guard seen.insert(capability.name).inserted else { throw .duplicateCapability(capability.name) }
                if capability.fd >= 0 && capability.fd < SupervisorChannel.firstCapabilityFD {
                    throw .capabilityReservedDescriptor(name: capability.name, fd: capability.fd)
                }
                if capability.fd >= 0 && !isOpen(capability.fd) {
                    throw .capabilityDescriptorNotOpen(name: capability.name, fd: capability.fd)
                }
            }
            capabilities = parsed
        }

        let runtimeDirectory = variables[SupervisorChannel.runtimeDirectoryVariable] ?? IPCRuntime.defaultDirectory
        guard runtimeDirectory.hasPrefix("/") else {
            throw .malformedVariable(name: SupervisorChannel.runtimeDirectoryVariable, value: runtimeDirectory,
                                     expected: "an absolute directory path")
        }

        var instance: UInt64 = 1
        if let text = variables[SupervisorChannel.instanceVariable] {
            guard let value = UInt64(text), value >= 1 else {
                throw .malformedVariable(name: SupervisorChannel.instanceVariable, value: text, expected: "a start count of 1 or more")
            }
            instance = value
        }

        var watchdog: Duration?
        if let text = variables[SupervisorChannel.watchdogVariable] {
            guard let value = Int64(text), value >= 2, value <= 86_400_000 else {
                throw .malformedVariable(name: SupervisorChannel.watchdogVariable, value: text,
                                         expected: "a heartbeat deadline in milliseconds, 2 to 86400000")
            }
            watchdog = .milliseconds(value)
        }

        var listenDescriptor: Int32?
        if let text = variables[SupervisorChannel.listenVariable] {
            // Above the reserved descriptors and not one a capability names.
            guard let fd = Int32(text), fd >= SupervisorChannel.firstCapabilityFD, isOpen(fd),
                  !capabilities.contains(where: { $0.fd == fd }) else {
                throw .malformedVariable(name: SupervisorChannel.listenVariable, value: text,
                                         expected: "an open descriptor from \(SupervisorChannel.firstCapabilityFD) up that no capability names")
            }
            listenDescriptor = fd
        }

        if mode == .supervised {
            guard isOpen(SupervisorChannel.supervisorFD) else { throw .supervisorChannelMissing }
            guard isOpen(SupervisorChannel.checkpointFD) else { throw .checkpointDescriptorMissing("it is not open") }
        }
        return ServerEnvironment(mode: mode, serverName: serverName, capabilities: capabilities,
                                 runtimeDirectory: runtimeDirectory, instance: instance, watchdog: watchdog,
                                 listenDescriptor: listenDescriptor)
    }

    /// fcntl(F_GETFD) succeeds only on an open descriptor.
    public static func isDescriptorOpen(_ fd: Int32) -> Bool {
        fd >= 0 && CL_fcntl_int(fd, F_GETFD, 0) >= 0
    }
}
