import Glibc
import Synchronization

/// The servers' logs: a bounded ring in memory per server for `serverctl logs`, and files in a
/// log directory (NAME.log, rotated to NAME.log.1 ... NAME.log.K by size) that outlive the
/// supervisor.
///
/// A server that floods its output must not be able to exhaust the supervisor's memory or disk:
/// each server has a token bucket (`linesPerSecond`, `burst`), lines beyond it are dropped and
/// counted, and the count is logged as a supervisor record ("N lines dropped") once lines flow
/// again or at `flush`. The ring keeps at most `memoryLimit` bytes per server, oldest first out.
///
/// Logging never throws at the caller: a failing disk must not stop supervision. File errors are
/// counted and the first one kept (`fileErrors`).
public final class LogStore: Sendable {
    public struct Configuration: Sendable {
        /// Where NAME.log files go; nil keeps logs in memory only.
        public var directory: String?
        /// Bytes of records kept in memory per server (text plus `recordOverhead` per record).
        public var memoryLimit: Int = 1 << 20
        /// Longer lines are cut to this many bytes, with a note of how much was cut.
        public var maximumLineLength: Int = 16 << 10
        /// NAME.log is rotated before it would grow past this.
        public var rotateAt: Int = 8 << 20
        /// How many rotated files (NAME.log.1 ...) to keep.
        public var keepRotated: Int = 3
        public var linesPerSecond: Int = 2000
        public var burst: Int = 10_000

        public init(directory: String? = nil) { self.directory = directory }
    }

    /// What a record is reckoned to cost beyond its text (the struct, the server name's
    /// reference, array slot), so many short lines are bounded as well as few long ones.
    public static let recordOverhead = 64

    public let configuration: Configuration
    private let state: Mutex<State>

    public init(_ configuration: Configuration) throws(LogStoreError) {
        precondition(configuration.memoryLimit >= configuration.maximumLineLength + LogStore.recordOverhead + 256,
                     "the memory limit must hold at least one line of the maximum length")
        precondition(configuration.linesPerSecond > 0 && configuration.burst > 0 && configuration.keepRotated >= 0)
        if let directory = configuration.directory {
            var info = stat()
            if stat(directory, &info) != 0 {
                guard mkdir(directory, 0o750) == 0 || errno == EEXIST else {
                    throw .directory(directory, "cannot create it: \(String(cString: strerror(errno)))")
                }
            } else if info.st_mode & S_IFMT != S_IFDIR {
                throw .directory(directory, "it exists and is not a directory")
            }
            guard access(directory, W_OK | X_OK) == 0 else {
                throw .directory(directory, "the supervisor cannot write to it")
            }
        }
        self.configuration = configuration
        self.state = Mutex(State())
    }

    deinit {
        state.withLock { state in
            for index in state.servers.values.indices where state.servers.values[index].fd >= 0 {
                close(state.servers.values[index].fd)
            }
        }
    }

    /// Adds one line. Returns false when the line was dropped by the flood limit.
    @discardableResult
    public func append(_ record: LogRecord) -> Bool {
        var record = record
        let limit = configuration.maximumLineLength
        if record.text.utf8.count > limit {
            let kept = String(decoding: record.text.utf8.prefix(limit), as: UTF8.self)
            record.text = kept + " [\(record.text.utf8.count - kept.utf8.count) bytes cut]"
        }
        return state.withLock { state in
            var server = state.servers[record.server] ?? ServerLog(tokens: Double(configuration.burst), refilledAt: record.timestamp)
            defer { state.servers[record.server] = server }
            server.refill(at: record.timestamp, rate: configuration.linesPerSecond, burst: configuration.burst)
            guard server.tokens >= 1 else {
                server.pendingDrops += 1
                server.totalDropped += 1
                return false
            }
            server.tokens -= 1
            reportDrops(&server, at: record.timestamp, errors: &state.fileErrors)
            store(record, in: &server, errors: &state.fileErrors)
            return true
        }
    }

    public func append(server: String, stream: LogStream, level: LogLevel, text: String, timestamp: Int64 = CheckpointStore.now()) {
        append(LogRecord(timestamp: timestamp, server: server, stream: stream, level: level, text: text))
    }

    /// Writes the "N lines dropped" record of servers whose flood has not been followed by an
    /// accepted line yet; the supervisor calls this now and then so a flood that simply stops is
    /// still reported.
    public func flush(now: Int64 = CheckpointStore.now()) {
        state.withLock { state in
            for name in state.servers.keys {
                reportDrops(&state.servers[name]!, at: now, errors: &state.fileErrors)
            }
        }
    }

    /// The newest records of `server` in memory, oldest first: those at or after `since`
    /// (nanoseconds since the epoch), then the last `last` of them.
    public func records(server: String, last: Int? = nil, since: Int64? = nil) -> [LogRecord] {
        state.withLock { state in
            guard let log = state.servers[server] else { return [] }
            var selected = Array(log.ring[log.start...])
            if let since { selected.removeAll { $0.timestamp < since } }
            if let last { selected = Array(selected.suffix(max(0, last))) }
            return selected
        }
    }

    public struct Statistics: Hashable, Sendable {
        public var records: Int
        public var bytes: Int
        /// Pushed out of the ring by newer lines (still in the files).
        public var evicted: Int
        /// Refused by the flood limit (in neither the ring nor the files).
        public var dropped: Int
    }

    public func statistics(server: String) -> Statistics {
        state.withLock { state in
            guard let log = state.servers[server] else { return Statistics(records: 0, bytes: 0, evicted: 0, dropped: 0) }
            return Statistics(records: log.ring.count - log.start, bytes: log.bytes, evicted: log.evicted, dropped: log.totalDropped)
        }
    }

    /// File errors so far (count, and the first message), for the supervisor to report.
    public var fileErrors: (count: Int, first: String?) {
        state.withLock { ($0.fileErrors.count, $0.fileErrors.first) }
    }

    /// The records in `server`'s files, oldest file first, parsed back; lines that are not
    /// records (a file edited by hand) are skipped.
    public func fileRecords(server: String) -> [LogRecord] {
        guard let directory = configuration.directory else { return [] }
        var records: [LogRecord] = []
        for index in stride(from: configuration.keepRotated, through: 0, by: -1) {
            let path = LogStore.path(directory: directory, server: server, generation: index)
            guard let text = LogStore.readWhole(path) else { continue }
            for line in text.split(separator: "\n") {
                if let record = LogRecord(fileLine: line, server: server) { records.append(record) }
            }
        }
        return records
    }

    // MARK: internals (called with the lock held)

    private func reportDrops(_ server: inout ServerLog, at timestamp: Int64, errors: inout FileErrors) {
        guard server.pendingDrops > 0, let name = server.name else { return }
        let notice = LogRecord(
            timestamp: timestamp, server: name, stream: .supervisor, level: .warning,
            text: "\(server.pendingDrops) lines dropped: more than \(configuration.linesPerSecond) lines/s "
                + "(burst \(configuration.burst))")
        server.pendingDrops = 0
        store(notice, in: &server, errors: &errors)
    }

    private func store(_ record: LogRecord, in server: inout ServerLog, errors: inout FileErrors) {
        server.name = record.server
        let cost = record.text.utf8.count + LogStore.recordOverhead
        while server.bytes + cost > configuration.memoryLimit, server.start < server.ring.count {
            server.bytes -= server.ring[server.start].text.utf8.count + LogStore.recordOverhead
            server.start += 1
            server.evicted += 1
        }
        // Compact once the dead prefix is half the array: amortised O(1) per record.
        if server.start > 1024, server.start * 2 > server.ring.count {
            server.ring.removeFirst(server.start)
            server.start = 0
        }
        server.ring.append(record)
        server.bytes += cost
        if let directory = configuration.directory { write(record, to: &server, directory: directory, errors: &errors) }
    }

    private func write(_ record: LogRecord, to server: inout ServerLog, directory: String, errors: inout FileErrors) {
        let line = Array((record.fileLine + "\n").utf8)
        if server.fd >= 0, server.fileSize > 0, server.fileSize + line.count > configuration.rotateAt {
            close(server.fd)
            server.fd = -1
            rotate(server: record.server, directory: directory, errors: &errors)
        }
        if server.fd < 0 {
            let path = LogStore.path(directory: directory, server: record.server, generation: 0)
            server.fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
            guard server.fd >= 0 else {
                errors.note("cannot open \(path): \(String(cString: strerror(errno)))")
                return
            }
            var info = stat()
            server.fileSize = fstat(server.fd, &info) == 0 ? Int(info.st_size) : 0
        }
        var offset = 0
        while offset < line.count {
            let written = line.withUnsafeBytes { Glibc.write(server.fd, $0.baseAddress! + offset, $0.count - offset) }
            if written < 0, errno == EINTR { continue }
            guard written > 0 else {
                errors.note("cannot write \(record.server).log: \(String(cString: strerror(errno)))")
                return
            }
            offset += written
        }
        server.fileSize += line.count
    }

    /// NAME.log.(K-1) -> NAME.log.K, ..., NAME.log -> NAME.log.1; the oldest falls off.
    private func rotate(server: String, directory: String, errors: inout FileErrors) {
        let keep = configuration.keepRotated
        let oldest = LogStore.path(directory: directory, server: server, generation: keep)
        if unlink(oldest) != 0, errno != ENOENT { errors.note("cannot remove \(oldest): \(String(cString: strerror(errno)))") }
        guard keep > 0 else { return }
        for generation in stride(from: keep - 1, through: 0, by: -1) {
            let from = LogStore.path(directory: directory, server: server, generation: generation)
            let to = LogStore.path(directory: directory, server: server, generation: generation + 1)
            if rename(from, to) != 0, errno != ENOENT { errors.note("cannot rotate \(from): \(String(cString: strerror(errno)))") }
        }
    }

    static func path(directory: String, server: String, generation: Int) -> String {
        directory + "/" + server + ".log" + (generation == 0 ? "" : ".\(generation)")
    }

    static func readWhole(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count < 0, errno == EINTR { continue }
            guard count > 0 else { break }
            bytes += chunk[..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

private struct State: ~Copyable {
    var servers: [String: ServerLog] = [:]
    var fileErrors = FileErrors()
}

private struct FileErrors {
    var count = 0
    var first: String?
    mutating func note(_ message: String) {
        count += 1
        if first == nil { first = message }
    }
}

private struct ServerLog {
    var name: String?
    /// Records from `start` on are live; the prefix is waiting to be compacted away.
    var ring: [LogRecord] = []
    var start = 0
    var bytes = 0
    var evicted = 0
    var tokens: Double
    var refilledAt: Int64
    var pendingDrops = 0
    var totalDropped = 0
    var fd: Int32 = -1
    var fileSize = 0

    init(tokens: Double, refilledAt: Int64) {
        self.tokens = tokens
        self.refilledAt = refilledAt
    }

    mutating func refill(at timestamp: Int64, rate: Int, burst: Int) {
        guard timestamp > refilledAt else { return }  // a clock step backwards refills nothing
        let elapsed = Double(timestamp - refilledAt) / 1e9
        tokens = min(Double(burst), tokens + elapsed * Double(rate))
        refilledAt = timestamp
    }
}

public enum LogStoreError: Error, Hashable, Sendable, CustomStringConvertible {
    case directory(String, String)

    public var description: String {
        switch self {
        case .directory(let path, let why):
            return "log directory \(path): \(why); create it, writable by the supervisor's user, or configure another directory"
        }
    }
}
