/// What a driver gets from the platform: a PCI function's config space, BARs, interrupts and a
/// way to make memory reachable by DMA. VFIO and UIO provide it on real hardware; tests provide
/// a fake. Drivers never open /dev/vfio themselves.
public protocol PCIDeviceAccess: AnyObject {
    var address: PCIAddress { get }
    var backendName: String { get }
    var config: any ConfigSpace { get }
    var dmaMapper: any DMAMapper { get }
    /// NUMA node the device sits on, if the platform says.
    var numaNode: Int? { get }

    /// Maps a memory BAR (once; later calls return the same mapping).
    func mapBAR(_ index: Int) throws -> MMIORegion
    /// How many vectors of this kind the device offers through this backend.
    func interruptVectors(_ kind: InterruptLine.Kind) throws -> Int
    /// Routes `count` vectors of `kind` to eventfds, replacing any earlier routing.
    func enableInterrupts(_ kind: InterruptLine.Kind, count: Int) throws -> [InterruptLine]
    func disableInterrupts() throws
    /// INTx is masked by the kernel when it fires; a driver unmasks it after handling.
    func unmaskINTx() throws
    /// Function-level (or bus) reset, where the device supports one.
    func reset() throws
}

extension PCIDeviceAccess {
    /// Enables bus mastering (needed before the device may DMA) or turns it off (a dead driver's
    /// device must not keep writing memory).
    public func setBusMaster(_ enabled: Bool) throws { try config.setBusMaster(enabled) }
}
