import Dispatch
import Testing
import NVMe
import Platform

/// A controller brought up against the fake (which grants at most 4 I/O queue pairs, as a small
/// controller would) with `count` I/O queues asked for.
struct MultiQueueFixture {
    let allocator: DMAAllocator
    let fake: FakeNVMeController
    let controller: NVMeController<FakeNVMeController>
    let queues: [NVMeIOQueue<FakeNVMeController>]
    let grant: NVMeQueueGrant
    let ns: NVMeNamespace

    init(count: Int, interrupts: [InterruptLine] = []) throws {
        let mapper: IdentityDMAMapper
        (allocator, mapper) = makeTestAllocator()
        fake = FakeNVMeController(mapper: mapper)
        fake.namespaces = [1: (16384, 9)]
        controller = NVMeController(registers: fake, allocator: allocator, configuration: .init(completionMode: .polling))
        try controller.bringUp()
        (queues, grant) = try controller.createIOQueues(requested: count, depth: 32, interrupts: interrupts, timeoutNanoseconds: 2_000_000_000)
        ns = try controller.namespace(1)
    }

    func fill(_ buffer: DMABuffer, seed: UInt64) {
        var random = TestRandom(seed: seed)
        for offset in stride(from: 0, to: buffer.size, by: 8) {
            buffer.address.storeBytes(of: random.next(), toByteOffset: offset, as: UInt64.self)
        }
    }
}

@Suite("NVMe: several I/O queue pairs against the fake controller")
struct NVMeMultiQueueTests {
    @Test("N queue pairs: Number of Queues asked for N, pairs 1...N created; capped by the grant and by MSI-X vectors")
    func creation() throws {
        let three = try MultiQueueFixture(count: 3)
        #expect(three.queues.map(\.id) == [1, 2, 3])
        #expect(three.fake.ioSubmissionQueues.keys.sorted() == [1, 2, 3])
        #expect(three.fake.ioCompletionQueues.keys.sorted() == [1, 2, 3])
        #expect(three.grant == NVMeQueueGrant(requested: 3, controllerGranted: 3, interruptVectors: nil, created: 3))
        #expect(three.queues.allSatisfy { $0.polling })
        // Polled queues are created as Linux creates its poll queues: CDW11.IEN = 0, so the
        // controller sends no MSI-X message per completion (what storage_server --poll asks for).
        #expect(three.fake.ioCompletionQueues.values.allSatisfy { !$0.interruptsEnabled })

        let many = try MultiQueueFixture(count: 8)
        #expect(many.grant.controllerGranted == 4 && many.grant.created == 4)
        #expect(many.queues.map(\.id) == [1, 2, 3, 4])
        #expect(many.grant.description == "4 I/O queue pairs of 8 asked for (the controller granted 4)")

        let lines = [TestInterrupt(), TestInterrupt()]
        let vectors = lines.enumerated().map { InterruptLine(fd: $1.fd, kind: .msix, vector: $0 + 1) }
        let capped = try MultiQueueFixture(count: 4, interrupts: vectors)
        #expect(capped.grant.created == 2)
        #expect(capped.grant.description == "2 I/O queue pairs of 4 asked for (the controller granted 4, 2 MSI-X vectors for I/O)")
        #expect(capped.queues.map(\.interruptVector) == [1, 2])
        #expect(capped.fake.ioCompletionQueues[1]?.vector == 1 && capped.fake.ioCompletionQueues[2]?.vector == 2)
        #expect(capped.fake.ioCompletionQueues[2]?.interruptsEnabled == true)
    }

    @Test("three threads, each the only user of its queue: writes and reads at once, every byte verified")
    func concurrentQueues() throws {
        let fixture = try MultiQueueFixture(count: 3)
        let ns = fixture.ns
        let chunkBlocks = 16, rounds = 40
        // Each thread owns one queue and one LBA range; buffers allocated up front.
        var written: [DMABuffer] = [], readBack: [DMABuffer] = []
        for index in 0..<3 {
            written.append(try fixture.allocator.allocate(size: rounds * chunkBlocks * 512, alignment: 4096))
            readBack.append(try fixture.allocator.allocate(size: rounds * chunkBlocks * 512, alignment: 4096))
            fixture.fill(written[index], seed: UInt64(100 + index))
        }
        let failures = Failures()
        // Each iteration touches only its own queue and buffers.
        let shared = Unshared((fixture.queues, written, readBack, ns))
        let queues = fixture.queues
        DispatchQueue.concurrentPerform(iterations: 3) { index in
            let (queues, source, target, ns) = shared.value
            let queue = queues[index]
            let base = UInt64(index * rounds * chunkBlocks)
            do {
                for round in 0..<rounds {
                    let lba = base + UInt64(round * chunkBlocks)
                    try queue.write(ns, lba: lba, blocks: chunkBlocks, from: source[index], offset: round * chunkBlocks * 512)
                }
                for round in 0..<rounds {
                    let lba = base + UInt64(round * chunkBlocks)
                    try queue.read(ns, lba: lba, blocks: chunkBlocks, into: target[index], offset: round * chunkBlocks * 512)
                }
            } catch {
                failures.add("queue \(queue.id): \(error)")
            }
        }
        #expect(failures.all.isEmpty)
        for index in 0..<3 {
            #expect(equalBytes(written[index].address, readBack[index].address, written[index].size), "queue \(index + 1) data")
            let media = fixture.fake.media(1) + index * rounds * chunkBlocks * 512
            #expect(equalBytes(media, written[index].address, written[index].size), "queue \(index + 1) on the medium")
            #expect(queues[index].commandsSubmitted == UInt64(2 * rounds))
        }
    }

    @Test("CSTS.CFS with commands in flight on two queues: reset re-creates both and re-issues all of them")
    func resetTwoQueues() throws {
        let fixture = try MultiQueueFixture(count: 2)
        let ns = fixture.ns
        let buffer = try fixture.allocator.allocate(size: 8 * 8192, alignment: 4096)
        fixture.fill(buffer, seed: 7)
        fixture.fake.holdIO = true
        for index in 0..<8 {
            let queue = fixture.queues[index % 2]
            try queue.submitTransfer(opcode: NVMeIOOpcode.write, namespace: ns, lba: UInt64(index * 16), blocks: 16,
                                     data: buffer.deviceAddress + UInt64(index * 8192), tag: UInt64(index))
        }
        fixture.fake.holdIO = false
        fixture.fake.fatalOnNextIODoorbell = true
        try fixture.queues[1].submit(.flush(namespaceID: ns.id), tag: 8)
        #expect(fixture.controller.hasFatalStatus)
        #expect(fixture.queues[0].outstanding == 4 && fixture.queues[1].outstanding == 5)
        #expect(throws: NVMeError.self) { try fixture.queues[0].checkFatal() }

        let reissued = try fixture.controller.reset(ioQueues: fixture.queues)
        #expect(reissued == 9)
        #expect(fixture.controller.state == .ready && !fixture.controller.hasFatalStatus)
        #expect(fixture.fake.ioSubmissionQueues.keys.sorted() == [1, 2])
        var tags: [UInt64] = []
        for queue in fixture.queues {
            try queue.drain { completion in
                #expect(completion.status.isSuccess)
                tags.append(completion.tag)
            }
        }
        #expect(tags.sorted() == Array(0...8))
        #expect(equalBytes(fixture.fake.media(1), buffer.address, buffer.size))
    }
}

/// Values handed to threads that each use a disjoint part of them.
struct Unshared<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

/// Errors collected from several threads.
final class Failures: @unchecked Sendable {
    private let lock = DispatchQueue(label: "failures")
    private var list: [String] = []
    func add(_ text: String) { lock.sync { list.append(text) } }
    var all: [String] { lock.sync { list } }
}
