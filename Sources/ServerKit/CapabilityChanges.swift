import CLimitless
import IPC
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A capability granted or revoked while the server runs (serverctl grant / revoke).
public struct CapabilityChange: Equatable, Sendable, CustomStringConvertible {
    public var name: String
    public var granted: Bool
    /// The new descriptor of a grant (-1: granted without one, or a revoke).
    public var fd: Int32

    public var description: String {
        granted ? "capability \(name) granted" + (fd >= 0 ? " (fd \(fd))" : "") : "capability \(name) revoked"
    }
}

/// The handlers a server registered for capability changes.
final class CapabilityHandlers: Sendable {
    private let handlers = Mutex<[@Sendable (CapabilityChange) -> Void]>([])

    func add(_ handler: @escaping @Sendable (CapabilityChange) -> Void) {
        handlers.withLock { $0.append(handler) }
    }

    func deliver(_ change: CapabilityChange) {
        for handler in handlers.withLock({ $0 }) { handler(change) }
    }
}

extension ServerRuntime {
    /// Calls `handler` (on the thread that runs `register`, `pollSupervisor` or
    /// `runUntilStopped`) after each run-time grant or revoke has been applied to the capability
    /// table. On a revoke the descriptor is already closed: stop using it (a server that keeps
    /// using a revoked capability has its descriptor closed under it, and requests through it
    /// fail with EBADF).
    public func onCapabilityChange(_ handler: @escaping @Sendable (CapabilityChange) -> Void) {
        capabilityHandlers.add(handler)
    }

    /// MSG_SUPERVISOR_CAPABILITY_REVOKE: forget and close the capability, then confirm (unless
    /// `Options.acknowledgeRevocations` is off, which plays a server that ignores revokes: the
    /// supervisor restarts it without the capability after its revoke deadline).
    func applyRevoke(_ message: Message, payload: [UInt8]) {
        var name = ""
        if case .inline(let offset, let count) = message.data, offset + count <= payload.count {
            name = String(decoding: payload[offset..<(offset + count)], as: UTF8.self)
        }
        guard options.acknowledgeRevocations else {
            log(.warning, "ignored the revoke of \(name) (acknowledgeRevocations is off)")
            return
        }
        removeCapability(name)
        log(.notice, "capability \(name) revoked")
        confirm(.supervisorCapabilityRevoke, name: name, param1: 0, fd: -1, sequence: message.sequence)
        capabilityHandlers.deliver(CapabilityChange(name: name, granted: false, fd: -1))
    }

    /// Tells the supervisor a grant or revoke took effect (param2: the descriptor's number here).
    func confirm(_ type: MessageType, name: String, param1: UInt64, fd: Int32, sequence: UInt32) {
        guard let link = supervisorLink else { return }
        let bytes = Array(name.utf8)
        var reply = Message(type: type, flags: .reply, param1: param1, param2: UInt64(bitPattern: Int64(fd)), sequence: sequence)
        reply.status = .ok
        reply.setInlineData(count: UInt32(bytes.count))
        _ = bytes.withUnsafeBytes { payload in try? link.send(reply, payload: payload, timeout: .seconds(1)) }
    }
}
