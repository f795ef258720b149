import CFUSE
import VFS
#if canImport(Glibc)
import Glibc
#endif

/// A refusal before anything is mounted, with the text to print.
public struct FUSEMountError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Mounting, the loop and unmounting, on libfuse's high-level API (fuse_new, fuse_mount,
/// fuse_daemonize, fuse_loop, fuse_unmount): like fuse_main, but with the checks and messages
/// done here and the vfs_server connection made after the daemon fork.
///
/// Security model, the one of sshfs without allow_other: the bridge is one client of
/// vfs_server, which checks every request against the bridge's own uid and gid (SO_PEERCRED).
/// The mount is always `default_permissions`, so the kernel checks each caller's access
/// against the mode bits the server reports, and only the mounting user may enter it (FUSE's
/// default). `-o allow_other` would let every local user act with the mounter's vfs identity,
/// so it is refused unless root runs the bridge.
public enum FUSEMount {
    /// What every mount gets: kernel permission checks, and a name in /proc/mounts and df.
    public static let fixedOptions = ["default_permissions", "fsname=limitless-vfs", "subtype=limitless"]

    /// The -o option string: the fixed options, then the user's (comma lists allowed).
    /// Refuses allow_other (and allow_root) for anyone but root.
    public static func optionString(user: [String], uid: uid_t) throws(FUSEMountError) -> String {
        let given = user.flatMap { $0.split(separator: ",").map(String.init) }.filter { !$0.isEmpty }
        for option in given where option == "allow_other" || option == "allow_root" {
            guard uid == 0 else {
                throw FUSEMountError("-o \(option) refused: one bridge serves one user (the vfs_server checks every request as uid \(uid)); only root may share a mount")
            }
        }
        return (fixedOptions + given.filter { !fixedOptions.contains($0) }).joined(separator: ",")
    }

    /// The mount point as an absolute path (the daemon changes to / before unmounting),
    /// or why it cannot be one.
    public static func checkMountPoint(_ path: String) throws(FUSEMountError) -> String {
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw FUSEMountError("mount point '\(path)': \(String(cString: strerror(errno)))")
        }
        guard st.st_mode & S_IFMT == S_IFDIR else { throw FUSEMountError("mount point '\(path)': Not a directory") }
        guard let resolved = realpath(path, nil) else {
            throw FUSEMountError("mount point '\(path)': \(String(cString: strerror(errno)))")
        }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    /// Mounts at `mountPoint` (absolute, checked) and serves until unmounted (fusermount3 -u,
    /// umount) or SIGTERM/SIGINT/SIGHUP, then unmounts. `log` gets one line per event.
    /// Returns the exit status.
    public static func run(_ operations: FUSEOperations, mountPoint: String, options: String, foreground: Bool, debug: Bool,
                           log: (String) -> Void) -> Int32 {
        var args = fuse_args()
        for argument in ["limitless-fuse", "-o", options] + (debug ? ["-d"] : []) {
            guard fuse_opt_add_arg(&args, argument) == 0 else { log("out of memory"); return 1 }
        }
        defer { fuse_opt_free_args(&args) }
        var table = FUSECallbacks.table()
        let context = Unmanaged.passRetained(operations)
        defer { context.release() }
        // fuse_new parses the -o options (an unknown one fails here, with libfuse's message).
        guard let fuse = fuse_new(&args, &table, MemoryLayout<fuse_operations>.size, context.toOpaque()) else {
            log("bad options: \(options)")
            return 1
        }
        defer { fuse_destroy(fuse) }
        guard fuse_mount(fuse, mountPoint) == 0 else {
            log("cannot mount at \(mountPoint) (is /dev/fuse there and may this user mount? see above)")
            return 1
        }
        log("mounted at \(mountPoint)\(foreground ? "" : ", serving in the background")")
        // Forks unless foreground; the parent exits once the child is ready. The vfs_server
        // connection is made by the first request, in the process that serves.
        guard fuse_daemonize(foreground ? 1 : 0) == 0 else {
            fuse_unmount(fuse)
            return 1
        }
        let session = fuse_get_session(fuse)
        // SIGTERM, SIGINT, SIGHUP end the loop; SIGPIPE is ignored. libfuse leaves a signal
        // alone that was ignored at start; a shell script's `&` ignores SIGINT for its
        // background jobs, and `kill -INT` should still unmount, so SIGINT and SIGTERM are made
        // default first (SIGHUP stays ignored under nohup).
        signal(SIGINT, SIG_DFL)
        signal(SIGTERM, SIG_DFL)
        guard fuse_set_signal_handlers(session) == 0 else {
            fuse_unmount(fuse)
            return 1
        }
        // Single-threaded: one VFSClient socket, one request at a time.
        let result = fuse_loop(fuse)
        fuse_remove_signal_handlers(session)
        fuse_unmount(fuse)
        // 0 after an unmount, the signal number after a signal, -errno on a failure.
        if result < 0 {
            log("stopped on an error: \(String(cString: strerror(-result))); unmounted \(mountPoint)")
            return 1
        }
        log("unmounted \(mountPoint)")
        return 0
    }
}
