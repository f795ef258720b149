import IPC
import NVMe
import Platform

/// The NVMe controller as a `BlockDevice`: one I/O queue pair; inline and plain shared-memory
/// transfers bounce through one DMA buffer (the client's data is copied in or out), registered
/// client buffers go straight to the device (`DirectBlockDevice`, zero copy).
public final class NVMeBlockDevice<R: RegisterIO>: BlockDevice {
    public let controller: NVMeController<R>
    public let queue: NVMeIOQueue<R>
    public let namespaces: [UInt32: NVMeNamespace]
    public let bounce: DMABuffer
    /// Maps registered client buffers for DMA (zero copy); nil: registration is refused.
    public var clientMapper: (any DMAMapper)?
    let log: (String) -> Void

    public init(controller: NVMeController<R>, queue: NVMeIOQueue<R>, namespaces: [NVMeNamespace], bounce: DMABuffer,
                log: @escaping (String) -> Void = { _ in }) {
        self.controller = controller
        self.queue = queue
        self.namespaces = Dictionary(uniqueKeysWithValues: namespaces.map { ($0.id, $0) })
        self.bounce = bounce
        self.log = log
    }

    public var namespaceIDs: [UInt32] { namespaces.keys.sorted() }

    public func geometry(_ nsid: UInt32) -> BlockGeometry? {
        namespaces[nsid].map { BlockGeometry(blockSize: $0.blockSize, blockCount: $0.blockCount) }
    }

    /// The client's status for a driver error; device failures are logged with the NVMe status.
    func mapped(_ error: NVMeError, _ what: String) -> BlockDeviceError {
        switch error {
        case .lbaOutOfRange:
            return BlockDeviceError(.ERANGE, "\(what): \(error)")
        case .ioFailed(_, _, _, _, let status) where status.isLBAOutOfRange:
            return BlockDeviceError(.ERANGE, "\(what): \(error)")
        default:
            return BlockDeviceError(.EIO, "\(what): \(error)")
        }
    }

    func namespace(_ nsid: UInt32) throws(BlockDeviceError) -> NVMeNamespace {
        guard let namespace = namespaces[nsid] else { throw BlockDeviceError(.ENOENT, "nsid \(nsid) is not active") }
        return namespace
    }

    /// Runs `body` over the range in pieces that fit the bounce buffer: (lba, blocks, byte offset).
    private func chunks(_ namespace: NVMeNamespace, lba: UInt64, blocks: Int,
                        _ body: (UInt64, Int, Int) throws(BlockDeviceError) -> Void) throws(BlockDeviceError) {
        let per = max(1, bounce.size / namespace.blockSize)
        var done = 0
        while done < blocks {
            let count = min(per, blocks - done)
            try body(lba + UInt64(done), count, done * namespace.blockSize)
            done += count
        }
    }

    public func read(nsid: UInt32, lba: UInt64, blocks: Int, into buffer: UnsafeMutableRawBufferPointer) throws(BlockDeviceError) {
        let namespace = try namespace(nsid)
        try chunks(namespace, lba: lba, blocks: blocks) { (lba, count, offset) throws(BlockDeviceError) in
            do throws(NVMeError) {
                try queue.read(namespace, lba: lba, blocks: count, into: bounce)
            } catch {
                throw mapped(error, "read nsid \(nsid) LBA \(lba) x \(count)")
            }
            (buffer.baseAddress! + offset).copyMemory(from: bounce.address, byteCount: count * namespace.blockSize)
        }
    }

    public func write(nsid: UInt32, lba: UInt64, blocks: Int, from buffer: UnsafeRawBufferPointer) throws(BlockDeviceError) {
        let namespace = try namespace(nsid)
        try chunks(namespace, lba: lba, blocks: blocks) { (lba, count, offset) throws(BlockDeviceError) in
            bounce.address.copyMemory(from: buffer.baseAddress! + offset, byteCount: count * namespace.blockSize)
            do throws(NVMeError) {
                try queue.write(namespace, lba: lba, blocks: count, from: bounce)
            } catch {
                throw mapped(error, "write nsid \(nsid) LBA \(lba) x \(count)")
            }
        }
    }

    public func flush(nsid: UInt32) throws(BlockDeviceError) {
        let namespace = try namespace(nsid)
        do { try queue.flush(namespace) } catch { throw mapped(error, "flush nsid \(nsid)") }
    }

    /// Dataset Management deallocate when the controller has it (ONCS bit 2), else Write Zeroes
    /// (bit 3), else ENOSYS.
    public func trim(nsid: UInt32, lba: UInt64, blocks: Int) throws(BlockDeviceError) {
        let namespace = try namespace(nsid)
        let identity = controller.identity
        do {
            if identity?.supportsDatasetManagement ?? false {
                var ranges: [(lba: UInt64, blocks: Int)] = []
                var next = 0
                let most = Int(UInt32.max)
                while next < blocks {
                    let count = min(most, blocks - next)
                    ranges.append((lba + UInt64(next), count))
                    next += count
                }
                for start in stride(from: 0, to: ranges.count, by: 256) {
                    try queue.deallocate(namespace, ranges: Array(ranges[start..<min(start + 256, ranges.count)]))
                }
            } else if identity?.supportsWriteZeroes ?? false {
                try queue.writeZeroes(namespace, lba: lba, blocks: blocks)
            } else {
                throw BlockDeviceError(.ENOSYS, "the controller has neither Dataset Management nor Write Zeroes")
            }
        } catch let error as BlockDeviceError {
            throw error
        } catch let error as NVMeError {
            throw mapped(error, "trim nsid \(nsid) LBA \(lba) x \(blocks)")
        } catch {
            throw BlockDeviceError(.EIO, "trim: \(error)")
        }
    }

    /// Deletes the I/O queue and shuts the controller down (an orderly stop).
    public func shutdown() throws(NVMeError) {
        try controller.deleteIOQueue(queue)
        try controller.shutdown()
    }
}

/// How `storage_server` gets its device: opened by itself (standalone) or adopted from
/// descriptors the supervisor passed as capabilities.
public enum StorageDeviceSource: Equatable, Sendable {
    /// Open `address` through Platform (`openPCIDevice`: VFIO, or UIO if bound so).
    case open(PCIAddress)
    /// Adopt the VFIO device descriptor of CAP_MMIO_<label> and the container descriptor of
    /// CAP_DMA_ALLOC. `address` is for display only.
    case adopt(label: String, deviceFD: Int32, containerFD: Int32, address: PCIAddress?)

    public enum Problem: Error, Equatable, CustomStringConvertible {
        case noDevice
        case severalDevices([String])
        case mmioWithoutDMA(String)
        case descriptorMissing(String)

        public var description: String {
            switch self {
            case .noDevice:
                "no device: pass --device BDF (standalone), or run under the supervisor with CAP_MMIO_<LABEL> and CAP_DMA_ALLOC granted"
            case .severalDevices(let names):
                "several device capabilities granted (\(names.joined(separator: ", "))); pass --label to choose one"
            case .mmioWithoutDMA(let name):
                "\(name) is granted but CAP_DMA_ALLOC is not: the device cannot DMA without its container"
            case .descriptorMissing(let name):
                "\(name) is granted without a descriptor; the supervisor must pass the VFIO descriptor with it"
            }
        }
    }

    /// Chooses from the granted capabilities (name -> descriptor, -1 for none) and the command
    /// line: any CAP_MMIO_ grant wins (supervised); otherwise `device` is opened.
    public static func choose(capabilities: [String: Int32], device: PCIAddress?, label: String? = nil) -> Result<StorageDeviceSource, Problem> {
        var mmio = capabilities.keys.filter { $0.hasPrefix("CAP_MMIO_") }.sorted()
        if let label { mmio = mmio.filter { $0 == "CAP_MMIO_" + label } }
        if mmio.isEmpty {
            guard let device else { return .failure(.noDevice) }
            return .success(.open(device))
        }
        guard mmio.count == 1 else { return .failure(.severalDevices(mmio)) }
        let name = mmio[0]
        guard let dma = capabilities["CAP_DMA_ALLOC"] else { return .failure(.mmioWithoutDMA(name)) }
        guard let fd = capabilities[name], fd >= 0 else { return .failure(.descriptorMissing(name)) }
        guard dma >= 0 else { return .failure(.descriptorMissing("CAP_DMA_ALLOC")) }
        return .success(.adopt(label: String(name.dropFirst("CAP_MMIO_".count)), deviceFD: fd, containerFD: dma, address: device))
    }
}

/// Brings an NVMe controller up for serving: bus master, BAR 0, MSI-X (admin on vector 0, the I/O
/// queue on vector 1 when there are two), the active namespaces, one I/O queue pair, a bounce
/// buffer.
public enum StorageBringUp {
    public struct Result {
        public var device: any PCIDeviceAccess
        public var blockDevice: NVMeBlockDevice<MMIORegion>
        /// Block devices on I/O queues 2...N (`queues`), one per ring thread; empty with one queue.
        public var ringDevices: [NVMeBlockDevice<MMIORegion>] = []
        /// How many queue pairs were asked for and created, and what capped them.
        public var grant: NVMeQueueGrant

        /// The device, controller, queues and namespaces in one line for the log. Built when
        /// asked (once serving), not during the bring-up: a restart's clock runs until then.
        public var summary: String {
            let identity = blockDevice.controller.identity
            let queueText = ioQueues.map { "\($0.id)" + ($0.interruptVector.map { " on MSI-X vector \($0)" } ?? " polling") }
            let namespaces = blockDevice.namespaces.values.sorted { $0.id < $1.id }
            return "\(device.address) through \(device.backendName): \(identity?.modelNumber ?? "?") (serial \(identity?.serialNumber ?? "?")), "
                + "\(grant), depth \(blockDevice.queue.depth): " + queueText.joined(separator: ", ") + "; "
                + namespaces.map(\.description).joined(separator: "; ")
        }

        /// Every I/O queue (1...N), for a controller reset.
        public var ioQueues: [NVMeIOQueue<MMIORegion>] { [blockDevice.queue] + ringDevices.map(\.queue) }

        /// After CSTS.CFS (or a controller that stopped answering): parks the ring threads,
        /// resets the controller, re-creates every I/O queue and re-issues the commands in flight
        /// on all of them (NVMe 2.0 section 3.7.2), and lets the threads go on. Call from the
        /// message thread (queue 1's owner). Nil when the controller is fine; else what was done.
        public func recoverIfFailed(pausing workers: [BlockRingWorker]) -> String? {
            let controller = blockDevice.controller
            guard controller.hasFatalStatus else { return nil }
            for worker in workers { worker.pause() }
            defer { for worker in workers { worker.resume() } }
            let queues = ioQueues
            do {
                let reissued = try controller.reset(ioQueues: queues)
                return "controller fatal status (CSTS.CFS): reset; \(queues.count) I/O queues re-created, \(reissued) commands re-issued"
            } catch {
                return "controller fatal status (CSTS.CFS): reset failed: \(error)"
            }
        }

        /// Deletes queues N...2, then queue 1, then shuts the controller down (CC.SHN).
        public func shutdown() throws(NVMeError) {
            for device in ringDevices.reversed() { try blockDevice.controller.deleteIOQueue(device.queue) }
            try blockDevice.shutdown()
        }
    }

    public static func open(_ source: StorageDeviceSource) throws -> any PCIDeviceAccess {
        switch source {
        case .open(let address):
            return try openPCIDevice(address)
        case .adopt(let label, let deviceFD, let containerFD, let address):
            let container = VFIOContainer(adopting: containerFD)
            let display = address ?? PCIAddress(bus: 0, device: 0, function: 0)
            do {
                return try VFIODevice(adopting: deviceFD, address: display, container: container)
            } catch {
                throw StorageDeviceSource.Problem.descriptorMissing("CAP_MMIO_\(label) (\(error))")
            }
        }
    }

    /// MSI-X vectors to enable: vector 0 for the admin queue, one more per I/O queue unless the
    /// I/O queues are polled, never more than the device offers. With one vector (or none) the
    /// I/O queues are created polled.
    static func msixVectorsWanted(queues: Int, pollIOQueues: Bool, available: Int) -> Int {
        min(pollIOQueues ? 1 : queues + 1, max(available, 0))
    }

    /// `pollIOQueues` creates the I/O completion queues with interrupts off (CDW11.IEN = 0, NVMe
    /// 2.0 section 5.4 "Create I/O Completion Queue"), as Linux creates its poll queues: a queue
    /// that is polled anyway then costs no MSI-X message per completion. Under emulation each one
    /// is an interrupt taken by a vCPU (waking it from halt if idle), which the polling thread pays
    /// for in latency. Only the admin queue keeps a vector.
    public static func bringUp(_ device: any PCIDeviceAccess, queues requested: Int = 1, queueDepth: Int = 64, bounceBytes: Int = 2 << 20,
                               pollIOQueues: Bool = false,
                               timeoutNanoseconds: UInt64 = 10_000_000_000, log: @escaping (String) -> Void,
                               step: (String) -> Void = { _ in }) throws -> Result {
        if let node = device.numaNode { _ = NUMA.runCurrentThread(onNode: node) }
        try device.setBusMaster(true)
        step("bus-master")
        let registers = try device.mapBAR(0)
        step("bar-mapped")
        let available = (try? device.interruptVectors(.msix)) ?? 0
        let wanted = msixVectorsWanted(queues: requested, pollIOQueues: pollIOQueues, available: available)
        let lines = wanted > 0 ? try device.enableInterrupts(.msix, count: wanted) : []
        step("msix-enabled")
        let allocator = DMAAllocator(mapper: device.dmaMapper, numaNode: device.numaNode)
        var configuration = NVMeController<MMIORegion>.Configuration(completionMode: lines.isEmpty ? .polling : .interrupt,
                                                                     adminCommandTimeoutNanoseconds: timeoutNanoseconds)
        // Bring-up is a chain of admin commands on the restart's critical path: each is polled for
        // up to a millisecond before sleeping on its interrupt.
        configuration.adminSpinNanoseconds = 1_000_000
        let controller = NVMeController(registers: registers, allocator: allocator, adminInterrupt: lines.first,
                                        configuration: configuration)
        try controller.bringUp()
        let namespaces = try controller.activeNamespaceIDs().compactMap { id -> NVMeNamespace? in
            do { return try controller.namespace(id) } catch {
                log("nsid \(id) not served: \(error)")
                return nil
            }
        }
        step("namespaces")
        let depth = min(queueDepth, controller.capabilities!.maximumQueueEntries)
        // With MSI-X, queue k completes on vector k; a single vector (or none) means polling.
        let ioLines = lines.count > 1 ? Array(lines.dropFirst()) : []
        let (queues, grant) = try controller.createIOQueues(requested: requested, depth: depth, interrupts: ioLines,
                                                            timeoutNanoseconds: timeoutNanoseconds)
        step("io-queues")
        let bounce = try allocator.allocate(size: bounceBytes, alignment: 4096)
        step("bounce")
        let block = NVMeBlockDevice(controller: controller, queue: queues[0], namespaces: namespaces, bounce: bounce, log: log)
        // Zero copy maps client pages into the IOMMU: only a VFIO container can translate an
        // arbitrary (non-contiguous) range; UIO's physical addresses cannot.
        let mapper: (any DMAMapper)? = device.dmaMapper is VFIOContainer ? device.dmaMapper : nil
        block.clientMapper = mapper
        // Ring threads use no bounce buffer (rings are zero copy); one page keeps the type whole.
        let ringDevices = try queues.dropFirst().map { queue in
            let ringDevice = NVMeBlockDevice(controller: controller, queue: queue, namespaces: namespaces,
                                             bounce: try allocator.allocate(size: 4096, alignment: 4096), log: log)
            ringDevice.clientMapper = mapper
            return ringDevice
        }
        return Result(device: device, blockDevice: block, ringDevices: ringDevices, grant: grant)
    }
}
