import NVMe
import Platform
import Storage

/// The driver in-process, no IPC: random, aligned reads or writes of `ioSize` bytes on one I/O
/// queue pair, keeping `queueDepth` commands in flight for `seconds`. The baseline beside the
/// storage server's figure (same driver behind a socket) and the kernel's nvme driver under fio,
/// so the cost of each layer is visible. Figures only, never assertions.
///
/// Every command has its own `ioSize` piece of the bring-up's DMA bounce buffer (tag = piece
/// index); a completion frees its piece and, before the deadline, a new command goes out on it at
/// once, so the queue stays at `queueDepth`. Submissions after one reap go out back to back and
/// one SQ tail doorbell covers them (`NVMeIOQueue.beginBatch`); completions are reaped in a batch
/// with one CQ head doorbell (`NVMeIOQueue.reap`). Nothing is allocated per I/O: the latency
/// array is reserved up front.
public struct NVMeDriverBench {
    public struct Options {
        public var device = PCIAddress("0000:00:03.0")!
        public var nsid: UInt32 = 1
        public var seconds = 5.0
        public var queueDepth = 1
        public var ioSize = 4096
        public var write = false
        /// Poll the completion queue (true) or sleep on the queue's MSI-X vector (false).
        public var polling = true
        /// With `polling`: create the queue with its MSI-X vector enabled all the same (every
        /// completion still raises an interrupt nobody waits for), for comparison with a polled
        /// queue created with interrupts off (the default, as Linux's poll queues).
        public var interruptsWhilePolling = false
        /// Bytes at the start of the namespace the random offsets fall in (0: all of it).
        public var regionBytes: UInt64 = 0
        public init() {}
    }

    public struct Result {
        public var operations: Int
        public var elapsedNanoseconds: UInt64
        public var p50Nanoseconds: UInt64
        public var p99Nanoseconds: UInt64
        public var queueDepth: Int
        public var iops: Double { elapsedNanoseconds > 0 ? Double(operations) * 1e9 / Double(elapsedNanoseconds) : 0 }
    }

    public var options: Options
    public init(options: Options) { self.options = options }

    /// Brings the controller up, runs the workload, shuts the controller down.
    public func run(log: @escaping (String) -> Void) throws -> Result {
        let device = try openPCIDevice(options.device)
        defer {
            try? device.disableInterrupts()
            try? device.setBusMaster(false)
        }
        let opened = try StorageBringUp.bringUp(device, queueDepth: max(64, options.queueDepth + 1),
                                                pollIOQueues: options.polling && !options.interruptsWhilePolling, log: log)
        let block = opened.blockDevice
        defer { try? block.shutdown() }
        log(opened.summary)
        guard let namespace = block.namespaces[options.nsid] else { throw CheckFailure("nsid \(options.nsid) is not active") }
        return try measure(queue: block.queue, namespace: namespace, buffer: block.bounce)
    }

    /// The measurement on a queue that is up and idle.
    public func measure<R: RegisterIO>(queue: NVMeIOQueue<R>, namespace: NVMeNamespace, buffer: DMABuffer) throws -> Result {
        let depth = options.queueDepth
        let blocks = options.ioSize / namespace.blockSize
        try expect(depth >= 1 && depth <= queue.slotCount, "queue depth \(depth) exceeds the queue's \(queue.slotCount) slots")
        try expect(blocks >= 1 && options.ioSize % namespace.blockSize == 0,
                   "I/O size \(options.ioSize) is not a multiple of the \(namespace.blockSize)-byte block")
        try expect(depth * options.ioSize <= buffer.size, "\(depth) x \(options.ioSize) B exceed the \(buffer.size)-byte DMA buffer")
        let regionBlocks = options.regionBytes == 0 ? namespace.blockCount
            : min(namespace.blockCount, options.regionBytes / UInt64(namespace.blockSize))
        let slots = regionBlocks / UInt64(blocks)
        try expect(slots > 0, "the region holds no whole I/O")
        if options.write {
            // Writes carry a pattern, not zeroes (a device could shortcut zeroes).
            var x: UInt64 = 0x9E37_79B9_7F4A_7C15
            for offset in stride(from: 0, to: depth * options.ioSize, by: 8) {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17
                buffer.address.storeBytes(of: x, toByteOffset: offset, as: UInt64.self)
            }
        }
        queue.polling = options.polling
        let opcode = options.write ? NVMeIOOpcode.write : NVMeIOOpcode.read
        var random: UInt64 = 0x2545_F491_4F6C_DD1D
        @inline(__always) func nextLBA() -> UInt64 {
            random ^= random << 13; random ^= random >> 7; random ^= random << 17
            return (random % slots) * UInt64(blocks)
        }
        var latencies: [UInt64] = []
        latencies.reserveCapacity(1 << 21)
        var finished = [Int](repeating: 0, count: depth)
        var failure: NVMeError?
        let clock = MonotonicClock()
        let start = clock.now()
        let end = start + UInt64(options.seconds * 1e9)
        queue.beginBatch()
        for piece in 0..<depth {
            try queue.submitTransfer(opcode: opcode, namespace: namespace, lba: nextLBA(), blocks: blocks,
                                     data: buffer.deviceAddress + UInt64(piece * options.ioSize), tag: UInt64(piece))
        }
        queue.endBatch()
        while queue.outstanding > 0 {
            var count = 0
            try queue.waitForCompletions { completion in
                if failure == nil, let error = completion.error { failure = error }
                if latencies.count < latencies.capacity { latencies.append(completion.latencyNanoseconds) }
                finished[count] = Int(completion.tag)
                count += 1
            }
            if let failure { throw failure }
            guard clock.now() < end else { continue }  // past the deadline: drain only
            // Every freed piece goes out again, one doorbell for the lot.
            queue.beginBatch()
            for index in 0..<count {
                let piece = finished[index]
                try queue.submitTransfer(opcode: opcode, namespace: namespace, lba: nextLBA(), blocks: blocks,
                                         data: buffer.deviceAddress + UInt64(piece * options.ioSize), tag: UInt64(piece))
            }
            queue.endBatch()
        }
        let elapsed = clock.now() - start
        latencies.sort()
        func percentile(_ q: Double) -> UInt64 {
            guard !latencies.isEmpty else { return 0 }
            let rank = Int((q * Double(latencies.count)).rounded(.up)) - 1
            return latencies[min(max(rank, 0), latencies.count - 1)]
        }
        return Result(operations: latencies.count, elapsedNanoseconds: elapsed, p50Nanoseconds: percentile(0.5),
                      p99Nanoseconds: percentile(0.99), queueDepth: depth)
    }
}
