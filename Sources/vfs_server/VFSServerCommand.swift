import ArgumentParser
import IPC
import ServerKit
import VFS
import VFSCore
#if canImport(Glibc)
import Glibc
#endif

/// Argument parsing and wiring; the logic is in the VFS library (VFSService, VFSServer,
/// MountSources).
@main
struct VFSServerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vfs_server",
        abstract: "Serves files and directories of ext2 file systems (and tmpfs) over Limitless IPC (MSG_VFS_*).",
        discussion: """
            The root file system is an ext2 image file (--image) or an ext2 file system on a storage_server \
            namespace (--storage NAME --nsid N). More file systems are mounted on directories of it with \
            --mount /dir=IMAGE and --tmpfs /dir. Serves RUNTIME_DIR/NAME.sock until SIGTERM, writing dirty pages \
            back every --writeback-interval, then unmounts everything cleanly (exit 0). Descriptors are \
            checkpointed (ServerKit) so clients keep them across a restart under the supervisor. \
            Protocol: Sources/VFS/VFSProtocol.swift.
            """)

    @Option(help: "The root file system: an ext2 image file.")
    var image: String?

    @Flag(help: "Mount the root file system (and --mount images) read-only.")
    var readOnly = false

    @Option(name: .customLong("mount"), help: ArgumentHelp("Mount an ext2 image on a directory (repeatable).", valueName: "/dir=IMAGE"))
    var imageMounts: [String] = []

    @Option(name: .customLong("tmpfs"), help: ArgumentHelp("Mount a tmpfs on a directory (repeatable).", valueName: "/dir"))
    var tmpfsMounts: [String] = []

    @Option(help: "The root file system is on this storage server (RUNTIME_DIR/NAME.sock) instead of an image.")
    var storage: String?

    @Option(help: "The storage server's namespace holding the file system.")
    var nsid: UInt32 = 1

    @Option(help: "Where the socket goes (default: LIMITLESS_RUNTIME_DIR or /run/limitless).")
    var runtimeDir: String?

    @Option(help: "The socket's name: RUNTIME_DIR/NAME.sock (default: the server's name, standalone `vfs`).")
    var name: String?

    @Option(help: ArgumentHelp("How often dirty pages are written back: 5, 5s, 500ms, 1m.", valueName: "duration"))
    var writebackInterval: String = "5s"

    @Option(help: "Page cache size per block-backed mount, in 4 KiB pages.")
    var cachePages: Int = 4096

    func validate() throws {
        let roots = (image == nil ? 0 : 1) + (storage == nil ? 0 : 1) + (tmpfsMounts.contains("/") ? 1 : 0)
        if roots != 1 { throw ValidationError("give one root file system: --image PATH, --storage NAME or --tmpfs /") }
        if MountSources.parseDuration(writebackInterval) == nil { throw ValidationError("--writeback-interval: not a duration: \(writebackInterval)") }
        for mount in imageMounts where MountSources.parseMountOption(mount) == nil {
            throw ValidationError("--mount wants /dir=IMAGE, got \(mount)")
        }
        if cachePages < 16 { throw ValidationError("--cache-pages must be at least 16") }
    }

    func run() throws {
        let runtime: ServerRuntime
        do {
            runtime = try ServerRuntime(standaloneName: name ?? "vfs")
        } catch {
            Self.say("vfs_server: \(error)")
            throw ExitCode(78)
        }
        let directory = runtimeDir ?? runtime.environment.runtimeDirectory
        let log: (String) -> Void = { runtime.log(.info, $0) }
        let service = VFSService(log: log)
        let pages = cachePages, readOnly = self.readOnly
        do throws(FSError) {
            // CAP_PAGE_CACHE: the supervisor's memory for the write-back logs of the root file
            // system (part 1) and of each --mount image (parts 2...), in command-line order.
            let logs = try runtime.pageCacheLog.map { fd throws(FSError) in
                try SharedMemoryStore.slices(of: fd, count: 1 + imageMounts.count, what: "the CAP_PAGE_CACHE memory")
            }
            let writeBackLog = logs?[0]
            let root: MountSources.Mounted
            if let image {
                root = try MountSources.image(image, readOnly: readOnly, cachePages: pages, writeBackLog: writeBackLog, log: log)
            } else if storage == nil {
                root = MountSources.tmpfs()
            } else {
                // CAP_BLOCK_READ / CAP_BLOCK_WRITE are tokens the storage server checks: present them.
                let tokens = { ["CAP_BLOCK_READ", "CAP_BLOCK_WRITE"].compactMap { (try? runtime.capability($0)).flatMap { $0 >= 0 ? $0 : nil } } }
                // A grant at run time (serverctl grant) is presented on the live connection, by
                // the serving thread before its next block request (a revoke needs nothing: the
                // storage server re-reads the rights per request).
                let tokenRefresh = TokenRefresh()
                runtime.onCapabilityChange { change in
                    guard change.granted, change.name == "CAP_BLOCK_READ" || change.name == "CAP_BLOCK_WRITE" else { return }
                    runtime.log(.info, "\(change): presenting it to the storage server before the next block request")
                    tokenRefresh.request()
                }
                root = try MountSources.storage(name: storage!, directory: directory, nsid: nsid, tokens: tokens, tokenRefresh: tokenRefresh,
                                                readOnly: readOnly, cachePages: pages, writeBackLog: writeBackLog, log: log)
            }
            try service.mount(root, at: "/", readOnly: readOnly)
            for (index, mount) in imageMounts.enumerated() {
                let (mountPoint, path) = MountSources.parseMountOption(mount)!
                let mounted = try MountSources.image(path, readOnly: readOnly, cachePages: pages, writeBackLog: logs?[index + 1], log: log)
                try service.mount(mounted, at: mountPoint, readOnly: readOnly)
            }
            for mountPoint in tmpfsMounts where mountPoint != "/" {
                try service.mount(MountSources.tmpfs(), at: mountPoint)
            }
        } catch {
            runtime.log(.critical, error.detail.isEmpty ? "\(error)" : error.detail)
            service.unmountAll()
            throw ExitCode(1)
        }
        service.mountProvider = { (source, readOnly) throws(FSError) in
            source == "tmpfs" ? MountSources.tmpfs(readOnly: readOnly)
                : try MountSources.image(source, readOnly: readOnly, cachePages: pages, log: log)
        }

        if let bytes = runtime.restoreCheckpoint() {
            do {
                let (restored, dropped) = service.restore(try DescriptorCheckpoint.decode(bytes))
                runtime.log(.info, "restored \(restored) descriptors from the checkpoint (\(dropped) dropped)")
            } catch {
                runtime.log(.error, "descriptor checkpoint refused, starting with none: \(error)")
            }
        }

        let server = VFSServer(service: service) { runtime.log(.error, $0) }
        let endpoint: IPCServer
        do {
            endpoint = try server.makeIPCServer(name: name ?? runtime.name, directory: directory)
        } catch {
            runtime.log(.critical, "cannot listen in \(directory): \(error)")
            service.unmountAll()
            throw ExitCode(1)
        }
        endpoint.start()
        runtime.log(.info, "listening on \(endpoint.endpoint.socketPath)")
        do {
            try runtime.register()
        } catch {
            runtime.log(.critical, "registration failed: \(error)")
            endpoint.stop()
            _ = server.withService { $0.unmountAll() }
            throw ExitCode(1)
        }

        let interval = MountSources.parseDuration(writebackInterval)!
        let clock = ContinuousClock()
        var lastWriteBack = clock.now
        let reason = runtime.runUntilStopped(tick: min(interval, .milliseconds(500))) {
            server.withService { service in
                if clock.now - lastWriteBack >= interval {
                    service.tick()
                    lastWriteBack = clock.now
                }
                guard service.descriptorsChanged else { return }
                service.descriptorsChanged = false
                do {
                    _ = try runtime.saveCheckpoint(DescriptorCheckpoint.encode(service.checkpointRecords()), stateVersion: 1)
                } catch {
                    runtime.log(.warning, "descriptor checkpoint not saved: \(error)")
                }
            }
        }
        endpoint.stop()
        let failures = server.withService { $0.unmountAll() }
        runtime.log(failures.isEmpty ? .info : .error,
                    "stopped (\(reason)): \(server.requests) requests, \(server.failures) refused; "
                    + (failures.isEmpty ? "everything unmounted cleanly" : "unmount failed: \(failures.joined(separator: "; "))"))
        runtime.shutdown()
        if !failures.isEmpty { throw ExitCode(1) }
    }

    static func say(_ text: String) {
        var line = text + "\n"
        line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    }
}
