import CLimitless
import Platform
#if canImport(Glibc)
import Glibc
#endif

/// A real eventfd standing in for an MSI-X vector: fake devices write 1 to "raise" it, and the
/// driver waits on it through `InterruptLine` exactly as on VFIO.
final class TestInterrupt {
    let fd: Int32
    var line: InterruptLine { InterruptLine(fd: fd, kind: .msix, vector: 0) }
    private(set) var raised = 0

    init() {
        fd = CL_eventfd(0, CL_EFD_NONBLOCK | CL_EFD_CLOEXEC)
        precondition(fd >= 0, "eventfd failed")
    }

    deinit { close(fd) }

    func raise() {
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { write(fd, $0.baseAddress, 8) }
        raised += 1
    }
}

/// Identity-mapped DMA for fake devices.
func makeTestAllocator() -> (DMAAllocator, IdentityDMAMapper) {
    let mapper = IdentityDMAMapper()
    return (DMAAllocator(mapper: mapper, useHugePages: false), mapper)
}

/// The process pointer behind a device address of an identity mapping.
@inline(__always)
func hostPointer(_ deviceAddress: UInt64) -> UnsafeMutableRawPointer {
    UnsafeMutableRawPointer(bitPattern: UInt(deviceAddress))!
}

/// A register file: a dictionary of 32-bit registers for fakes to build on.
struct RegisterFile {
    var values: [Int: UInt32] = [:]
    subscript(offset: Int) -> UInt32 {
        get { values[offset] ?? 0 }
        set { values[offset] = newValue }
    }
}
