import Testing
import NVMe
import Platform
#if canImport(Glibc)
import Glibc
#endif

/// A deterministic generator for the property-style tests (xorshift64*).
struct TestRandom {
    var state: UInt64
    init(seed: UInt64) { state = seed | 1 }
    mutating func next() -> UInt64 {
        state ^= state >> 12; state ^= state << 25; state ^= state >> 27
        return state &* 0x2545_F491_4F6C_DD1D
    }
    mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }
}

/// A controller brought up against the fake with one I/O queue and small namespaces.
struct IOFixture {
    let allocator: DMAAllocator
    let mapper: IdentityDMAMapper
    let fake: FakeNVMeController
    let controller: NVMeController<FakeNVMeController>
    let queue: NVMeIOQueue<FakeNVMeController>
    let ns512: NVMeNamespace
    let ns4k: NVMeNamespace

    init(mdts: UInt8 = 7, depth: Int = 64, interrupt: TestInterrupt? = nil) throws {
        (allocator, mapper) = makeTestAllocator()
        fake = FakeNVMeController(mapper: mapper)
        fake.mdts = mdts
        fake.namespaces = [1: (16384, 9), 2: (4096, 12)]  // 8 MiB and 16 MiB
        fake.ioInterrupt = interrupt
        controller = NVMeController(registers: fake, allocator: allocator, configuration: .init(completionMode: .polling))
        try controller.bringUp()
        _ = try controller.setNumberOfQueues(submission: 1, completion: 1)
        queue = try controller.createIOQueue(id: 1, depth: depth, interrupt: interrupt?.line, vector: interrupt == nil ? nil : 1)
        queue.timeoutNanoseconds = 2_000_000_000
        ns512 = try controller.namespace(1)
        ns4k = try controller.namespace(2)
    }

    func fill(_ buffer: DMABuffer, seed: UInt64) {
        var random = TestRandom(seed: seed)
        for offset in stride(from: 0, to: buffer.size, by: 8) {
            buffer.address.storeBytes(of: random.next(), toByteOffset: offset, as: UInt64.self)
        }
    }

    func media(_ ns: NVMeNamespace, lba: UInt64) -> UnsafeMutableRawPointer {
        fake.media(ns.id) + Int(lba) * ns.blockSize
    }
}

func equalBytes(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, _ count: Int) -> Bool {
    memcmp(a, b, count) == 0
}

@Suite("NVMe block I/O against the fake controller")
struct NVMeIOTests {
    @Test("PRP lists: many random offsets and lengths, the entries cover exactly the data (incl. chained list pages)")
    func prpProperty() throws {
        let (allocator, mapper) = makeTestAllocator()
        let fake = FakeNVMeController(mapper: mapper)
        let list = try allocator.allocate(size: 8 * 4096, alignment: 4096)
        var random = TestRandom(seed: 0xC0FFEE)
        var chained = 0
        for round in 0..<3000 {
            let base: UInt64 = 0x10_0000_0000
            let offset = random.below(2048) * 4  // dword aligned, anywhere in the first two pages
            let maximum = round % 3 == 0 ? 8 << 20 : 128 << 10
            let length = 1 + random.below(maximum)
            let data = base + UInt64(offset)
            guard let prp = NVMePRP.build(data: data, length: length, list: list.address,
                                          listDeviceAddress: list.deviceAddress, listCapacity: 8) else {
                Issue.record("no PRPs for \(length) at offset \(offset)"); return
            }
            #expect(prp.listPages == NVMePRP.listPagesNeeded(length: length, offset: offset))
            // Walk them the way QEMU does; the fake checks the mapped-ness only of list pages here.
            switch fake.walkPRP(prp1: prp.prp1, prp2: prp.prp2, length: length) {
            case .success(let segments):
                var expected = data
                var total = 0
                for (index, segment) in segments.enumerated() {
                    #expect(segment.0 == expected, "segment \(index) at 0x\(String(segment.0, radix: 16)), expected 0x\(String(expected, radix: 16))")
                    if index > 0 { #expect(segment.0 & 0xFFF == 0) }
                    expected += UInt64(segment.1)
                    total += segment.1
                }
                #expect(total == length)
                #expect(fake.lastListPages == prp.listPages)
                if prp.listPages > 1 { chained += 1 }
            case .failure(let error):
                Issue.record("fake rejected PRPs for \(length) B at offset \(offset): \(error.status)")
                return
            }
        }
        #expect(chained > 100)
        // Exactly at the edges: one page, one page + 4 bytes, 512 list entries (one full list
        // page, no chain), 513 (chain).
        #expect(NVMePRP.build(data: 0x1000, length: 4096, list: nil, listDeviceAddress: 0, listCapacity: 0) == NVMePRP(prp1: 0x1000, prp2: 0, listPages: 0))
        #expect(NVMePRP.build(data: 0x1004, length: 4096, list: nil, listDeviceAddress: 0, listCapacity: 0) == NVMePRP(prp1: 0x1004, prp2: 0x2000, listPages: 0))
        #expect(NVMePRP.listPagesNeeded(length: 4096 + 512 * 4096, offset: 0) == 1)
        #expect(NVMePRP.listPagesNeeded(length: 4096 + 513 * 4096, offset: 0) == 2)
        #expect(NVMePRP.build(data: 0x1000, length: 4096 * 3, list: list.address, listDeviceAddress: list.deviceAddress, listCapacity: 0) == nil)
    }

    @Test("read/write through the queue: random sizes and buffer offsets move exactly the right bytes")
    func transferProperty() throws {
        let fixture = try IOFixture()
        let source = try fixture.allocator.allocate(size: 1 << 20, alignment: 4096)
        let sink = try fixture.allocator.allocate(size: 1 << 20, alignment: 4096)
        let guardBytes = [UInt8](repeating: 0xA5, count: 1 << 20)
        var random = TestRandom(seed: 42)
        for round in 0..<300 {
            let ns = round % 2 == 0 ? fixture.ns512 : fixture.ns4k
            let maxBlocks = fixture.queue.maximumTransferBytes / ns.blockSize
            // Mostly within one command, sometimes a split request.
            let blocks = 1 + random.below(round % 5 == 0 ? maxBlocks * 2 - 8 : maxBlocks / (round % 3 == 0 ? 1 : 16))
            let length = blocks * ns.blockSize
            let writeOffset = random.below((source.size - length) / 4 + 1) * 4
            let readOffset = random.below((sink.size - length) / 4 + 1) * 4
            let lba = UInt64(random.below(Int(ns.blockCount) - blocks + 1))
            var word = TestRandom(seed: UInt64(round) + 1)
            for offset in stride(from: writeOffset, to: writeOffset + length, by: 4) {
                (source.address + offset).storeBytes(of: UInt32(truncatingIfNeeded: word.next()), as: UInt32.self)
            }
            try fixture.queue.write(ns, lba: lba, blocks: blocks, from: source, offset: writeOffset)
            #expect(equalBytes(fixture.media(ns, lba: lba), source.address + writeOffset, length),
                    "round \(round): media differs after writing \(length) B from offset \(writeOffset)")
            sink.address.initializeMemory(as: UInt8.self, repeating: 0xA5, count: sink.size)
            try fixture.queue.read(ns, lba: lba, blocks: blocks, into: sink, offset: readOffset)
            #expect(equalBytes(sink.address + readOffset, source.address + writeOffset, length), "round \(round): read back differs")
            let untouched = guardBytes.withUnsafeBytes { reference in
                equalBytes(sink.address, reference.baseAddress!, readOffset)
                    && equalBytes(sink.address + readOffset + length, reference.baseAddress!, sink.size - readOffset - length)
            }
            #expect(untouched, "round \(round): bytes outside \(readOffset)..<\(readOffset + length) were written")
        }
        #expect(fixture.fake.ioStatuses.allSatisfy { $0.isSuccess })
        #expect(fixture.queue.outstanding == 0 && fixture.queue.freeSlotCount == fixture.queue.slotCount)
    }

    @Test("transfers larger than MDTS are split into MDTS-sized commands; chained PRP lists with MDTS 4 MiB")
    func mdtsSplitting() throws {
        let fixture = try IOFixture(mdts: 5)  // 4 KiB << 5 = 128 KiB
        #expect(fixture.queue.maximumTransferBytes == 128 << 10)
        let buffer = try fixture.allocator.allocate(size: 1 << 20, alignment: 4096)
        fixture.fill(buffer, seed: 7)
        try fixture.queue.write(fixture.ns4k, lba: 10, blocks: 256, from: buffer)
        #expect(fixture.fake.ioCommandsProcessed == 8)
        #expect(fixture.fake.largestTransfer == 128 << 10)
        #expect(equalBytes(fixture.media(fixture.ns4k, lba: 10), buffer.address, 1 << 20))
        // One command may not exceed MDTS.
        #expect(throws: NVMeError.self) {
            try fixture.queue.submitTransfer(opcode: NVMeIOOpcode.read, namespace: fixture.ns4k, lba: 0, blocks: 33,
                                             data: buffer.deviceAddress, tag: 0)
        }

        let big = try IOFixture(mdts: 10)  // 4 MiB: 1024 entries, the list chains
        #expect(big.queue.listPagesPerSlot == 3)
        let large = try big.allocator.allocate(size: 5 << 20, alignment: 4096)
        big.fill(large, seed: 9)
        try big.queue.write(big.ns4k, lba: 0, blocks: 1024, from: large, offset: 8)
        #expect(big.fake.lastListPages == 3)
        #expect(equalBytes(big.media(big.ns4k, lba: 0), large.address + 8, 4 << 20))
    }

    @Test("LBA range: checked before submission; the device's LBA Out of Range is decoded")
    func rangeErrors() throws {
        let fixture = try IOFixture()
        let buffer = try fixture.allocator.allocate(size: 64 << 10, alignment: 4096)
        let ns = fixture.ns512
        let before = fixture.fake.ioCommandsProcessed
        #expect(throws: NVMeError.lbaOutOfRange(namespaceID: 1, lba: ns.blockCount - 1, blocks: 2, namespaceBlocks: ns.blockCount)) {
            try fixture.queue.read(ns, lba: ns.blockCount - 1, blocks: 2, into: buffer)
        }
        #expect(throws: NVMeError.lbaOutOfRange(namespaceID: 1, lba: UInt64.max, blocks: 1, namespaceBlocks: ns.blockCount)) {
            try fixture.queue.write(ns, lba: UInt64.max, blocks: 1, from: buffer)
        }
        #expect(throws: NVMeError.self) { try fixture.queue.writeZeroes(ns, lba: ns.blockCount, blocks: 1) }
        #expect(throws: NVMeError.self) { try fixture.queue.deallocate(ns, ranges: [(ns.blockCount - 1, 2)]) }
        #expect(fixture.fake.ioCommandsProcessed == before)

        try fixture.queue.submitTransferUnchecked(opcode: NVMeIOOpcode.read, namespaceID: ns.id, blockSize: ns.blockSize,
                                                  lba: ns.blockCount, blocks: 1, data: buffer.deviceAddress, tag: 5)
        var seen: [NVMeIOCompletion] = []
        try fixture.queue.drain { seen.append($0) }
        #expect(seen.count == 1 && seen[0].tag == 5)
        #expect(seen[0].status.isLBAOutOfRange && seen[0].status.name == "LBA Out of Range")
        guard case .ioFailed(_, 1, let lba, 1, let status)? = seen[0].error else { Issue.record("not an ioFailed error"); return }
        #expect(lba == ns.blockCount && status.isLBAOutOfRange)
        #expect(seen[0].error!.description.contains("LBA out of range"))
        #expect(NVMeError.ioFailed(opcode: 2, namespaceID: 1, lba: 0, blocks: 1, status: .unrecoveredReadError).description.hasPrefix("NVMe media error"))
    }

    @Test("flush, write zeroes and deallocate; DLFEAT and ONCS are read from Identify")
    func flushZeroesTrim() throws {
        let fixture = try IOFixture()
        let ns = fixture.ns4k
        #expect(ns.deallocatedReads == .zeroes)
        #expect(fixture.controller.identity?.supportsWriteZeroes == true && fixture.controller.identity?.supportsDatasetManagement == true)
        let buffer = try fixture.allocator.allocate(size: 1 << 20, alignment: 4096)
        fixture.fill(buffer, seed: 3)
        try fixture.queue.write(ns, lba: 100, blocks: 256, from: buffer)
        try fixture.queue.flush(ns)
        #expect(fixture.fake.ioOpcodes.last == NVMeIOOpcode.flush)
        try fixture.queue.writeZeroes(ns, lba: 110, blocks: 10)
        try fixture.queue.deallocate(ns, ranges: [(200, 5), (300, 20), (120, 1)])
        #expect(fixture.fake.deallocatedRanges.map(\.lba) == [200, 300, 120])
        #expect(fixture.fake.deallocatedRanges.map(\.blocks) == [5, 20, 1])
        try fixture.queue.read(ns, lba: 100, blocks: 256, into: buffer)
        let zeroBlocks = Set(Array(110..<120) + [120] + Array(200..<205) + Array(300..<320))
        for block in 100..<356 {
            let pointer = buffer.address + (block - 100) * 4096
            let isZero = (0..<512).allSatisfy { pointer.load(fromByteOffset: $0 * 8, as: UInt64.self) == 0 }
            #expect(isZero == zeroBlocks.contains(block), "block \(block)")
        }
        // Write Zeroes longer than 65536 blocks is split.
        let before = fixture.fake.ioCommandsProcessed
        try fixture.queue.writeZeroes(fixture.ns512, lba: 0, blocks: 16384)
        #expect(fixture.fake.ioCommandsProcessed == before + 1)
    }

    @Test("queue wrap: thousands of commands through an 8-entry queue, and a full queue is refused")
    func queueWrap() throws {
        let fixture = try IOFixture(depth: 8)
        #expect(fixture.queue.slotCount == 7)
        let buffer = try fixture.allocator.allocate(size: 64 << 10, alignment: 4096)
        var completed: [UInt64] = []
        var next: UInt64 = 0
        while completed.count < 2000 {
            while next < 2000, fixture.queue.freeSlotCount > 0 {
                try fixture.queue.submitTransfer(opcode: next % 2 == 0 ? NVMeIOOpcode.write : NVMeIOOpcode.read, namespace: fixture.ns512,
                                                 lba: next % 1000, blocks: 8, data: buffer.deviceAddress + (next % 8) * 4096, tag: next)
                next += 1
            }
            try fixture.queue.waitForCompletions { completion in
                #expect(completion.status.isSuccess)
                completed.append(completion.tag)
            }
        }
        #expect(completed == Array(0..<2000))
        #expect(fixture.queue.pair.expectedPhase == (2000 / 8 % 2 == 0))

        fixture.fake.holdIO = true
        for tag in 0..<7 {
            try fixture.queue.submitTransfer(opcode: NVMeIOOpcode.read, namespace: fixture.ns512, lba: UInt64(tag), blocks: 1,
                                             data: buffer.deviceAddress, tag: UInt64(tag))
        }
        #expect(fixture.fake.maxOutstandingSeen == 7)
        #expect(throws: NVMeError.submissionQueueFull(queue: 1, depth: 8)) {
            try fixture.queue.submitTransfer(opcode: NVMeIOOpcode.read, namespace: fixture.ns512, lba: 0, blocks: 1,
                                             data: buffer.deviceAddress, tag: 99)
        }
        fixture.fake.releaseHeldIO()
        var tags: [UInt64] = []
        try fixture.queue.drain { tags.append($0.tag) }
        #expect(tags == Array(0..<7))
    }

    @Test("a batch of submissions rings the SQ tail doorbell once; the controller sees nothing before it")
    func batchedSubmissionsRingOnce() throws {
        let fixture = try IOFixture()
        let buffer = try fixture.allocator.allocate(size: 16 * 4096, alignment: 4096)
        fixture.fill(buffer, seed: 77)
        let before = fixture.fake.ioSubmissionDoorbells
        fixture.queue.beginBatch()
        for index in 0..<16 {
            try fixture.queue.submitTransfer(opcode: NVMeIOOpcode.write, namespace: fixture.ns4k, lba: UInt64(index * 3), blocks: 1,
                                             data: buffer.deviceAddress + UInt64(index * 4096), tag: UInt64(index))
        }
        #expect(fixture.fake.ioSubmissionDoorbells == before)
        #expect(fixture.fake.ioCommandsProcessed == 0, "the controller fetched commands before the doorbell")
        fixture.queue.endBatch()
        #expect(fixture.fake.ioSubmissionDoorbells == before + 1)
        #expect(fixture.queue.doorbellsSaved == 15)
        var tags: [UInt64] = []
        try fixture.queue.drain { completion in
            #expect(completion.status.isSuccess)
            tags.append(completion.tag)
        }
        #expect(tags.sorted() == Array(0..<16))
        for index in 0..<16 {
            #expect(equalBytes(fixture.media(fixture.ns4k, lba: UInt64(index * 3)), buffer.address + index * 4096, 4096))
        }
        // Outside a batch every submission rings.
        let unbatched = fixture.fake.ioSubmissionDoorbells
        for index in 0..<4 {
            try fixture.queue.submitTransfer(opcode: NVMeIOOpcode.read, namespace: fixture.ns4k, lba: UInt64(index), blocks: 1,
                                             data: buffer.deviceAddress, tag: UInt64(index))
        }
        #expect(fixture.fake.ioSubmissionDoorbells == unbatched + 4)
        try fixture.queue.drain { _ in }
        // An empty batch rings nothing.
        fixture.queue.beginBatch()
        fixture.queue.endBatch()
        #expect(fixture.fake.ioSubmissionDoorbells == unbatched + 4)
    }

    @Test("completions by interrupt on the I/O queue's vector")
    func interruptCompletions() throws {
        let irq = TestInterrupt()
        let fixture = try IOFixture(interrupt: irq)
        #expect(!fixture.queue.polling && fixture.fake.ioCompletionQueues[1]?.vector == 1)
        #expect(fixture.fake.ioCompletionQueues[1]?.interruptsEnabled == true)
        let buffer = try fixture.allocator.allocate(size: 64 << 10, alignment: 4096)
        try fixture.queue.write(fixture.ns4k, lba: 0, blocks: 16, from: buffer)
        #expect(irq.raised >= 1)
        // The fake posts during the doorbell write, so the driver found the completions before
        // waiting: the interrupts are still pending on the vector's eventfd.
        #expect(irq.line.consume() + fixture.queue.interruptsReceived >= 1)
    }

    @Test("a stalled queue times out; the error names the oldest command")
    func stalledQueue() throws {
        let fixture = try IOFixture()
        fixture.queue.timeoutNanoseconds = 200_000_000
        fixture.fake.stallIO = true
        let buffer = try fixture.allocator.allocate(size: 64 << 10, alignment: 4096)
        let clock = MonotonicClock()
        let start = clock.now()
        do {
            try fixture.queue.read(fixture.ns512, lba: 0, blocks: 8, into: buffer)
            Issue.record("a stalled controller completed a read")
        } catch {
            guard case .commandTimeout(let opcode, _, let waited) = error else { Issue.record("got \(error)"); return }
            #expect(opcode == NVMeIOOpcode.read && waited >= 200_000_000)
        }
        #expect(clock.now() - start < 2_000_000_000)
        #expect(fixture.queue.outstanding == 1)
    }

    @Test("posted completions are counted without being consumed, across the phase wrap")
    func postedCompletionPeek() throws {
        let fixture = try IOFixture(depth: 8)
        let ns = fixture.ns4k
        let buffer = try fixture.allocator.allocate(size: 4096, alignment: 4096)
        var reaped = 0
        // Three rounds of five commands on an 8-entry queue: the completion queue wraps.
        for round in 0..<3 {
            fixture.fake.holdIO = true
            for index in 0..<5 {
                try fixture.queue.submitTransfer(opcode: NVMeIOOpcode.read, namespace: ns, lba: UInt64(index), blocks: 1,
                                                 data: buffer.deviceAddress, tag: UInt64(round * 5 + index))
            }
            #expect(fixture.queue.postedCompletionCount == 0)
            fixture.fake.releaseHeldIO()
            #expect(fixture.queue.postedCompletionCount == 5)
            #expect(fixture.queue.postedCompletionCount == 5, "a peek must not consume")
            #expect(fixture.queue.outstanding == 5)
            reaped += fixture.queue.reap { _ in }
            #expect(fixture.queue.postedCompletionCount == 0)
        }
        #expect(reaped == 15)
    }

    @Test("CSTS.CFS: detected while waiting, reset re-creates the queue and re-issues what was in flight")
    func fatalResetReissue() throws {
        let fixture = try IOFixture()
        let ns = fixture.ns4k
        let buffer = try fixture.allocator.allocate(size: 256 << 10, alignment: 4096)
        fixture.fill(buffer, seed: 11)
        fixture.fake.holdIO = true
        for index in 0..<5 {
            try fixture.queue.submitTransfer(opcode: NVMeIOOpcode.write, namespace: ns, lba: UInt64(index * 16), blocks: 16,
                                             data: buffer.deviceAddress + UInt64(index * 65536), tag: UInt64(index))
        }
        // The controller dies with the commands unprocessed.
        fixture.fake.holdIO = false
        fixture.fake.fatalOnNextIODoorbell = true
        try fixture.queue.submit(.flush(namespaceID: ns.id), tag: 5)
        fixture.queue.timeoutNanoseconds = 100_000_000
        do {
            try fixture.queue.waitForCompletions { _ in }
            Issue.record("completions from a failed controller")
        } catch {
            guard case .controllerFatalStatus = error else { Issue.record("got \(error)"); return }
        }
        #expect(fixture.controller.hasFatalStatus)
        #expect(fixture.queue.outstanding == 6)

        let reissued = try fixture.controller.reset(ioQueues: [fixture.queue])
        #expect(reissued == 6)
        #expect(!fixture.controller.hasFatalStatus && fixture.controller.state == .ready)
        var tags: [UInt64] = []
        try fixture.queue.drain { completion in
            #expect(completion.status.isSuccess)
            tags.append(completion.tag)
        }
        #expect(tags.sorted() == [0, 1, 2, 3, 4, 5])
        #expect(equalBytes(fixture.media(ns, lba: 0), buffer.address, 5 * 65536))
        // The queue keeps working after the reset.
        try fixture.queue.read(ns, lba: 0, blocks: 16, into: buffer, offset: 65536 * 3)
        #expect(fixture.queue.commandsReissued == 6)
    }

    @Test("deleting the I/O queue pair removes SQ then CQ on the device")
    func deleteQueue() throws {
        let fixture = try IOFixture()
        #expect(fixture.fake.ioSubmissionQueues[1] != nil)
        try fixture.controller.deleteIOQueue(fixture.queue)
        #expect(fixture.fake.ioSubmissionQueues.isEmpty && fixture.fake.ioCompletionQueues.isEmpty)
        #expect(fixture.fake.opcodes.suffix(2) == [NVMeAdminOpcode.deleteIOSubmissionQueue, NVMeAdminOpcode.deleteIOCompletionQueue])
    }
}
