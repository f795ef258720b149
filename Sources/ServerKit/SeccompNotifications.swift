import CLimitless
import IPC
import Supervision
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Run-time grants and the seccomp filter. A filter can only ever be narrowed, so one installed
/// with the start-time capabilities would refuse the VFIO ioctls of a capability granted later
/// (`serverctl grant`) until the next start. Supervised, the filter therefore puts every VFIO
/// request the start-time capabilities do not allow to the supervisor instead of refusing it
/// (SECCOMP_RET_USER_NOTIF): the call waits while the supervisor looks at the server's grants at
/// that moment and lets it run as made (SECCOMP_USER_NOTIF_FLAG_CONTINUE) or fails it with
/// EPERM. The decision rests on the request number, a register value the kernel copied before
/// asking, which the server cannot change afterwards (the race the kernel's documentation warns
/// of concerns pointer arguments). The listener descriptor goes to the supervisor at once and is
/// closed here: the server never holds it (it could answer its own calls).
///
/// Not covered: other system calls a capability adds (CAP_DMA_ALLOC's mlock, CAP_DEVICE_CREATE's
/// bind) still come with the next start.
extension ServerRuntime {
    /// Installs the filter for `base` (see the type's comment); returns the policy and program
    /// installed. Falls back to refusing (the plain filter) where the kernel has no listener
    /// (before Linux 5.7) or standalone.
    /// `prepared`: what was built ahead from the names `base` was made of
    /// (`PreparedSeccompProgram.prepared`), used as it is.
    func installSeccompFilter(_ base: SeccompPolicy, prepared: PreparedSeccompProgram.Prepared? = nil)
        throws(ServerKitError) -> (SeccompPolicy, [sock_filter]) {
        let notifying = prepared == nil ? Self.notifyingPolicy(base) : prepared!.notifying
        if let link = supervisorLink, let policy = notifying {
            let program: [sock_filter]
            if let prepared { program = prepared.program } else { program = try PreparedSeccompProgram.program(for: policy) }
            let listener = program.withUnsafeBufferPointer { CL_sk_seccomp_install_listener($0.baseAddress, UInt16($0.count)) }
            if listener >= 0 {
                defer { _ = Glibc.close(listener) }
                if !sendListener(listener, on: link) {
                    log(.warning, "could not pass the seccomp listener to the supervisor (\(Errno(rawValue: CL_errno()))): "
                        + "VFIO ioctls of capabilities granted at run time fail until the next start")
                }
                return (policy, program)
            }
            log(.notice, "this kernel has no seccomp listener (\(Errno(rawValue: CL_errno()))): capabilities granted at "
                + "run time get their ioctls at the next start")
        }
        let program: [sock_filter]
        if let prepared, prepared.notifying == nil { program = prepared.program } else { program = try PreparedSeccompProgram.program(for: base) }
        if let errno = SeccompPolicy.install(program) { throw .privilegeDrop("seccomp(SECCOMP_SET_MODE_FILTER)", errno) }
        return (base, program)
    }

    /// `base` with the VFIO ioctls it does not allow put to the supervisor (user notification);
    /// nil when it allows every ioctl (nothing to decide).
    static func notifyingPolicy(_ base: SeccompPolicy) -> SeccompPolicy? {
        let ioctlAllowed = base.allowedSyscalls.contains("ioctl")
        guard !ioctlAllowed || base.allowedIoctls != nil else { return nil }
        var policy = base
        let allowed = ioctlAllowed ? Set(base.allowedIoctls ?? []) : []
        policy.notifiedIoctls = CapabilityIoctls.all.filter { !allowed.contains($0) }
        return policy
    }

    /// Builds, ahead of need, the seccomp program `dropPrivileges(capabilities:extraSyscalls:)`
    /// will install in a supervised server granted `capabilities`, so that it is only installed
    /// then (a standby instance calls this before its activation with
    /// `StandbyActivation.expectedCapabilities`; the filter itself is installed after the
    /// activation, before the server serves). A program prepared for other capabilities than
    /// the ones granted in the end is not used: the right one is built then.
    public static func prepareSeccompFilter(capabilities: [String], extraSyscalls: [String] = []) {
        let base = SeccompPolicy(capabilities: capabilities, extra: extraSyscalls)
        PreparedSeccompProgram.prepare(capabilities: capabilities, extra: extraSyscalls, base: base, notifying: notifyingPolicy(base))
    }

    private func sendListener(_ listener: Int32, on link: SupervisorLink) -> Bool {
        let message = Message(type: .supervisorSeccompListener)
        var fd = listener
        let sent = withUnsafeTemporaryAllocation(byteCount: Message.headerSize, alignment: 16) { header in
            message.encode(into: header)
            return CL_ipc_send(link.fd, header.baseAddress, Message.headerSize, nil, 0, &fd, 1, CL_MSG_NOSIGNAL)
        }
        return sent >= 0
    }
}
