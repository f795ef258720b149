import CLimitless

/// The file-system workload of the VFS benchmark (issue 6), the same loop on either side
/// (`VFSBenchTarget`): N creates, N stats, N unlinks in one directory, each op timed alone;
/// then one file written sequentially in fixed chunks plus fsync, then read back sequentially.
/// The phases are separate calls so the caller can make the read cold in between (drop the
/// kernel's caches, or restart vfs_server), which this process cannot do for either side.
public struct VFSWorkload {
    public struct Options: Sendable {
        /// Files created, stat'ed and unlinked.
        public var files = 500
        /// The sequential file's size.
        public var mebibytes = 16
        /// Bytes per write and per read call.
        public var chunkKiB = 128
        /// The directory (inside the target) that holds everything the workload makes.
        public var directory = "/vfsbench"
        public init() {}
    }

    /// One row of figures. Metadata rows have latencies; sequential rows have bytes.
    public struct Figures: Sendable, Equatable {
        public var operation: String
        /// Operations done (metadata) or calls made (sequential).
        public var count: Int
        public var nanoseconds: UInt64
        public var p50Nanoseconds: UInt64 = 0
        public var p99Nanoseconds: UInt64 = 0
        public var bytes: Int = 0

        public var seconds: Double { Double(nanoseconds) / 1e9 }
        public var operationsPerSecond: Double { nanoseconds == 0 ? 0 : Double(count) / seconds }
        /// 10^6 bytes per second (as dd and the table print it).
        public var megabytesPerSecond: Double { nanoseconds == 0 ? 0 : Double(bytes) / 1e6 / seconds }

        /// One greppable line: the rig script builds its table from these.
        public func line(target: String) -> String {
            var text = "vfsbench target=\(target) op=\(operation) count=\(count) seconds=\(format(seconds, 4))"
            if bytes > 0 {
                text += " bytes=\(bytes) mb_per_s=\(format(megabytesPerSecond, 1))"
            } else {
                text += " ops_per_s=\(format(operationsPerSecond, 0)) p50_us=\(format(Double(p50Nanoseconds) / 1000, 1))"
                    + " p99_us=\(format(Double(p99Nanoseconds) / 1000, 1))"
            }
            return text
        }
    }

    public let options: Options
    public init(options: Options) { self.options = options }

    public var sequentialPath: String { options.directory + "/sequential.dat" }
    public func filePath(_ index: Int) -> String { options.directory + "/f\(index)" }
    public var fileBytes: Int { options.mebibytes << 20 }

    /// create, stat, unlink: N of each, in that order, so stat finds every file and unlink
    /// leaves the directory as it was.
    public func metadata(on target: VFSBenchTarget) throws -> [Figures] {
        try target.makeDirectory(options.directory)
        let paths = (0..<options.files).map(filePath)
        return [
            try timeEach("create", paths, target.createExclusive),
            try timeEach("stat", paths, target.stat),
            try timeEach("unlink", paths, target.unlink),
        ]
    }

    /// open(O_CREAT|O_TRUNC), the file in chunks, fsync, close: the time runs to fsync's return,
    /// so the data is on the device, not only in a cache.
    public func sequentialWrite(on target: VFSBenchTarget) throws -> Figures {
        try target.makeDirectory(options.directory)
        let chunk = options.chunkKiB << 10
        // A pattern rather than zeros, so nothing on either side can shortcut the data.
        let data = (0..<chunk).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ 7) }
        var calls = 0
        let start = CL_monotonic_ns()
        let fd = try target.openForWriting(sequentialPath)
        var written = 0
        while written < fileBytes {
            written += try target.write(fd, written + chunk <= fileBytes ? data : Array(data[..<(fileBytes - written)]))
            calls += 1
        }
        try target.fsync(fd)
        try target.close(fd)
        return Figures(operation: "seqwrite", count: calls, nanoseconds: CL_monotonic_ns() - start, bytes: written)
    }

    /// The file from the start to its end, in chunks. Whether this is cold is the caller's doing.
    public func sequentialRead(on target: VFSBenchTarget) throws -> Figures {
        let chunk = options.chunkKiB << 10
        var calls = 0
        var total = 0
        let start = CL_monotonic_ns()
        let fd = try target.openForReading(sequentialPath)
        while true {
            let n = try target.read(fd, count: chunk)
            calls += 1
            if n == 0 { break }
            total += n
        }
        try target.close(fd)
        let elapsed = CL_monotonic_ns() - start
        guard total == fileBytes else { throw VFSWorkloadError.shortRead(expected: fileBytes, got: total) }
        return Figures(operation: "seqread", count: calls, nanoseconds: elapsed, bytes: total)
    }

    /// Removes the sequential file (the directory stays: it is empty after the metadata phase).
    public func cleanUp(on target: VFSBenchTarget) throws {
        if target.exists(sequentialPath) { try target.unlink(sequentialPath) }
    }

    private func timeEach(_ operation: String, _ paths: [String], _ body: (String) throws -> Void) throws -> Figures {
        // Allocated before the loop: recording a sample is a store.
        var samples = [UInt64](repeating: 0, count: paths.count)
        let start = CL_monotonic_ns()
        for (index, path) in paths.enumerated() {
            let t0 = CL_monotonic_ns()
            try body(path)
            samples[index] = CL_monotonic_ns() - t0
        }
        let elapsed = CL_monotonic_ns() - start
        samples.sort()
        return Figures(operation: operation, count: paths.count, nanoseconds: elapsed,
                       p50Nanoseconds: percentile(samples, 0.50), p99Nanoseconds: percentile(samples, 0.99))
    }

    private func percentile(_ sorted: [UInt64], _ fraction: Double) -> UInt64 {
        guard !sorted.isEmpty else { return 0 }
        return sorted[min(sorted.count - 1, Int((Double(sorted.count - 1) * fraction).rounded()))]
    }
}

public enum VFSWorkloadError: Error, CustomStringConvertible {
    case shortRead(expected: Int, got: Int)

    public var description: String {
        switch self {
        case .shortRead(let expected, let got):
            return "the sequential read got \(got) bytes of \(expected): run the write phase first (--phases write,read)."
        }
    }
}

private func format(_ value: Double, _ decimals: Int) -> String {
    guard value.isFinite else { return "nan" }
    var scale = 1.0
    for _ in 0..<decimals { scale *= 10 }
    let rounded = (value * scale).rounded() / scale
    if decimals == 0 { return String(Int(rounded)) }
    var text = String(rounded)
    if let dot = text.firstIndex(of: ".") {
        let have = text.distance(from: dot, to: text.endIndex) - 1
        if have < decimals { text += String(repeating: "0", count: decimals - have) }
    }
    return text
}
