import CLimitless
import Glibc
import IPC

/// CAP_BLOCK_READ and CAP_BLOCK_WRITE as descriptors. The supervisor makes one token per grant
/// (a memfd of size 0, sealed: it carries no data; its inode is its identity, unique while open)
/// and passes it to the holder as that capability's descriptor. Each block provider the holder
/// uses gets a dup of the token with MSG_SUPERVISOR_BLOCK_TOKEN (param1 the right: 1 read,
/// 2 write; inline the holder's name), so it can recognise the token when the holder presents
/// it (MSG_BLOCK_PRESENT_CAPABILITY). A provider cannot be told "uid X may write": only a
/// descriptor proves a grant, and only the supervisor hands them out.
///
/// Which servers are a holder's block providers: the servers it `depends` on that are granted
/// the same capability themselves (a block provider holds what it serves; servers.conf grants
/// storage_server CAP_BLOCK_READ CAP_BLOCK_WRITE, and vfs_server depends on it). A dependency
/// without the capability (a USB or power server) never sees the holder's token, so it cannot
/// present it anywhere.
///
/// When: a provider's tokens are queued on its new supervisor channel before it is spawned, so
/// they are waiting when it starts and it can read them all before it listens. A run-time grant
/// or revoke (serverctl) of a block capability is sent to the running providers at once. A
/// token lives until its grant is revoked (holder restarts keep it).
final class BlockTokenStore {
    private var tokens: [String: Int32] = [:]

    deinit {
        for fd in tokens.values { _ = close(fd) }
    }

    private static func key(_ holder: String, _ capability: Capability) -> String { holder + "/" + capability.description }

    /// The holder's token for `capability`, made on first use; nil when memfd_create fails.
    func token(holder: String, capability: Capability) -> Int32? {
        let key = Self.key(holder, capability)
        if let fd = tokens[key] { return fd }
        let fd = CL_memfd_create("limitless-token:\(key)", CL_MFD_CLOEXEC | CL_MFD_ALLOW_SEALING)
        guard fd >= 0 else { return nil }
        // F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE: nobody can store anything in it.
        _ = CL_fcntl_int(fd, CL_F_ADD_SEALS, 0x1 | 0x2 | 0x4 | 0x8)
        tokens[key] = fd
        return fd
    }

    /// Forgets the holder's token; returns it for the caller to announce and close.
    func remove(holder: String, capability: Capability) -> Int32? {
        tokens.removeValue(forKey: Self.key(holder, capability))
    }
}

extension Supervisor {
    static let blockCapabilities: [Capability] = [.blockRead, .blockWrite]

    /// The right bit a block capability stands for on the wire (`BlockRights` in Storage).
    static func blockRight(_ capability: Capability) -> UInt64 { capability == .blockRead ? 1 : 2 }

    /// The token descriptors of `config`'s block grants, by capability name (passed from
    /// descriptor 5 up like any capability). Under the lock.
    func blockTokenDescriptors(for config: ServerConfiguration) -> [String: Int32] {
        var result: [String: Int32] = [:]
        for capability in Self.blockCapabilities where config.capabilities.contains(capability) {
            if let fd = blockTokens.token(holder: config.name, capability: capability) { result[capability.description] = fd }
        }
        return result
    }

    /// The servers that serve `holder`'s `capability`: its dependencies granted it too.
    func blockProviders(of holder: ServerConfiguration, for capability: Capability) -> [ServerProcess] {
        holder.dependencies.compactMap { byName[$0] }.filter { $0.effectiveConfiguration.capabilities.contains(capability) }
    }

    /// The token of every grant `provider` serves: its dependents' CAP_BLOCK_* grants that it
    /// is granted too. Under the lock.
    func blockTokensServed(by provider: ServerConfiguration) -> [(fd: Int32, capability: Capability, holder: ServerProcess)] {
        var tokens: [(fd: Int32, capability: Capability, holder: ServerProcess)] = []
        for holder in servers where holder.name != provider.name {
            let config = holder.effectiveConfiguration
            guard config.dependencies.contains(provider.name) else { continue }
            for capability in Self.blockCapabilities
            where config.capabilities.contains(capability) && provider.capabilities.contains(capability) {
                if let fd = blockTokens.token(holder: holder.name, capability: capability) { tokens.append((fd, capability, holder)) }
            }
        }
        return tokens
    }

    /// Queues `tokens` (`blockTokensServed`) on `channel`, a provider's supervisor channel:
    /// before it is spawned, or right behind a standby's activation that announced their count.
    /// Under the lock.
    func queueBlockTokens(_ tokens: [(fd: Int32, capability: Capability, holder: ServerProcess)], to provider: ServerConfiguration,
                          channel: Int32) {
        for token in tokens
        where !sendBlockToken(token.fd, right: Self.blockRight(token.capability), holder: token.holder.name, channel: channel) {
            note(token.holder, .warning, "could not pass its \(token.capability) token to \(provider.name): the channel is full")
        }
    }

    /// After a run-time grant (`granted`) or revoke of block capabilities to `holder`: tells its
    /// running providers, and on a revoke closes the token. Under the lock.
    func announceBlockTokens(holder: ServerProcess, capabilities: [Capability], granted: Bool) {
        for capability in capabilities where Self.blockCapabilities.contains(capability) {
            let fd = granted ? blockTokens.token(holder: holder.name, capability: capability)
                             : blockTokens.remove(holder: holder.name, capability: capability)
            guard let fd else { continue }
            for provider in blockProviders(of: holder.effectiveConfiguration, for: capability)
            where provider.isAlive && provider.channel >= 0 {
                let sent = sendBlockToken(fd, right: granted ? Self.blockRight(capability) : 0, holder: holder.name, channel: provider.channel)
                note(provider, sent ? .info : .warning, (sent ? "told of " : "could not be told of ")
                    + "\(holder.name)'s \(capability) \(granted ? "grant" : "revoke")")
            }
            if !granted { _ = close(fd) }
        }
    }

    /// MSG_SUPERVISOR_BLOCK_TOKEN with the token (SCM_RIGHTS) on a supervisor channel.
    func sendBlockToken(_ fd: Int32, right: UInt64, holder: String, channel: Int32) -> Bool {
        var message = Message(type: .supervisorBlockToken, param1: right)
        message.setInlineData(count: UInt32(holder.utf8.count))
        return send(message, payload: Array(holder.utf8), descriptor: fd, channel: channel)
    }
}
