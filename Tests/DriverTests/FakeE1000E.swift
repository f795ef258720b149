import E1000E
import Platform

/// A fake 82574 modelling what QEMU's hw/net/e1000e_core.c does for the registers the driver
/// touches: CTRL.RST resets the MAC and reloads RAL0/RAH0 from the EEPROM image, EERD reads
/// words, and with MSI-X an ICS write sets ICR and notifies the vector IVAR names for each
/// MSI-X cause in ICR & IMS (once, until the cause is cleared from ICR).
final class FakeE1000E: RegisterIO {
    let length = 0x20000
    var mac: [UInt8] = [0x52, 0x54, 0x00, 0x4C, 0x4D, 0x01]
    /// Reads of CTRL before RST self-clears; nil = never.
    var resetReads: Int? = 2
    let vectors: [TestInterrupt]

    private var regs = RegisterFile()
    private var resetReadsLeft = 0
    private var msiCausesPending: UInt32 = 0
    private(set) var resets = 0
    private(set) var notified: [Int] = []

    /// "Other" causes folded into ICR.OTHER in MSI-X mode (E1000_ICR_OTHER_CAUSES).
    static let otherCauses: UInt32 = 1 << 2 | 1 << 6 | 1 << 9 | 1 << 16 | 1 << 17 | 1 << 18

    init(vectors: Int = 5) {
        self.vectors = (0..<vectors).map { _ in TestInterrupt() }
        powerOn()
    }

    private var eeprom: [UInt16] {
        [UInt16(mac[0]) | UInt16(mac[1]) << 8, UInt16(mac[2]) | UInt16(mac[3]) << 8, UInt16(mac[4]) | UInt16(mac[5]) << 8]
    }

    private func powerOn() {
        regs = RegisterFile()
        regs[E1000ERegister.status] = E1000ESTATUS.linkUp | E1000ESTATUS.fullDuplex | 2 << 6
        regs[E1000ERegister.eecd] = E1000EEECD.present | E1000EEECD.autoReadDone
        let words = eeprom
        regs[E1000ERegister.ral(0)] = UInt32(words[0]) | UInt32(words[1]) << 16
        regs[E1000ERegister.rah(0)] = UInt32(words[2]) | E1000ERAH.addressValid
        msiCausesPending = 0
    }

    var ims: UInt32 { regs[E1000ERegister.ims] }
    var icr: UInt32 { regs[E1000ERegister.icr] }
    var ivar: UInt32 { regs[E1000ERegister.ivar] }

    func read8(_ offset: Int) -> UInt8 { UInt8(truncatingIfNeeded: read32(offset & ~3) >> ((offset & 3) * 8)) }
    func read16(_ offset: Int) -> UInt16 { UInt16(truncatingIfNeeded: read32(offset & ~3) >> ((offset & 3) * 8)) }
    func read64(_ offset: Int) -> UInt64 { UInt64(read32(offset)) | UInt64(read32(offset + 4)) << 32 }
    func write8(_ offset: Int, _ value: UInt8) { fatalError("byte write to e1000e register") }
    func write16(_ offset: Int, _ value: UInt16) { fatalError("word write to e1000e register") }
    func write64(_ offset: Int, _ value: UInt64) { fatalError("qword write to e1000e register") }

    func read32(_ offset: Int) -> UInt32 {
        switch offset {
        case E1000ERegister.ctrl:
            if regs[offset] & E1000ECTRL.reset != 0, let limit = resetReads {
                resetReadsLeft += 1
                if resetReadsLeft >= limit { completeReset() }
            }
            return regs[offset]
        case E1000ERegister.status:
            var status = regs[offset]
            if regs[E1000ERegister.ctrl] & E1000ECTRL.gioMasterDisable == 0 { status |= E1000ESTATUS.gioMasterEnable }
            return status
        case E1000ERegister.icr:
            let value = regs[offset]
            if ims == 0 { regs[offset] = 0 }  // read-to-clear only with all causes masked
            updateInterrupts()
            return value
        default:
            return regs[offset]
        }
    }

    func write32(_ offset: Int, _ value: UInt32) {
        switch offset {
        case E1000ERegister.ctrl:
            regs[offset] = value
            if value & E1000ECTRL.reset != 0 { resetReadsLeft = 0 }
        case E1000ERegister.eerd:
            let word = Int((value >> 2) & 0x3FFF)
            if value & E1000EEERD.start != 0, word < eeprom.count {
                regs[offset] = UInt32(eeprom[word]) << 16 | UInt32(word) << 2 | E1000EEERD.done
            } else {
                regs[offset] = UInt32(word) << 2
            }
        case E1000ERegister.ics:
            regs[E1000ERegister.icr] |= value
            updateInterrupts()
        case E1000ERegister.icr:
            regs[offset] &= ~value
            updateInterrupts()
        case E1000ERegister.ims:
            regs[offset] |= value
            updateInterrupts()
        case E1000ERegister.imc:
            regs[E1000ERegister.ims] &= ~value
            updateInterrupts()
        case E1000ERegister.status, E1000ERegister.eecd:
            break
        default:
            regs[offset] = value
        }
    }

    private func completeReset() {
        resets += 1
        powerOn()
    }

    /// QEMU e1000e_update_interrupt_state + e1000e_send_msi + e1000e_msix_notify.
    private func updateInterrupts() {
        if icr & Self.otherCauses != 0 { regs[E1000ERegister.icr] |= E1000EInterruptCause.other.rawValue }
        regs[E1000ERegister.icr] &= ~E1000EInterruptCause.asserted.rawValue
        if icr != 0 { regs[E1000ERegister.icr] |= E1000EInterruptCause.asserted.rawValue }
        var causes = icr & ims & ~E1000EInterruptCause.asserted.rawValue
        if causes == 0 { msiCausesPending = 0; return }
        msiCausesPending &= causes
        causes ^= msiCausesPending
        guard causes != 0 else { return }
        msiCausesPending |= causes
        for (bit, shift) in [(20, 0), (21, 4), (22, 8), (23, 12), (24, 16)] where causes & (1 << bit) != 0 {
            let entry = (ivar >> UInt32(shift)) & 0xF
            guard entry & E1000EIVAR.entryValid != 0 else { continue }
            let vector = Int(entry & 0x7)
            if vector < vectors.count {
                notified.append(vector)
                vectors[vector].raise()
            }
        }
    }
}
