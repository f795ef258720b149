import Platform
import XHCI

/// A fake xHCI controller modelling what QEMU's hw/usb/hcd-xhci.c does for the registers the
/// driver touches: HCRST with CNR, RS/HCH, CRCR and ERSTBA taking effect on their high dword,
/// the command ring fetched by cycle bit and followed through Link TRBs, Command Completion
/// Events written to the event ring with IMAN.IP/EHB/EINT and an interrupt, PORTSC.
final class FakeXHCIController: RegisterIO {
    enum Mode {
        case normal
        /// USBSTS.CNR never clears after reset.
        case stuckNotReady
        /// Commands are consumed but produce no event.
        case silent
    }

    static let capLength = 0x40
    static let runtimeOffset = 0x1000
    static let doorbellOffset = 0x2000
    static let extendedCapabilities = 0x8000
    let length = 0x10000

    var mode: Mode
    let mapper: IdentityDMAMapper
    let interrupt: TestInterrupt?
    var scratchpads = 0
    /// PORTSC per port (1-based index; 0 unused). 8 ports: 1-4 USB2, 5-8 USB3.
    var portsc = [UInt32](repeating: 1 << 9 | 5 << 5, count: 9)  // powered, RxDetect
    var postPortChangesOnRun = true

    private var regs = RegisterFile()
    private var notReadyReads = 0
    // Command ring consumer state.
    private var commandDequeue: UInt64 = 0
    private var commandCycle = true
    // Event ring producer state.
    private var eventBase: UInt64 = 0
    private var eventSize = 0
    private var eventEnqueue = 0
    private var eventCycle = true
    private(set) var linkTRBsFollowed = 0
    private(set) var commandsCompleted = 0
    private(set) var eventsWritten = 0
    private(set) var eventRingOverflows = 0

    init(mode: Mode = .normal, mapper: IdentityDMAMapper, interrupt: TestInterrupt? = nil) {
        self.mode = mode
        self.mapper = mapper
        self.interrupt = interrupt
        regs[op(XHCIOperationalRegister.usbSts)] = XHCIUSBSTS.hcHalted
        regs[op(XHCIOperationalRegister.pageSize)] = 1  // 4 KiB
        // Keyboard (full speed), mouse (full speed), storage (high speed) on the USB2 ports.
        connect(port: 1, speed: .full)
        connect(port: 2, speed: .full)
        connect(port: 3, speed: .high)
    }

    func connect(port: Int, speed: XHCIPortSpeed) {
        portsc[port] = 1 << 0 | 1 << 1 | 1 << 9 | UInt32(speed.rawValue) << 10 | 1 << 17  // CCS PED PP speed CSC
    }

    func op(_ register: Int) -> Int { Self.capLength + register }
    func intr0(_ register: Int) -> Int { Self.runtimeOffset + 0x20 + register }

    var erdp: UInt64 { UInt64(regs[intr0(XHCIInterrupterRegister.erdp)]) | UInt64(regs[intr0(XHCIInterrupterRegister.erdp) + 4]) << 32 }
    var iman: UInt32 { regs[intr0(XHCIInterrupterRegister.iman)] }
    var usbsts: UInt32 { regs[op(XHCIOperationalRegister.usbSts)] }
    var config: UInt32 { regs[op(XHCIOperationalRegister.config)] }
    var dcbaap: UInt64 { UInt64(regs[op(XHCIOperationalRegister.dcbaap)]) | UInt64(regs[op(XHCIOperationalRegister.dcbaap) + 4]) << 32 }
    var running: Bool { usbsts & XHCIUSBSTS.hcHalted == 0 }

    func read8(_ offset: Int) -> UInt8 { UInt8(truncatingIfNeeded: read32(offset & ~3) >> ((offset & 3) * 8)) }
    func read16(_ offset: Int) -> UInt16 { UInt16(truncatingIfNeeded: read32(offset & ~3) >> ((offset & 3) * 8)) }
    func read64(_ offset: Int) -> UInt64 { UInt64(read32(offset)) | UInt64(read32(offset + 4)) << 32 }
    func write8(_ offset: Int, _ value: UInt8) { fatalError("byte write to xHCI register 0x\(String(offset, radix: 16))") }
    func write16(_ offset: Int, _ value: UInt16) { fatalError("word write to xHCI register 0x\(String(offset, radix: 16))") }
    func write64(_ offset: Int, _ value: UInt64) {
        write32(offset, UInt32(truncatingIfNeeded: value))
        write32(offset + 4, UInt32(truncatingIfNeeded: value >> 32))
    }

    func read32(_ offset: Int) -> UInt32 {
        switch offset {
        case 0x00: return UInt32(Self.capLength) | 0x0100 << 16
        case 0x04: return 64 | 16 << 8 | 8 << 24                       // 64 slots, 16 interrupters, 8 ports
        case 0x08: return 1 << 4 | UInt32(scratchpads & 0x1F) << 27 | UInt32(scratchpads >> 5) << 21
        case 0x0C: return 0
        case 0x10: return 1 | UInt32(Self.extendedCapabilities / 4) << 16  // AC64, xECP
        case 0x14: return UInt32(Self.doorbellOffset)
        case 0x18: return UInt32(Self.runtimeOffset)
        // Supported Protocol capabilities: USB 2.0 on ports 1-4, USB 3.0 on ports 5-8.
        case Self.extendedCapabilities: return 2 | 5 << 8 | 0x0200 << 16
        case Self.extendedCapabilities + 4: return 0x2042_5355  // "USB "
        case Self.extendedCapabilities + 8: return 1 | 4 << 8
        case Self.extendedCapabilities + 20: return 2 | 0 << 8 | 0x0300 << 16
        case Self.extendedCapabilities + 24: return 0x2042_5355
        case Self.extendedCapabilities + 28: return 5 | 4 << 8
        case op(XHCIOperationalRegister.usbSts):
            if notReadyReads > 0, mode != .stuckNotReady {
                notReadyReads -= 1
                if notReadyReads == 0 { regs[offset] &= ~XHCIUSBSTS.controllerNotReady }
            }
            return regs[offset]
        case op(0x400)..<op(0x400 + 0x10 * 8):
            let relative = offset - op(0x400)
            return relative % 0x10 == 0 ? portsc[relative / 0x10 + 1] : 0
        default:
            return regs[offset]
        }
    }

    func write32(_ offset: Int, _ value: UInt32) {
        switch offset {
        case op(XHCIOperationalRegister.usbCmd): writeUSBCMD(value)
        case op(XHCIOperationalRegister.usbSts):
            regs[offset] &= ~(value & (XHCIUSBSTS.hostSystemError | XHCIUSBSTS.eventInterrupt | XHCIUSBSTS.portChangeDetect | 1 << 10))
        case op(XHCIOperationalRegister.crcr + 4):
            // The ring takes effect on the high dword (QEMU does the same).
            let low = regs[op(XHCIOperationalRegister.crcr)]
            commandDequeue = UInt64(low & ~0x3F) | UInt64(value) << 32
            commandCycle = low & 1 != 0
            regs[offset] = value
        case intr0(XHCIInterrupterRegister.iman):
            var iman = regs[offset]
            if value & XHCIInterrupterRegister.imanPending != 0 { iman &= ~XHCIInterrupterRegister.imanPending }
            iman = (iman & ~XHCIInterrupterRegister.imanEnable) | (value & XHCIInterrupterRegister.imanEnable)
            regs[offset] = iman
        case intr0(XHCIInterrupterRegister.erdp):
            let ehb = UInt32(XHCIInterrupterRegister.erdpEventHandlerBusy)
            let busy = value & ehb != 0 ? 0 : regs[offset] & ehb
            regs[offset] = (value & ~ehb) | busy
        case intr0(XHCIInterrupterRegister.erstba + 4):
            regs[offset] = value
            let table = UInt64(regs[intr0(XHCIInterrupterRegister.erstba)]) | UInt64(value) << 32
            precondition(regs[intr0(XHCIInterrupterRegister.erstsz)] == 1, "ERSTSZ must be written (as 1) before ERSTBA")
            precondition(mapper.isMapped(table, size: 16), "ERST not in mapped memory")
            let entry = hostPointer(table)
            eventBase = entry.load(as: UInt64.self)
            eventSize = Int(entry.load(fromByteOffset: 8, as: UInt32.self) & 0xFFFF)
            precondition(eventSize >= 16 && eventSize <= 4096 && mapper.isMapped(eventBase, size: eventSize * 16))
            precondition(erdp == eventBase, "ERDP must point at the segment before ERSTBA is written")
            eventEnqueue = 0
            eventCycle = true
        case Self.doorbellOffset:
            if running { processCommandRing() }
        case op(0x400)..<op(0x400 + 0x10 * 8):
            let relative = offset - op(0x400)
            guard relative % 0x10 == 0 else { return }
            let port = relative / 0x10 + 1
            precondition(value & (1 << 1) == 0, "driver wrote PED=1 (disables the port)")
            portsc[port] &= ~(value & XHCIPortStatus.changeMask)
        default:
            regs[offset] = value
        }
    }

    private func writeUSBCMD(_ value: UInt32) {
        let offset = op(XHCIOperationalRegister.usbCmd)
        if value & XHCIUSBCMD.hostControllerReset != 0 {
            precondition(!running, "HCRST while running")
            for key in regs.values.keys where key >= Self.runtimeOffset { regs[key] = 0 }
            regs[offset] = 0
            regs[op(XHCIOperationalRegister.config)] = 0
            regs[op(XHCIOperationalRegister.usbSts)] = XHCIUSBSTS.hcHalted | XHCIUSBSTS.controllerNotReady
            notReadyReads = 3
            eventSize = 0
            return
        }
        let wasRunning = regs[offset] & XHCIUSBCMD.runStop != 0
        regs[offset] = value
        if !wasRunning, value & XHCIUSBCMD.runStop != 0 {
            precondition(usbsts & XHCIUSBSTS.controllerNotReady == 0, "RS set while CNR")
            regs[op(XHCIOperationalRegister.usbSts)] &= ~XHCIUSBSTS.hcHalted
            if postPortChangesOnRun {
                for port in 1...8 where portsc[port] & 1 != 0 {
                    postEvent(parameter: UInt64(port) << 24, status: 1 << 24, type: .portStatusChangeEvent)
                }
            }
        } else if wasRunning, value & XHCIUSBCMD.runStop == 0 {
            regs[op(XHCIOperationalRegister.usbSts)] |= XHCIUSBSTS.hcHalted
        }
    }

    private func processCommandRing() {
        while true {
            let entry = hostPointer(commandDequeue)
            let control = entry.load(fromByteOffset: 12, as: UInt32.self)
            guard (control & 1 != 0) == commandCycle else { return }
            let type = XHCITRBType(rawValue: UInt8((control >> 10) & 0x3F))
            if type == .link {
                commandDequeue = entry.load(as: UInt64.self)
                if control & XHCITRB.toggleCycle != 0 { commandCycle.toggle() }
                linkTRBsFollowed += 1
                continue
            }
            let address = commandDequeue
            commandDequeue += 16
            if mode == .silent { continue }
            let code: XHCICompletionCode = type == .noOpCommand ? .success : .trbError
            commandsCompleted += 1
            postEvent(parameter: address, status: UInt32(code.raw) << 24, type: .commandCompletionEvent)
        }
    }

    private func postEvent(parameter: UInt64, status: UInt32, type: XHCITRBType) {
        guard eventSize > 0 else { return }
        let dequeueIndex = Int((erdp & ~0xF) - eventBase) / 16
        if (eventEnqueue + 1) % eventSize == dequeueIndex { eventRingOverflows += 1; return }
        let entry = hostPointer(eventBase + UInt64(eventEnqueue * 16))
        entry.storeBytes(of: parameter, as: UInt64.self)
        entry.storeBytes(of: status, toByteOffset: 8, as: UInt32.self)
        entry.storeBytes(of: UInt32(type.rawValue) << 10 | (eventCycle ? 1 : 0), toByteOffset: 12, as: UInt32.self)
        eventsWritten += 1
        eventEnqueue += 1
        if eventEnqueue == eventSize { eventEnqueue = 0; eventCycle.toggle() }
        // Interrupt raise (QEMU xhci_intr_raise): EHB, IP, EINT; MSI-X only with IE and INTE.
        regs[intr0(XHCIInterrupterRegister.erdp)] |= UInt32(XHCIInterrupterRegister.erdpEventHandlerBusy)
        regs[intr0(XHCIInterrupterRegister.iman)] |= XHCIInterrupterRegister.imanPending
        regs[op(XHCIOperationalRegister.usbSts)] |= XHCIUSBSTS.eventInterrupt
        if iman & XHCIInterrupterRegister.imanEnable != 0, regs[op(XHCIOperationalRegister.usbCmd)] & XHCIUSBCMD.interrupterEnable != 0 {
            interrupt?.raise()
        }
    }
}
