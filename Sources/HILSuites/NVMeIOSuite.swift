import NVMe
import Platform

/// The NVMe block I/O suite: bring-up with MSI-X, one I/O queue pair on its own vector, then
/// for each namespace seeded patterns written and read back in large (PRP list) transfers,
/// PRP boundary cases, flush, write zeroes, deallocate, range errors (the driver's, before
/// submission, and the device's), many commands in flight, and latency figures.
public struct NVMeIOSuite {
    public struct Options {
        public var device: PCIAddress?
        public var queueDepth = 32
        /// Every namespace whole, twice (a second seed overwrites the first), and longer latency
        /// runs. Without it each namespace is still written whole once unless `sampleSmallBlocks`.
        public var full = false
        /// Sample the 512-byte namespace instead of writing it whole (for slow rigs).
        public var sampleSmallBlocks = false
        public var seed: UInt64 = 0x4C49_4D49_544C_4553
        /// With `sampleSmallBlocks`: namespaces with blocks under 4 KiB get this many bytes at
        /// their start and end instead of the whole.
        public var sampledBytes = 16 << 20
        public var backend: PCIBackend = .auto
        public var sysfs = Sysfs()
        public var timeoutNanoseconds: UInt64 = 10_000_000_000
        public var perfMilliseconds: UInt64 = 1500
        public init() {}
    }

    public var options: Options
    public init(options: Options) { self.options = options }

    /// One 2 MiB slab each: physically contiguous even through UIO (a huge page).
    static let bufferSize = 2 << 20

    public func run(report: SuiteReport) {
        var opened: (any PCIDeviceAccess)?
        var function: PCIFunctionInfo?
        report.check("open the NVMe controller") {
            let functions = try PCIEnumerator(sysfs: options.sysfs).functions()
            let candidates = functions.filter { $0.classCode == 0x01_08_02 }
            if let address = options.device {
                guard let match = functions.first(where: { $0.address == address }) else { throw PlatformError.deviceNotFound(address) }
                function = match
            } else {
                function = candidates.first { $0.driver == "vfio-pci" || $0.driver == "uio_pci_generic" }
            }
            guard let function else { throw CheckFailure("no NVMe controller bound to vfio-pci or uio_pci_generic") }
            let device = try openPCIDevice(function.address, backend: options.backend, sysfs: options.sysfs)
            opened = device
            return "\(function.address) (\(function.idPair)) through \(device.backendName)"
        }
        guard let device = opened else { return }
        if let node = device.numaNode { _ = NUMA.runCurrentThread(onNode: node) }
        defer {
            try? device.disableInterrupts()
            try? device.setBusMaster(false)
        }

        let allocator = DMAAllocator(mapper: device.dmaMapper, numaNode: device.numaNode)
        var controller: NVMeController<MMIORegion>?
        var lines: [InterruptLine] = []
        report.check("bring-up with MSI-X") {
            try device.setBusMaster(true)
            let registers = try device.mapBAR(0)
            let available = try device.interruptVectors(.msix)
            try expect(available >= 1, "no MSI-X vectors")
            lines = try device.enableInterrupts(.msix, count: min(2, available))
            let nvme = NVMeController(registers: registers, allocator: allocator, adminInterrupt: lines[0],
                                      configuration: .init(completionMode: .interrupt, adminCommandTimeoutNanoseconds: options.timeoutNanoseconds))
            controller = nvme
            let identity = try nvme.bringUp()
            return "\(identity.modelNumber) NVMe \(identity.version), \(nvme.capabilities!), MDTS \(nvme.maximumTransferBytes() / 1024) KiB, "
                + "ONCS 0x\(String(identity.optionalCommands, radix: 16)), \(available) MSI-X vectors"
        }
        guard let nvme = controller else { return }

        var namespaces: [NVMeNamespace] = []
        report.check("namespaces") {
            namespaces = try nvme.activeNamespaceIDs().map { id throws(NVMeError) in try nvme.namespace(id) }
            try expect(!namespaces.isEmpty, "no active namespace")
            return namespaces.map { "\($0), DLFEAT 0x\(String($0.deallocateFeatures, radix: 16))" }.joined(separator: "; ")
        }

        var ioQueue: NVMeIOQueue<MMIORegion>?
        report.check("create I/O queue pair 1 (CQ then SQ)") {
            let granted = try nvme.setNumberOfQueues(submission: 1, completion: 1)
            let line = lines.count > 1 ? lines[1] : nil
            let mqes = nvme.capabilities!.maximumQueueEntries
            let depth = min(max(options.queueDepth + 1, 64), mqes)
            let queue = try nvme.createIOQueue(id: 1, depth: depth, interrupt: line, vector: line.map { UInt16($0.vector) })
            queue.timeoutNanoseconds = options.timeoutNanoseconds
            ioQueue = queue
            return "granted \(granted.submission) SQ / \(granted.completion) CQ, depth \(queue.depth) (CAP.MQES+1 = \(mqes)), "
                + (line.map { "completions on MSI-X vector \($0.vector)" } ?? "polling") + ", \(queue.listPagesPerSlot) PRP list page(s) per slot"
        }
        guard let queue = ioQueue else { return }

        var bufferA: DMABuffer?, bufferB: DMABuffer?
        report.check("data buffers") {
            bufferA = try allocator.allocate(size: Self.bufferSize, alignment: 4096)
            bufferB = try allocator.allocate(size: Self.bufferSize, alignment: 4096)
            return "2 x \(Self.bufferSize >> 20) MiB, " + (allocator.usesHugePages ? "huge pages" : "4 KiB pages")
        }
        guard let a = bufferA, let b = bufferB else { return }

        let context = NVMeIOContext(queue: queue, nvme: nvme, a: a, b: b, options: options, report: report)
        for (index, namespace) in namespaces.enumerated() {
            let whole = options.full || !options.sampleSmallBlocks || index == namespaces.count - 1 || namespace.blockSize >= 4096
            context.run(namespace: namespace, whole: whole)
        }
        if let namespace = namespaces.last {
            context.queueDepthCheck(namespace)
            context.latency(namespace)
        }

        if let namespace = namespaces.last {
            // The reads are outstanding to the driver (submitted, not reaped) when the reset
            // comes, but the device has already answered them: QEMU 7.2's NVMe model aborted
            // ("qemu_mutex_lock_impl: Invalid argument", in a CI run on a fast host) when CC.EN was
            // cleared while its block layer still had reads of ours in progress. For the driver
            // both cases are the same: the completions are lost with the old queue and every
            // outstanding command must be issued again.
            report.check("controller reset with reads outstanding: I/O queue re-created, reads re-issued") {
                let blocksPer = max(1, 4096 / namespace.blockSize)
                let pattern = Pattern(seed: options.seed, namespace: namespace.id, variant: 11)  // from the queue-depth check
                let base = namespace.blockCount / 3
                for index in 0..<8 {
                    try queue.submitTransfer(opcode: NVMeIOOpcode.read, namespace: namespace, lba: base + UInt64(index * blocksPer),
                                             blocks: blocksPer, data: b.deviceAddress + UInt64(index * 4096), tag: UInt64(index))
                }
                let clock = MonotonicClock()
                let deadline = clock.now() + options.timeoutNanoseconds
                while queue.postedCompletionCount < 8 {
                    try expect(clock.now() < deadline, "the device answered \(queue.postedCompletionCount) of 8 reads")
                    clock.pause()
                }
                try expect(queue.outstanding == 8, "\(queue.outstanding) reads outstanding before the reset")
                b.address.initializeMemory(as: UInt8.self, repeating: 0, count: 8 * 4096)
                let reissued = try nvme.reset(ioQueues: [queue])
                var tags: [UInt64] = []
                try queue.drain { completion in if completion.status.isSuccess { tags.append(completion.tag) } }
                try expect(tags.sorted() == Array(0..<8), "completions after the reset: \(tags)")
                for index in 0..<8 {
                    let lba = base + UInt64(index * blocksPer)
                    if pattern.firstMismatch(b.address + index * 4096, length: 4096, position: lba * UInt64(namespace.blockSize)) != nil {
                        throw CheckFailure("read \(index) after the reset returned wrong data")
                    }
                }
                return "8 answered by the device, not reaped; \(reissued) re-issued after CC.EN 0 -> 1 (\(nvme.transitions.count) bring-up steps), all 8 reads verified"
            }
        }

        report.check("I/O completions arrived by interrupt") {
            guard queue.interrupt != nil else { throw SuiteReport.Skip("the queue polls (one MSI-X vector only)") }
            try expect(queue.interruptsReceived > 0, "no interrupt taken on vector \(queue.interruptVector ?? 0)")
            return "\(queue.interruptsReceived) wake-ups on vector \(queue.interruptVector ?? 0) for \(queue.commandsSubmitted) commands, \(queue.strayCompletions) stray"
        }
        report.check("delete the I/O queue pair and shut down") {
            try nvme.deleteIOQueue(queue)
            try nvme.shutdown()
            return "\(nvme.state)"
        }
    }
}

/// Seeded pattern: each 8-byte word is a function of the seed, the namespace and its byte
/// position, so the expected content of any range can be regenerated without storing it.
struct Pattern {
    let key: UInt64

    init(seed: UInt64, namespace: UInt32, variant: UInt64 = 0) {
        key = seed ^ UInt64(namespace) << 56 ^ variant &* 0x9E37_79B9_7F4A_7C15
    }

    @inline(__always)
    func word(_ position: UInt64) -> UInt64 {
        var z = (position >> 3) &+ key &* 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Fills `length` bytes at `pointer` with the pattern for namespace bytes from `position`.
    func fill(_ pointer: UnsafeMutableRawPointer, length: Int, position: UInt64) {
        for offset in stride(from: 0, to: length, by: 8) {
            pointer.storeBytes(of: word(position + UInt64(offset)), toByteOffset: offset, as: UInt64.self)
        }
    }

    /// The first byte offset that differs, or nil.
    func firstMismatch(_ pointer: UnsafeRawPointer, length: Int, position: UInt64) -> Int? {
        for offset in stride(from: 0, to: length, by: 8)
        where pointer.loadUnaligned(fromByteOffset: offset, as: UInt64.self) != word(position + UInt64(offset)) {
            return offset
        }
        return nil
    }
}

final class NVMeIOContext {
    let queue: NVMeIOQueue<MMIORegion>
    let nvme: NVMeController<MMIORegion>
    let a: DMABuffer, b: DMABuffer
    let options: NVMeIOSuite.Options
    let report: SuiteReport
    let clock = MonotonicClock()

    init(queue: NVMeIOQueue<MMIORegion>, nvme: NVMeController<MMIORegion>, a: DMABuffer, b: DMABuffer,
         options: NVMeIOSuite.Options, report: SuiteReport) {
        self.queue = queue; self.nvme = nvme; self.a = a; self.b = b; self.options = options; self.report = report
    }

    func mib(_ bytes: UInt64) -> String { "\(bytes >> 20) MiB" }

    /// Writes the pattern over `ranges` (byte ranges of the namespace) and reads it all back.
    func patternPass(_ ns: NVMeNamespace, ranges: [Range<UInt64>], pattern: Pattern, label: String) throws -> String {
        let chunk = UInt64(NVMeIOSuite.bufferSize)
        let total = ranges.reduce(UInt64(0)) { $0 + UInt64($1.count) }
        for (phase, isWrite) in [("write", true), ("read back", false)] {
            let start = clock.now()
            var done: UInt64 = 0, nextNote: UInt64 = 16 << 20
            for range in ranges {
                var position = range.lowerBound
                while position < range.upperBound {
                    let length = Int(min(chunk, range.upperBound - position))
                    let lba = position / UInt64(ns.blockSize), blocks = length / ns.blockSize
                    if isWrite {
                        pattern.fill(a.address, length: length, position: position)
                        try queue.write(ns, lba: lba, blocks: blocks, from: a)
                    } else {
                        try queue.read(ns, lba: lba, blocks: blocks, into: b)
                        if let offset = pattern.firstMismatch(b.address, length: length, position: position) {
                            throw CheckFailure("\(label): mismatch at namespace byte \(position + UInt64(offset)) (LBA \((position + UInt64(offset)) / UInt64(ns.blockSize)))")
                        }
                    }
                    position += UInt64(length)
                    done += UInt64(length)
                    if done >= nextNote && done < total {
                        report.note("nsid \(ns.id): \(phase) \(mib(done)) / \(mib(total)) (\((clock.now() - start) / 1_000_000) ms)")
                        nextNote += 16 << 20
                    }
                }
            }
            let ms = max(1, (clock.now() - start) / 1_000_000)
            report.note("nsid \(ns.id): \(phase) \(mib(total)) in \(ms) ms (\((total * 1000 / ms) >> 20) MiB/s)")
        }
        return "\(mib(total)) written in \(queue.maximumTransferBytes / 1024) KiB commands and verified"
    }

    func run(namespace ns: NVMeNamespace, whole: Bool) {
        let bs = ns.blockSize
        let capacity = ns.capacityBytes
        let pattern = Pattern(seed: options.seed, namespace: ns.id)
        let label = "nsid \(ns.id) (\(bs) B blocks)"

        let ranges: [Range<UInt64>]
        if whole || capacity <= UInt64(options.sampledBytes) {
            ranges = [0..<capacity]
        } else {
            let half = UInt64(options.sampledBytes / 2)
            ranges = [0..<half, (capacity - half)..<capacity]
        }
        report.check("\(label): seeded pattern over \(whole ? "the whole namespace" : "a sampled region (first and last \(mib(UInt64(options.sampledBytes / 2))))"), read back") {
            try patternPass(ns, ranges: ranges, pattern: pattern, label: label)
        }
        if options.full {
            report.check("\(label): second seed over the whole namespace (overwrite), read back") {
                try patternPass(ns, ranges: ranges, pattern: Pattern(seed: options.seed &+ 1, namespace: ns.id), label: label)
            }
        }

        // PRP boundary cases: buffer offsets within a page x transfer sizes around page edges.
        report.check("\(label): PRP boundary cases") {
            let mdts = queue.maximumTransferBytes
            let sizes = Set([bs, 4096, 4096 + bs, 8192, 8192 + bs, 3 * 4096, mdts - 4096, mdts].filter { $0 % bs == 0 && $0 <= mdts }).sorted()
            let offsets = [0, 4, 512, 2048, 3584, 4092, 4096 + 1028]
            var cases = 0
            var lba: UInt64 = 0
            let variant = Pattern(seed: options.seed, namespace: ns.id, variant: 7)
            for size in sizes {
                for offset in offsets where offset + size + 64 <= NVMeIOSuite.bufferSize {
                    let blocks = size / bs
                    if lba + UInt64(blocks) > ns.blockCount { lba = 0 }
                    let position = lba * UInt64(bs)
                    // Source: the pattern at `offset`; destination: guard bytes around the data.
                    variant.fill(a.address + offset, length: size, position: position)
                    try queue.write(ns, lba: lba, blocks: blocks, from: a, offset: offset)
                    let readOffset = offsets[(cases + 3) % offsets.count]
                    b.address.initializeMemory(as: UInt8.self, repeating: 0xA5, count: readOffset + size + 64)
                    try queue.read(ns, lba: lba, blocks: blocks, into: b, offset: readOffset)
                    if let bad = variant.firstMismatch(b.address + readOffset, length: size, position: position) {
                        throw CheckFailure("size \(size) write offset \(offset) read offset \(readOffset): data differs at byte \(bad)")
                    }
                    for guardByte in Array(0..<readOffset) + Array((readOffset + size)..<(readOffset + size + 64))
                    where b.address.load(fromByteOffset: guardByte, as: UInt8.self) != 0xA5 {
                        throw CheckFailure("size \(size) read offset \(readOffset): byte \(guardByte) outside the transfer was written")
                    }
                    cases += 1
                    lba += UInt64(blocks)
                }
            }
            return "\(cases) cases: sizes \(sizes.map { "\($0)" }.joined(separator: ",")) B x buffer offsets \(offsets.map { "\($0)" }.joined(separator: ","))"
        }
        report.check("\(label): flush") {
            let start = clock.now()
            try queue.flush(ns)
            return "\((clock.now() - start) / 1000) us"
        }

        let zeroLBA = ns.blockCount / 2, zeroBlocks = min(Int(ns.blockCount / 8), (1 << 20) / bs)
        report.check("\(label): write zeroes, read back zeroes") {
            guard nvme.identity?.supportsWriteZeroes ?? false else { throw SuiteReport.Skip("ONCS: no Write Zeroes") }
            let position = zeroLBA * UInt64(bs)
            let length = zeroBlocks * bs
            pattern.fill(a.address, length: length, position: position)
            try queue.write(ns, lba: zeroLBA, blocks: zeroBlocks, from: a)
            try queue.writeZeroes(ns, lba: zeroLBA, blocks: zeroBlocks)
            b.address.initializeMemory(as: UInt8.self, repeating: 0xA5, count: length)
            try queue.read(ns, lba: zeroLBA, blocks: zeroBlocks, into: b)
            if let bad = (0..<length).first(where: { b.address.load(fromByteOffset: $0, as: UInt8.self) != 0 }) {
                throw CheckFailure("byte \(bad) of the zeroed range is not zero")
            }
            return "\(zeroBlocks) blocks at LBA \(zeroLBA)"
        }

        report.check("\(label): deallocate (Dataset Management, 3 ranges), read back") {
            guard nvme.identity?.supportsDatasetManagement ?? false else { throw SuiteReport.Skip("ONCS: no Dataset Management") }
            let rangeBlocks = max(1, 65536 / bs) * 4  // 256 KiB each
            let starts: [UInt64] = [ns.blockCount / 4, ns.blockCount / 4 + UInt64(rangeBlocks * 3), ns.blockCount - UInt64(rangeBlocks)]
            let ranges = starts.map { (lba: $0, blocks: rangeBlocks) }
            for range in ranges {
                pattern.fill(a.address, length: range.blocks * bs, position: range.lba * UInt64(bs))
                try queue.write(ns, lba: range.lba, blocks: range.blocks, from: a)
            }
            try queue.deallocate(ns, ranges: ranges)
            var zeroed = 0, kept = 0
            for range in ranges {
                try queue.read(ns, lba: range.lba, blocks: range.blocks, into: b)
                for block in 0..<range.blocks {
                    let pointer = b.address + block * bs
                    let position = (range.lba + UInt64(block)) * UInt64(bs)
                    if (0..<(bs / 8)).allSatisfy({ pointer.load(fromByteOffset: $0 * 8, as: UInt64.self) == 0 }) {
                        zeroed += 1
                    } else if pattern.firstMismatch(pointer, length: bs, position: position) == nil {
                        kept += 1
                    } else {
                        throw CheckFailure("block \(range.lba + UInt64(block)) reads neither as zeroes nor as its old content")
                    }
                }
            }
            // Deallocation is advisory (NVM command set 3.2.3.2.1): a block the controller did
            // deallocate reads as DLFEAT says; one it kept reads as before.
            return "DLFEAT read behaviour \(ns.deallocatedReads): \(zeroed) block(s) read back as zeroes (deallocated), \(kept) kept their data"
        }

        report.check("\(label): read past the end is refused before submission") {
            let before = queue.commandsSubmitted
            do {
                try queue.read(ns, lba: ns.blockCount - 1, blocks: 2, into: b)
                throw CheckFailure("a read past the end succeeded")
            } catch let error as NVMeError {
                guard case .lbaOutOfRange(let nsid, let lba, let blocks, let total) = error, nsid == ns.id, lba == ns.blockCount - 1,
                      blocks == 2, total == ns.blockCount else { throw error }
            }
            try expect(queue.commandsSubmitted == before, "a command was submitted")
            return "NVMeError.lbaOutOfRange, nothing submitted"
        }

        report.check("\(label): raw read past the end gets the device's LBA Out of Range") {
            try queue.submitTransferUnchecked(opcode: NVMeIOOpcode.read, namespaceID: ns.id, blockSize: bs, lba: ns.blockCount,
                                              blocks: 1, data: b.deviceAddress, tag: 99)
            var seen: NVMeIOCompletion?
            try queue.drain { seen = $0 }
            guard let completion = seen else { throw CheckFailure("no completion") }
            try expect(completion.status.isLBAOutOfRange, "status \(completion.status)")
            return "\(completion.status); as an error: \(completion.error!)"
        }
    }

    /// Many commands in flight: QD `queueDepth` writes of distinct 4 KiB blocks, then reads.
    func queueDepthCheck(_ ns: NVMeNamespace) {
        let qd = min(options.queueDepth, queue.slotCount)
        report.check("nsid \(ns.id): queue depth \(qd), 4096 commands of 4 KiB") {
            let blocksPer = max(1, 4096 / ns.blockSize)
            let slots = NVMeIOSuite.bufferSize / 4096  // 1024 buffers of 4 KiB in each DMA buffer
            let total = 4096
            let pattern = Pattern(seed: options.seed, namespace: ns.id, variant: 11)
            let base = ns.blockCount / 3
            var maxInFlight = 0
            for isWrite in [true, false] {
                var next = 0, completed = 0
                var failure: NVMeError?
                while completed < total {
                    while next < total, queue.outstanding < qd {
                        let slot = next % slots
                        let lba = base + UInt64(next * blocksPer)
                        if isWrite {
                            pattern.fill(a.address + slot * 4096, length: 4096, position: lba * UInt64(ns.blockSize))
                        }
                        try queue.submitTransfer(opcode: isWrite ? NVMeIOOpcode.write : NVMeIOOpcode.read, namespace: ns, lba: lba,
                                                 blocks: blocksPer, data: (isWrite ? a : b).deviceAddress + UInt64(slot * 4096), tag: UInt64(next))
                        next += 1
                    }
                    maxInFlight = max(maxInFlight, queue.outstanding)
                    try queue.waitForCompletions { completion in
                        completed += 1
                        if failure == nil, let error = completion.error { failure = error }
                        if !isWrite, failure == nil {
                            let index = Int(completion.tag)
                            let lba = base + UInt64(index * blocksPer)
                            if pattern.firstMismatch(self.b.address + (index % slots) * 4096, length: 4096, position: lba * UInt64(ns.blockSize)) != nil {
                                failure = .invalidRequest("command \(index) (LBA \(lba)) read back wrong data")
                            }
                        }
                    }
                    if let failure { throw failure }
                }
            }
            try expect(maxInFlight >= qd, "only \(maxInFlight) commands in flight")
            return "\(2 * total) commands, up to \(maxInFlight) in flight, queue wrapped \(2 * total / queue.depth) times, data verified"
        }
    }

    /// 4 KiB random reads at QD1 and QD32: printed, not asserted. The polled figures come from
    /// queue 2, created with interrupts off as a polled queue is (`StorageBringUp.bringUp`'s
    /// `pollIOQueues`); one polled QD1 run on queue 1, whose MSI-X vector stays enabled, shows
    /// what an interrupt per completion that nobody waits for costs.
    func latency(_ ns: NVMeNamespace) {
        let blocksPer = max(1, 4096 / ns.blockSize)
        let positions = ns.blockCount / UInt64(blocksPer)
        let wasPolling = queue.polling
        defer { queue.polling = wasPolling }
        var polledQueue: NVMeIOQueue<MMIORegion>?
        report.check("create I/O queue pair 2 with interrupts off (CDW11.IEN = 0) for the polled figures") {
            let created = try nvme.createIOQueue(id: 2, depth: queue.depth)
            polledQueue = created
            created.timeoutNanoseconds = options.timeoutNanoseconds
            try expect(created.interruptVector == nil && created.polling, "queue 2 was given MSI-X vector \(created.interruptVector ?? 0)")
            return "depth \(created.depth), polling, no vector"
        }
        let deep = min(32, queue.slotCount)
        var cells: [(queue: NVMeIOQueue<MMIORegion>, polling: Bool, qd: Int, how: String)] = []
        if queue.interrupt != nil {
            cells += [(queue, false, 1, "MSI-X"), (queue, false, deep, "MSI-X"), (queue, true, 1, "polling queue 1, its MSI-X vector on")]
        }
        if let polledQueue { cells += [(polledQueue, true, 1, "polling queue 2, interrupts off"), (polledQueue, true, deep, "polling queue 2, interrupts off")] }
        for (queue, polling, qd, how) in cells {
            queue.polling = polling
            report.check("nsid \(ns.id): 4 KiB random reads at QD\(qd), \(how) (emulated device under TCG: not comparable to real hardware)") {
                var rng = options.seed | 1
                var latencies: [UInt64] = []
                latencies.reserveCapacity(200_000)
                let start = clock.now()
                let deadline = start + options.perfMilliseconds * (options.full ? 3_000_000 : 1_000_000)
                var next: UInt64 = 0
                var failure: NVMeError?
                while true {
                    let now = clock.now()
                    let more = now < deadline
                    while more, queue.outstanding < qd {
                        rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17
                        let lba = (rng % positions) * UInt64(blocksPer)
                        try queue.submitTransfer(opcode: NVMeIOOpcode.read, namespace: ns, lba: lba, blocks: blocksPer,
                                                 data: b.deviceAddress + (next % 1024) * 4096, tag: next)
                        next += 1
                    }
                    if queue.outstanding == 0 { break }
                    try queue.waitForCompletions { completion in
                        latencies.append(completion.latencyNanoseconds)
                        if failure == nil, let error = completion.error { failure = error }
                    }
                    if let failure { throw failure }
                }
                let elapsed = clock.now() - start
                latencies.sort()
                let p50 = latencies[latencies.count / 2], p99 = latencies[min(latencies.count - 1, latencies.count * 99 / 100)]
                let iops = UInt64(latencies.count) * 1_000_000_000 / max(1, elapsed)
                return "\(latencies.count) reads, \(iops) IOPS, p50 \(p50 / 1000) us, p99 \(p99 / 1000) us"
            }
        }
        if let polledQueue {
            report.check("delete I/O queue pair 2") {
                try nvme.deleteIOQueue(polledQueue)
                return "deleted (SQ then CQ)"
            }
        }
    }
}
