import NVMe
import Platform

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

    func read32(_ offset: Int) -> UInt32 {
        switch offset {
        case NVMeRegister.cap: UInt32(truncatingIfNeeded: capability)
        case NVMeRegister.cap + 4: UInt32(truncatingIfNeeded: capability >> 32)
        default: regs[offset]
        }
    }

    func write32(_ offset: Int, _ value: UInt32) {
        if offset >= NVMeRegister.doorbellBase {
            let index = (offset - NVMeRegister.doorbellBase) / stride
            precondition((offset - NVMeRegister.doorbellBase) % stride == 0, "doorbell write off the CAP.DSTRD grid")
            if index == 0 { adminSubmissionDoorbell(tail: Int(value)) }
            if index == 1 { cqHead = Int(value); lastCompletionDoorbell = value }
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
            createdQueues.append(UInt16(command.cdw10 & 0xFFFF))
            return (.success, 0)
        default:
            return (.invalidOpcode, 0)
        }
    }

    private func put(_ text: String, at offset: Int, width: Int, in page: inout [UInt8]) {
        let bytes = Array(text.utf8.prefix(width))
        for index in 0..<width { page[offset + index] = index < bytes.count ? bytes[index] : 0x20 }
    }
}
