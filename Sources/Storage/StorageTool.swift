import IPC
import Platform
#if canImport(Glibc)
import Glibc
#endif

/// The logic of `limitless-storage` (info, read, write, bench against a running storage server
/// over the block protocol, `BlockProtocol`). The executable only parses arguments and wires
/// stdout/stderr; everything here takes a `BlockClient` and returns text or figures, so tests run
/// it against a RAM-backed server in a temporary runtime directory.
public enum StorageTool {
    /// What the tool says when something goes wrong (printed as `limitless-storage: <message>`).
    public struct Failure: Error, Equatable, CustomStringConvertible {
        public var message: String
        public init(_ message: String) { self.message = message }
        public var description: String { message }
    }

    /// Namespaces probed by `info` without --nsid: 1, 2, … until ENOENT, at most this many.
    public static let maxProbedNamespaces: UInt32 = 16

    // MARK: Connecting

    /// --runtime-dir, else $LIMITLESS_RUNTIME_DIR (when set and not empty), else /run/limitless.
    public static func runtimeDirectory(option: String?, environment: String?) -> String {
        if let option, !option.isEmpty { return option }
        if let environment, !environment.isEmpty { return environment }
        return IPCRuntime.defaultDirectory
    }

    public static func noServerMessage(directory: String, name: String) -> String {
        let dir = directory.count > 1 && directory.hasSuffix("/") ? String(directory.dropLast()) : directory
        return "no storage server at \(dir)/\(name).sock: start storage_server or the supervisor"
    }

    /// Connects, turning "nothing listens there" into `noServerMessage`.
    public static func connect(name: String, directory: String) throws(Failure) -> BlockClient {
        do {
            return try BlockClient.connect(name: name, directory: directory)
        } catch .serverNotFound {
            throw Failure(noServerMessage(directory: directory, name: name))
        } catch {
            throw Failure("cannot connect to \(directory)/\(name).sock: \(error)")
        }
    }

    /// A reply status in words, for a request about `nsid`.
    public static func explain(_ status: IPCStatus, nsid: UInt32, what: String) -> String {
        let name = status.name ?? (status == .ERANGE ? "ERANGE" : "errno \(status.rawValue)")
        let why: String
        switch status {
        case .ENOENT: why = "namespace \(nsid) does not exist"
        case .ERANGE: why = "the range runs past the end of namespace \(nsid)"
        case .EACCES: why = "this uid is not allowed (see storage_server --allow-uid)"
        case .EIO: why = "the device failed the command (the server logs the NVMe status)"
        case .EINVAL: why = "the server rejected the request as malformed"
        case .EMSGSIZE: why = "the request is larger than the server accepts"
        case .EBUSY: why = "the server's queue for this client is full"
        default: why = "the server refused it"
        }
        return "\(what) failed with \(name): \(why)"
    }

    static func transport(_ error: any Error, _ what: String) -> Failure {
        Failure("\(what): \(error)")
    }

    public static func geometry(_ client: BlockClient, nsid: UInt32) throws(Failure) -> BlockGeometry {
        let result: Result<BlockGeometry, IPCStatus>
        do { result = try client.geometry(nsid) } catch { throw transport(error, "geometry of namespace \(nsid)") }
        switch result {
        case .success(let geometry): return geometry
        case .failure(let status): throw Failure(explain(status, nsid: nsid, what: "geometry of namespace \(nsid)"))
        }
    }

    // MARK: Units

    /// Bytes in binary units with one decimal: "512 B", "4.0 KiB", "12.0 MiB", "1.5 TiB".
    public static func humanBytes(_ bytes: UInt64) -> String {
        if bytes < 1024 { return "\(bytes) B" }
        let units = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
        var value = Double(bytes) / 1024
        var index = 0
        while value >= 1024, index < units.count - 1 {
            value /= 1024
            index += 1
        }
        return "\(oneDecimal(value)) \(units[index])"
    }

    /// One decimal place, rounded half up, without Foundation.
    public static func oneDecimal(_ value: Double) -> String {
        guard value.isFinite else { return "\(value)" }
        let tenths = Int64((abs(value) * 10).rounded())
        return "\(value < 0 && tenths != 0 ? "-" : "")\(tenths / 10).\(tenths % 10)"
    }

    // MARK: info

    public struct NamespaceInfo: Equatable, Sendable {
        public var nsid: UInt32
        public var geometry: BlockGeometry
        public init(nsid: UInt32, geometry: BlockGeometry) {
            self.nsid = nsid
            self.geometry = geometry
        }
    }

    /// One namespace (`nsid`), or the active ones among 1…16, stopping at the first ENOENT.
    public static func namespaces(_ client: BlockClient, nsid: UInt32? = nil) throws(Failure) -> [NamespaceInfo] {
        if let nsid { return [NamespaceInfo(nsid: nsid, geometry: try geometry(client, nsid: nsid))] }
        var found: [NamespaceInfo] = []
        for candidate in 1...maxProbedNamespaces {
            let result: Result<BlockGeometry, IPCStatus>
            do { result = try client.geometry(candidate) } catch { throw transport(error, "geometry of namespace \(candidate)") }
            switch result {
            case .success(let geometry): found.append(NamespaceInfo(nsid: candidate, geometry: geometry))
            case .failure(.ENOENT): return found
            case .failure(let status):
                throw Failure(explain(status, nsid: candidate, what: "geometry of namespace \(candidate)"))
            }
        }
        return found
    }

    public static func formatInfo(_ namespaces: [NamespaceInfo], json: Bool) -> String {
        if json {
            let items = namespaces.map { ns in
                "{\"nsid\":\(ns.nsid),\"block_size\":\(ns.geometry.blockSize),\"block_count\":\(ns.geometry.blockCount),"
                    + "\"capacity_bytes\":\(ns.geometry.capacityBytes)}"
            }
            return "{\"namespaces\":[\(items.joined(separator: ","))]}\n"
        }
        if namespaces.isEmpty { return "no active namespaces\n" }
        let rows = namespaces.map { ns in
            ["\(ns.nsid)", "\(ns.geometry.blockSize)", "\(ns.geometry.blockCount)", humanBytes(ns.geometry.capacityBytes)]
        }
        return table(header: ["NSID", "BLOCK SIZE", "BLOCKS", "CAPACITY"], rows: rows)
    }

    static func table(header: [String], rows: [[String]]) -> String {
        var widths = header.map(\.count)
        for row in rows { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { i, cell in
                let pad = String(repeating: " ", count: widths[i] - cell.count)
                return i == 0 ? cell + pad : pad + cell  // first column left, figures right
            }.joined(separator: "  ")
        }
        return ([line(header)] + rows.map(line)).joined(separator: "\n") + "\n"
    }

    // MARK: Progress

    /// "read 12.0 MiB / 64.0 MiB (18%)" (percent rounded down; 100% only when done == total).
    public static func formatProgress(verb: String, done: UInt64, total: UInt64) -> String {
        let percent = total == 0 ? 100 : Int((Double(min(done, total)) / Double(total) * 100).rounded(.down))
        return "\(verb) \(humanBytes(done)) / \(humanBytes(total)) (\(percent)%)"
    }

    /// Reports progress through `sink` at most about once a second, or whenever another 10% is
    /// done, and once at the end. Disabled, it does nothing (the tool enables it when stderr is a
    /// terminal or --progress is given).
    public final class ProgressReporter {
        public let verb: String
        public let total: UInt64
        public let enabled: Bool
        /// On a terminal the line is redrawn in place ("\r\u{1B}[K"), else one line per report.
        public let redraw: Bool
        let interval: Duration
        let clock: () -> ContinuousClock.Instant
        let sink: (String) -> Void
        private var lastTime: ContinuousClock.Instant
        private var lastDecile: UInt64 = 0
        private var printedAny = false
        public private(set) var reports: [String] = []

        public init(verb: String, total: UInt64, enabled: Bool, redraw: Bool = false, interval: Duration = .seconds(1),
                    clock: @escaping () -> ContinuousClock.Instant = { ContinuousClock.now },
                    sink: @escaping (String) -> Void) {
            self.verb = verb
            self.total = total
            self.enabled = enabled
            self.redraw = redraw
            self.interval = interval
            self.clock = clock
            self.sink = sink
            self.lastTime = clock()
        }

        public func update(done: UInt64) {
            guard enabled else { return }
            let decile = total == 0 ? 10 : min(done, total) * 10 / total
            let now = clock()
            if decile > lastDecile || now - lastTime >= interval {
                lastDecile = max(lastDecile, decile)
                lastTime = now
                emit(formatProgress(verb: verb, done: done, total: total))
            }
        }

        public func finish(done: UInt64) {
            guard enabled else { return }
            let line = formatProgress(verb: verb, done: done, total: total)
            if reports.last != line { emit(line) }
            if redraw && printedAny { sink("\n") }
        }

        private func emit(_ line: String) {
            reports.append(line)
            printedAny = true
            sink(redraw ? "\r\u{1B}[K" + line : line + "\n")
        }
    }

    // MARK: Hex dump

    /// `xxd`-style lines: offset, 16 bytes in 8 groups of 2, then the printable ASCII ('.' for the
    /// rest). `offset` is the first byte's offset (the tool passes the namespace byte offset,
    /// LBA × block size).
    public static func hexdump(_ bytes: some Collection<UInt8>, offset: UInt64 = 0) -> String {
        let digits: [Character] = Array("0123456789abcdef")
        var out = ""
        out.reserveCapacity(bytes.count / 16 * 68 + 68)
        var lineOffset = offset
        var index = bytes.startIndex
        while index != bytes.endIndex {
            let end = bytes.index(index, offsetBy: 16, limitedBy: bytes.endIndex) ?? bytes.endIndex
            let line = bytes[index..<end]
            var hexOffset = String(lineOffset, radix: 16)
            if hexOffset.count < 8 { hexOffset = String(repeating: "0", count: 8 - hexOffset.count) + hexOffset }
            out += hexOffset
            out += ":"
            var column = 0
            for byte in line {
                if column % 2 == 0 { out += " " }
                out.append(digits[Int(byte >> 4)])
                out.append(digits[Int(byte & 0xF)])
                column += 1
            }
            // Pad a short last line so the ASCII column lines up (16 bytes take 40 characters).
            let used = column * 2 + (column + 1) / 2
            out += String(repeating: " ", count: 40 - used)
            out += "  "
            for byte in line { out.append(byte >= 0x20 && byte < 0x7F ? Character(Unicode.Scalar(byte)) : ".") }
            out += "\n"
            lineOffset += UInt64(line.count)
            index = end
        }
        return out
    }

    // MARK: read

    /// Blocks per inline request: as many as fit in 64 KiB (at least one).
    public static func blocksPerRequest(blockSize: Int) -> UInt64 {
        UInt64(max(1, BlockProtocol.maxInlineBytes / max(1, blockSize)))
    }

    /// Checks LBA + blocks against the namespace before anything is sent.
    public static func checkRange(_ geometry: BlockGeometry, nsid: UInt32, lba: UInt64, blocks: UInt64) throws(Failure) {
        guard blocks > 0 else { throw Failure("nothing to do: 0 blocks") }
        guard lba < geometry.blockCount, blocks <= geometry.blockCount - lba else {
            throw Failure("LBA \(lba) + \(blocks) blocks runs past the end of namespace \(nsid) "
                + "(\(geometry.blockCount) blocks of \(geometry.blockSize) bytes, last LBA \(geometry.blockCount &- 1)); nothing was sent")
        }
    }

    /// Reads `blocks` blocks from `lba` in requests of at most 64 KiB, handing each chunk (in
    /// order) to `consume`. Returns the namespace geometry (for the hex dump's offsets).
    @discardableResult
    public static func read(_ client: BlockClient, nsid: UInt32, lba: UInt64, blocks: UInt64,
                            progress: ProgressReporter? = nil,
                            consume: ([UInt8]) throws(Failure) -> Void) throws(Failure) -> BlockGeometry {
        let geometry = try geometry(client, nsid: nsid)
        try checkRange(geometry, nsid: nsid, lba: lba, blocks: blocks)
        let step = blocksPerRequest(blockSize: geometry.blockSize)
        var done: UInt64 = 0
        while done < blocks {
            let count = min(step, blocks - done)
            let result: Result<[UInt8], IPCStatus>
            do { result = try client.read(nsid, lba: lba + done, blocks: count) } catch {
                throw transport(error, "read of LBA \(lba + done)")
            }
            switch result {
            case .success(let bytes):
                guard bytes.count == Int(count) * geometry.blockSize else {
                    throw Failure("read of LBA \(lba + done): the server returned \(bytes.count) bytes, expected \(Int(count) * geometry.blockSize)")
                }
                try consume(bytes)
            case .failure(let status):
                throw Failure(explain(status, nsid: nsid, what: "read of \(count) blocks at LBA \(lba + done)"))
            }
            done += count
            progress?.update(done: done * UInt64(geometry.blockSize))
        }
        progress?.finish(done: done * UInt64(geometry.blockSize))
        return geometry
    }

    /// The whole read as bytes (for tests and small reads).
    public static func readAll(_ client: BlockClient, nsid: UInt32, lba: UInt64, blocks: UInt64) throws(Failure) -> [UInt8] {
        var all: [UInt8] = []
        try read(client, nsid: nsid, lba: lba, blocks: blocks) { (chunk: [UInt8]) throws(Failure) in all += chunk }
        return all
    }

    /// The read as an xxd-style dump, offsets counted from the namespace's byte 0.
    public static func readHex(_ client: BlockClient, nsid: UInt32, lba: UInt64, blocks: UInt64,
                               progress: ProgressReporter? = nil, output: (String) -> Void) throws(Failure) {
        let geometry = try geometry(client, nsid: nsid)
        var offset = lba &* UInt64(geometry.blockSize)
        try read(client, nsid: nsid, lba: lba, blocks: blocks, progress: progress) { (chunk: [UInt8]) throws(Failure) in
            output(hexdump(chunk, offset: offset))
            offset += UInt64(chunk.count)
        }
    }

    // MARK: write

    /// The deterministic pattern `--pattern SEED` writes: a xorshift64* stream seeded with SEED,
    /// so the same seed always gives the same bytes.
    public static func pattern(seed: UInt64, count: Int) -> [UInt8] {
        var state = seed &+ 0x9E37_79B9_7F4A_7C15
        if state == 0 { state = 0x9E37_79B9_7F4A_7C15 }
        var out = [UInt8]()
        out.reserveCapacity(count)
        while out.count < count {
            state ^= state >> 12
            state ^= state << 25
            state ^= state >> 27
            var word = state &* 0x2545_F491_4F6C_DD1D
            for _ in 0..<8 where out.count < count {
                out.append(UInt8(truncatingIfNeeded: word))
                word >>= 8
            }
        }
        return out
    }

    public struct WriteSummary: Equatable, Sendable {
        public var nsid: UInt32
        public var lba: UInt64
        public var blocks: UInt64
        /// Bytes of input.
        public var bytes: UInt64
        /// Zero bytes added to fill the last block.
        public var paddedBytes: Int

        public func format(json: Bool) -> String {
            if json {
                return "{\"nsid\":\(nsid),\"lba\":\(lba),\"blocks\":\(blocks),\"bytes\":\(bytes),\"padded_bytes\":\(paddedBytes)}\n"
            }
            var text = "wrote \(blocks) block\(blocks == 1 ? "" : "s") (\(humanBytes(bytes + UInt64(paddedBytes)))) to namespace \(nsid) at LBA \(lba)"
            if paddedBytes > 0 { text += "; the last block was padded with \(paddedBytes) zero byte\(paddedBytes == 1 ? "" : "s")" }
            return text + "\n"
        }
    }

    /// Writes `data` from `lba`, padding the last block with zeros, in requests of at most
    /// 64 KiB. Refuses (before sending any write) a range past the end of the namespace.
    @discardableResult
    public static func write(_ client: BlockClient, nsid: UInt32, lba: UInt64, data: [UInt8],
                             progress: ProgressReporter? = nil) throws(Failure) -> WriteSummary {
        guard !data.isEmpty else { throw Failure("nothing to write: the input is empty") }
        let geometry = try geometry(client, nsid: nsid)
        let blockSize = geometry.blockSize
        let blocks = UInt64((data.count + blockSize - 1) / blockSize)
        let padding = Int(blocks) * blockSize - data.count
        try checkRange(geometry, nsid: nsid, lba: lba, blocks: blocks)
        let step = Int(blocksPerRequest(blockSize: blockSize))
        var chunk = [UInt8](repeating: 0, count: step * blockSize)
        var doneBlocks = 0
        while doneBlocks < Int(blocks) {
            let count = min(step, Int(blocks) - doneBlocks)
            let start = doneBlocks * blockSize
            let available = min(count * blockSize, data.count - start)
            let bytes = count * blockSize
            let status: IPCStatus
            do {
                status = try chunk.withUnsafeMutableBytes { (buffer) throws(IPCError) -> IPCStatus in
                    data.withUnsafeBytes { source in
                        buffer.baseAddress!.copyMemory(from: source.baseAddress! + start, byteCount: available)
                    }
                    if available < bytes { (buffer.baseAddress! + available).initializeMemory(as: UInt8.self, repeating: 0, count: bytes - available) }
                    return try client.write(nsid, lba: lba + UInt64(doneBlocks), blocks: UInt64(count),
                                            data: UnsafeRawBufferPointer(rebasing: buffer[0..<bytes]))
                }
            } catch {
                throw transport(error, "write of LBA \(lba + UInt64(doneBlocks))")
            }
            guard status.isOK else {
                throw Failure(explain(status, nsid: nsid, what: "write of \(count) blocks at LBA \(lba + UInt64(doneBlocks))")
                    + (doneBlocks > 0 ? " (\(doneBlocks) blocks before it were written)" : ""))
            }
            doneBlocks += count
            progress?.update(done: min(UInt64(doneBlocks * blockSize), UInt64(data.count)))
        }
        progress?.finish(done: UInt64(data.count))
        return WriteSummary(nsid: nsid, lba: lba, blocks: blocks, bytes: UInt64(data.count), paddedBytes: padding)
    }

    // MARK: bench

    public enum BenchMode: String, Sendable, CaseIterable {
        case read, write, mixed
    }

    /// How the bench's data travels: in the messages (copied through the socket and the
    /// server's bounce buffer), through a shared region (copied by the server between the region
    /// and its bounce buffer), or through a registered shared region (zero copy: the device
    /// reads and writes the client's pages).
    public enum BenchDataPath: String, Sendable, CaseIterable {
        case inline, shared, zeroCopy = "zero-copy"
        /// A `BlockRing`: requests and completions in shared memory, data zero copy, no message
        /// per I/O (both sides poll).
        case ring
    }

    public struct BenchOptions: Equatable, Sendable {
        public var nsid: UInt32
        public var seconds: Double
        public var queueDepth: Int
        public var ioSize: Int
        public var mode: BenchMode
        public var dataPath: BenchDataPath
        public init(nsid: UInt32, seconds: Double = 5, queueDepth: Int = 1, ioSize: Int = 4096, mode: BenchMode = .read,
                    dataPath: BenchDataPath = .inline) {
            self.nsid = nsid
            self.seconds = seconds
            self.queueDepth = queueDepth
            self.ioSize = ioSize
            self.mode = mode
            self.dataPath = dataPath
        }
        /// Runs are bounded: 0.1 s to 10 min, queue depth 1…32.
        public static let secondsRange = 0.1...600.0
        public static let queueDepthRange = 1...32
    }

    public struct BenchResult: Equatable, Sendable {
        public var options: BenchOptions
        public var geometry: BlockGeometry
        public var operations: Int
        public var reads: Int
        public var writes: Int
        public var elapsedSeconds: Double
        /// Latencies (request sent to reply received), nanoseconds.
        public var p50Nanoseconds: Int64
        public var p99Nanoseconds: Int64
        public var maxNanoseconds: Int64

        public var iops: Double { elapsedSeconds > 0 ? Double(operations) / elapsedSeconds : 0 }
        /// Decimal megabytes per second (10^6 bytes), as storage figures usually are.
        public var megabytesPerSecond: Double { iops * Double(options.ioSize) / 1_000_000 }

        public func format(json: Bool) -> String {
            func micro(_ ns: Int64) -> String { oneDecimal(Double(ns) / 1000) }
            if json {
                return "{\"nsid\":\(options.nsid),\"mode\":\"\(options.mode.rawValue)\",\"data_path\":\"\(options.dataPath.rawValue)\",\"io_size\":\(options.ioSize),"
                    + "\"queue_depth\":\(options.queueDepth),\"seconds\":\(oneDecimal(elapsedSeconds)),\"operations\":\(operations),"
                    + "\"reads\":\(reads),\"writes\":\(writes),\"iops\":\(Int(iops.rounded())),\"mb_per_s\":\(oneDecimal(megabytesPerSecond)),"
                    + "\"latency_p50_us\":\(micro(p50Nanoseconds)),\"latency_p99_us\":\(micro(p99Nanoseconds)),\"latency_max_us\":\(micro(maxNanoseconds))}\n"
            }
            return """
                bench: namespace \(options.nsid), random \(options.mode.rawValue) of \(options.ioSize) B, queue depth \(options.queueDepth), \
                data \(options.dataPath.rawValue), \
                \(oneDecimal(elapsedSeconds)) s over \(geometry.blockCount) blocks of \(geometry.blockSize) B
                  operations      \(operations) (\(reads) reads, \(writes) writes)
                  IOPS            \(Int(iops.rounded()))
                  throughput      \(oneDecimal(megabytesPerSecond)) MB/s
                  latency p50     \(micro(p50Nanoseconds)) us
                  latency p99     \(micro(p99Nanoseconds)) us
                  latency max     \(micro(maxNanoseconds)) us

                """
        }
    }

    /// The value at quantile `q` (0…1) of sorted `values` (nearest rank).
    public static func percentile(_ sorted: [Int64], _ q: Double) -> Int64 {
        guard !sorted.isEmpty else { return 0 }
        let rank = Int((q * Double(sorted.count)).rounded(.up)) - 1
        return sorted[min(max(rank, 0), sorted.count - 1)]
    }

    /// Random, aligned I/O of `ioSize` bytes for `seconds`, keeping `queueDepth` requests in
    /// flight on the one connection. Writes (write/mixed) overwrite the namespace with a pattern:
    /// use a scratch namespace. Figures only, no assertions.
    public static func bench(_ client: BlockClient, options: BenchOptions) throws(Failure) -> BenchResult {
        guard BenchOptions.secondsRange.contains(options.seconds) else {
            throw Failure("--seconds must be between \(BenchOptions.secondsRange.lowerBound) and \(BenchOptions.secondsRange.upperBound)")
        }
        guard BenchOptions.queueDepthRange.contains(options.queueDepth) else {
            throw Failure("--queue-depth must be between 1 and \(BenchOptions.queueDepthRange.upperBound)")
        }
        let geometry = try geometry(client, nsid: options.nsid)
        guard options.ioSize > 0, options.ioSize % geometry.blockSize == 0, options.ioSize <= BlockProtocol.maxInlineBytes else {
            throw Failure("--block-size \(options.ioSize) must be a multiple of the namespace's \(geometry.blockSize)-byte blocks, at most \(BlockProtocol.maxInlineBytes)")
        }
        let blocksPerIO = UInt64(options.ioSize / geometry.blockSize)
        guard geometry.blockCount >= blocksPerIO else { throw Failure("namespace \(options.nsid) is smaller than one I/O") }
        let slots = geometry.blockCount / blocksPerIO
        let payload = pattern(seed: 0xBE7C4, count: options.ioSize)
        if options.dataPath == .ring {
            return try benchRing(client, options: options, geometry: geometry, blocksPerIO: blocksPerIO, slots: slots, payload: payload)
        }
        // Shared data paths: one region with a piece of ioSize bytes per request in flight
        // (rounded up to whole pages: a registered buffer must be).
        var region: SharedMemory?
        var handle: UInt32 = 0
        if options.dataPath != .inline {
            let bytes = (options.queueDepth * options.ioSize + 4095) & ~4095
            do {
                let memory = try SharedMemory(size: bytes, name: "limitless-bench")
                let base = UnsafeMutableRawPointer(mutating: memory.bytes.baseAddress!)
                for piece in 0..<options.queueDepth {
                    payload.withUnsafeBytes { (base + piece * options.ioSize).copyMemory(from: $0.baseAddress!, byteCount: options.ioSize) }
                }
                handle = try client.connection.share(memory)
                region = consume memory
            } catch {
                throw transport(error, "sharing a \(bytes)-byte bench buffer")
            }
            if options.dataPath == .zeroCopy {
                let result: Result<UInt32, IPCStatus>
                do { result = try client.registerBuffer(sharedHandle: handle, count: UInt32(bytes)) } catch {
                    throw transport(error, "registering the bench buffer")
                }
                if case .failure(let status) = result {
                    throw Failure(explain(status, nsid: options.nsid, what: "registering the bench buffer for zero copy"))
                }
            }
        }
        defer {
            if options.dataPath == .zeroCopy { _ = try? client.unregisterBuffer(sharedHandle: handle) }
            if options.dataPath != .inline { try? client.connection.release(handle: handle) }
            _ = region?.size  // the client mapping lives until the server let go of it
        }
        var freePieces = Array((0..<options.queueDepth).reversed())
        var rng = SystemRandomNumberGenerator()
        let clock = ContinuousClock()
        var inFlight: [UInt32: (start: ContinuousClock.Instant, isWrite: Bool, piece: Int)] = [:]
        var latencies: [Int64] = []
        latencies.reserveCapacity(1 << 16)
        var reads = 0, writes = 0
        let start = clock.now
        let end = start + .nanoseconds(Int64(options.seconds * 1e9))

        func issue() throws(Failure) {
            let isWrite: Bool
            switch options.mode {
            case .read: isWrite = false
            case .write: isWrite = true
            case .mixed: isWrite = Bool.random(using: &rng)
            }
            let lba = UInt64.random(in: 0..<slots, using: &rng) * blocksPerIO
            var message = Message(type: isWrite ? .blockWrite : .blockRead, param1: UInt64(options.nsid), param2: lba, param3: blocksPerIO)
            let piece = freePieces.removeLast()
            let began = clock.now
            do {
                let sequence: UInt32
                if options.dataPath != .inline {
                    message.setSharedData(handle: handle, offset: UInt32(piece * options.ioSize), count: UInt32(options.ioSize))
                    sequence = try client.connection.send(message)
                } else if isWrite {
                    message.setInlineData(count: UInt32(payload.count))
                    sequence = try payload.withUnsafeBytes { (bytes) throws(IPCError) -> UInt32 in try client.connection.send(message, payload: bytes) }
                } else {
                    sequence = try client.connection.send(message)
                }
                inFlight[sequence] = (began, isWrite, piece)
            } catch {
                throw transport(error, "bench request")
            }
        }

        while clock.now < end || !inFlight.isEmpty {
            while inFlight.count < options.queueDepth, clock.now < end { try issue() }
            if inFlight.isEmpty { break }
            let reply: IPCClient.Reply
            do { reply = try client.connection.receive(timeout: client.timeout) } catch { throw transport(error, "bench reply") }
            guard let request = inFlight.removeValue(forKey: reply.sequence) else { continue }
            let elapsed = clock.now - request.start
            freePieces.append(request.piece)
            guard reply.status.isOK else {
                throw Failure(explain(reply.status, nsid: options.nsid, what: "bench \(request.isWrite ? "write" : "read")"))
            }
            latencies.append(elapsed.components.seconds * 1_000_000_000 + elapsed.components.attoseconds / 1_000_000_000)
            if request.isWrite { writes += 1 } else { reads += 1 }
        }
        let total = clock.now - start
        latencies.sort()
        return BenchResult(
            options: options, geometry: geometry, operations: latencies.count, reads: reads, writes: writes,
            elapsedSeconds: Double(total.components.seconds) + Double(total.components.attoseconds) / 1e18,
            p50Nanoseconds: percentile(latencies, 0.50), p99Nanoseconds: percentile(latencies, 0.99),
            maxNanoseconds: latencies.last ?? 0)
    }

    /// The bench over a `BlockRing`: `queueDepth` requests kept in the ring, completions polled.
    static func benchRing(_ client: BlockClient, options: BenchOptions, geometry: BlockGeometry, blocksPerIO: UInt64, slots: UInt64,
                          payload: [UInt8]) throws(Failure) -> BenchResult {
        var entries = 2
        while entries < options.queueDepth { entries *= 2 }
        let ring: BlockRingClient
        let handle: UInt32
        do {
            ring = try BlockRingClient(entries: entries, dataBytes: options.queueDepth * options.ioSize)
            for piece in 0..<options.queueDepth {
                payload.withUnsafeBytes { (ring.data.baseAddress! + piece * options.ioSize).copyMemory(from: $0.baseAddress!, byteCount: options.ioSize) }
            }
            handle = try client.connection.share(ring.memory)
        } catch {
            throw transport(error, "sharing the bench ring")
        }
        let attached: Result<UInt32, IPCStatus>
        do { attached = try client.attachRing(sharedHandle: handle, count: UInt32(ring.memory.size)) } catch {
            throw transport(error, "attaching the bench ring")
        }
        if case .failure(let status) = attached {
            throw Failure(explain(status, nsid: options.nsid, what: "attaching the bench ring"))
        }
        defer {
            _ = try? client.unregisterBuffer(sharedHandle: handle)
            try? client.connection.release(handle: handle)
        }
        var rng = SystemRandomNumberGenerator()
        let clock = MonotonicClock()
        var started = [UInt64](repeating: 0, count: options.queueDepth)
        var isWrite = [Bool](repeating: false, count: options.queueDepth)
        var freePieces = Array((0..<options.queueDepth).reversed())
        var latencies: [Int64] = []
        latencies.reserveCapacity(1 << 20)
        var reads = 0, writes = 0
        var failure: IPCStatus?
        let start = clock.now()
        let end = start + UInt64(options.seconds * 1e9)
        let timeout = UInt64(client.timeout.components.seconds) * 1_000_000_000
        var lastProgress = start
        while true {
            var now = clock.now()
            if now < end, failure == nil {
                while let piece = freePieces.popLast() {
                    let write: Bool
                    switch options.mode {
                    case .read: write = false
                    case .write: write = true
                    case .mixed: write = Bool.random(using: &rng)
                    }
                    let lba = UInt64.random(in: 0..<slots, using: &rng) * blocksPerIO
                    isWrite[piece] = write
                    started[piece] = now
                    _ = ring.enqueue(write: write, nsid: options.nsid, lba: lba, blocks: UInt32(blocksPerIO),
                                     dataOffset: UInt32(piece * options.ioSize), tag: UInt64(piece))
                }
                ring.publish()
            } else if ring.inFlight == 0 {
                break
            }
            let reaped = ring.reap { tag, status, _ in
                let piece = Int(tag)
                guard piece < options.queueDepth else { return }
                if !status.isOK, failure == nil { failure = status }
                latencies.append(Int64(clock.now() &- started[piece]))
                if isWrite[piece] { writes += 1 } else { reads += 1 }
                freePieces.append(piece)
            }
            now = clock.now()
            // Nothing yet: let the server run if it shares this CPU (see BlockServingLoop).
            if reaped == 0 { sched_yield() }
            if reaped > 0 { lastProgress = now } else if now &- lastProgress > timeout {
                throw Failure("bench over the ring: no completion for \(client.timeout) with \(ring.inFlight) requests in flight")
            }
        }
        if let failure { throw Failure(explain(failure, nsid: options.nsid, what: "bench over the ring")) }
        let total = clock.now() &- start
        latencies.sort()
        return BenchResult(
            options: options, geometry: geometry, operations: latencies.count, reads: reads, writes: writes,
            elapsedSeconds: Double(total) / 1e9,
            p50Nanoseconds: percentile(latencies, 0.50), p99Nanoseconds: percentile(latencies, 0.99),
            maxNanoseconds: latencies.last ?? 0)
    }
}
