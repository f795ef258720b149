import CLimitless
import Glibc
import IPC
import SystemPackage

/// A server's listening socket `RUNTIME_DIR/NAME.sock`, held by the supervisor across the
/// server's instances (socket activation). Only a record for the supervisor's loop.
final class HeldListener {
    let endpoint: IPCEndpoint
    private(set) var descriptor: Int32
    /// The socket file as bound: a later stat that differs means someone removed or replaced it
    /// (the change time too, since a file made after the unlink may get the same inode number).
    private let identity: FileIdentity

    /// Binds and listens (replacing a stale socket, refusing a live one) and gives the socket
    /// file to `identity`, so it is owned as it was when the server bound it itself.
    init(endpoint: IPCEndpoint, identity: ProcessLauncher.Identity?) throws(IPCError) {
        let fd = try endpoint.makeListeningSocket()
        var status = stat()
        guard lstat(endpoint.socketPath, &status) == 0,
              identity.map({ lchown(endpoint.socketPath, $0.uid, $0.gid) == 0 }) ?? true else {
            let code = errno
            Glibc.close(fd)
            unlink(endpoint.socketPath)
            throw .systemCall("lstat/lchown(\(endpoint.socketPath))", Errno(rawValue: code))
        }
        self.endpoint = endpoint
        descriptor = fd
        self.identity = FileIdentity(status)
    }

    /// The socket file is still the one bound (not removed or replaced by another).
    var isInPlace: Bool {
        var status = stat()
        return lstat(endpoint.socketPath, &status) == 0 && FileIdentity(status) == identity
    }

    /// Closes the socket (clients waiting in its backlog get ECONNRESET) and removes its file,
    /// if it is still ours, and the pid file.
    func close() {
        if isInPlace { unlink(endpoint.socketPath) }
        unlink(endpoint.pidPath)
        Glibc.close(descriptor)
        descriptor = -1
    }
}

/// What tells one file from another that took its place: device, inode, type and change time.
struct FileIdentity: Equatable {
    let device: UInt64, inode: UInt64, mode: UInt32, changed: Int64, changedNanoseconds: Int64

    init(_ status: stat) {
        device = UInt64(status.st_dev)
        inode = UInt64(status.st_ino)
        mode = UInt32(status.st_mode)
        changed = Int64(status.st_ctim.tv_sec)
        changedNanoseconds = Int64(status.st_ctim.tv_nsec)
    }
}

/// Socket activation: the supervisor binds and listens on each server's endpoint once and passes
/// the socket to every instance, spawned or activated standby (`SupervisorChannel`'s
/// `LIMITLESS_LISTEN_FD`). A client that connects while the server is down or restarting waits
/// in the backlog and is served by the next instance; one connected to an instance that dies
/// sees its connection closed, as before (ReconnectingIPCClient reconnects).
///
/// The socket is created as the supervisor and then given to the server's user, with the mode
/// the supervisor's umask gives (as the server's own bind did); the runtime directory is the
/// supervisor's, so a server needs no write access to it. The supervisor writes NAME.pid for
/// each instance (the pid it started, not one a server claims) and removes it at the exit.
/// Before each start it checks that the path still names its socket and listens anew when a
/// server (or anyone) removed or replaced it. Stopping the server (serverctl stop, failure,
/// shutdown) closes the socket and removes both files; a restart keeps them.
extension Supervisor {
    /// The listening descriptor to pass to the next instance of `server`; nil: none (not held
    /// for it, or it cannot be created: the server then binds as a standalone one does).
    func listenerForLaunch(_ server: ServerProcess, identity: ProcessLauncher.Identity?) -> Int32? {
        guard options.holdsListeningSockets, server.configuration.listens else { return nil }
        if let held = server.listener {
            if held.isInPlace { return held.descriptor }
            note(server, .warning, "\(held.endpoint.socketPath) was removed or replaced; listening on a new socket "
                + "(clients waiting on the old one are lost)")
            held.close()
            server.listener = nil
        }
        do throws(IPCError) {
            let endpoint = try IPCEndpoint(name: server.name, directory: options.runtimeDirectory)
            let held = try HeldListener(endpoint: endpoint, identity: identity)
            server.listener = held
            return held.descriptor
        } catch {
            note(server, .warning, "cannot hold its listening socket (\(error)); the server binds its own")
            return nil
        }
    }

    /// NAME.pid for the instance just started (spawned or activated).
    func recordListenerPID(_ server: ServerProcess) {
        guard let held = server.listener else { return }
        do throws(IPCError) {
            try held.endpoint.writePIDFile(pid: server.pid)
        } catch {
            note(server, .warning, "cannot write \(held.endpoint.pidPath): \(error)")
        }
    }

    /// The instance exited: its pid no longer names the server.
    func forgetListenerPID(_ server: ServerProcess) {
        guard let held = server.listener else { return }
        unlink(held.endpoint.pidPath)
    }

    /// Closes the listening sockets of servers that are neither running nor wanted (stopped,
    /// failed, not restarted, shut down).
    func releaseListeners() {
        for server in servers where !server.wanted && !server.isAlive {
            guard let held = server.listener else { continue }
            held.close()
            server.listener = nil
        }
    }
}
