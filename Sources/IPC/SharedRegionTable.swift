import Synchronization

/// One connection's shared-memory handles (MSG_IPC_SHARE). The server's epoll thread adds and
/// releases them and resolves them for socket requests; the connection's ring thread
/// (`RingService`) resolves them for ring requests: a ring belongs to one connection, so it names
/// that connection's handles, and no other.
///
/// A region in use by a request is pinned: a release meanwhile (MSG_IPC_RELEASE on the socket
/// while the ring thread runs a handler on it) makes the handle unknown at once (EBADF for every
/// later request), but the mapping stays until the pinned use ends, so the handler never reads
/// unmapped memory. The slot stays taken until then, so a new share cannot be handed a handle
/// whose old mapping is still in use.
///
/// Per shared-memory request: one uncontended lock to pin and one to unpin; no allocation, no
/// reference counting.
final class SharedRegionTable: @unchecked Sendable {
    private struct Entry {
        var region: SharedRegion
        var pins = 0
        var released = false
    }

    private struct State {
        var entries: [Entry?]
        /// Handles the client holds (released ones excluded).
        var count = 0
    }

    private let state: Mutex<State>

    init(capacity: Int) {
        state = Mutex(State(entries: Array(repeating: nil, count: capacity)))
    }

    /// Handles the client holds now.
    var count: Int { state.withLock { $0.count } }

    /// Adds `region` and returns its handle (1-based), or nil when every slot is taken.
    func add(_ region: SharedRegion) -> UInt32? {
        state.withLock { state -> UInt32? in
            guard let index = state.entries.firstIndex(where: { $0 == nil }) else { return nil }
            state.entries[index] = Entry(region: region)
            state.count += 1
            return UInt32(index + 1)
        }
    }

    /// Forgets `handle` (the client's word, checked): unmapped now, or when the request using it
    /// ends. False for a handle that is not held.
    func release(handle: UInt64) -> Bool {
        let unmap = state.withLock { state -> (found: Bool, region: SharedRegion?) in
            guard handle > 0, handle <= UInt64(state.entries.count), let entry = state.entries[Int(handle) - 1],
                  !entry.released else { return (false, nil) }
            state.count -= 1
            if entry.pins > 0 {
                state.entries[Int(handle) - 1]!.released = true
                return (true, nil)
            }
            state.entries[Int(handle) - 1] = nil
            return (true, entry.region)
        }
        unmap.region?.release()
        return unmap.found
    }

    /// Runs `body` with the region `handle` names, pinned (nil: not held). Safe from any thread.
    func withRegion<Result>(_ handle: UInt32, _ body: (SharedRegion?) -> Result) -> Result {
        let index = Int(handle) &- 1
        let region = state.withLock { state -> SharedRegion? in
            guard index >= 0, index < state.entries.count, let entry = state.entries[index], !entry.released else { return nil }
            state.entries[index]!.pins += 1
            return entry.region
        }
        guard let region else { return body(nil) }
        defer {
            let unmap = state.withLock { state -> SharedRegion? in
                state.entries[index]!.pins -= 1
                guard let entry = state.entries[index], entry.released, entry.pins == 0 else { return nil }
                state.entries[index] = nil
                return entry.region
            }
            unmap?.release()
        }
        return body(region)
    }

    /// Unmaps every region (the connection is gone and its ring thread stopped: nothing is
    /// pinned). Returns how many handles the client still held.
    func releaseAll() -> Int {
        let (regions, held) = state.withLock { state -> ([SharedRegion], Int) in
            let regions = state.entries.compactMap { $0?.region }
            let held = state.count
            state.entries = Array(repeating: nil, count: state.entries.count)
            state.count = 0
            return (regions, held)
        }
        regions.forEach { $0.release() }
        return held
    }
}

extension SharedRegionTable {
    /// Runs `handler` on a request from this connection (socket or ring), with its data resolved:
    /// inline bytes (`inline` is everything after the header; the decoder checked the range),
    /// or a range of a region this connection shared, pinned for the call. Answers EBADF for a
    /// handle the connection does not hold (never shared, released, or another connection's),
    /// EINVAL for a range outside the region, EIO for a handler that claims an impossible reply.
    ///
    /// A deferred answer (`IPCReply.deferred`, socket requests only: a ring request's token is
    /// `.immediate`) passes through; the server keeps the client's regions until it completes.
    func serve(_ message: Message, inline: UnsafeRawBufferPointer, reply: UnsafeMutableRawBufferPointer,
               replyToken: IPCReplyToken = .immediate, handler: (IPCPayload) -> IPCReply) -> IPCReply {
        func run(_ data: UnsafeRawBufferPointer, writable: UnsafeMutableRawBufferPointer?) -> IPCReply {
            let answer = handler(IPCPayload(inline: inline, data: data, writableData: writable, reply: reply,
                                            replyToken: replyToken))
            if answer.isDeferred { return replyToken == .immediate ? .error(.EIO) : answer }
            return answer.payloadCount < 0 || answer.payloadCount > Message.maxInlinePayload ? .error(.EIO) : answer
        }
        switch message.data {
        case .none:
            return run(UnsafeRawBufferPointer(start: nil, count: 0), writable: nil)
        case .inline(let offset, let count):
            return run(UnsafeRawBufferPointer(rebasing: inline[offset..<(offset + count)]), writable: nil)
        case .shared(let handle, let offset, let count):
            return withRegion(handle) { region in
                guard let region else { return .error(.EBADF) }
                guard offset <= region.size, count <= region.size - offset else { return .error(.EINVAL) }
                let view = UnsafeMutableRawBufferPointer(start: region.base + offset, count: count)
                return run(UnsafeRawBufferPointer(view), writable: region.writable ? view : nil)
            }
        }
    }
}
