import CLimitless

/// Who is on the other end of a Unix socket, as the kernel recorded it when the peer called
/// connect() (SO_PEERCRED, socket(7)). The server reads this once, at accept, and stamps it into
/// every message from that connection: a client cannot claim another pid, uid or gid.
public struct PeerCredentials: Equatable, Hashable, Sendable, CustomStringConvertible {
    public var pid: Int32
    public var uid: UInt32
    public var gid: UInt32

    public init(pid: Int32, uid: UInt32, gid: UInt32) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
    }

    /// The credentials of the peer of a connected Unix socket.
    public static func of(socket fd: Int32) throws(IPCError) -> PeerCredentials {
        var pid: Int32 = 0, uid: UInt32 = 0, gid: UInt32 = 0
        _ = try sys("getsockopt(SO_PEERCRED)") { CL_peer_credentials(fd, &pid, &uid, &gid) }
        return PeerCredentials(pid: pid, uid: uid, gid: gid)
    }

    public var description: String { "pid \(pid) uid \(uid) gid \(gid)" }
}
