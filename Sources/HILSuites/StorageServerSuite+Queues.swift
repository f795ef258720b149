import IPC
import Platform
import Storage
#if canImport(Glibc)
import Glibc
#endif

/// `storage_server --queues 2`: two ring clients at once, each on its own thread in this process;
/// the server deals the first ring to its message thread (I/O queue 1) and the second to its
/// ring thread (I/O queue 2). Each client writes its own range of nsid 2 through its ring at
/// queue depth 32, reads it back through the ring, and compares every byte; then the message
/// path reads both ranges and compares again.
extension StorageServerSuite {
    /// One ring client's work: 4 KiB blocks `[first, first + count)` of nsid 2.
    final class RingClientRun: @unchecked Sendable {
        let first: UInt64
        let count: Int
        let seed: UInt64
        var failure: String?
        var requests = 0

        init(first: UInt64, count: Int, seed: UInt64) {
            self.first = first
            self.count = count
            self.seed = seed
        }

        /// The pattern of block `index` (LBA and seed mixed, so a block in the wrong place shows).
        func fill(_ target: UnsafeMutableRawPointer, block index: Int) {
            var state = seed &* 0x9E37_79B9_7F4A_7C15 ^ (first + UInt64(index))
            for offset in stride(from: 0, to: 4096, by: 8) {
                state = state &* 6364136223846793005 &+ 1442695040888963407
                target.storeBytes(of: state, toByteOffset: offset, as: UInt64.self)
            }
        }

        func run(directory: String) {
            do {
                let client = try BlockClient.connect(name: "storage", directory: directory)
                let depth = 32
                let ring = try BlockRingClient(entries: depth, dataBytes: 2 * depth * 4096)
                let handle = try client.connection.share(ring.memory)
                guard case .success = try client.attachRing(sharedHandle: handle, count: UInt32(ring.memory.size)) else {
                    failure = "attach refused"
                    return
                }
                let base = ring.data.baseAddress!
                var expected = [UInt8](repeating: 0, count: 4096)
                // Completions come back in any order (two queues, the emulated device's worker
                // threads): a data slot is reused only once the request that had it completed,
                // never by position (block N and N + depth may both be in flight).
                var freeSlots = Array((0..<depth).reversed())
                var slotOfBlock = [Int](repeating: -1, count: count)
                for write in [true, false] {
                    var next = 0, done = 0
                    while done < count {
                        while next < count, ring.hasSpace, let slot = freeSlots.popLast() {
                            slotOfBlock[next] = slot
                            if write { fill(base + slot * 4096, block: next) }
                            // Reads land in the second half of the data area.
                            let offset = (write ? 0 : depth * 4096) + slot * 4096
                            _ = ring.enqueue(write: write, nsid: 2, lba: first + UInt64(next), blocks: 1, dataOffset: UInt32(offset), tag: UInt64(next))
                            next += 1
                        }
                        ring.publish()
                        var bad: String?
                        let reaped = ring.reap { tag, status, _ in
                            let index = Int(tag)
                            guard index < count, slotOfBlock[index] >= 0 else { bad = "completion for unknown tag \(tag)"; return }
                            let slot = slotOfBlock[index]
                            slotOfBlock[index] = -1
                            freeSlots.append(slot)
                            if status != .ok { bad = "block \(tag): \(status)"; return }
                            guard !write else { return }
                            expected.withUnsafeMutableBytes { fill($0.baseAddress!, block: index) }
                            if memcmp(base + depth * 4096 + slot * 4096, expected, 4096) != 0 {
                                bad = "block \(index) (LBA \(first + UInt64(index))) read back different data"
                            }
                        }
                        if let bad { failure = bad; return }
                        done += reaped
                        requests += reaped
                        if reaped == 0 { sched_yield() }
                    }
                }
                _ = try client.unregisterBuffer(sharedHandle: handle)
            } catch {
                failure = "\(error)"
            }
        }
    }

    func runTwoQueues(serverPath: String, directory: String, report: SuiteReport) {
        var child = Child(pid: -1)
        defer { if child.pid > 0 { _ = kill(child.pid, SIGKILL); _ = child.wait() } }
        var client: BlockClient?
        report.check("start storage_server --queues 2") {
            let (started, connected, ms) = try start(serverPath, directory: directory, extraArguments: ["--queues", "2"])
            child = started
            client = connected
            return "pid \(started.pid) answering after \(ms) ms"
        }
        guard let messages = client else { return }
        let runs = [RingClientRun(first: 8192, count: 1024, seed: 21), RingClientRun(first: 8192 + 1024, count: 1024, seed: 22)]
        report.check("--queues 2: two ring clients at once (threads), 2 x 4 MiB written and read back at QD32, every byte compared") {
            let clock = MonotonicClock()
            let start = clock.now()
            var threads: [pthread_t] = []
            for run in runs {
                let context = Unmanaged.passRetained(RingThreadContext(run: run, directory: directory)).toOpaque()
                var thread = pthread_t()
                let result = pthread_create(&thread, nil, { context in
                    let work = Unmanaged<RingThreadContext>.fromOpaque(context!).takeRetainedValue()
                    work.run.run(directory: work.directory)
                    return nil
                }, context)
                try expect(result == 0, "pthread_create: \(result)")
                threads.append(thread)
            }
            for thread in threads { pthread_join(thread, nil) }
            for (index, run) in runs.enumerated() {
                if let failure = run.failure { throw CheckFailure("client \(index + 1): \(failure)") }
            }
            let ms = (clock.now() - start) / 1_000_000
            return "\(runs.map(\.requests).reduce(0, +)) ring requests in \(ms) ms"
        }
        report.check("--queues 2: the message path reads both clients' blocks back") {
            var expected = [UInt8](repeating: 0, count: 4096)
            for run in runs {
                for index in stride(from: 0, to: run.count, by: 97) {
                    let read = try messages.read(2, lba: run.first + UInt64(index), blocks: 1)
                    guard case .success(let bytes) = read else { throw CheckFailure("read LBA \(run.first + UInt64(index)): \(read)") }
                    expected.withUnsafeMutableBytes { run.fill($0.baseAddress!, block: index) }
                    try expect(bytes == expected, "LBA \(run.first + UInt64(index)) differs")
                }
            }
            return nil
        }
        report.check("--queues 2: SIGTERM stops every thread, exit 0") {
            client = nil
            try expect(kill(child.pid, SIGTERM) == 0, "kill: errno \(errno)")
            let status = child.wait()
            child.pid = -1
            try expect(status.exitCode == 0, "wait status \(status)")
            return "exit 0"
        }
    }
}

private final class RingThreadContext {
    let run: StorageServerSuite.RingClientRun
    let directory: String
    init(run: StorageServerSuite.RingClientRun, directory: String) {
        self.run = run
        self.directory = directory
    }
}
