import CLimitless
import Glibc
import IPC

/// Telling running servers about the servers they depend on (MSG_SUPERVISOR_DEPENDENCY_STATE):
/// a dependent is not stopped when a dependency crashes and is restarted, so it needs to know
/// when to expect failures (down), when to reconnect (up), and that the dependency is gone for
/// good (failed; the dependent is stopped right after, dependents first).
extension Supervisor {
    /// Sends `state` about `server` to every live dependent and notes it in that dependent's
    /// log. Called under the lock, from the loop.
    func notifyDependents(of server: ServerProcess, _ state: DependencyState) {
        let notice = DependencyNotice(name: server.name, state: state, instance: UInt64(server.instance))
        for dependent in servers where dependent.isAlive && dependent.configuration.dependencies.contains(server.name) {
            if send(notice.message, payload: Array(server.name.utf8), to: dependent) {
                note(dependent, state == .up ? .info : .warning, "told: \(notice)")
            } else {
                note(dependent, .warning, "could not tell it \(notice): its supervisor channel is closed or full")
            }
        }
    }

    /// One message on a server's channel, never blocking the loop (a server that does not read
    /// its channel loses the message, not the supervisor's time). False when it was not sent.
    @discardableResult
    func send(_ message: Message, payload: [UInt8] = [], descriptor: Int32 = -1, to server: ServerProcess) -> Bool {
        send(message, payload: payload, descriptor: descriptor, channel: server.channel)
    }

    /// The same on a channel descriptor (a server's, possibly before it is spawned).
    func send(_ message: Message, payload: [UInt8] = [], descriptor: Int32 = -1, channel: Int32) -> Bool {
        guard channel >= 0, payload.count <= Message.maxInlinePayload else { return false }
        return withUnsafeTemporaryAllocation(byteCount: Message.headerSize, alignment: 16) { header in
            message.encode(into: header)
            var fd = descriptor
            let sent = payload.withUnsafeBytes { body in
                CL_ipc_send(channel, header.baseAddress, Message.headerSize, body.baseAddress, body.count,
                            &fd, descriptor >= 0 ? 1 : 0, CL_MSG_NOSIGNAL | CL_MSG_DONTWAIT)
            }
            return sent >= 0
        }
    }
}
