/// The one registry of message types, numbered in ranges of 0x100 per subsystem so a type's
/// owner is visible in its number (0x1xx VFS, 0x2xx block, ...). The seed's VFS types keep their
/// order. A type not listed here is refused by the decoder (`MessageError.unknownType`), so
/// adding a message means adding it here, with its name.
public struct MessageType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    // 0x0000: the IPC layer itself, answered by the server loop, never by a handler.
    /// Carries one memfd (SCM_RIGHTS); the reply's param1 is the handle that names it afterwards.
    public static let ipcShare = MessageType(rawValue: 0x0001)
    /// param1 = a handle to forget; its descriptor and mapping are closed.
    public static let ipcRelease = MessageType(rawValue: 0x0002)
    /// Answered with status ok; for liveness checks and latency measurements.
    public static let ipcPing = MessageType(rawValue: 0x0003)
    /// The type of an error reply to a datagram too damaged to have a type of its own.
    public static let ipcError = MessageType(rawValue: 0x0004)
    /// Asks the server for a shared-memory ring pair; the reply carries the ring's memfd.
    public static let ipcRingAttach = MessageType(rawValue: 0x0005)

    // 0x0100: VFS (the seed's MSG_VFS_*, same order).
    public static let vfsOpen = MessageType(rawValue: 0x0100)
    public static let vfsRead = MessageType(rawValue: 0x0101)
    public static let vfsWrite = MessageType(rawValue: 0x0102)
    public static let vfsClose = MessageType(rawValue: 0x0103)
    public static let vfsStat = MessageType(rawValue: 0x0104)
    public static let vfsMkdir = MessageType(rawValue: 0x0105)
    public static let vfsRmdir = MessageType(rawValue: 0x0106)
    public static let vfsUnlink = MessageType(rawValue: 0x0107)
    // What real programs need beyond the seed's eight.
    public static let vfsReadDirectory = MessageType(rawValue: 0x0108)
    public static let vfsRename = MessageType(rawValue: 0x0109)
    public static let vfsTruncate = MessageType(rawValue: 0x010A)
    public static let vfsFsync = MessageType(rawValue: 0x010B)
    public static let vfsSeek = MessageType(rawValue: 0x010C)
    public static let vfsChmod = MessageType(rawValue: 0x010D)
    public static let vfsChown = MessageType(rawValue: 0x010E)
    public static let vfsUtimes = MessageType(rawValue: 0x010F)
    public static let vfsSymlink = MessageType(rawValue: 0x0110)
    public static let vfsReadlink = MessageType(rawValue: 0x0111)
    public static let vfsLink = MessageType(rawValue: 0x0112)
    public static let vfsStatfs = MessageType(rawValue: 0x0113)
    public static let vfsFstat = MessageType(rawValue: 0x0114)
    public static let vfsMount = MessageType(rawValue: 0x0115)
    public static let vfsUnmount = MessageType(rawValue: 0x0116)

    // 0x0200: block storage (storage_server).
    public static let blockOpenNamespace = MessageType(rawValue: 0x0200)
    public static let blockGeometry = MessageType(rawValue: 0x0201)
    public static let blockRead = MessageType(rawValue: 0x0202)
    public static let blockWrite = MessageType(rawValue: 0x0203)
    public static let blockFlush = MessageType(rawValue: 0x0204)
    public static let blockTrim = MessageType(rawValue: 0x0205)
    /// Carries a sealed memfd the server maps for DMA; reply param1 names it in later requests.
    public static let blockRegisterBuffer = MessageType(rawValue: 0x0206)
    public static let blockUnregisterBuffer = MessageType(rawValue: 0x0207)
    /// Carries a capability token (SCM_RIGHTS) the supervisor gave the client as its
    /// CAP_BLOCK_READ or CAP_BLOCK_WRITE; the server grants the connection what the token stands for.
    public static let blockPresentCapability = MessageType(rawValue: 0x0208)

    // 0x0300: USB (usb_server).
    public static let usbListDevices = MessageType(rawValue: 0x0300)
    public static let usbDeviceDescriptor = MessageType(rawValue: 0x0301)
    public static let usbControlTransfer = MessageType(rawValue: 0x0302)
    public static let usbBulkTransfer = MessageType(rawValue: 0x0303)
    public static let usbInterruptTransfer = MessageType(rawValue: 0x0304)
    public static let usbResetPort = MessageType(rawValue: 0x0305)

    // 0x0400: power (power_mgmt_daemon).
    public static let powerGetState = MessageType(rawValue: 0x0400)
    public static let powerSetState = MessageType(rawValue: 0x0401)
    public static let powerGetCPUFrequency = MessageType(rawValue: 0x0402)
    public static let powerSetCPUFrequency = MessageType(rawValue: 0x0403)
    public static let powerACPIRead = MessageType(rawValue: 0x0404)

    // 0x0500: supervisor.
    public static let supervisorRegister = MessageType(rawValue: 0x0500)
    public static let supervisorHeartbeat = MessageType(rawValue: 0x0501)
    public static let supervisorLog = MessageType(rawValue: 0x0502)
    public static let supervisorCheckpointSave = MessageType(rawValue: 0x0503)
    public static let supervisorCheckpointRestore = MessageType(rawValue: 0x0504)
    public static let supervisorCapabilityGrant = MessageType(rawValue: 0x0505)
    /// serverctl to the supervisor's control socket: list, status, start, stop, restart, logs, caps.
    public static let supervisorControl = MessageType(rawValue: 0x0506)
    /// Supervisor to a server: a server it depends on went down or came back (param1 = state).
    public static let supervisorDependencyState = MessageType(rawValue: 0x0507)
    /// Supervisor to a server: a capability is withdrawn; its descriptors are to be closed.
    public static let supervisorCapabilityRevoke = MessageType(rawValue: 0x0508)
    /// Supervisor to a block provider: a client's CAP_BLOCK_* token (SCM_RIGHTS), param1 its
    /// rights (0: withdrawn), inline the holder's name.
    public static let supervisorBlockToken = MessageType(rawValue: 0x0509)
    /// A standby instance to the supervisor: started, waiting for activation (`standby yes`).
    public static let supervisorStandbyReady = MessageType(rawValue: 0x050A)
    /// Supervisor to a standby instance: take over; the checkpoint memfd and capability
    /// descriptors come with it (SCM_RIGHTS), the environment lines inline; param1 the number of
    /// MSG_SUPERVISOR_BLOCK_TOKEN messages queued right behind it.
    public static let supervisorStandbyActivate = MessageType(rawValue: 0x050B)
    /// A server to the supervisor, once: the listener of its seccomp filter (SCM_RIGHTS), for the
    /// supervisor to decide VFIO ioctls of capabilities granted at run time.
    public static let supervisorSeccompListener = MessageType(rawValue: 0x050C)

    /// The seed-style name (`MSG_VFS_OPEN`), or nil for a number not in the registry.
    public var name: String? {
        switch rawValue {
        case 0x0001: "MSG_IPC_SHARE"
        case 0x0002: "MSG_IPC_RELEASE"
        case 0x0003: "MSG_IPC_PING"
        case 0x0004: "MSG_IPC_ERROR"
        case 0x0005: "MSG_IPC_RING_ATTACH"
        case 0x0100: "MSG_VFS_OPEN"
        case 0x0101: "MSG_VFS_READ"
        case 0x0102: "MSG_VFS_WRITE"
        case 0x0103: "MSG_VFS_CLOSE"
        case 0x0104: "MSG_VFS_STAT"
        case 0x0105: "MSG_VFS_MKDIR"
        case 0x0106: "MSG_VFS_RMDIR"
        case 0x0107: "MSG_VFS_UNLINK"
        case 0x0108: "MSG_VFS_READDIR"
        case 0x0109: "MSG_VFS_RENAME"
        case 0x010A: "MSG_VFS_TRUNCATE"
        case 0x010B: "MSG_VFS_FSYNC"
        case 0x010C: "MSG_VFS_LSEEK"
        case 0x010D: "MSG_VFS_CHMOD"
        case 0x010E: "MSG_VFS_CHOWN"
        case 0x010F: "MSG_VFS_UTIMES"
        case 0x0110: "MSG_VFS_SYMLINK"
        case 0x0111: "MSG_VFS_READLINK"
        case 0x0112: "MSG_VFS_LINK"
        case 0x0113: "MSG_VFS_STATFS"
        case 0x0114: "MSG_VFS_FSTAT"
        case 0x0115: "MSG_VFS_MOUNT"
        case 0x0116: "MSG_VFS_UNMOUNT"
        case 0x0200: "MSG_BLOCK_OPEN_NAMESPACE"
        case 0x0201: "MSG_BLOCK_GEOMETRY"
        case 0x0202: "MSG_BLOCK_READ"
        case 0x0203: "MSG_BLOCK_WRITE"
        case 0x0204: "MSG_BLOCK_FLUSH"
        case 0x0205: "MSG_BLOCK_TRIM"
        case 0x0206: "MSG_BLOCK_REGISTER_BUFFER"
        case 0x0207: "MSG_BLOCK_UNREGISTER_BUFFER"
        case 0x0208: "MSG_BLOCK_PRESENT_CAPABILITY"
        case 0x0300: "MSG_USB_LIST_DEVICES"
        case 0x0301: "MSG_USB_DEVICE_DESCRIPTOR"
        case 0x0302: "MSG_USB_CONTROL_TRANSFER"
        case 0x0303: "MSG_USB_BULK_TRANSFER"
        case 0x0304: "MSG_USB_INTERRUPT_TRANSFER"
        case 0x0305: "MSG_USB_RESET_PORT"
        case 0x0400: "MSG_POWER_GET_STATE"
        case 0x0401: "MSG_POWER_SET_STATE"
        case 0x0402: "MSG_POWER_GET_CPU_FREQUENCY"
        case 0x0403: "MSG_POWER_SET_CPU_FREQUENCY"
        case 0x0404: "MSG_POWER_ACPI_READ"
        case 0x0500: "MSG_SUPERVISOR_REGISTER"
        case 0x0501: "MSG_SUPERVISOR_HEARTBEAT"
        case 0x0502: "MSG_SUPERVISOR_LOG"
        case 0x0503: "MSG_SUPERVISOR_CHECKPOINT_SAVE"
        case 0x0504: "MSG_SUPERVISOR_CHECKPOINT_RESTORE"
        case 0x0505: "MSG_SUPERVISOR_CAPABILITY_GRANT"
        case 0x0506: "MSG_SUPERVISOR_CONTROL"
        case 0x0507: "MSG_SUPERVISOR_DEPENDENCY_STATE"
        case 0x0508: "MSG_SUPERVISOR_CAPABILITY_REVOKE"
        case 0x0509: "MSG_SUPERVISOR_BLOCK_TOKEN"
        case 0x050A: "MSG_SUPERVISOR_STANDBY_READY"
        case 0x050B: "MSG_SUPERVISOR_STANDBY_ACTIVATE"
        case 0x050C: "MSG_SUPERVISOR_SECCOMP_LISTENER"
        default: nil
        }
    }

    /// Whether the number is in the registry. Asked for every message decoded, so it compares
    /// numbers instead of building `name` (a String: a reference count touched per message).
    /// `MessageTypeTests` checks it against `name` for every 16-bit number.
    public var isKnown: Bool {
        switch rawValue {
        case 0x0001...0x0005, 0x0100...0x0116, 0x0200...0x0208, 0x0300...0x0305, 0x0400...0x0404, 0x0500...0x050C: true
        default: false
        }
    }
    /// Types the server loop answers itself (0x00xx).
    public var isIPCControl: Bool { rawValue < 0x0100 }

    public var description: String {
        name ?? "unknown message type 0x" + String(rawValue, radix: 16)
    }
}

/// A reply's status: an errno value (0 is success), so C callers and Swift callers read the same
/// numbers and a server can pass a kernel error through unchanged. Values are Linux's.
public struct IPCStatus: RawRepresentable, Hashable, Sendable, Error, CustomStringConvertible {
    public var rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    public static let ok = IPCStatus(rawValue: 0)
    public static let ENOENT = IPCStatus(rawValue: 2)
    public static let EIO = IPCStatus(rawValue: 5)
    /// Unknown or forged shared-memory handle.
    public static let EBADF = IPCStatus(rawValue: 9)
    public static let EAGAIN = IPCStatus(rawValue: 11)
    public static let ENOMEM = IPCStatus(rawValue: 12)
    public static let EACCES = IPCStatus(rawValue: 13)
    /// The client's queue at the server is full: retry later; the request was not run.
    public static let EBUSY = IPCStatus(rawValue: 16)
    public static let EEXIST = IPCStatus(rawValue: 17)
    public static let ENOTDIR = IPCStatus(rawValue: 20)
    public static let EISDIR = IPCStatus(rawValue: 21)
    public static let EINVAL = IPCStatus(rawValue: 22)
    /// The connection's handle table is full.
    public static let EMFILE = IPCStatus(rawValue: 24)
    public static let ENOSPC = IPCStatus(rawValue: 28)
    public static let EROFS = IPCStatus(rawValue: 30)
    /// The message type is known but this server does not handle it, or it is not in the registry.
    public static let ENOSYS = IPCStatus(rawValue: 38)
    public static let ENOTEMPTY = IPCStatus(rawValue: 39)
    public static let EPROTO = IPCStatus(rawValue: 71)
    /// The datagram failed validation (truncated, garbage, bad flags, data outside the payload).
    public static let EBADMSG = IPCStatus(rawValue: 74)
    /// The datagram exceeds the inline limit; send the data through shared memory.
    public static let EMSGSIZE = IPCStatus(rawValue: 90)
    public static let ETIMEDOUT = IPCStatus(rawValue: 110)

    /// Operation not permitted (e.g. a hard link to a directory).
    public static let EPERM = IPCStatus(rawValue: 1)
    /// rename or link across file systems.
    public static let EXDEV = IPCStatus(rawValue: 18)
    /// File too large for the format.
    public static let EFBIG = IPCStatus(rawValue: 27)
    /// Seek on something that cannot seek.
    public static let ESPIPE = IPCStatus(rawValue: 29)
    /// Too many links.
    public static let EMLINK = IPCStatus(rawValue: 31)
    /// Result out of range: e.g. an LBA range past the end of the namespace.
    public static let ERANGE = IPCStatus(rawValue: 34)
    /// A name over 255 bytes or a path over the limit.
    public static let ENAMETOOLONG = IPCStatus(rawValue: 36)
    /// Too many symbolic links in a path.
    public static let ELOOP = IPCStatus(rawValue: 40)
    /// Operation not supported by this file system or server.
    public static let ENOTSUP = IPCStatus(rawValue: 95)
    /// The server went away and the request could not be replayed.
    public static let ENOTCONN = IPCStatus(rawValue: 107)
    /// The on-disk structure is inconsistent (corrupted image).
    public static let EUCLEAN = IPCStatus(rawValue: 117)

    public var isOK: Bool { rawValue == 0 }

    public var name: String? {
        switch rawValue {
        case 0: "OK"
        case 1: "EPERM"
        case 2: "ENOENT"
        case 5: "EIO"
        case 9: "EBADF"
        case 11: "EAGAIN"
        case 12: "ENOMEM"
        case 13: "EACCES"
        case 16: "EBUSY"
        case 17: "EEXIST"
        case 18: "EXDEV"
        case 20: "ENOTDIR"
        case 21: "EISDIR"
        case 22: "EINVAL"
        case 24: "EMFILE"
        case 27: "EFBIG"
        case 28: "ENOSPC"
        case 29: "ESPIPE"
        case 30: "EROFS"
        case 31: "EMLINK"
        case 34: "ERANGE"
        case 36: "ENAMETOOLONG"
        case 38: "ENOSYS"
        case 39: "ENOTEMPTY"
        case 40: "ELOOP"
        case 71: "EPROTO"
        case 74: "EBADMSG"
        case 90: "EMSGSIZE"
        case 95: "ENOTSUP"
        case 107: "ENOTCONN"
        case 110: "ETIMEDOUT"
        case 117: "EUCLEAN"
        default: nil
        }
    }

    public var description: String { name ?? "errno \(rawValue)" }
}
