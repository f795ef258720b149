import Atomics
import CLimitless
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A listening socket handed down by the supervisor (socket activation, see `SupervisorChannel`'s
/// `listenVariable`). The supervisor binds and listens on a server's `RUNTIME_DIR/NAME.sock` once
/// and passes the same socket to every instance, so a client that connects while the server is
/// down or restarting waits in the kernel's backlog for the next instance instead of getting
/// ECONNREFUSED or ENOENT, and an instance does not bind at all.
///
/// ServerKit offers the inherited descriptor here at start-up; `IPCServer` takes it for the one
/// endpoint it is bound to (the kernel's `getsockname`, not a name a variable claims, decides),
/// and otherwise binds its socket itself as a standalone server does.
public enum InheritedListener {
    /// The descriptor offered and not taken yet; -1: none.
    private static let offered = ManagedAtomic<Int32>(-1)

    /// Offers `fd` (a listening socket this process inherited) to the first `IPCServer` whose
    /// endpoint it is bound to. Any earlier offer not taken is replaced (and stays open).
    public static func offer(_ fd: Int32) {
        offered.store(fd, ordering: .releasing)
    }

    /// The descriptor offered and not taken yet, if any.
    public static var pending: Int32? {
        let fd = offered.load(ordering: .acquiring)
        return fd >= 0 ? fd : nil
    }

    /// Takes the offered socket if it is a listening Unix SOCK_SEQPACKET socket bound to
    /// `endpoint.socketPath`; nil leaves it offered (the caller binds its own).
    static func take(for endpoint: IPCEndpoint) -> Int32? {
        let fd = offered.load(ordering: .acquiring)
        guard fd >= 0, isListening(fd, at: endpoint.socketPath),
              offered.compareExchange(expected: fd, desired: -1, ordering: .acquiringAndReleasing).exchanged else { return nil }
        // O_NONBLOCK is shared with the supervisor's copy (one open file description); set here
        // too so that accepting never blocks whoever created it.
        let flags = CL_fcntl_int(fd, F_GETFL, 0)
        if flags >= 0 { _ = CL_fcntl_int(fd, F_SETFL, flags | O_NONBLOCK) }
        _ = CL_fcntl_int(fd, F_SETFD, FD_CLOEXEC)
        return fd
    }

    /// Whether `fd` is a listening AF_UNIX SOCK_SEQPACKET socket bound to `path`.
    public static func isListening(_ fd: Int32, at path: String) -> Bool {
        func option(_ name: Int32) -> Int32? {
            var value: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            return getsockopt(fd, SOL_SOCKET, name, &value, &length) == 0 ? value : nil
        }
        guard option(SO_ACCEPTCONN) == 1, option(SO_TYPE) == CL_SOCK_SEQPACKET, option(SO_DOMAIN) == AF_UNIX else { return false }
        var address = sockaddr_un()
        var length = socklen_t(MemoryLayout<sockaddr_un>.size)
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else { return false }
        let bound = withUnsafeBytes(of: address.sun_path) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        return bound == path
    }
}
