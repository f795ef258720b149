import Platform
#if canImport(Glibc)
import Glibc
#endif

/// The server's table of registered client buffers (`MSG_BLOCK_REGISTER_BUFFER`): which client
/// (connection id, pid) registered which of its shared regions (IPC share handle), where the
/// server has that region mapped, and the DMA mapping the device uses for it.
///
/// Fixed capacity, preallocated: looking a request's data up (`find`) scans the live entries and
/// allocates nothing. A registration ends by `MSG_BLOCK_UNREGISTER_BUFFER`, or when the client
/// has vanished (`stale`), or at server shutdown; each end unmaps the device mapping.
public struct RegisteredBuffers {
    public struct Entry: Equatable, Sendable {
        /// The IPC connection (unique for the server's lifetime).
        public var client: UInt64
        public var pid: Int32
        /// The client's IPC share handle the buffer lives in.
        public var handle: UInt32
        /// The server's mapping of the client's pages, and their device address.
        public var mapping: DMABuffer
    }

    public static let defaultCapacity = 256
    private var entries: [Entry?]
    /// Entries at index >= this are all nil (scans stop there).
    private var highWater = 0
    public private(set) var count = 0

    public init(capacity: Int = RegisteredBuffers.defaultCapacity) {
        entries = Array(repeating: nil, count: capacity)
    }

    public var capacity: Int { entries.count }
    public var isFull: Bool { count == entries.count }
    public var all: [Entry] { entries[..<highWater].compactMap { $0 } }

    public func entry(client: UInt64, handle: UInt32) -> Entry? {
        for index in 0..<highWater {
            if let entry = entries[index], entry.client == client, entry.handle == handle { return entry }
        }
        return nil
    }

    /// Adds an entry; false when full.
    public mutating func add(_ entry: Entry) -> Bool {
        guard let index = entries.firstIndex(where: { $0 == nil }) else { return false }
        entries[index] = entry
        highWater = max(highWater, index + 1)
        count += 1
        return true
    }

    @discardableResult
    public mutating func remove(client: UInt64, handle: UInt32) -> Entry? {
        for index in 0..<highWater {
            if let entry = entries[index], entry.client == client, entry.handle == handle {
                entries[index] = nil
                count -= 1
                while highWater > 0, entries[highWater - 1] == nil { highWater -= 1 }
                return entry
            }
        }
        return nil
    }

    /// The device range for `bytes` at server address `pointer`, if one of `client`'s registered
    /// buffers covers all of it (the hot path: no allocation).
    @inline(__always)
    public func find(client: UInt64, pointer: UnsafeRawPointer, bytes: Int) -> DMABuffer? {
        let address = UInt(bitPattern: pointer)
        for index in 0..<highWater {
            guard let entry = entries[index], entry.client == client else { continue }
            let base = UInt(bitPattern: entry.mapping.address)
            if address >= base, bytes <= entry.mapping.size, address - base <= UInt(entry.mapping.size - bytes) {
                let offset = Int(address - base)
                return DMABuffer(address: entry.mapping.address + offset,
                                 deviceAddress: entry.mapping.deviceAddress + UInt64(offset), size: bytes)
            }
        }
        return nil
    }

    /// Removes and returns the entries whose client is gone: `isGone` decides per entry
    /// (`RegisteredBuffers.clientVanished` in the server).
    public mutating func removeAll(where isGone: (Entry) -> Bool) -> [Entry] {
        var removed: [Entry] = []
        for index in 0..<highWater {
            if let entry = entries[index], isGone(entry) {
                entries[index] = nil
                count -= 1
                removed.append(entry)
            }
        }
        while highWater > 0, entries[highWater - 1] == nil { highWater -= 1 }
        return removed
    }

    /// Whether an entry's client has vanished: its process is gone (kill(pid, 0) says ESRCH), or
    /// the server's mapping of its region is gone (the IPC server unmaps a client's regions when
    /// it disconnects or releases the handle; msync then fails with ENOMEM).
    public static func clientVanished(_ entry: Entry) -> Bool {
        if entry.pid > 0, kill(entry.pid, 0) != 0, errno == ESRCH { return true }
        return msync(entry.mapping.address, entry.mapping.size, MS_ASYNC) != 0 && errno == ENOMEM
    }
}
