import IPC
import Supervision
import SystemPackage

/// Everything ServerKit can refuse, each saying what happened and what to do next.
public enum ServerKitError: Error, Equatable, Sendable, CustomStringConvertible {
    /// `capability(_:)` asked for a capability this server was not granted.
    case missingCapability(String)
    /// LIMITLESS_CAPABILITIES is not `CAP_NAME=FD,...`.
    case malformedCapabilities(String)
    /// The same capability appears twice in LIMITLESS_CAPABILITIES.
    case duplicateCapability(String)
    /// A capability names a descriptor that is not open in this process.
    case capabilityDescriptorNotOpen(name: String, fd: Int32)
    /// A capability names one of the descriptors the contract reserves (0...4).
    case capabilityReservedDescriptor(name: String, fd: Int32)
    /// A LIMITLESS_* variable has a value that is not what it should be.
    case malformedVariable(name: String, value: String, expected: String)
    /// A supervisor-only variable is set without LIMITLESS_SERVER_NAME.
    case variableWithoutServerName(String)
    /// LIMITLESS_SERVER_NAME is set but descriptor 3 is not open.
    case supervisorChannelMissing
    /// Descriptor 3 is open but is not a SOCK_SEQPACKET socket.
    case supervisorChannelNotSeqpacket
    /// LIMITLESS_SERVER_NAME is set but descriptor 4 is not open or too small to be a store.
    case checkpointDescriptorMissing(String)
    /// The supervisor did not answer MSG_SUPERVISOR_REGISTER in time.
    case registrationTimedOut(Duration)
    /// The supervisor answered MSG_SUPERVISOR_REGISTER with an error status.
    case registrationRefused(IPCStatus)
    /// The supervisor's end of the channel is closed.
    case supervisorGone
    /// A system call on the supervisor channel failed.
    case channel(String, Errno)
    case checkpoint(CheckpointError)
    /// A step of `dropPrivileges` failed.
    case privilegeDrop(String, Errno)
    /// The seccomp filter cannot be built here.
    case seccompUnavailable(String)
    /// The seccomp filter refused an ioctl (EPERM): none of the server's capabilities allows
    /// that request; `capabilities` are the ones that would.
    case ioctlRefused(request: String, capabilities: [String])
    /// An ioctl failed for another reason (the kernel's answer).
    case ioctlFailed(String, Errno)
    /// A standby instance's activation was unusable (`StandbyActivation`).
    case standbyActivation(String)

    public var description: String {
        switch self {
        case .missingCapability(let name):
            return "missing capability \(name): grant it in servers.conf (capabilities \(name))"
        case .malformedCapabilities(let value):
            return "\(SupervisorChannel.capabilitiesVariable)=\"\(value)\" is malformed: expected CAP_NAME=FD,CAP_NAME=FD "
                + "(FD a descriptor number or -1); the supervisor sets it, so start the server through limitless-supervisor"
        case .duplicateCapability(let name):
            return "\(SupervisorChannel.capabilitiesVariable) names \(name) twice; each capability is granted once"
        case .capabilityDescriptorNotOpen(let name, let fd):
            return "capability \(name) names descriptor \(fd), which is not open in this process; the supervisor must pass "
                + "it at exec (or use \(name)=-1 for a grant without a descriptor)"
        case .capabilityReservedDescriptor(let name, let fd):
            return "capability \(name) names descriptor \(fd), which is reserved (0-2 stdio, 3 supervisor channel, "
                + "4 checkpoint); capability descriptors start at \(SupervisorChannel.firstCapabilityFD)"
        case .malformedVariable(let name, let value, let expected):
            return "\(name)=\"\(value)\" is malformed: expected \(expected)"
        case .variableWithoutServerName(let name):
            return "\(name) is set but \(SupervisorChannel.serverNameVariable) is not; either the supervisor started this "
                + "server (then it sets both) or unset \(name) to run standalone"
        case .supervisorChannelMissing:
            return "\(SupervisorChannel.serverNameVariable) is set but descriptor \(SupervisorChannel.supervisorFD) (the "
                + "supervisor channel) is not open; start the server through limitless-supervisor, or unset "
                + "\(SupervisorChannel.serverNameVariable) to run it standalone"
        case .supervisorChannelNotSeqpacket:
            return "descriptor \(SupervisorChannel.supervisorFD) is open but is not a SOCK_SEQPACKET socket, so it is not a "
                + "supervisor channel; unset \(SupervisorChannel.serverNameVariable) to run standalone"
        case .checkpointDescriptorMissing(let why):
            return "descriptor \(SupervisorChannel.checkpointFD) (the checkpoint memfd) is unusable: \(why); the supervisor "
                + "passes it at exec"
        case .registrationTimedOut(let timeout):
            return "the supervisor did not answer MSG_SUPERVISOR_REGISTER within \(timeout); is it alive and reading the channel?"
        case .registrationRefused(let status):
            return "the supervisor refused registration with status \(status); see the supervisor's log"
        case .supervisorGone:
            return "the supervisor closed its end of the channel; the server should stop"
        case .channel(let call, let errno):
            return "\(call) on the supervisor channel failed: \(errno) (errno \(errno.rawValue))"
        case .checkpoint(let error):
            return "checkpoint: \(error)"
        case .privilegeDrop(let step, let errno):
            return "dropping privileges failed at \(step): \(errno) (errno \(errno.rawValue))"
        case .seccompUnavailable(let why):
            return "cannot install a seccomp filter: \(why)"
        case .ioctlRefused(let request, let capabilities):
            let list = capabilities.joined(separator: " or ")
            return "\(request) refused by the seccomp filter (EPERM): this server is not granted \(list); "
                + "add it to the server's capabilities in servers.conf (or `serverctl grant NAME \(capabilities.first ?? "")`)"
        case .ioctlFailed(let request, let errno):
            return "\(request) failed: \(errno) (errno \(errno.rawValue))"
        case .standbyActivation(let why):
            return "standby activation failed: \(why); this instance exits and the supervisor restarts the server"
        }
    }
}
