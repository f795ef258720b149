import NVMe
import Platform
import Synchronization

/// A fake NVMe controller modelling what QEMU's hw/nvme/ctrl.c does for the registers and
/// admin commands the driver uses: CC.EN toggles CSTS.RDY, the admin SQ doorbell makes it fetch
/// entries from (identity-mapped) DMA memory, DMA Identify data to PRP1, post a completion with
/// the current phase and raise the interrupt.
final class FakeNVMeController: RegisterIO {
    enum Mode {
        case normal
        /// CSTS.RDY never becomes 1.
        case stalled
        /// CSTS.CFS is set when the host enables the controller.
        case fatalOnEnable
        /// Commands are consumed but never completed.
        case silent
    }

    var mode: Mode
    let mapper: IdentityDMAMapper
    let interrupt: TestInterrupt?
    var serial = "LMTNVME0001"
    var model = "Limitless Fake NVMe Ctrl"
    var firmware = "1.0"
    var mdts: UInt8 = 7
    /// nsid -> (blocks, LBA data size exponent)
    var namespaces: [UInt32: (blocks: UInt64, lbads: UInt8)] = [1: (131072, 9), 2: (16384, 12)]
    var maxQueueEntries = 64
    var doorbellStrideExponent = 0
    var timeoutUnits: UInt8 = 1

    private var regs = RegisterFile()
    private(set) var commandsProcessed = 0
    private(set) var opcodes: [UInt8] = []
    private(set) var createdQueues: [UInt16] = []
    private(set) var lastCompletionDoorbell: UInt32 = 0

    // Admin queue state as the controller holds it.
    private var sqBase: UInt64 = 0, cqBase: UInt64 = 0
    private var sqDepth = 0, cqDepth = 0
    private var sqHead = 0, cqTail = 0, cqHead = 0
    private var phase = true
    private(set) var phaseFlips = 0

    let length = 0x2000

    // MARK: I/O queues and RAM-backed namespaces

    final class CompletionQueue {
        var base: UInt64, depth: Int, vector: UInt16, interruptsEnabled: Bool
        var tail = 0, head = 0, phase = true
        init(base: UInt64, depth: Int, vector: UInt16, interruptsEnabled: Bool) {
            self.base = base; self.depth = depth; self.vector = vector; self.interruptsEnabled = interruptsEnabled
        }
    }
    final class SubmissionQueue {
        var base: UInt64, depth: Int, completionQueue: UInt16
        var head = 0, tail = 0
        init(base: UInt64, depth: Int, completionQueue: UInt16) {
            self.base = base; self.depth = depth; self.completionQueue = completionQueue
        }
    }
    private(set) var ioCompletionQueues: [UInt16: CompletionQueue] = [:]
    private(set) var ioSubmissionQueues: [UInt16: SubmissionQueue] = [:]
    /// Interrupt raised for I/O completion queues with interrupts enabled.
    var ioInterrupt: TestInterrupt?
    /// I/O commands are fetched but never completed (a stalled queue).
    var stallIO = false
    /// I/O submission queue tail doorbell writes seen (batching rings once for many commands).
    private(set) var ioSubmissionDoorbells = 0
    /// The next I/O doorbell sets CSTS.CFS instead of fetching anything.
    var fatalOnNextIODoorbell = false
    /// Hold I/O doorbells: commands pile up until `releaseHeldIO()`, so the host can fill the queue.
    var holdIO = false
    /// DLFEAT reported in Identify Namespace (001b: deallocated blocks read as zeroes).
    var dlfeat: UInt8 = 0x01
    /// ONCS: Dataset Management and Write Zeroes.
    var oncs: UInt16 = 0x0C
    private(set) var ioCommandsProcessed = 0
    private(set) var ioOpcodes: [UInt8] = []
    private(set) var ioStatuses: [NVMeStatus] = []
    private(set) var bytesMoved = 0
    /// PRP list pages the fake walked for the latest data command.
    private(set) var lastListPages = 0
    private(set) var largestTransfer = 0
    private(set) var maxOutstandingSeen = 0
    private(set) var deallocatedRanges: [(lba: UInt64, blocks: Int)] = []
    private var storage: [UInt32: UnsafeMutableRawPointer] = [:]
    var memoryPageSize: Int { 4096 }

    deinit { for (_, pointer) in storage { pointer.deallocate() } }

    /// The namespace's bytes (allocated zeroed on first use).
    func media(_ nsid: UInt32) -> UnsafeMutableRawPointer {
        if let pointer = storage[nsid] { return pointer }
        let ns = namespaces[nsid]!
        let size = Int(ns.blocks) << Int(ns.lbads)
        let pointer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 4096)
        pointer.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        storage[nsid] = pointer
        return pointer
    }

    init(mode: Mode = .normal, mapper: IdentityDMAMapper, interrupt: TestInterrupt? = nil) {
        self.mode = mode
        self.mapper = mapper
        self.interrupt = interrupt
        regs[NVMeRegister.vs] = 0x0001_0400  // 1.4.0
    }

    var stride: Int { 4 << doorbellStrideExponent }

    private var capability: UInt64 {
        UInt64(maxQueueEntries - 1) | 1 << 16 | UInt64(timeoutUnits) << 24
            | UInt64(doorbellStrideExponent) << 32 | 1 << 37  // CSS: NVM
    }

    func read8(_ offset: Int) -> UInt8 { UInt8(truncatingIfNeeded: read32(offset & ~3) >> ((offset & 3) * 8)) }
    func read16(_ offset: Int) -> UInt16 { UInt16(truncatingIfNeeded: read32(offset & ~3) >> ((offset & 3) * 8)) }
    func read64(_ offset: Int) -> UInt64 { UInt64(read32(offset)) | UInt64(read32(offset + 4)) << 32 }
    func write8(_ offset: Int, _ value: UInt8) { fatalError("8-bit write to NVMe register 0x\(String(offset, radix: 16))") }
    func write16(_ offset: Int, _ value: UInt16) { fatalError("16-bit write to NVMe register 0x\(String(offset, radix: 16))") }
    func write64(_ offset: Int, _ value: UInt64) {
        write32(offset, UInt32(truncatingIfNeeded: value))
        write32(offset + 4, UInt32(truncatingIfNeeded: value >> 32))
    }

    /// Register accesses are serialised, as the device's one register interface serialises
    /// MMIO: queues owned by different threads ring their doorbells at the same time.
    private let access = Mutex(())

    func read32(_ offset: Int) -> UInt32 {
        access.withLock { _ in unlockedRead32(offset) }
    }

    private func unlockedRead32(_ offset: Int) -> UInt32 {
        switch offset {
        case NVMeRegister.cap: UInt32(truncatingIfNeeded: capability)
        case NVMeRegister.cap + 4: UInt32(truncatingIfNeeded: capability >> 32)
        default: regs[offset]
        }
    }

    func write32(_ offset: Int, _ value: UInt32) {
        access.withLock { _ in unlockedWrite32(offset, value) }
    }

    private func unlockedWrite32(_ offset: Int, _ value: UInt32) {
        if offset >= NVMeRegister.doorbellBase {
            let index = (offset - NVMeRegister.doorbellBase) / stride
            precondition((offset - NVMeRegister.doorbellBase) % stride == 0, "doorbell write off the CAP.DSTRD grid")
            if index == 0 { adminSubmissionDoorbell(tail: Int(value)) }
            else if index == 1 { cqHead = Int(value); lastCompletionDoorbell = value }
            else if index % 2 == 0 { ioSubmissionDoorbell(queue: UInt16(index / 2), tail: Int(value)) }
            else { ioCompletionQueues[UInt16(index / 2)]?.head = Int(value) }
            return
        }
        switch offset {
        case NVMeRegister.cc: writeCC(value)
        case NVMeRegister.csts, NVMeRegister.cap, NVMeRegister.cap + 4, NVMeRegister.vs: break  // read-only
        default: regs[offset] = value
        }
    }

    private func writeCC(_ value: UInt32) {
        let old = regs[NVMeRegister.cc]
        regs[NVMeRegister.cc] = value
        if old & NVMeCC.enable == 0, value & NVMeCC.enable != 0 {
            switch mode {
            case .stalled: return
            case .fatalOnEnable: regs[NVMeRegister.csts] |= NVMeCSTS.fatal; return
            case .normal, .silent: break
            }
            let aqa = regs[NVMeRegister.aqa]
            sqDepth = Int(aqa & 0xFFF) + 1
            cqDepth = Int((aqa >> 16) & 0xFFF) + 1
            sqBase = UInt64(regs[NVMeRegister.asq]) | UInt64(regs[NVMeRegister.asq + 4]) << 32
            cqBase = UInt64(regs[NVMeRegister.acq]) | UInt64(regs[NVMeRegister.acq + 4]) << 32
            precondition(mapper.isMapped(sqBase, size: sqDepth * 64) && mapper.isMapped(cqBase, size: cqDepth * 16),
                         "admin queues not in mapped DMA memory")
            precondition((value >> 16) & 0xF == 6 && (value >> 20) & 0xF == 4, "IOSQES/IOCQES not 6/4")
            sqHead = 0; cqTail = 0; cqHead = 0; phase = true
            regs[NVMeRegister.csts] = NVMeCSTS.ready
        } else if old & NVMeCC.enable != 0, value & NVMeCC.enable == 0 {
            regs[NVMeRegister.csts] = 0  // controller reset clears RDY, CFS and SHST
            ioSubmissionQueues.removeAll()  // ... and deletes every I/O queue (section 3.7.2)
            ioCompletionQueues.removeAll()
        }
        if value & NVMeCC.shutdownMask == NVMeCC.shutdownNormal {
            regs[NVMeRegister.csts] = (regs[NVMeRegister.csts] & ~NVMeCSTS.shutdownStatusMask) | NVMeCSTS.shutdownComplete
        }
    }

    private func adminSubmissionDoorbell(tail: Int) {
        guard regs[NVMeRegister.csts] & NVMeCSTS.ready != 0 else { return }
        while sqHead != tail {
            let command = NVMeCommand(reading: hostPointer(sqBase + UInt64(sqHead * 64)))
            sqHead = (sqHead + 1) % sqDepth
            commandsProcessed += 1
            opcodes.append(command.opcode)
            if mode == .silent { continue }
            let (status, result) = execute(command)
            post(NVMeCompletion(result: result, submissionQueueHead: UInt16(sqHead), submissionQueueID: 0,
                                commandID: command.commandID, phase: phase, status: status))
        }
    }

    private func post(_ completion: NVMeCompletion) {
        precondition((cqTail + 1) % cqDepth != cqHead, "fake NVMe: completion queue overflow (host did not ring CQ head)")
        let entry = hostPointer(cqBase + UInt64(cqTail * 16))
        entry.storeBytes(of: completion.result, toByteOffset: 0, as: UInt32.self)
        entry.storeBytes(of: 0, toByteOffset: 4, as: UInt32.self)
        entry.storeBytes(of: completion.dword2, toByteOffset: 8, as: UInt32.self)
        entry.storeBytes(of: completion.dword3, toByteOffset: 12, as: UInt32.self)
        cqTail += 1
        if cqTail == cqDepth { cqTail = 0; phase.toggle(); phaseFlips += 1 }
        interrupt?.raise()
    }

    /// Copies `page` to PRP1 the way a device DMAs: only if the IOMMU maps it. A real device
    /// behind an IOMMU gets a fault and reports Data Transfer Error. (QEMU's model ignores the
    /// failed DMA and reports success; see the report.)
    private func dmaToHost(_ page: [UInt8], prp1: UInt64) -> NVMeStatus {
        guard mapper.isMapped(prp1, size: page.count) else { return .dataTransferError }
        page.withUnsafeBytes { hostPointer(prp1).copyMemory(from: $0.baseAddress!, byteCount: page.count) }
        return .success
    }

    private func execute(_ command: NVMeCommand) -> (NVMeStatus, UInt32) {
        switch command.opcode {
        case NVMeAdminOpcode.identify:
            var page = [UInt8](repeating: 0, count: 4096)
            switch UInt8(command.cdw10 & 0xFF) {
            case NVMeIdentifyCNS.controller:
                page[0] = 0x36; page[1] = 0x1b
                put(serial, at: 4, width: 20, in: &page)
                put(model, at: 24, width: 40, in: &page)
                put(firmware, at: 64, width: 8, in: &page)
                page[77] = mdts
                page[80] = 0x00; page[81] = 0x04; page[82] = 0x01  // 1.4.0
                page[512] = 0x66; page[513] = 0x44
                page[520] = UInt8(truncatingIfNeeded: oncs); page[521] = UInt8(truncatingIfNeeded: oncs >> 8)
                let nn = UInt32(namespaces.keys.max() ?? 0)
                for byte in 0..<4 { page[516 + byte] = UInt8(truncatingIfNeeded: nn >> (8 * byte)) }
            case NVMeIdentifyCNS.namespace:
                guard let ns = namespaces[command.namespaceID] else { return (.invalidNamespace, 0) }
                for byte in 0..<8 {
                    page[byte] = UInt8(truncatingIfNeeded: ns.blocks >> (8 * byte))
                    page[8 + byte] = page[byte]
                }
                page[25] = 1      // two formats
                page[26] = 1      // format 1 in use
                page[128 + 2] = 9  // format 0: 512 B
                page[132 + 2] = ns.lbads
                page[33] = dlfeat
            case NVMeIdentifyCNS.activeNamespaceList:
                for (index, id) in namespaces.keys.sorted().enumerated() {
                    for byte in 0..<4 { page[index * 4 + byte] = UInt8(truncatingIfNeeded: id >> (8 * byte)) }
                }
            default:
                return (.invalidField, 0)
            }
            return (dmaToHost(page, prp1: command.prp1), 0)
        case NVMeAdminOpcode.setFeatures where command.cdw10 & 0xFF == UInt32(NVMeFeature.numberOfQueues):
            // Grant at most 4 of each (0's based in the result, like the request).
            let nsq = min(command.cdw11 & 0xFFFF, 3), ncq = min(command.cdw11 >> 16, 3)
            return (.success, ncq << 16 | nsq)
        case NVMeAdminOpcode.createIOCompletionQueue, NVMeAdminOpcode.createIOSubmissionQueue:
            guard mapper.isMapped(command.prp1, size: 64) else { return (.dataTransferError, 0) }
            let qid = UInt16(command.cdw10 & 0xFFFF), entries = Int(command.cdw10 >> 16) + 1
            // What QEMU's nvme_create_cq / nvme_create_sq check (hw/nvme/ctrl.c).
            guard qid != 0, qid <= 4 else { return (NVMeStatus(type: .commandSpecific, code: 0x01, doNotRetry: true), 0) }
            guard entries >= 2, entries <= maxQueueEntries else { return (NVMeStatus(type: .commandSpecific, code: 0x02, doNotRetry: true), 0) }
            guard command.prp1 & 0xFFF == 0, command.cdw11 & 1 == 1 else { return (.invalidField, 0) }
            if command.opcode == NVMeAdminOpcode.createIOCompletionQueue {
                guard ioCompletionQueues[qid] == nil else { return (NVMeStatus(type: .commandSpecific, code: 0x01, doNotRetry: true), 0) }
                ioCompletionQueues[qid] = CompletionQueue(base: command.prp1, depth: entries, vector: UInt16(command.cdw11 >> 16),
                                                          interruptsEnabled: command.cdw11 & 2 != 0)
            } else {
                let cqid = UInt16(command.cdw11 >> 16)
                guard ioCompletionQueues[cqid] != nil else { return (NVMeStatus(type: .commandSpecific, code: 0x00, doNotRetry: true), 0) }
                guard ioSubmissionQueues[qid] == nil else { return (NVMeStatus(type: .commandSpecific, code: 0x01, doNotRetry: true), 0) }
                ioSubmissionQueues[qid] = SubmissionQueue(base: command.prp1, depth: entries, completionQueue: cqid)
            }
            createdQueues.append(qid)
            return (.success, 0)
        case NVMeAdminOpcode.deleteIOSubmissionQueue:
            let qid = UInt16(command.cdw10 & 0xFFFF)
            guard ioSubmissionQueues.removeValue(forKey: qid) != nil else { return (NVMeStatus(type: .commandSpecific, code: 0x01, doNotRetry: true), 0) }
            return (.success, 0)
        case NVMeAdminOpcode.deleteIOCompletionQueue:
            let qid = UInt16(command.cdw10 & 0xFFFF)
            guard ioCompletionQueues[qid] != nil else { return (NVMeStatus(type: .commandSpecific, code: 0x01, doNotRetry: true), 0) }
            guard !ioSubmissionQueues.values.contains(where: { $0.completionQueue == qid }) else {
                return (NVMeStatus(type: .commandSpecific, code: 0x0C, doNotRetry: true), 0)
            }
            ioCompletionQueues[qid] = nil
            return (.success, 0)
        default:
            return (.invalidOpcode, 0)
        }
    }

    private func put(_ text: String, at offset: Int, width: Int, in page: inout [UInt8]) {
        let bytes = Array(text.utf8.prefix(width))
        for index in 0..<width { page[offset + index] = index < bytes.count ? bytes[index] : 0x20 }
    }

    // MARK: - I/O processing

    private func ioSubmissionDoorbell(queue qid: UInt16, tail: Int) {
        ioSubmissionDoorbells += 1
        guard regs[NVMeRegister.csts] & NVMeCSTS.ready != 0, let sq = ioSubmissionQueues[qid] else { return }
        precondition(tail < sq.depth, "SQ tail doorbell beyond the queue")
        sq.tail = tail
        if fatalOnNextIODoorbell {
            fatalOnNextIODoorbell = false
            regs[NVMeRegister.csts] |= NVMeCSTS.fatal
            return
        }
        if holdIO {
            maxOutstandingSeen = max(maxOutstandingSeen, (sq.tail - sq.head + sq.depth) % sq.depth)
            return
        }
        processIO(qid)
    }

    /// Processes every I/O command held back by `holdIO`.
    func releaseHeldIO() {
        holdIO = false
        for qid in ioSubmissionQueues.keys.sorted() { processIO(qid) }
    }

    private func processIO(_ qid: UInt16) {
        guard let sq = ioSubmissionQueues[qid], let cq = ioCompletionQueues[sq.completionQueue] else { return }
        maxOutstandingSeen = max(maxOutstandingSeen, (sq.tail - sq.head + sq.depth) % sq.depth)
        while sq.head != sq.tail {
            let command = NVMeCommand(reading: hostPointer(sq.base + UInt64(sq.head * 64)))
            sq.head = (sq.head + 1) % sq.depth
            ioCommandsProcessed += 1
            ioOpcodes.append(command.opcode)
            if stallIO { continue }
            let status = executeIO(command)
            ioStatuses.append(status)
            precondition((cq.tail + 1) % cq.depth != cq.head, "fake NVMe: I/O completion queue overflow")
            let completion = NVMeCompletion(submissionQueueHead: UInt16(sq.head), submissionQueueID: qid,
                                            commandID: command.commandID, phase: cq.phase, status: status)
            let entry = hostPointer(cq.base + UInt64(cq.tail * 16))
            entry.storeBytes(of: 0, toByteOffset: 0, as: UInt32.self)
            entry.storeBytes(of: 0, toByteOffset: 4, as: UInt32.self)
            entry.storeBytes(of: completion.dword2, toByteOffset: 8, as: UInt32.self)
            entry.storeBytes(of: completion.dword3, toByteOffset: 12, as: UInt32.self)
            cq.tail += 1
            if cq.tail == cq.depth { cq.tail = 0; cq.phase.toggle() }
            if cq.interruptsEnabled { ioInterrupt?.raise() }
        }
    }

    /// The host memory segments a command's PRPs describe, following QEMU's nvme_map_prp: PRP1
    /// with its offset, PRP2 as the second page or a list whose last entry chains to the next
    /// list page while more than one entry remains. Enforces the alignment rules.
    func walkPRP(prp1: UInt64, prp2: UInt64, length: Int) -> Result<[(UInt64, Int)], FakePRPError> {
        let page = memoryPageSize, mask = UInt64(page - 1)
        guard prp1 & 3 == 0 else { return .failure(FakePRPError(status: .prpOffsetInvalid)) }
        var segments: [(UInt64, Int)] = []
        let first = min(length, page - Int(prp1 & mask))
        segments.append((prp1, first))
        var remaining = length - first
        lastListPages = 0
        guard remaining > 0 else { return .success(segments) }
        if remaining <= page {
            guard prp2 & mask == 0 else { return .failure(FakePRPError(status: .prpOffsetInvalid)) }
            segments.append((prp2, remaining))
            return .success(segments)
        }
        guard prp2 & 7 == 0 else { return .failure(FakePRPError(status: .prpOffsetInvalid)) }
        var listAddress = prp2
        var entriesInPage = (page - Int(prp2 & mask)) / 8
        var index = 0
        lastListPages = 1
        while remaining > 0 {
            guard mapper.isMapped(listAddress + UInt64(index * 8), size: 8) else { return .failure(FakePRPError(status: .dataTransferError)) }
            var entry = UInt64(littleEndian: hostPointer(listAddress + UInt64(index * 8)).load(as: UInt64.self))
            if index == entriesInPage - 1 && remaining > page {
                guard entry & mask == 0 else { return .failure(FakePRPError(status: .prpOffsetInvalid)) }
                listAddress = entry
                entriesInPage = page / 8
                index = 0
                lastListPages += 1
                guard mapper.isMapped(listAddress, size: 8) else { return .failure(FakePRPError(status: .dataTransferError)) }
                entry = UInt64(littleEndian: hostPointer(listAddress).load(as: UInt64.self))
            }
            guard entry & mask == 0 else { return .failure(FakePRPError(status: .prpOffsetInvalid)) }
            let count = min(remaining, page)
            segments.append((entry, count))
            remaining -= count
            index += 1
        }
        return .success(segments)
    }

    private func executeIO(_ command: NVMeCommand) -> NVMeStatus {
        guard let ns = namespaces[command.namespaceID] else { return .invalidNamespace }
        let blockSize = 1 << Int(ns.lbads)
        let lba = UInt64(command.cdw10) | UInt64(command.cdw11) << 32
        let blocks = Int(command.cdw12 & 0xFFFF) + 1
        func inRange(_ lba: UInt64, _ blocks: Int) -> Bool { lba < ns.blocks && UInt64(blocks) <= ns.blocks - lba }
        switch command.opcode {
        case NVMeIOOpcode.flush:
            return .success
        case NVMeIOOpcode.read, NVMeIOOpcode.write:
            let length = blocks * blockSize
            if mdts != 0, length > memoryPageSize << Int(mdts) { return .invalidField }
            guard inRange(lba, blocks) else { return .lbaOutOfRange }
            let segments: [(UInt64, Int)]
            switch walkPRP(prp1: command.prp1, prp2: command.prp2, length: length) {
            case .success(let found): segments = found
            case .failure(let error): return error.status
            }
            guard segments.allSatisfy({ mapper.isMapped($0.0, size: $0.1) }) else { return .dataTransferError }
            var position = media(command.namespaceID) + Int(lba) * blockSize
            for (address, count) in segments {
                if command.opcode == NVMeIOOpcode.write {
                    position.copyMemory(from: hostPointer(address), byteCount: count)
                } else {
                    hostPointer(address).copyMemory(from: position, byteCount: count)
                }
                position += count
            }
            bytesMoved += length
            largestTransfer = max(largestTransfer, length)
            return .success
        case NVMeIOOpcode.writeZeroes:
            guard inRange(lba, blocks) else { return .lbaOutOfRange }
            (media(command.namespaceID) + Int(lba) * blockSize).initializeMemory(as: UInt8.self, repeating: 0, count: blocks * blockSize)
            return .success
        case NVMeIOOpcode.datasetManagement:
            let count = Int(command.cdw10 & 0xFF) + 1
            guard mapper.isMapped(command.prp1, size: count * 16) else { return .dataTransferError }
            var ranges: [(lba: UInt64, blocks: Int)] = []
            for index in 0..<count {
                let entry = hostPointer(command.prp1 + UInt64(index * 16))
                let length = Int(UInt32(littleEndian: entry.loadUnaligned(fromByteOffset: 4, as: UInt32.self)))
                let start = UInt64(littleEndian: entry.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
                guard inRange(start, length) else { return .lbaOutOfRange }
                ranges.append((start, length))
            }
            if command.cdw11 & 4 != 0 {
                for range in ranges {
                    (media(command.namespaceID) + Int(range.lba) * blockSize)
                        .initializeMemory(as: UInt8.self, repeating: dlfeat & 7 == 2 ? 0xFF : 0, count: range.blocks * blockSize)
                }
                deallocatedRanges += ranges
            }
            return .success
        default:
            return .invalidOpcode
        }
    }
}

struct FakePRPError: Error { let status: NVMeStatus }
