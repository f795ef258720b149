import CLimitless
import Glibc
import IPC

/// The supervisor's side of ServerKit's `SeccompNotifications`: the running instance's seccomp
/// filter puts the VFIO ioctls its start-time capabilities do not allow to the supervisor, which
/// lets one run when the server is granted, now, a capability standing for that request
/// (`CapabilityIoctls`), and fails it with EPERM otherwise. So `serverctl grant` of a device
/// capability works without a restart, and a revoke takes effect at the next call. The decision
/// takes one loop turn; these are set-up calls (DMA mapping, interrupts), not per I/O.
extension Supervisor {
    static let seccompKind: UInt64 = 9

    /// The listener arrived (once per instance, when it dropped privileges).
    func adoptSeccompListener(_ server: ServerProcess, _ fd: Int32) {
        guard server.seccompListener < 0 else {
            note(server, .warning, "ignored a second seccomp listener from instance \(server.instance)")
            close(fd)
            return
        }
        _ = CL_fcntl_int(fd, F_SETFL, O_NONBLOCK)
        server.seccompListener = fd
        watch(fd, token: token(server, kind: Self.seccompKind))
        note(server, .info, "seccomp listener received: VFIO ioctls of capabilities granted at run time are allowed by their grant")
    }

    /// Answers one waiting call.
    func answerSeccomp(_ server: ServerProcess) {
        var id: UInt64 = 0
        var number: Int32 = 0
        var arguments = [UInt64](repeating: 0, count: 6)
        let received = arguments.withUnsafeMutableBufferPointer { CL_sk_notif_receive(server.seccompListener, &id, &number, $0.baseAddress) }
        guard received == 0 else {
            // ENOENT: the caller died meanwhile; EAGAIN/EINTR: nothing after all. Anything else:
            // the filter is gone (the instance exited).
            if errno != ENOENT && errno != EAGAIN && errno != EINTR { unwatch(&server.seccompListener) }
            return
        }
        let request = UInt(arguments[1])
        let ioctl = "ioctl".withCString { CL_sk_syscall_number($0) }
        let granting = server.effectiveConfiguration.capabilities.map(\.description).sorted().first { capability in
            CapabilityIoctls.requests(forCapability: capability).contains { $0.request == request }
        }
        let allow = Int(number) == ioctl && arguments[1] >> 32 == 0 && granting != nil
        _ = CL_sk_notif_respond(server.seccompListener, id, allow ? 1 : 0, EPERM)
        let name = CapabilityIoctls.name(of: request)
        if server.seccompDecisions.insert("\(name) \(allow)").inserted {
            note(server, allow ? .info : .warning, allow ? "allowed \(name) (granted \(granting!) at run time)"
                : "refused \(name): no capability granted now stands for it")
        }
    }
}
