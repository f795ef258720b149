import CLimitless
import IPC
import Supervision
#if canImport(Glibc)
import Glibc
#endif

/// What a standby instance does before it reports ready, so that the work after its activation
/// (the restart's clock) runs on warm code. Under an emulated CPU (the HIL rig) a process's
/// first pass over code costs far more than the code itself: page faults on the code and data
/// it touches, a dynamic-linker lookup per library function called for the first time (the
/// supervisor starts standbys with LD_BIND_NOW=1 for that), Swift's one-time type metadata and
/// global initialisers, a thread's first start. None of that depends on the activation's
/// descriptors, so a standby pays it while it waits. (Mapping every page of the binary and its
/// libraries ahead, MADV_POPULATE_READ, showed no gain over this in the rig: 10 kills each way,
/// one boot.)
///
/// Nothing here keeps a descriptor open: a standby holds only its channel until activated.
public enum StandbyWarmUp {
    static func run() {
        instantiateRuntimeTypes()
        exerciseStartPath()
        exerciseIPCServer()
        exerciseThreadStart()
    }

    /// Swift instantiates a type's metadata the first time it is used (for a class whose
    /// layout depends on a type from another module, such as `Mutex`, also its fields'), which
    /// the activation would otherwise do for `ServerRuntime` and its parts with the clock running.
    static func instantiateRuntimeTypes() {
        instantiate([ServerRuntime.self, SupervisorLink.self, Heartbeat.self, CheckpointStore.self, ServerEnvironment.self,
                      DependencyWatch.self, CapabilityHandlers.self, BlockTokenHandler.self, SupervisorLink.Received.self])
    }

    /// Asks for each type's metadata (instantiating it if it is not yet) and runs each of
    /// `checks` on it (a server's `{ $0 is any SomeProtocol.Type }`: the runtime's conformance
    /// lookup, cached per type from then on). Out of line, so the compiler cannot answer them.
    @inline(never)
    public static func instantiate(_ types: [Any.Type], conformanceChecks checks: [(Any.Type) -> Bool] = []) {
        for type in types {
            instantiated &+= ObjectIdentifier(type).hashValue
            for check in checks where check(type) { instantiated &+= 1 }
        }
    }

    /// Keeps the metadata requests above from being optimised away.
    nonisolated(unsafe) static var instantiated = 0

    /// Runs, on made-up values, the steps every activation runs: reading the environment, a
    /// checkpoint store's load, the channel's message encoding, the seccomp program's builder.
    static func exerciseStartPath() {
        let variables = [
            SupervisorChannel.serverNameVariable: "standby", SupervisorChannel.runtimeDirectoryVariable: "/run/limitless",
            SupervisorChannel.capabilitiesVariable: "CAP_DMA_ALLOC=5,CAP_MMIO_WARM=6,CAP_PCI_CONFIG=-1",
            SupervisorChannel.instanceVariable: "2", SupervisorChannel.watchdogVariable: "2000", SupervisorChannel.listenVariable: "7",
        ]
        // The activation message's variables, as `StandbyActivation.apply` reads them.
        _ = try? StandbyActivation.assignments(variables.filter { StandbyActivation.activationVariables.contains($0.key) }
            .map { "\($0.key)=\($0.value)" }.joined(separator: "\n"))
        if let environment = try? ServerEnvironment.parse(variables, standaloneName: "standby", isOpen: { _ in true }) {
            var table: [String: Int32] = [:]
            for capability in environment.capabilities { table[capability.name] = capability.fd }
            _ = table.keys.sorted()
        }
        if let store = try? CheckpointStore(name: "standby-warm-up", capacity: 4096) {
            _ = try? store.save(Array("warm".utf8), stateVersion: 1)
            _ = try? store.load()
        }
        var message = Message(type: .supervisorLog, param1: 2)
        message.setInlineData(count: 4)
        withUnsafeTemporaryAllocation(byteCount: Message.maxDatagramSize, alignment: 16) { buffer in
            message.encode(into: buffer)
            _ = try? Message.decode(UnsafeRawBufferPointer(rebasing: buffer[..<(Message.headerSize + 4)]))
        }
        _ = try? SeccompPolicy(capabilities: ["CAP_DMA_ALLOC", "CAP_MMIO_WARM", "CAP_IRQ_WARM", "CAP_PCI_CONFIG"]).program()
    }

    /// Sets up an IPC server on a socket in a directory of its own under /tmp, has it answer
    /// one request from a client of its own, then takes both down again: after activation the
    /// server's endpoint runs the same set-up (tables, buffer pool, epoll, its thread) and its
    /// first answer the same accept and request path (the clients that waited through the
    /// restart are answered first), and the allocator has grown to those sizes.
    static func exerciseIPCServer() {
        guard let directory = privateDirectory("limitless-standby") else { return }
        defer { _ = rmdir(directory) }
        guard let server = try? IPCServer(name: "warm-up", directory: directory, handler: { _, _, _ in .error(.ENOSYS) }) else { return }
        server.start()
        if let client = try? IPCClient.connect(name: "warm-up", directory: directory) {
            _ = try? client.sendReceive(Message(type: warmUpRequest), timeout: .seconds(2))
        }
        server.stop()
    }

    /// A new directory of the warm-up's own under /tmp (mkdtemp: mode 0700, a name nobody else
    /// holds), for its sockets; the caller removes it. nil if it cannot be made.
    public static func privateDirectory(_ prefix: String) -> String? {
        var template = Array("/tmp/\(prefix)-XXXXXX".utf8CString)
        return template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!).map { String(cString: $0) } }
    }

    /// A request type no server serves (answered ENOSYS by the warm-up's own server).
    static let warmUpRequest = MessageType(rawValue: 0x7F7F)

    /// Starts a thread and joins it: its stack stays in the C library's cache for the server's
    /// first thread after activation (a serving loop), and the thread start-up code has run.
    static func exerciseThreadStart() {
        var handle = pthread_t()
        guard pthread_create(&handle, nil, { _ in nil }, nil) == 0 else { return }
        pthread_join(handle, nil)
    }
}
