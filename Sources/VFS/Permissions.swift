import IPC
import SystemPackage
import VFSCore

/// Who is asking: the kernel-verified pid, uid and gid of the client (SO_PEERCRED, stamped into
/// every message's header by the IPC layer). Never taken from a request's parameters.
public typealias Credentials = PeerCredentials

extension PeerCredentials {
    public static let root = PeerCredentials(pid: 0, uid: 0, gid: 0)
    public var isRoot: Bool { uid == 0 }
}

/// The access an operation needs, as the rwx bits of one permission class.
public struct Access: OptionSet, Sendable {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let read = Access(rawValue: 4)
    public static let write = Access(rawValue: 2)
    public static let execute = Access(rawValue: 1)
}

/// POSIX discretionary access control, as Linux's generic_permission (fs/namei.c) applies it.
public enum Permissions {
    public static let setUID: UInt32 = 0o4000
    public static let setGID: UInt32 = 0o2000
    public static let sticky: UInt32 = 0o1000

    /// EACCES unless `credentials` may access the inode `attributes` describe as `access`.
    /// One class decides: owner if the uid matches, else group if the gid matches, else other
    /// (an owner denied by the owner bits is denied even if "other" would allow). Root passes
    /// read and write always, and execute on directories or when any execute bit is set.
    public static func check(_ attributes: FileAttributes, _ access: Access, _ credentials: Credentials) throws(FSError) {
        if credentials.isRoot {
            if !access.contains(.execute) || attributes.type == .directory || attributes.permissions & 0o111 != 0 { return }
            throw FSError(.permissionDenied, "no execute bit on inode \(attributes.inode)")
        }
        let bits: UInt32
        if attributes.uid == credentials.uid {
            bits = (attributes.permissions >> 6) & 7
        } else if attributes.gid == credentials.gid {
            bits = (attributes.permissions >> 3) & 7
        } else {
            bits = attributes.permissions & 7
        }
        guard bits & access.rawValue == access.rawValue else {
            throw FSError(.permissionDenied, "\(credentials) lacks \(access.rawValue) on inode \(attributes.inode) (mode \(String(attributes.permissions, radix: 8)))")
        }
    }

    /// The sticky-bit rule for removing or renaming an entry of `directory` (unlink, rmdir,
    /// rename): in a sticky directory only the entry's owner, the directory's owner or root may.
    /// Linux answers EPERM (check_sticky in fs/namei.c).
    public static func checkSticky(directory: FileAttributes, entry: FileAttributes, _ credentials: Credentials) throws(FSError) {
        guard directory.permissions & sticky != 0, !credentials.isRoot,
              entry.uid != credentials.uid, directory.uid != credentials.uid else { return }
        throw FSError(.notPermitted, "sticky directory \(directory.inode): \(credentials) owns neither it nor the entry")
    }

    /// chmod(2): only the owner or root (EPERM). A non-root caller setting setgid on a file of a
    /// group other than their own silently loses that bit, as on Linux.
    public static func checkedMode(_ mode: UInt32, for attributes: FileAttributes, _ credentials: Credentials) throws(FSError) -> UInt32 {
        guard credentials.isRoot || attributes.uid == credentials.uid else {
            throw FSError(.notPermitted, "chmod of inode \(attributes.inode) by \(credentials), owner \(attributes.uid)")
        }
        var mode = mode & 0o7777
        if !credentials.isRoot && attributes.type != .directory && attributes.gid != credentials.gid { mode &= ~setGID }
        return mode
    }

    /// chown(2): root may change anything; the owner may only change the group to their own
    /// gid and leave the uid as it is (Linux without CAP_CHOWN). Otherwise EPERM.
    public static func checkChown(uid: UInt32?, gid: UInt32?, for attributes: FileAttributes, _ credentials: Credentials) throws(FSError) {
        if credentials.isRoot { return }
        let uidChange = uid.map { $0 != attributes.uid } ?? false
        let gidChange = gid.map { $0 != attributes.gid } ?? false
        guard attributes.uid == credentials.uid, !uidChange, !gidChange || gid == credentials.gid else {
            throw FSError(.notPermitted, "chown of inode \(attributes.inode) by \(credentials)")
        }
    }
}

/// open(2) flags with Linux's numeric values (asm-generic/fcntl.h). Bits not listed are ignored,
/// as Linux ignores them (O_CLOEXEC, O_LARGEFILE, O_NONBLOCK mean nothing to this server).
public struct OpenFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let readOnly: OpenFlags = []
    public static let writeOnly = OpenFlags(rawValue: 0o1)
    public static let readWrite = OpenFlags(rawValue: 0o2)
    public static let create = OpenFlags(rawValue: 0o100)
    public static let exclusive = OpenFlags(rawValue: 0o200)
    public static let truncate = OpenFlags(rawValue: 0o1000)
    public static let append = OpenFlags(rawValue: 0o2000)
    public static let directory = OpenFlags(rawValue: 0o200000)
    public static let noFollow = OpenFlags(rawValue: 0o400000)

    public static let accessModeMask: UInt32 = 0o3
    public var accessMode: UInt32 { rawValue & Self.accessModeMask }
    /// O_RDONLY or O_RDWR.
    public var readable: Bool { accessMode == 0 || accessMode == 2 }
    /// O_WRONLY or O_RDWR.
    public var writable: Bool { accessMode == 1 || accessMode == 2 }
}
