import Testing
import NVMe
import Platform

@Suite("NVMe driver against a fake controller")
struct NVMeTests {
    @Test("bring-up reaches Ready and Identify returns the fake's serial (polling)")
    func bringUpPolling() throws {
        let (allocator, mapper) = makeTestAllocator()
        let fake = FakeNVMeController(mapper: mapper)
        let controller = NVMeController(registers: fake, allocator: allocator,
                                        configuration: .init(completionMode: .polling))
        let identity = try controller.bringUp()
        #expect(controller.state == .ready)
        #expect(identity.serialNumber == "LMTNVME0001")
        #expect(identity.modelNumber == "Limitless Fake NVMe Ctrl")
        #expect(identity.firmwareRevision == "1.0")
        #expect(identity.numberOfNamespaces == 2)
        #expect(identity.maximumDataTransferSize(minimumPageSize: 4096) == 4096 << 7)
        #expect(controller.version == NVMeVersion(major: 1, minor: 4))
        #expect(controller.transitions.map(\.to) == [.checkingCapabilities, .disabling, .configuringAdminQueue,
                                                     .enabling, .identifying, .ready])
        // Each step carries when it was entered (CLOCK_MONOTONIC), in order, and the time spent
        // in the previous step is the gap between those instants.
        let before = MonotonicClock().now()
        let entered = controller.transitions.map(\.enteredAtNanoseconds)
        #expect(entered.allSatisfy { $0 > 0 && $0 <= before })
        #expect(entered == entered.sorted())
        for (previous, next) in zip(controller.transitions, controller.transitions.dropFirst()) {
            #expect(next.enteredAtNanoseconds - previous.enteredAtNanoseconds == next.elapsedNanoseconds)
        }
    }

    @Test("admin completions by interrupt: the eventfd is raised and consumed")
    func bringUpInterrupt() throws {
        let (allocator, mapper) = makeTestAllocator()
        let irq = TestInterrupt()
        let fake = FakeNVMeController(mapper: mapper, interrupt: irq)
        let controller = NVMeController(registers: fake, allocator: allocator, adminInterrupt: irq.line,
                                        configuration: .init(completionMode: .interrupt))
        #expect(controller.usesInterrupts)
        let identity = try controller.bringUp()
        #expect(identity.serialNumber == "LMTNVME0001")
        #expect(irq.raised == 1)
        let ns2 = try controller.identifyNamespace(2)
        #expect(ns2.blockSize == 4096)
        #expect(irq.raised == 2)
    }

    @Test("Identify Namespace reports size, capacity and block size; unknown NSID fails")
    func identifyNamespaces() throws {
        let (allocator, mapper) = makeTestAllocator()
        let controller = NVMeController(registers: FakeNVMeController(mapper: mapper), allocator: allocator,
                                        configuration: .init(completionMode: .polling))
        try controller.bringUp()
        #expect(try controller.activeNamespaceIDs() == [1, 2])
        let ns1 = try controller.identifyNamespace(1)
        #expect(ns1.size == 131072 && ns1.capacity == 131072)
        #expect(ns1.formatIndex == 1 && ns1.blockSize == 512)
        #expect(ns1.sizeInBytes == 64 << 20)
        let ns2 = try controller.identifyNamespace(2)
        #expect(ns2.blockSize == 4096 && ns2.sizeInBytes == 64 << 20)
        #expect(throws: NVMeError.commandFailed(opcode: NVMeAdminOpcode.identify, status: .invalidNamespace)) {
            try controller.identifyNamespace(9)
        }
    }

    @Test("a controller that never sets CSTS.RDY times out in the enabling state after CAP.TO")
    func readyTimeout() throws {
        let (allocator, mapper) = makeTestAllocator()
        let fake = FakeNVMeController(mode: .stalled, mapper: mapper)
        let controller = NVMeController(registers: fake, allocator: allocator, configuration: .init(completionMode: .polling))
        let clock = MonotonicClock()
        let start = clock.now()
        do {
            try controller.bringUp()
            Issue.record("bring-up succeeded against a stalled controller")
        } catch {
            guard case .readyTimeout(let state, let expectedReady, let waited) = error else {
                Issue.record("expected readyTimeout, got \(error)"); return
            }
            #expect(state == .enabling && expectedReady)
            #expect(waited >= 500_000_000)
        }
        #expect(clock.now() - start < 3_000_000_000)
        #expect(controller.state == .failed)
    }

    @Test("CSTS.CFS during enable is reported as a fatal controller status")
    func fatalStatus() throws {
        let (allocator, mapper) = makeTestAllocator()
        let fake = FakeNVMeController(mode: .fatalOnEnable, mapper: mapper)
        let controller = NVMeController(registers: fake, allocator: allocator, configuration: .init(completionMode: .polling))
        #expect(throws: NVMeError.controllerFatalStatus(state: .enabling, csts: NVMeCSTS.fatal)) {
            try controller.bringUp()
        }
        #expect(controller.state == .failed)
        // Recovery: once the fault clears, bring-up starts over by disabling.
        fake.mode = .normal
        #expect(try controller.bringUp().serialNumber == "LMTNVME0001")
    }

    @Test("more commands than the queue depth wrap the queue and flip the phase tag")
    func wrapAround() throws {
        let (allocator, mapper) = makeTestAllocator()
        let irq = TestInterrupt()
        let fake = FakeNVMeController(mapper: mapper, interrupt: irq)
        let controller = NVMeController(registers: fake, allocator: allocator, adminInterrupt: irq.line,
                                        configuration: .init(adminQueueDepth: 4))
        try controller.bringUp()
        #expect(controller.adminQueue?.depth == 4)
        for round in 0..<11 {
            fake.serial = "SERIAL\(round)"
            #expect(try controller.identifyController().serialNumber == "SERIAL\(round)")
        }
        // 12 commands on a 4-entry queue: the fake flipped its phase 3 times, and so did we.
        #expect(fake.commandsProcessed == 12)
        #expect(fake.phaseFlips == 3)
        let queue = try #require(controller.adminQueue)
        #expect(queue.completionHead == 0 && queue.expectedPhase == false)
        #expect(queue.submissionTail == 0 && queue.submissionHead == 0)
        #expect(fake.lastCompletionDoorbell == 0)
        #expect(controller.strayCompletions == 0)
    }

    @Test("raw Identify to an unmapped PRP1 returns the error completion instead of hanging")
    func unmappedPRP() throws {
        let (allocator, mapper) = makeTestAllocator()
        let controller = NVMeController(registers: FakeNVMeController(mapper: mapper), allocator: allocator,
                                        configuration: .init(completionMode: .polling))
        try controller.bringUp()
        let completion = try controller.submitAdmin(.identifyController(prp1: 0x7000_0000_0000), timeoutNanoseconds: 1_000_000_000)
        #expect(completion.status == .dataTransferError)
        #expect(completion.status.name == "Data Transfer Error")
        #expect(!completion.status.isSuccess)
        // The admin queue keeps working afterwards.
        #expect(try controller.identifyController().serialNumber == "LMTNVME0001")
    }

    @Test("a command that never completes times out")
    func commandTimeout() throws {
        let (allocator, mapper) = makeTestAllocator()
        let irq = TestInterrupt()
        let fake = FakeNVMeController(mapper: mapper, interrupt: irq)
        let controller = NVMeController(registers: fake, allocator: allocator, adminInterrupt: irq.line)
        try controller.bringUp()
        fake.mode = .silent
        do {
            _ = try controller.submitAdmin(.identifyController(prp1: 0), timeoutNanoseconds: 200_000_000)
            Issue.record("a silent controller completed a command")
        } catch {
            guard case .commandTimeout(let opcode, _, let waited) = error else { Issue.record("got \(error)"); return }
            #expect(opcode == NVMeAdminOpcode.identify && waited >= 200_000_000)
        }
    }

    @Test("I/O queue pair creation, number of queues, and normal shutdown")
    func queuesAndShutdown() throws {
        let (allocator, mapper) = makeTestAllocator()
        let fake = FakeNVMeController(mapper: mapper)
        fake.doorbellStrideExponent = 1  // doorbells 8 bytes apart
        let controller = NVMeController(registers: fake, allocator: allocator, configuration: .init(completionMode: .polling))
        try controller.bringUp()
        #expect(controller.doorbellStride == 8)
        let granted = try controller.setNumberOfQueues(submission: 8, completion: 8)
        #expect(granted.submission == 4 && granted.completion == 4)
        let queue = try controller.createIOQueuePair(id: 1, depth: 256, interruptVector: 1)
        #expect(queue.depth == 64)  // clamped to CAP.MQES + 1
        #expect(fake.createdQueues == [1, 1])
        #expect(fake.opcodes.suffix(2) == [NVMeAdminOpcode.createIOCompletionQueue, NVMeAdminOpcode.createIOSubmissionQueue])
        try controller.shutdown()
        #expect(controller.state == .shutDown)
    }

    @Test("command encoding and status decoding follow the specification's bit layout")
    func encoding() {
        let cq = NVMeCommand.createIOCompletionQueue(id: 3, entries: 64, prp1: 0x1000, interruptVector: 2)
        #expect(cq.opcode == 0x05 && cq.cdw10 == 63 << 16 | 3 && cq.cdw11 == 2 << 16 | 0b11)
        let sq = NVMeCommand.createIOSubmissionQueue(id: 3, entries: 64, prp1: 0x2000, completionQueueID: 3)
        #expect(sq.opcode == 0x01 && sq.cdw11 == 3 << 16 | 1)
        #expect(NVMeCommand.setNumberOfQueues(submission: 4, completion: 2).cdw11 == 1 << 16 | 3)
        #expect(NVMeCommand.identifyNamespace(7, prp1: 0).cdw10 == 0 && NVMeCommand.identifyController(prp1: 0).cdw10 == 1)

        var command = NVMeCommand.read(namespaceID: 1, lba: 0x1_0000_0002, blocks: 8, prp1: 0xABC000)
        command.commandID = 0x1234
        var bytes = [UInt8](repeating: 0, count: 64)
        bytes.withUnsafeMutableBytes { command.write(to: $0.baseAddress!) }
        #expect(bytes[0] == 0x02 && bytes[2] == 0x34 && bytes[3] == 0x12)
        #expect(bytes.withUnsafeBytes { NVMeCommand(reading: $0.baseAddress!) } == command)

        // DW3 0x0009_0000 | status: SCT 1 SC 0x01 with DNR.
        let dw3: UInt32 = 0x0001_0042 | UInt32(0x4101) << 17
        let completion = NVMeCompletion(dwords: 0, 0, 0x0002_0005, dw3)
        #expect(completion.commandID == 0x42 && completion.phase)
        #expect(completion.submissionQueueHead == 5 && completion.submissionQueueID == 2)
        #expect(completion.status.codeType == .commandSpecific && completion.status.code == 1)
        #expect(completion.status.doNotRetry)
        #expect(completion.status.name == "Invalid Queue Identifier")
        #expect(NVMeStatus.success.description == "Successful Completion (SCT 0 SC 0x0)")
    }
}
