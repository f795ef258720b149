import Platform

/// One finished I/O command as the queue hands it back.
public struct NVMeIOCompletion: Sendable, Equatable {
    /// The caller's tag from `submit`.
    public var tag: UInt64
    public var status: NVMeStatus
    public var opcode: UInt8
    public var namespaceID: UInt32
    public var lba: UInt64
    public var blocks: Int
    /// Submission to reaping, in nanoseconds.
    public var latencyNanoseconds: UInt64
    public var result: UInt32

    /// The completion as an error, or nil if it succeeded.
    public var error: NVMeError? {
        status.isSuccess ? nil : .ioFailed(opcode: opcode, namespaceID: namespaceID, lba: lba, blocks: blocks, status: status)
    }
}

/// An I/O submission/completion queue pair with per-command slots: the command identifier is
/// the slot index, and each slot owns preallocated PRP list pages (and the range list of a
/// Dataset Management command), so submitting and reaping allocate nothing.
///
/// Two ways to use it: `submit…` / `reap` / `waitForCompletions` for many commands in flight
/// (the caller tags them), or the blocking `read` / `write` / `flush` / `writeZeroes` /
/// `deallocate`, which split a request at MDTS, keep the queue full and return when all of it is
/// done. Single-threaded: one owner per queue.
public final class NVMeIOQueue<R: RegisterIO> {
    public internal(set) var pair: NVMeQueuePair<R>
    public let interrupt: InterruptLine?
    public let interruptVector: UInt16?
    let registers: R
    public let pageSize = 4096
    /// Largest data transfer of one command (MDTS, or the driver's cap when MDTS is 0).
    public let maximumTransferBytes: Int
    public let listPagesPerSlot: Int
    let listRegion: DMABuffer
    /// Commands that may be outstanding at once: depth - 1 (a full queue keeps one entry empty).
    public let slotCount: Int
    /// A command with no completion for this long, with nothing else completing, is a stall.
    public var timeoutNanoseconds: UInt64 = 5_000_000_000
    /// Poll the completion queue instead of sleeping on the interrupt.
    public var polling: Bool

    private var slotCommand: [NVMeCommand]
    private var slotTag: [UInt64]
    private var slotStart: [UInt64]
    private var slotBlocks: [Int]
    private var slotBusy: [Bool]
    private var slotSequence: [UInt64]
    private var freeSlots: [UInt16]
    private var sequence: UInt64 = 0
    public private(set) var outstanding = 0
    public private(set) var interruptsReceived: UInt64 = 0
    public private(set) var strayCompletions = 0
    public private(set) var commandsSubmitted: UInt64 = 0
    /// Commands re-submitted after a controller reset.
    public private(set) var commandsReissued = 0
    private let clock = MonotonicClock()

    init(pair: NVMeQueuePair<R>, registers: R, allocator: DMAAllocator, maximumTransferBytes: Int,
         interrupt: InterruptLine?, interruptVector: UInt16?) throws(NVMeError) {
        self.pair = pair
        self.registers = registers
        self.maximumTransferBytes = maximumTransferBytes
        self.interrupt = interrupt
        self.interruptVector = interruptVector
        polling = interrupt == nil
        slotCount = pair.depth - 1
        listPagesPerSlot = NVMePRP.listPagesForMaximum(maximumTransferBytes)
        do {
            listRegion = try allocator.allocate(size: slotCount * listPagesPerSlot * 4096, alignment: 4096)
        } catch {
            throw .dmaAllocationFailed(what: "PRP lists for queue \(pair.id)", reason: "\(error)")
        }
        slotCommand = Array(repeating: NVMeCommand(opcode: 0), count: slotCount)
        slotTag = Array(repeating: 0, count: slotCount)
        slotStart = Array(repeating: 0, count: slotCount)
        slotBlocks = Array(repeating: 0, count: slotCount)
        slotBusy = Array(repeating: false, count: slotCount)
        slotSequence = Array(repeating: 0, count: slotCount)
        freeSlots = (0..<slotCount).reversed().map { UInt16($0) }
    }

    public var id: UInt16 { pair.id }
    public var depth: Int { pair.depth }
    public var freeSlotCount: Int { freeSlots.count }

    @inline(__always)
    func listPage(_ slot: UInt16) -> (UnsafeMutableRawPointer, UInt64) {
        let offset = Int(slot) * listPagesPerSlot * 4096
        return (listRegion.address + offset, listRegion.deviceAddress + UInt64(offset))
    }

    // MARK: - Submitting

    /// Between `beginBatch()` and `endBatch()` submissions only write their SQ entries;
    /// `endBatch()` rings the tail doorbell once for all of them (NVMe 2.0 section 3.3.1.1).
    public private(set) var batching = false
    private var unrungEntries = 0
    /// Tail doorbell writes saved by batching, for statistics.
    public private(set) var doorbellsSaved: UInt64 = 0

    public func beginBatch() { batching = true }

    /// Rings the SQ tail doorbell once if anything was enqueued since `beginBatch()`.
    public func endBatch() {
        batching = false
        guard unrungEntries > 0 else { return }
        pair.ringSubmissionDoorbell()
        doorbellsSaved &+= UInt64(unrungEntries - 1)
        unrungEntries = 0
    }

    /// Submits a prepared command (its PRPs, if any, already set) under `tag`.
    @discardableResult
    public func submit(_ command: NVMeCommand, tag: UInt64, blocks: Int = 0) throws(NVMeError) -> UInt16 {
        guard let slot = freeSlots.popLast() else { throw .submissionQueueFull(queue: pair.id, depth: pair.depth) }
        return try submit(command, slot: slot, tag: tag, blocks: blocks)
    }

    @inline(__always)
    private func submit(_ command: NVMeCommand, slot: UInt16, tag: UInt64, blocks: Int) throws(NVMeError) -> UInt16 {
        let index = Int(slot)
        var entry = command
        entry.commandID = slot
        do {
            if batching {
                try pair.enqueue(entry, commandID: slot)
                unrungEntries += 1
            } else {
                try pair.submit(entry, commandID: slot)
            }
        } catch {
            freeSlots.append(slot)
            throw error
        }
        slotCommand[index] = entry
        slotTag[index] = tag
        slotBlocks[index] = blocks
        slotStart[index] = clock.now()
        slotBusy[index] = true
        sequence &+= 1
        slotSequence[index] = sequence
        outstanding += 1
        commandsSubmitted &+= 1
        return slot
    }

    /// Submits one Read or Write of `blocks` blocks at `lba`, moving data at device address
    /// `data` (contiguous, dword aligned). The range is checked first (nothing is submitted for
    /// a bad one), and the transfer must fit in one command (`maximumTransferBytes`).
    @discardableResult
    public func submitTransfer(opcode: UInt8, namespace: NVMeNamespace, lba: UInt64, blocks: Int,
                               data: UInt64, tag: UInt64) throws(NVMeError) -> UInt16 {
        try namespace.checkRange(lba: lba, blocks: blocks)
        return try submitTransferUnchecked(opcode: opcode, namespaceID: namespace.id, blockSize: namespace.blockSize,
                                           lba: lba, blocks: blocks, data: data, tag: tag)
    }

    /// As `submitTransfer` without the range check: for tests that want the device's own
    /// LBA Out of Range status.
    @discardableResult
    public func submitTransferUnchecked(opcode: UInt8, namespaceID: UInt32, blockSize: Int, lba: UInt64, blocks: Int,
                                        data: UInt64, tag: UInt64) throws(NVMeError) -> UInt16 {
        let length = blocks * blockSize
        guard blocks > 0, blocks <= 65536, length <= maximumTransferBytes else {
            throw .invalidRequest("\(blocks) blocks of \(blockSize) B exceed one command (max \(maximumTransferBytes) B, 65536 blocks)")
        }
        guard data & 3 == 0 else { throw .invalidRequest("data address 0x\(String(data, radix: 16)) is not dword aligned") }
        guard let slot = freeSlots.popLast() else { throw .submissionQueueFull(queue: pair.id, depth: pair.depth) }
        let (list, listAddress) = listPage(slot)
        guard let prp = NVMePRP.build(data: data, length: length, pageSize: pageSize, list: list,
                                      listDeviceAddress: listAddress, listCapacity: listPagesPerSlot) else {
            freeSlots.append(slot)
            throw .invalidRequest("PRP list for \(length) bytes does not fit the slot's \(listPagesPerSlot) page(s)")
        }
        let command = opcode == NVMeIOOpcode.read
            ? NVMeCommand.read(namespaceID: namespaceID, lba: lba, blocks: blocks, prp1: prp.prp1, prp2: prp.prp2)
            : NVMeCommand.write(namespaceID: namespaceID, lba: lba, blocks: blocks, prp1: prp.prp1, prp2: prp.prp2)
        var typed = command
        typed.opcode = opcode
        return try submit(typed, slot: slot, tag: tag, blocks: blocks)
    }

    /// Submits one Dataset Management command with up to 256 ranges, written into the slot's
    /// own page.
    @discardableResult
    public func submitDeallocate(namespace: NVMeNamespace, ranges: [(lba: UInt64, blocks: Int)], tag: UInt64) throws(NVMeError) -> UInt16 {
        guard !ranges.isEmpty, ranges.count <= 256 else { throw .invalidRequest("Dataset Management takes 1 to 256 ranges") }
        for range in ranges {
            guard range.blocks <= Int(UInt32.max) else { throw .invalidRequest("a range of \(range.blocks) blocks is too long") }
            try namespace.checkRange(lba: range.lba, blocks: range.blocks)
        }
        guard let slot = freeSlots.popLast() else { throw .submissionQueueFull(queue: pair.id, depth: pair.depth) }
        let (page, address) = listPage(slot)
        for (index, range) in ranges.enumerated() {
            let entry = page + index * 16
            entry.storeBytes(of: UInt32(0), toByteOffset: 0, as: UInt32.self)
            entry.storeBytes(of: UInt32(range.blocks).littleEndian, toByteOffset: 4, as: UInt32.self)
            entry.storeBytes(of: range.lba.littleEndian, toByteOffset: 8, as: UInt64.self)
        }
        let command = NVMeCommand.datasetManagement(namespaceID: namespace.id, ranges: ranges.count, deallocate: true, prp1: address)
        return try submit(command, slot: slot, tag: tag, blocks: ranges.reduce(0) { $0 + $1.blocks })
    }

    /// The same for one range, without building an array (the server's per-request path).
    @discardableResult
    public func submitDeallocate(namespace: NVMeNamespace, lba: UInt64, blocks: Int, tag: UInt64) throws(NVMeError) -> UInt16 {
        guard blocks <= Int(UInt32.max) else { throw .invalidRequest("a range of \(blocks) blocks is too long") }
        try namespace.checkRange(lba: lba, blocks: blocks)
        guard let slot = freeSlots.popLast() else { throw .submissionQueueFull(queue: pair.id, depth: pair.depth) }
        let (page, address) = listPage(slot)
        page.storeBytes(of: UInt32(0), toByteOffset: 0, as: UInt32.self)
        page.storeBytes(of: UInt32(blocks).littleEndian, toByteOffset: 4, as: UInt32.self)
        page.storeBytes(of: lba.littleEndian, toByteOffset: 8, as: UInt64.self)
        let command = NVMeCommand.datasetManagement(namespaceID: namespace.id, ranges: 1, deallocate: true, prp1: address)
        return try submit(command, slot: slot, tag: tag, blocks: blocks)
    }

    // MARK: - Completing

    /// Reaps every completion posted so far, calling `body` for each; rings the CQ head
    /// doorbell once. Returns how many were reaped.
    @discardableResult
    @inline(__always)
    public func reap(_ body: (NVMeIOCompletion) -> Void) -> Int {
        var count = 0, consumed = 0
        var now: UInt64 = 0
        while let completion = pair.nextCompletion() {
            consumed += 1
            let slot = Int(completion.commandID)
            guard slot < slotCount, slotBusy[slot] else { strayCompletions += 1; continue }
            if now == 0 { now = clock.now() }
            let command = slotCommand[slot]
            slotBusy[slot] = false
            outstanding -= 1
            freeSlots.append(UInt16(slot))
            count += 1
            body(NVMeIOCompletion(tag: slotTag[slot], status: completion.status, opcode: command.opcode,
                                  namespaceID: command.namespaceID,
                                  lba: UInt64(command.cdw10) | UInt64(command.cdw11) << 32, blocks: slotBlocks[slot],
                                  latencyNanoseconds: now &- slotStart[slot], result: completion.result))
        }
        // One doorbell write per batch, none for an empty poll (an MMIO write is a VM exit).
        if consumed > 0 { pair.acknowledgeCompletions() }
        return count
    }

    /// Waits until at least one completion arrives (or nothing is outstanding) and reaps.
    /// Throws `.controllerFatalStatus` when CSTS.CFS is set and `.commandTimeout` when the
    /// oldest command got no answer within `timeoutNanoseconds` while nothing completed.
    @discardableResult
    public func waitForCompletions(_ body: (NVMeIOCompletion) -> Void) throws(NVMeError) -> Int {
        guard outstanding > 0 else { return 0 }
        let start = clock.now()
        var spins = 0
        while true {
            let reaped = reap(body)
            if reaped > 0 { return reaped }
            spins += 1
            // Check for a stall or a dead controller now and then, not on every spin.
            if spins & 63 == 0 || !polling {
                let now = clock.now()
                if now &- start >= timeoutNanoseconds { try stalled(waited: now &- start) }
                if spins & 1023 == 0 || !polling { try checkFatal() }
            }
            if !polling, let interrupt {
                interruptsReceived &+= interrupt.wait(timeoutNanoseconds: 10_000_000)
            }
        }
    }

    /// Throws if CSTS reports the controller gone or fatally failed.
    public func checkFatal() throws(NVMeError) {
        let csts = registers.read32(NVMeRegister.csts)
        if csts == NVMeCSTS.deviceGone { throw .deviceNotResponding(register: "CSTS") }
        if csts & NVMeCSTS.fatal != 0 { throw .controllerFatalStatus(state: .ready, csts: csts) }
    }

    private func stalled(waited: UInt64) throws(NVMeError) {
        try checkFatal()
        let oldest = (0..<slotCount).filter { slotBusy[$0] }.min { slotSequence[$0] < slotSequence[$1] } ?? 0
        throw .commandTimeout(opcode: slotCommand[oldest].opcode, commandID: UInt16(oldest), waitedNanoseconds: waited)
    }

    /// Waits until nothing is outstanding.
    public func drain(_ body: (NVMeIOCompletion) -> Void) throws(NVMeError) {
        while outstanding > 0 { try waitForCompletions(body) }
    }

    /// Completions the controller has posted that nobody has reaped yet (a peek: nothing is
    /// consumed and no doorbell is written).
    public var postedCompletionCount: Int { pair.postedCompletions() }

    /// Tags of the commands in flight, oldest first.
    public var outstandingTags: [UInt64] {
        (0..<slotCount).filter { slotBusy[$0] }.sorted { slotSequence[$0] < slotSequence[$1] }.map { slotTag[$0] }
    }

    // MARK: - Reset support

    /// After the controller recreated this queue (empty, indices 0): writes every command that
    /// was in flight into the submission queue again, oldest first, with the same slot and PRPs
    /// (their data buffers and list pages are untouched). Returns how many.
    @discardableResult
    func reissueOutstanding() throws(NVMeError) -> Int {
        let slots = (0..<slotCount).filter { slotBusy[$0] }.sorted { slotSequence[$0] < slotSequence[$1] }
        let now = clock.now()
        for slot in slots {
            try pair.submit(slotCommand[slot], commandID: UInt16(slot))
            slotStart[slot] = now
        }
        commandsReissued += slots.count
        return slots.count
    }

    /// Forgets every command in flight (after a reset that will not re-issue them).
    func abandonOutstanding() {
        for slot in 0..<slotCount where slotBusy[slot] {
            slotBusy[slot] = false
            freeSlots.append(UInt16(slot))
        }
        outstanding = 0
    }

    // MARK: - Blocking requests

    /// Reads `blocks` blocks at `lba` into `buffer` at `offset`, split into commands of at most
    /// `maximumTransferBytes`, all in flight together as far as the queue allows.
    public func read(_ namespace: NVMeNamespace, lba: UInt64, blocks: Int, into buffer: DMABuffer, offset: Int = 0) throws(NVMeError) {
        try transfer(NVMeIOOpcode.read, namespace, lba: lba, blocks: blocks, buffer: buffer, offset: offset)
    }

    public func write(_ namespace: NVMeNamespace, lba: UInt64, blocks: Int, from buffer: DMABuffer, offset: Int = 0) throws(NVMeError) {
        try transfer(NVMeIOOpcode.write, namespace, lba: lba, blocks: blocks, buffer: buffer, offset: offset)
    }

    private func requireIdle(_ operation: String) throws(NVMeError) {
        guard outstanding == 0 else {
            throw .invalidRequest("\(operation) needs an idle queue (\(outstanding) command(s) in flight)")
        }
    }

    private func transfer(_ opcode: UInt8, _ namespace: NVMeNamespace, lba: UInt64, blocks: Int,
                          buffer: DMABuffer, offset: Int) throws(NVMeError) {
        try namespace.checkRange(lba: lba, blocks: blocks)
        let length = blocks * namespace.blockSize
        guard offset >= 0, offset + length <= buffer.size else {
            throw .invalidRequest("\(length) bytes at offset \(offset) overrun a \(buffer.size)-byte buffer")
        }
        try requireIdle("a blocking transfer")
        let chunkBlocks = max(1, min(65536, maximumTransferBytes / namespace.blockSize))
        var next = 0
        var failure: NVMeError?
        while next < blocks || outstanding > 0 {
            while next < blocks, failure == nil, !freeSlots.isEmpty {
                let count = min(chunkBlocks, blocks - next)
                try submitTransferUnchecked(opcode: opcode, namespaceID: namespace.id, blockSize: namespace.blockSize,
                                            lba: lba + UInt64(next), blocks: count,
                                            data: buffer.deviceAddress + UInt64(offset + next * namespace.blockSize), tag: 0)
                next += count
            }
            if failure != nil, outstanding == 0 { break }
            if outstanding > 0 {
                try waitForCompletions { completion in if failure == nil, let error = completion.error { failure = error } }
            }
        }
        if let failure { throw failure }
    }

    /// Flush (NVM command set 3.2.2): everything written so far is on non-volatile media.
    public func flush(_ namespace: NVMeNamespace) throws(NVMeError) {
        try requireIdle("flush")
        try submit(.flush(namespaceID: namespace.id), tag: 0)
        try finishOne()
    }

    /// Write Zeroes over the range, split at 65536 blocks per command.
    public func writeZeroes(_ namespace: NVMeNamespace, lba: UInt64, blocks: Int) throws(NVMeError) {
        try namespace.checkRange(lba: lba, blocks: blocks)
        try requireIdle("write zeroes")
        var next = 0
        var failure: NVMeError?
        while next < blocks || outstanding > 0 {
            while next < blocks, failure == nil, !freeSlots.isEmpty {
                let count = min(65536, blocks - next)
                try submit(.writeZeroes(namespaceID: namespace.id, lba: lba + UInt64(next), blocks: count), tag: 0, blocks: count)
                next += count
            }
            if failure != nil, outstanding == 0 { break }
            try waitForCompletions { completion in if failure == nil, let error = completion.error { failure = error } }
        }
        if let failure { throw failure }
    }

    /// Dataset Management, Deallocate ("trim") of the ranges (at most 256, each up to 2^32-1
    /// blocks).
    public func deallocate(_ namespace: NVMeNamespace, ranges: [(lba: UInt64, blocks: Int)]) throws(NVMeError) {
        try requireIdle("deallocate")
        try submitDeallocate(namespace: namespace, ranges: ranges, tag: 0)
        try finishOne()
    }

    private func finishOne() throws(NVMeError) {
        var failure: NVMeError?
        try drain { completion in if let error = completion.error { failure = error } }
        if let failure { throw failure }
    }
}
