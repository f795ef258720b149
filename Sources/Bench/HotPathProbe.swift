import IPC
import Platform
import Storage
#if canImport(Glibc)
import Glibc
#endif

/// The hot paths' allocation and reference-count probe (`limitless-bench alloc`), run under the
/// counting LD_PRELOAD library (Tests/AllocationCounter) by HotPathAllocationTests: a server
/// process (`serve`) and a client process (`measure`), each counted in its own counters file.
/// The client runs a warm-up, then `count` and `10 × count` operations of one path, reading its
/// own and the server's counters around each window; a hot path that allocates per operation
/// shows counts that grow tenfold, one that allocates nothing shows 0.
public enum HotPathProbe {
    /// What `measure` drives.
    public enum Path: String, CaseIterable, Sendable {
        /// `IPCClient.sendReceive(_:payload:into:)` with 32 bytes inline each way, over the socket.
        case socket
        /// `sendBatch` of 16 header-only requests, then their 16 replies with `receive(into:)`.
        case batch
        /// `sendReceive(_:payload:into:)` after `attachRing`: the server's ring thread answers.
        case ring
        /// MSG_BLOCK_WRITE then MSG_BLOCK_READ of one 512-byte block, inline, on the storage
        /// server's message path (answers deferred to the command's completion).
        case storage
        /// One read of one block through a `BlockRing` (no message per I/O).
        case blockRing = "block-ring"

        public var server: ServerKind { self == .storage || self == .blockRing ? .storage : .ipc }
    }

    /// Which server `serve` runs.
    public enum ServerKind: String, CaseIterable, Sendable {
        /// An `IPCServer` (two rings allowed) whose handler echoes the request's data and param1.
        case ipc
        /// A `BlockServer` (answers deferred) on a RAM `QueuedBlockDevice`, served by a
        /// `BlockServingLoop`, as storage_server serves the NVMe.
        case storage
    }

    /// One window: operations and what each side's counters grew by.
    public struct Window: Sendable {
        public var operations: Int
        public var client: AllocationCounters.Snapshot
        public var server: AllocationCounters.Snapshot

        /// `alloc PATH ops=N client_allocs=.. client_retains=.. client_releases=.. server_allocs=.. ...`
        public func line(_ path: Path) -> String {
            "alloc \(path.rawValue) ops=\(operations) client_allocs=\(client.allocations) client_retains=\(client.retains) "
                + "client_releases=\(client.releases) server_allocs=\(server.allocations) server_retains=\(server.retains) "
                + "server_releases=\(server.releases)"
        }
    }

    public static let namespace: UInt32 = 1
    static let blockSize = 512
    static let timeout: Duration = .seconds(10)

    // MARK: Servers

    /// Serves `kind` at `directory/name.sock` until the process is killed; prints `serving` once
    /// the socket is there.
    public static func serve(_ kind: ServerKind, name: String, directory: String) throws -> Never {
        switch kind {
        case .ipc:
            var configuration = IPCServer.Configuration()
            configuration.maxRings = 2
            let server = try IPCServer(name: name, directory: directory, configuration: configuration, requestHandler: EchoHandler())
            server.start()
            announce()
            waitForever(holding: server)
        case .storage:
            let device = RAMQueuedDevice(geometry: BlockGeometry(blockSize: blockSize, blockCount: 4096), nsid: namespace)
            let block = BlockServer(device: device) { line in
                var text = "storage: " + line + "\n"
                text.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
            }
            let loop = BlockServingLoop(server: block, endpoint: try block.makeIPCServer(name: name, directory: directory))
            loop.start()
            announce()
            waitForever(holding: loop)
        }
    }

    /// The `ipc` server's handler: echoes the request's data and param1. An object, as hot-path
    /// servers give theirs (called with no reference counting).
    private final class EchoHandler: IPCRequestHandler {
        func handle(_ request: Message, _ payload: IPCPayload, _ connection: IPCConnection) -> IPCReply {
            let count = payload.data.count
            if count > 0 { payload.reply.baseAddress!.copyMemory(from: payload.data.baseAddress!, byteCount: count) }
            return IPCReply(param1: request.param1, payloadCount: count)
        }
    }

    private static func waitForever(holding server: AnyObject) -> Never {
        withExtendedLifetime(server) {
            while true { pause() }
        }
    }

    private static func announce() {
        var line = "serving\n"
        line.withUTF8 { _ = write(1, $0.baseAddress, $0.count) }
    }

    // MARK: Client

    /// Connects to the server for `path`, warms up with `warmup` operations, then measures
    /// `count` and `10 × count` operations. `traceAllocations` / `traceRetains`: backtraces of that
    /// many allocations (retains) in each window, on both processes' stderr.
    public static func measure(_ path: Path, name: String, directory: String, serverCounters: AllocationCounters,
                               count: Int, warmup: Int, traceAllocations: Int64 = 0, traceRetains: Int64 = 0) throws -> [Window] {
        guard let own = AllocationCounters.ofThisProcess() else {
            throw BenchError.probe("not running under alloc_counter.so (LIMITLESS_ALLOC_COUNTERS unset, or its file not mapped)")
        }
        let client = try IPCClient.connect(name: name, directory: directory)
        var run = try Operations(path, client: client)
        for _ in 0..<warmup { try run.once() }
        var windows: [Window] = []
        windows.reserveCapacity(2)
        for operations in [count, count * 10] {
            own.trace(allocations: traceAllocations, retains: traceRetains)
            serverCounters.trace(allocations: traceAllocations, retains: traceRetains)
            let clientBefore = own.snapshot(), serverBefore = serverCounters.snapshot()
            for _ in 0..<operations { try run.once() }
            let clientAfter = own.snapshot(), serverAfter = serverCounters.snapshot()
            own.trace(allocations: 0, retains: 0)
            serverCounters.trace(allocations: 0, retains: 0)
            windows.append(Window(operations: operations, client: clientAfter - clientBefore, server: serverAfter - serverBefore))
        }
        try run.finish()
        return windows
    }

    /// One operation of a path, with every buffer it uses made beforehand.
    struct Operations: ~Copyable {
        let path: Path
        let client: IPCClient
        let request: UnsafeMutableRawBufferPointer
        let reply: UnsafeMutableRawBufferPointer
        let batch: UnsafeMutableBufferPointer<Message>
        let ring: BlockRingClient?
        let borrowedRing: Unmanaged<BlockRingClient>?
        var sequence: UInt64 = 0

        init(_ path: Path, client: IPCClient) throws {
            self.path = path
            self.client = client
            request = .allocate(byteCount: 4096, alignment: 64)
            request.initializeMemory(as: UInt8.self, repeating: 0xA5)
            reply = .allocate(byteCount: 4096, alignment: 64)
            batch = .allocate(capacity: 16)
            batch.initialize(repeating: Message(type: .vfsStat))
            switch path {
            case .ring:
                try client.attachRing(slotSize: 256, capacity: 16)
                ring = nil
                borrowedRing = nil
            case .blockRing:
                let ring = try BlockRingClient(entries: 16, dataBytes: 64 << 10)
                let handle = try client.share(ring.memory)
                let blocks = BlockClient(connection: client)
                guard case .success = try blocks.attachRing(sharedHandle: handle, count: UInt32(ring.memory.size)) else {
                    throw BenchError.probe("the storage server refused the block ring")
                }
                self.ring = ring
                borrowedRing = Unmanaged.passUnretained(ring)
            default:
                ring = nil
                borrowedRing = nil
            }
        }

        deinit {
            request.deallocate()
            reply.deallocate()
            batch.deallocate()
        }

        mutating func once() throws {
            sequence &+= 1
            switch path {
            case .socket, .ring:
                var message = Message(type: .vfsStat, param1: sequence)
                message.setInlineData(count: 32)
                let (answer, bytes) = try client.sendReceive(message, payload: UnsafeRawBufferPointer(rebasing: request[..<32]),
                                                             into: reply, timeout: HotPathProbe.timeout)
                try expect(answer.status.isOK && answer.param1 == sequence && bytes == 32, "echo reply")
            case .batch:
                for index in batch.indices { batch[index].param1 = sequence &+ UInt64(index) }
                _ = try client.sendBatch(UnsafeBufferPointer(batch))
                for _ in batch.indices {
                    let (answer, _) = try client.receive(into: reply, timeout: HotPathProbe.timeout)
                    try expect(answer.status.isOK, "batched reply")
                }
            case .storage:
                let lba = sequence % 4096
                var write = Message(type: .blockWrite, param1: UInt64(HotPathProbe.namespace), param2: lba, param3: 1)
                write.setInlineData(count: UInt32(HotPathProbe.blockSize))
                let (written, _) = try client.sendReceive(write, payload: UnsafeRawBufferPointer(rebasing: request[..<HotPathProbe.blockSize]),
                                                          into: reply, timeout: HotPathProbe.timeout)
                try expect(written.status.isOK, "block write")
                let read = Message(type: .blockRead, param1: UInt64(HotPathProbe.namespace), param2: lba, param3: 1)
                let (answer, bytes) = try client.sendReceive(read, into: reply, timeout: HotPathProbe.timeout)
                try expect(answer.status.isOK && bytes == HotPathProbe.blockSize && reply[0] == 0xA5, "block read")
            case .blockRing:
                // Borrowed: copying the reference out of this struct retained it once per
                // operation (the probe's own cost, not BlockRingClient's).
                try borrowedRing!._withUnsafeGuaranteedRef { ring in try blockRingRead(ring) }
            }
        }

        private func blockRingRead(_ ring: BlockRingClient) throws {
            guard ring.enqueue(write: false, nsid: HotPathProbe.namespace, lba: sequence % 4096, blocks: 1, dataOffset: 0, tag: sequence) else {
                throw BenchError.probe("the block ring is full")
            }
            ring.publish()
            var status = IPCStatus.EIO, done = false
            let deadline = MonotonicClock().now() + 10_000_000_000
            while !done {
                ring.reap { _, result, _ in
                    status = result
                    done = true
                }
                if !done && MonotonicClock().now() > deadline { throw BenchError.probe("no block ring completion within 10 s") }
            }
            try expect(status.isOK, "block ring read")
        }

        func finish() throws {
            if path == .ring { client.detachRing() }
        }

        private func expect(_ condition: Bool, _ what: String) throws {
            if !condition { throw BenchError.probe("unexpected \(what) on the \(path.rawValue) path") }
        }
    }
}

extension AllocationCounters.Snapshot {
    static func - (after: Self, before: Self) -> Self {
        Self(allocations: after.allocations &- before.allocations, frees: after.frees &- before.frees,
             retains: after.retains &- before.retains, releases: after.releases &- before.releases)
    }
}
