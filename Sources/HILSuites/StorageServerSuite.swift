import IPC
import Platform
import Storage
#if canImport(Glibc)
import Glibc
#endif

/// The storage server end to end: `storage_server` (next to limitless-hil) started as a child in
/// a temporary runtime directory, then as its client: geometry, seeded patterns written inline
/// and read back, range errors, flush, trim, shared-memory and zero-copy (registered buffer)
/// transfers; SIGKILL and a fresh start (the device re-initialised, as a supervisor would restart
/// it) with every acknowledged write read back; SIGTERM stops it with exit 0; then
/// `--queues 2` with two ring clients at once (StorageServerSuite+Queues.swift).
public struct StorageServerSuite {
    public struct Options {
        public var device = PCIAddress("0000:00:03.0")!
        /// Path of storage_server; default: next to this executable.
        public var serverPath: String?
        public var seed: UInt64 = 0x5354_4F52_4147_4521
        public var startTimeoutMilliseconds = 60_000
        public var expectedBlockSizes = [512, 4096]
        public var expectedBytes: UInt64 = 64 << 20
        public init() {}
    }

    public var options: Options
    public init(options: Options) { self.options = options }

    /// A write the server acknowledged: what must be there after a restart.
    struct Acknowledged {
        var nsid: UInt32
        var lba: UInt64
        var blocks: Int
        var variant: UInt64
    }

    public func run(report: SuiteReport) {
        var template = Array("/tmp/limitless-storage-hil-XXXXXX".utf8CString)
        let directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        let serverPath = options.serverPath ?? Self.siblingPath("storage_server")
        var child = Child(pid: -1)
        defer {
            if child.pid > 0 { _ = kill(child.pid, SIGKILL); _ = child.wait() }
            _ = unlink(directory + "/storage.sock")
            _ = unlink(directory + "/storage.pid")
            _ = rmdir(directory)
        }

        var client: BlockClient?
        report.check("start storage_server") {
            let (started, connected, ms) = try start(serverPath, directory: directory)
            child = started
            client = connected
            return "pid \(started.pid), \(directory)/storage.sock answering after \(ms) ms"
        }
        guard let first = client else { return }

        var geometries: [UInt32: BlockGeometry] = [:]
        for (index, nsid) in [UInt32(1), 2].enumerated() {
            report.check("geometry of nsid \(nsid)") {
                let geometry = try first.geometry(nsid).get()
                geometries[nsid] = geometry
                let expectedSize = index < options.expectedBlockSizes.count ? options.expectedBlockSizes[index] : geometry.blockSize
                try expect(geometry.blockSize == expectedSize, "block size \(geometry.blockSize), expected \(expectedSize)")
                try expect(geometry.capacityBytes == options.expectedBytes,
                           "\(geometry.capacityBytes) bytes, expected \(options.expectedBytes)")
                return "\(geometry.blockSize) B x \(geometry.blockCount) = \(geometry.capacityBytes >> 20) MiB"
            }
        }
        report.check("open namespace 1 ok, namespace 3 ENOENT") {
            _ = try first.openNamespace(1).get()
            let missing = try first.openNamespace(3)
            guard case .failure(.ENOENT) = missing else { throw CheckFailure("nsid 3: \(missing)") }
            return nil
        }
        guard geometries.count == 2 else { return }

        var acknowledged = writeSeededRanges(first, geometries: geometries, variantBase: 0, inlineLabel: " inline", report: report)

        report.check("out-of-range reads: ERANGE; zero blocks: EINVAL; over 64 KiB inline: EMSGSIZE") {
            for nsid in [UInt32(1), 2] {
                let geometry = geometries[nsid]!
                for (lba, blocks) in [(geometry.blockCount, UInt64(1)), (geometry.blockCount - 1, 2), (UInt64.max, 1)] {
                    let result = try first.read(nsid, lba: lba, blocks: blocks)
                    guard case .failure(.ERANGE) = result else { throw CheckFailure("nsid \(nsid) LBA \(lba) x \(blocks): \(result)") }
                }
                let zero = try first.read(nsid, lba: 0, blocks: 0)
                guard case .failure(.EINVAL) = zero else { throw CheckFailure("nsid \(nsid) 0 blocks: \(zero)") }
                let big = try first.read(nsid, lba: 0, blocks: UInt64(BlockProtocol.maxInlineBytes / geometry.blockSize + 1))
                guard case .failure(.EMSGSIZE) = big else { throw CheckFailure("nsid \(nsid) over 64 KiB: \(big)") }
            }
            return nil
        }

        report.check("shared memory: 1 MiB written and read back through a client region (nsid 2)") {
            let geometry = geometries[2]!
            let size = 1 << 20
            let region = try SharedMemory(size: size)
            let handle = try first.connection.share(region)
            let item = Acknowledged(nsid: 2, lba: geometry.blockCount / 4, blocks: size / geometry.blockSize, variant: 40)
            let data = pattern(item, blockSize: geometry.blockSize)
            let base = UnsafeMutableRawPointer(mutating: region.bytes.baseAddress!)
            data.withUnsafeBytes { base.copyMemory(from: $0.baseAddress!, byteCount: size) }
            let written = try first.write(2, lba: item.lba, blocks: UInt64(item.blocks), sharedHandle: handle, count: UInt32(size))
            try expect(written == .ok, "shared write: \(written)")
            acknowledged.append(item)
            base.initializeMemory(as: UInt8.self, repeating: 0, count: size)
            let read = try first.read(2, lba: item.lba, blocks: UInt64(item.blocks), sharedHandle: handle, count: UInt32(size))
            try expect(read == .ok, "shared read: \(read)")
            try expect(Array(region.bytes) == data, "shared read returned different data")
            try first.connection.release(handle: handle)
            return nil
        }

        report.check("zero copy: 1 MiB written and read back through a registered buffer (nsid 2), unregistered") {
            let geometry = geometries[2]!
            let size = 1 << 20
            let region = try SharedMemory(size: size)
            let handle = try first.connection.share(region)
            let registered = try first.registerBuffer(sharedHandle: handle, count: UInt32(size))
            try expect(registered == .success(handle), "register: \(registered)")
            // Clear of the seeded ranges (0, 1/3 + 1, 1/2, the end) and the shared-memory one (1/4).
            let item = Acknowledged(nsid: 2, lba: geometry.blockCount / 8 * 5, blocks: size / geometry.blockSize, variant: 41)
            let data = pattern(item, blockSize: geometry.blockSize)
            let base = UnsafeMutableRawPointer(mutating: region.bytes.baseAddress!)
            data.withUnsafeBytes { base.copyMemory(from: $0.baseAddress!, byteCount: size) }
            // param2 = 1 in the reply: the device read the client's pages itself (no bounce copy).
            var write = Message(type: .blockWrite, param1: 2, param2: item.lba, param3: UInt64(item.blocks))
            write.setSharedData(handle: handle, offset: 0, count: UInt32(size))
            let wrote = try first.connection.sendReceive(write, timeout: .seconds(30))
            try expect(wrote.status == .ok && wrote.message.param2 == 1, "write: \(wrote.status), zero copy flag \(wrote.message.param2)")
            acknowledged.append(item)
            base.initializeMemory(as: UInt8.self, repeating: 0, count: size)
            var read = Message(type: .blockRead, param1: 2, param2: item.lba, param3: UInt64(item.blocks))
            read.setSharedData(handle: handle, offset: 0, count: UInt32(size))
            let readBack = try first.connection.sendReceive(read, timeout: .seconds(30))
            try expect(readBack.status == .ok && readBack.message.param2 == 1, "read: \(readBack.status), zero copy flag \(readBack.message.param2)")
            try expect(Array(region.bytes) == data, "zero-copy read returned different data")
            // Inline (bounced) agrees, so the device really wrote the medium.
            try verify(first, item, blockSize: geometry.blockSize)
            let unregistered = try first.unregisterBuffer(sharedHandle: handle)
            try expect(unregistered == .ok, "unregister: \(unregistered)")
            let again = try first.connection.sendReceive(read, timeout: .seconds(30))
            try expect(again.status == .ok && again.message.param2 == 0, "after unregister: \(again.status), zero copy flag \(again.message.param2)")
            try first.connection.release(handle: handle)
            return "device DMA to and from the client's pages, IOMMU-mapped once"
        }

        report.check("flush both namespaces, trim a range") {
            for nsid in [UInt32(1), 2] {
                let status = try first.flush(nsid)
                try expect(status == .ok, "flush nsid \(nsid): \(status)")
            }
            let geometry = geometries[1]!
            let status = try first.trim(1, lba: geometry.blockCount / 5, blocks: 64)
            try expect(status == .ok, "trim: \(status)")
            return nil
        }

        var restarted: BlockClient?
        report.check("SIGKILL the server, start it again (device re-initialised)") {
            client = nil
            try expect(kill(child.pid, SIGKILL) == 0, "kill: errno \(errno)")
            let status = child.wait()
            try expect(status.signal == SIGKILL, "wait status \(status)")
            let (started, connected, ms) = try start(serverPath, directory: directory)
            child = started
            restarted = connected
            return "killed, new pid \(started.pid) answering after \(ms) ms"
        }
        guard let second = restarted else { return }

        report.check("every acknowledged write read back after the restart") {
            for item in acknowledged {
                try verify(second, item, blockSize: geometries[item.nsid]!.blockSize)
            }
            return "\(acknowledged.count) ranges, \(acknowledged.map { $0.blocks * geometries[$0.nsid]!.blockSize }.reduce(0, +)) bytes"
        }

        report.check("SIGTERM stops the server with exit 0") {
            restarted = nil
            try expect(kill(child.pid, SIGTERM) == 0, "kill: errno \(errno)")
            let status = child.wait()
            child.pid = -1
            try expect(status.exitCode == 0, "wait status \(status)")
            try expect(access(directory + "/storage.sock", F_OK) != 0, "the socket is still there")
            return "exit 0, socket removed"
        }
        runTwoQueues(serverPath: serverPath, directory: directory, report: report)
    }

    // MARK: Helpers

    /// Writes four seeded ranges on each namespace — the start, a full inline message in the
    /// middle, an unaligned run, the last blocks — reads them back, and returns what the server
    /// acknowledged (for reading back after a restart). `variantBase` keeps patterns of different
    /// runs apart.
    func writeSeededRanges(_ client: BlockClient, geometries: [UInt32: BlockGeometry], variantBase: UInt64,
                           inlineLabel: String = "", report: SuiteReport) -> [Acknowledged] {
        var acknowledged: [Acknowledged] = []
        for nsid in geometries.keys.sorted() {
            let geometry = geometries[nsid]!
            let perMessage = BlockProtocol.maxInlineBytes / geometry.blockSize
            let ranges: [(UInt64, Int)] = [
                (0, 1),
                (geometry.blockCount / 2, perMessage),
                (geometry.blockCount / 3 + 1, max(1, perMessage / 2 - 1)),
                (geometry.blockCount - UInt64(perMessage), perMessage),
            ]
            report.check("nsid \(nsid): write \(ranges.count) seeded ranges\(inlineLabel) and read them back") {
                var bytes = 0
                for (index, range) in ranges.enumerated() {
                    let item = Acknowledged(nsid: nsid, lba: range.0, blocks: range.1, variant: variantBase + UInt64(index))
                    let data = pattern(item, blockSize: geometry.blockSize)
                    let status = try data.withUnsafeBytes { try client.write(nsid, lba: item.lba, blocks: UInt64(item.blocks), data: $0) }
                    try expect(status == .ok, "write LBA \(item.lba) x \(item.blocks): \(status)")
                    acknowledged.append(item)
                    bytes += data.count
                }
                for item in acknowledged where item.nsid == nsid {
                    try verify(client, item, blockSize: geometry.blockSize)
                }
                return "\(bytes) bytes in \(ranges.count) messages, all verified"
            }
        }
        return acknowledged
    }

    func pattern(_ item: Acknowledged, blockSize: Int) -> [UInt8] {
        let generator = Pattern(seed: options.seed, namespace: item.nsid, variant: item.variant)
        var data = [UInt8](repeating: 0, count: item.blocks * blockSize)
        data.withUnsafeMutableBytes { generator.fill($0.baseAddress!, length: $0.count, position: item.lba * UInt64(blockSize)) }
        return data
    }

    /// Reads the item back in inline messages and compares.
    func verify(_ client: BlockClient, _ item: Acknowledged, blockSize: Int) throws {
        let expected = pattern(item, blockSize: blockSize)
        let perMessage = BlockProtocol.maxInlineBytes / blockSize
        var done = 0
        while done < item.blocks {
            let count = min(perMessage, item.blocks - done)
            let lba = item.lba + UInt64(done)
            let result = try client.read(item.nsid, lba: lba, blocks: UInt64(count))
            guard case .success(let data) = result else { throw CheckFailure("read nsid \(item.nsid) LBA \(lba) x \(count): \(result)") }
            let slice = expected[(done * blockSize)..<((done + count) * blockSize)]
            if !data.elementsEqual(slice) {
                let offset = zip(data, slice).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? data.count
                throw CheckFailure("nsid \(item.nsid) LBA \(lba) x \(count): first difference at byte \(offset) (got \(data.count) bytes)")
            }
            done += count
        }
    }

    struct Child {
        var pid: pid_t
        struct Status: CustomStringConvertible {
            var raw: Int32
            var exitCode: Int32? { raw & 0x7F == 0 ? (raw >> 8) & 0xFF : nil }
            var signal: Int32? { raw & 0x7F != 0 && raw & 0x7F != 0x7F ? raw & 0x7F : nil }
            var description: String { exitCode.map { "exit \($0)" } ?? signal.map { "signal \($0)" } ?? "raw \(raw)" }
        }
        func wait() -> Status {
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            return Status(raw: status)
        }
    }

    /// Spawns the server and waits until its socket answers a geometry request.
    func start(_ path: String, directory: String, extraArguments: [String] = []) throws -> (Child, BlockClient, UInt64) {
        guard access(path, X_OK) == 0 else { throw CheckFailure("\(path) is not there (build it: swift build -c release --product storage_server)") }
        let arguments = [path, "--device", options.device.description, "--runtime-dir", directory, "--name", "storage"] + extraArguments
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, path, nil, nil, &argv, environ)
        guard spawned == 0 else { throw CheckFailure("posix_spawn \(path): errno \(spawned)") }
        let child = Child(pid: pid)
        let clock = MonotonicClock()
        let start = clock.now()
        let deadline = start + UInt64(options.startTimeoutMilliseconds) * 1_000_000
        while clock.now() < deadline {
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                throw CheckFailure("storage_server exited during start-up: \(Child.Status(raw: status))")
            }
            if let client = try? BlockClient.connect(name: "storage", directory: directory),
               (try? client.geometry(1)) != nil {
                return (child, client, (clock.now() - start) / 1_000_000)
            }
            usleep(20_000)
        }
        _ = kill(pid, SIGKILL)
        _ = child.wait()
        throw CheckFailure("no answer on \(directory)/storage.sock within \(options.startTimeoutMilliseconds) ms")
    }

    /// A file next to this executable.
    static func siblingPath(_ name: String) -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let length = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard length > 0 else { return name }
        let executable = String(decoding: buffer[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard let slash = executable.lastIndex(of: "/") else { return name }
        return String(executable[..<slash]) + "/" + name
    }
}
