#if canImport(Glibc)
import Glibc
#endif

/// One interrupt vector as the kernel delivers it to user space: an eventfd the kernel signals
/// (VFIO: for MSI-X, MSI or INTx; UIO: the /dev/uioN node). A plain value over a descriptor, so
/// waiting touches no reference count; the device that enabled the vector owns and closes it.
public struct InterruptLine: Sendable {
    public enum Kind: String, Sendable {
        case msix = "MSI-X"
        case msi = "MSI"
        case intx = "INTx"
    }

    public let fd: Int32
    public let kind: Kind
    public let vector: Int
    /// For a UIO line: the function's sysfs config file, through which INTx is unmasked.
    /// -1 for eventfd lines.
    let uioConfigFD: Int32

    public init(fd: Int32, kind: Kind, vector: Int) {
        self.fd = fd
        self.kind = kind
        self.vector = vector
        self.uioConfigFD = -1
    }

    /// A /dev/uioN line of uio_pci_generic, re-armed through the config file `configFD`.
    public init(uioFD: Int32, configFD: Int32) {
        self.fd = uioFD
        self.kind = .intx
        self.vector = 0
        self.uioConfigFD = configFD
    }

    /// Waits for the interrupt. Returns how many fired since the last wait (at least 1), or 0
    /// if `timeoutNanoseconds` passed first. A negative timeout waits forever.
    public func wait(timeoutNanoseconds: Int64) -> UInt64 {
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let milliseconds: Int32 = timeoutNanoseconds < 0 ? -1
            : Int32(clamping: (timeoutNanoseconds + 999_999) / 1_000_000)
        while true {
            let ready = poll(&entry, 1, milliseconds)
            if ready < 0 && errno == EINTR { continue }
            guard ready > 0 else { return 0 }
            return consume()
        }
    }

    /// Reads and clears the pending count without blocking; 0 if nothing is pending.
    public func consume() -> UInt64 {
        guard isUIO else {
            var count: UInt64 = 0
            let got = withUnsafeMutableBytes(of: &count) { read(fd, $0.baseAddress, 8) }
            return got == 8 ? count : 0
        }
        // UIO: the count read is cumulative, and uio_pci_generic masks INTx when it fires, so
        // any event counts as one and the line is re-armed.
        var total: UInt32 = 0
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&entry, 1, 0) > 0,
              withUnsafeMutableBytes(of: &total, { read(fd, $0.baseAddress, 4) }) == 4 else { return 0 }
        InterruptLine.unmaskINTx(configFD: uioConfigFD)
        return 1
    }

    var isUIO: Bool { uioConfigFD >= 0 }

    /// uio_pci_generic has no irqcontrol: it masks INTx by setting Interrupt Disable (command
    /// register bit 10) when the interrupt fires, and user space clears the bit to unmask
    /// (Documentation/driver-api/uio-howto.rst, "Writing userspace driver using uio_pci_generic").
    static func unmaskINTx(configFD: Int32) {
        var command: UInt16 = 0
        guard pread(configFD, &command, 2, off_t(PCIConfig.command)) == 2 else { return }
        command = UInt16(littleEndian: command) & ~PCIConfig.Command.interruptDisable
        var little = command.littleEndian
        _ = pwrite(configFD, &little, 2, off_t(PCIConfig.command))
    }
}
