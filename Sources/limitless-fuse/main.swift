import ArgumentParser
import FUSEBridge
import IPC
import VFS
#if canImport(Glibc)
import Glibc
#endif

/// Wiring only: arguments, the checks that make a clear error before anything is mounted, and
/// `FUSEMount.run`. The mapping of FUSE operations to VFS calls is `FUSEOperations`.
struct LimitlessFUSE: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "limitless-fuse",
        abstract: "Mount a running vfs_server's namespace with FUSE, for ordinary programs (ls, cat, cp, mv, df...).",
        discussion: """
            Connects to the vfs_server at RUNTIME_DIR/NAME.sock and mounts its whole namespace at MOUNTPOINT. \
            The server checks every request as this process's uid and gid (SO_PEERCRED); the mount uses \
            default_permissions, so the kernel also checks each caller against the mode bits. One bridge \
            serves one user: only that user may enter the mount, and -o allow_other is refused unless root \
            runs the bridge. Requests are served one at a time (libfuse's single-threaded loop). \
            Unmount with `fusermount3 -u MOUNTPOINT`, or SIGTERM/SIGINT to the bridge.
            """)

    @Argument(help: "An existing directory to mount on.")
    var mountPoint: String

    @Option(help: "The VFS server's name: RUNTIME_DIR/NAME.sock.")
    var server: String = "vfs"

    @Option(name: .customLong("runtime-dir"), help: "The runtime directory (default: $LIMITLESS_RUNTIME_DIR or /run/limitless).")
    var runtimeDir: String?

    @Flag(help: "Stay in the foreground (default: detach once mounted).")
    var foreground = false

    @Flag(help: "Print every FUSE request (libfuse's -d); implies --foreground.")
    var debug = false

    @Option(name: .short, help: ArgumentHelp("Mount options, comma-separated (ro, allow_other for root...).", valueName: "options"))
    var o: [String] = []

    func run() throws {
        let directory = runtimeDir ?? getenv("LIMITLESS_RUNTIME_DIR").map { String(cString: $0) } ?? IPCRuntime.defaultDirectory
        let mountPoint: String
        let options: String
        do {
            mountPoint = try FUSEMount.checkMountPoint(self.mountPoint)
            options = try FUSEMount.optionString(user: o, uid: getuid())
        } catch {
            Self.say("limitless-fuse: \(error)")
            throw ExitCode(64)
        }
        // Check the server before mounting: a mount whose every request fails helps nobody.
        // This connection is closed again; the serving process (after the daemon fork) makes
        // its own, so its descriptors are keyed by its own pid.
        try Self.checkServer(name: server, directory: directory)
        let name = server
        let operations = FUSEOperations(connect: { () throws(VFSError) in try VFSClient.connect(name: name, directory: directory) })
        let status = FUSEMount.run(operations, mountPoint: mountPoint, options: options, foreground: foreground || debug, debug: debug) {
            Self.say("limitless-fuse: \($0)")
        }
        if status != 0 { throw ExitCode(status) }
    }

    /// Connects, asks statfs("/"), and lets the connection go (closed on return).
    static func checkServer(name: String, directory: String) throws {
        let socket = "\(directory)/\(name).sock"
        let probe: VFSClient
        do {
            probe = try VFSClient.connect(name: name, directory: directory)
        } catch {
            say("limitless-fuse: no VFS server at \(socket): start vfs_server or the supervisor")
            throw ExitCode.failure
        }
        do {
            _ = try probe.statfs("/")
        } catch {
            say("limitless-fuse: the VFS server at \(socket) does not answer statfs(\"/\"): \(error)")
            throw ExitCode.failure
        }
    }

    static func say(_ text: String) {
        let line = Array((text + "\n").utf8)
        _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    }
}

LimitlessFUSE.main()
