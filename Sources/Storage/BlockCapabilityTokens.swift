import IPC
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// What a block client may do: CAP_BLOCK_READ (open, geometry, read) and CAP_BLOCK_WRITE
/// (write, flush, trim). The raw value is the wire form (MSG_SUPERVISOR_BLOCK_TOKEN's param1).
public struct BlockRights: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    public static let read = BlockRights(rawValue: 1)
    public static let write = BlockRights(rawValue: 2)

    /// The capability a request of this kind needs.
    public static func needed(write: Bool) -> BlockRights { write ? .write : .read }

    /// CAP_BLOCK_READ or CAP_BLOCK_WRITE by name.
    public init?(capability name: String) {
        switch name {
        case "CAP_BLOCK_READ": self = .read
        case "CAP_BLOCK_WRITE": self = .write
        default: return nil
        }
    }

    public var description: String {
        var names: [String] = []
        if contains(.read) { names.append("CAP_BLOCK_READ") }
        if contains(.write) { names.append("CAP_BLOCK_WRITE") }
        return names.isEmpty ? "no block capability" : names.joined(separator: "+")
    }
}

/// The block provider's table of capability tokens: which descriptor stands for which rights.
///
/// The supervisor makes one token (a sealed memfd) per CAP_BLOCK_READ / CAP_BLOCK_WRITE grant,
/// passes it to the holder as that capability, and a dup of it to this server
/// (MSG_SUPERVISOR_BLOCK_TOKEN). A client proves a right by sending its token back
/// (MSG_BLOCK_PRESENT_CAPABILITY, SCM_RIGHTS): the file it refers to is identified by
/// (st_dev, st_ino), which nobody can forge, since a process can only send a file description it
/// holds. The table keeps its own descriptor of each token, so the inode cannot be freed and its
/// number reused while the entry exists; each entry also carries a serial number, so a connection
/// that presented a token revoked since never matches a later token that happens to get the
/// same inode number.
///
/// Updated from the thread that reads the supervisor's channel, read from the serving thread:
/// `generation` changes with every update, so a connection re-reads its rights only then (no
/// lock per request).
public final class BlockCapabilityTokens: Sendable {
    public struct Identity: Hashable, Sendable {
        public let device: UInt64
        public let inode: UInt64
    }

    /// One known token.
    public struct Entry: Sendable {
        public let holder: String
        public let rights: BlockRights
        let serial: UInt64
        let descriptor: Int32
    }

    /// What a connection presented: the token's identity and the entry's serial at the time.
    public struct Presented: Hashable, Sendable {
        let identity: Identity
        let serial: UInt64
    }

    private struct State {
        var entries: [Identity: Entry] = [:]
        var nextSerial: UInt64 = 1
    }

    private let state = Mutex(State())
    private let changes = Atomic<UInt64>(0)

    public init() {}

    deinit {
        state.withLock { for entry in $0.entries.values { _ = close(entry.descriptor) } }
    }

    /// Changes whenever a token is added or removed.
    public var generation: UInt64 { changes.load(ordering: .acquiring) }

    /// Tokens known now.
    public var count: Int { state.withLock { $0.entries.count } }

    /// The file `descriptor` refers to, or nil when fstat fails (not a descriptor).
    public static func identity(of descriptor: Int32) -> Identity? {
        var info = stat()
        guard descriptor >= 0, fstat(descriptor, &info) == 0 else { return nil }
        return Identity(device: UInt64(info.st_dev), inode: UInt64(info.st_ino))
    }

    /// Records that the token `descriptor` stands for `rights` of `holder` (a dup is kept; the
    /// caller still owns `descriptor`). Empty `rights` forget the token. Returns false when the
    /// descriptor cannot be identified or kept.
    @discardableResult
    public func update(descriptor: Int32, rights: BlockRights, holder: String) -> Bool {
        guard let identity = Self.identity(of: descriptor) else { return false }
        var kept: Int32 = -1
        if !rights.isEmpty {
            kept = fcntl(descriptor, F_DUPFD_CLOEXEC, 0)
            guard kept >= 0 else { return false }
        }
        let replaced: Int32? = state.withLock { state in
            let old = state.entries.removeValue(forKey: identity)
            if kept >= 0 {
                state.entries[identity] = Entry(holder: holder, rights: rights, serial: state.nextSerial, descriptor: kept)
                state.nextSerial += 1
            }
            return old?.descriptor
        }
        if let replaced { _ = close(replaced) }
        changes.wrappingAdd(1, ordering: .releasing)
        return true
    }

    /// The entry for a presented descriptor, and what to remember for the connection.
    public func lookup(descriptor: Int32) -> (entry: Entry, presented: Presented)? {
        guard let identity = Self.identity(of: descriptor) else { return nil }
        return state.withLock { state in
            state.entries[identity].map { ($0, Presented(identity: identity, serial: $0.serial)) }
        }
    }

    /// The rights the presented tokens stand for now (revoked ones count for nothing).
    public func rights(of presented: [Presented]) -> BlockRights {
        state.withLock { state in
            var rights: BlockRights = []
            for token in presented {
                if let entry = state.entries[token.identity], entry.serial == token.serial { rights.formUnion(entry.rights) }
            }
            return rights
        }
    }
}

/// The rights each connection has proved by presenting tokens (`BlockCapabilityTokens`). Used
/// only on the serving thread; a connection that presented nothing has no entry (and is judged
/// by its uid instead).
struct PresentedCapabilities {
    private struct Connection {
        var tokens: [BlockCapabilityTokens.Presented]
        var rights: BlockRights
        var generation: UInt64
    }

    private var connections: [UInt64: Connection] = [:]

    var isEmpty: Bool { connections.isEmpty }
    var count: Int { connections.count }

    /// Adds a presented token to `client`'s set; returns the rights the connection has now.
    mutating func add(_ presented: BlockCapabilityTokens.Presented, client: UInt64, table: BlockCapabilityTokens) -> BlockRights {
        var connection = connections[client] ?? Connection(tokens: [], rights: [], generation: 0)
        if !connection.tokens.contains(presented) { connection.tokens.append(presented) }
        connection.generation = table.generation
        connection.rights = table.rights(of: connection.tokens)
        connections[client] = connection
        return connection.rights
    }

    /// The rights of `client` (nil: it presented nothing), re-read from the table only when the
    /// table changed since (a revoke takes effect on the next request).
    @inline(__always)
    mutating func rights(client: UInt64, table: BlockCapabilityTokens) -> BlockRights? {
        guard !connections.isEmpty, var connection = connections[client] else { return nil }
        let generation = table.generation
        if connection.generation != generation {
            connection.rights = table.rights(of: connection.tokens)
            connection.generation = generation
            connections[client] = connection
        }
        return connection.rights
    }

    mutating func forget(client: UInt64) {
        connections.removeValue(forKey: client)
    }

    /// The tokens `client` presented (nil: none), for a ring thread that checks its requests.
    func tokens(client: UInt64) -> [BlockCapabilityTokens.Presented]? {
        connections[client]?.tokens
    }

    /// Takes `client`'s presented tokens as the serving thread has them (a ring handed to
    /// another thread is checked with the same rights, revocations included).
    mutating func replace(client: UInt64, tokens: [BlockCapabilityTokens.Presented]?, table: BlockCapabilityTokens) {
        guard let tokens else { connections.removeValue(forKey: client); return }
        connections[client] = Connection(tokens: tokens, rights: table.rights(of: tokens), generation: table.generation)
    }
}
