import NVMe
import Platform

/// NVMe: bring-up, an admin Identify that completes with an MSI-X interrupt and reports the
/// serial the rig gave QEMU, the namespaces' block sizes, and the IOMMU negative test.
struct NVMeSmoke {
    var context: DeviceSmokeContext

    func run(report: SuiteReport) {
        let label = context.label
        var controller: NVMeController<MMIORegion>?
        var line: InterruptLine?

        report.check("\(label): controller bring-up") {
            try context.device.setBusMaster(true)
            let interrupt = try context.interruptLine()
            line = interrupt
            let configuration = NVMeController<MMIORegion>.Configuration(
                completionMode: .interrupt, adminCommandTimeoutNanoseconds: context.options.timeoutNanoseconds)
            let nvme = NVMeController(registers: context.registers, allocator: context.allocator,
                                      adminInterrupt: interrupt, configuration: configuration)
            controller = nvme
            let identity = try nvme.bringUp()
            let steps = nvme.transitions.map { "\($0.to) (\($0.elapsedNanoseconds / 1000) us)" }.joined(separator: ", ")
            return "NVMe \(identity.version), \(identity.modelNumber), \(steps)"
        }
        guard let nvme = controller, let interrupt = line else { return }

        report.check("\(label): Identify completes with an \(interrupt.kind.rawValue) interrupt") {
            // The driver waits on the line (re-checking the queue every 100 ms in case an
            // interrupt is lost): a completion reaped without an interrupt fails this check.
            let (identity, fired) = try context.expectInterrupt(on: interrupt, driverCount: { nvme.interruptsReceived }) {
                try nvme.identifyController()
            }
            if let expected = context.options.nvmeSerial {
                try expect(identity.serialNumber == expected, "serial \"\(identity.serialNumber)\", expected \"\(expected)\"")
            }
            return "serial \(identity.serialNumber), \(fired) interrupt(s), \(identity.numberOfNamespaces) namespace(s)"
        }

        report.check("\(label): namespaces") {
            let ids = try nvme.activeNamespaceIDs()
            let namespaces = try ids.map { id throws(NVMeError) in try nvme.identifyNamespace(id) }
            let sizes = namespaces.map(\.blockSize)
            if !context.options.nvmeBlockSizes.isEmpty {
                try expect(sizes == context.options.nvmeBlockSizes, "block sizes \(sizes), expected \(context.options.nvmeBlockSizes)")
            } else {
                try expect(!ids.isEmpty, "no active namespaces")
            }
            return namespaces.map { "nsid \($0.namespaceID): \($0.size) × \($0.blockSize) B" }.joined(separator: ", ")
        }

        report.check("\(label): DMA to an unmapped IOVA is stopped by the IOMMU") {
            guard let iommu = (context.device as? VFIODevice)?.container else {
                throw SuiteReport.Skip("only VFIO puts an IOMMU between the device and memory")
            }
            let canary = try context.allocator.allocate(size: 4096)
            for offset in 0..<4096 { canary.address.storeBytes(of: 0x5A, toByteOffset: offset, as: UInt8.self) }
            // The top of the IOVA window: nothing of ours is mapped there.
            let unmapped = (iommu.iova.free.last?.end ?? (1 << 39)) - (1 << 21)
            try expect(!iommu.iova.isAllocated(unmapped), "the chosen IOVA is mapped")
            let log = KernelLog()
            defer { log?.close() }
            let completion = try nvme.submitAdmin(.identifyController(prp1: unmapped),
                                                  timeoutNanoseconds: context.options.timeoutNanoseconds)
            try expect((0..<4096).allSatisfy { canary.address.load(fromByteOffset: $0, as: UInt8.self) == 0x5A },
                       "memory of ours changed although the device wrote to an unmapped IOVA")
            // QEMU's NVMe model completes such a command with Success (it ignores the failed DMA);
            // a real controller reports Data Transfer Error. Either way it must complete.
            try expect(completion.status.isSuccess || completion.status.matches(.dataTransferError),
                       "unexpected status \(completion.status)")
            var evidence = "completed with \(completion.status), our memory unchanged"
            if let log {
                // The kernel logs the fault from the IOMMU's fault interrupt, which may come after
                // the command's completion: look for it for a while.
                let address = hex(unmapped, width: 1)
                let clock = MonotonicClock()
                let deadline = clock.now() + context.options.timeoutNanoseconds
                var faults: [String] = []
                while !faults.contains(where: { $0.contains(address) }) && clock.now() < deadline {
                    faults += log.newMessages().filter { $0.contains("DMAR") || $0.contains("fault") }
                    clock.pause()
                }
                try expect(faults.contains { $0.contains(address) },
                           "no IOMMU fault for 0x\(address) in the kernel log (saw: \(faults.prefix(3)))")
                evidence += "; kernel: \(faults.first { $0.contains(address) }!)"
            }
            // The controller still works after the fault.
            _ = try nvme.identifyController()
            context.allocator.free(canary)
            return evidence
        }

        report.check("\(label): orderly shutdown (CC.SHN)") {
            try nvme.shutdown()
            return "\(nvme.state)"
        }
    }
}
