import IPC
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A CAP_BLOCK_* token the supervisor passed to this server as a block provider
/// (MSG_SUPERVISOR_BLOCK_TOKEN): `descriptor` is this server's copy of the token another server
/// (`holder`) holds as its capability; `rights` is the capability bit set (1 CAP_BLOCK_READ,
/// 2 CAP_BLOCK_WRITE; 0: the grant was revoked, forget the token).
public struct BlockTokenNotice: Sendable, CustomStringConvertible {
    public var descriptor: Int32
    public var rights: UInt64
    public var holder: String

    public var description: String {
        rights == 0 ? "block token of \(holder) withdrawn" : "block token of \(holder) (rights \(rights))"
    }
}

/// The handler a block provider registered for tokens (one: the table that checks them).
final class BlockTokenHandler: Sendable {
    private let handler = Mutex<(@Sendable (BlockTokenNotice) -> Void)?>(nil)

    func set(_ new: @escaping @Sendable (BlockTokenNotice) -> Void) {
        handler.withLock { $0 = new }
    }

    /// Hands the notice over, then closes the descriptor (a handler keeps its own dup). Without
    /// a handler the token is only closed: a server that serves no block protocol has no use for it.
    func deliver(_ notice: BlockTokenNotice) -> Bool {
        let current = handler.withLock { $0 }
        current?(notice)
        if notice.descriptor >= 0 { _ = close(notice.descriptor) }
        return current != nil
    }
}

extension ServerRuntime {
    /// Calls `handler` for every MSG_SUPERVISOR_BLOCK_TOKEN (on the thread that runs `register`,
    /// `pollSupervisor` or `runUntilStopped`). The notice's descriptor is closed after the call:
    /// dup it to keep it. The supervisor queues the tokens of every client before the server
    /// starts, so a `pollSupervisor()` before listening sees them all.
    public func onBlockToken(_ handler: @escaping @Sendable (BlockTokenNotice) -> Void) {
        blockTokenHandler.set(handler)
    }

    /// Handles every message already waiting on the supervisor channel (a fresh instance finds
    /// its providers' block tokens queued there before it was spawned) and, for an activated
    /// standby, waits up to `timeout` for the block tokens its activation announced: the
    /// supervisor queues them right behind the activation, and a provider that listened before
    /// they arrived would refuse a client's token until the next grant message. Call it after
    /// `onBlockToken` and before serving. A token that does not come in time is logged; the
    /// server goes on (the token then counts once it arrives).
    public func receiveQueuedBlockTokens(timeout: Duration = .seconds(2)) throws(ServerKitError) {
        guard let link = supervisorLink else { return }
        try pollSupervisor()
        let expected = StandbyActivation.announcedBlockTokens
        let deadline = monotonicNanoseconds() + nanoseconds(timeout)
        while blockTokensReceived.load(ordering: .relaxed) < expected {
            let left = deadline - monotonicNanoseconds()
            guard left > 0 else {
                log(.warning, "the activation announced \(expected) block tokens; \(blockTokensReceived.load(ordering: .relaxed)) "
                    + "came within \(timeout): serving without the rest until they arrive")
                return
            }
            if let received = try link.receive(timeout: .nanoseconds(left)) { handle(received) }
        }
    }

    func applyBlockToken(_ message: Message, payload: [UInt8], descriptor: Int32) {
        blockTokensReceived.add(1, ordering: .relaxed)
        var holder = ""
        if case .inline(let offset, let count) = message.data, offset + count <= payload.count {
            holder = String(decoding: payload[offset..<(offset + count)], as: UTF8.self)
        }
        let notice = BlockTokenNotice(descriptor: descriptor, rights: message.param1, holder: holder)
        guard descriptor >= 0 else {
            log(.warning, "ignored a block token for \(holder) without a descriptor")
            return
        }
        if !blockTokenHandler.deliver(notice) { log(.debug, "ignored \(notice): this server serves no block protocol") }
    }
}
