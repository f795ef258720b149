/// `serverctl stats NAME`: the supervisor's counters for one server beside what the kernel
/// reports about its process. Sent as `key=value` lines (unknown keys are ignored, so older and
/// newer serverctl and supervisor builds still understand each other).
public struct ServerStatistics: Hashable, Sendable {
    public var status: ServerStatus
    /// nil when the server is not running.
    public var process: ProcessSample?
    public var logRecords = 0
    public var logBytes = 0
    /// Lines dropped by the rate limit, and lines evicted from memory (still in the log files).
    public var logDropped = 0
    public var logEvicted = 0

    public init(status: ServerStatus, process: ProcessSample?, logs: LogStore.Statistics?) {
        self.status = status
        self.process = process
        if let logs {
            logRecords = logs.records
            logBytes = logs.bytes
            logDropped = logs.dropped
            logEvicted = logs.evicted
        }
    }

    public var encoded: String {
        var lines = [status.encoded]
        func add(_ key: String, _ value: some BinaryInteger) { lines.append("\(key)=\(value)") }
        add("log.records", logRecords)
        add("log.bytes", logBytes)
        add("log.dropped", logDropped)
        add("log.evicted", logEvicted)
        if let process {
            add("cpu.user_ns", process.userCPU)
            add("cpu.system_ns", process.systemCPU)
            add("threads", process.threads)
            add("memory.resident", process.residentBytes)
            add("memory.peak", process.peakResidentBytes)
            add("memory.locked", process.lockedBytes)
            add("fds", process.openDescriptors)
            add("faults.major", process.majorFaults)
            add("switches.voluntary", process.voluntarySwitches)
            add("switches.involuntary", process.involuntarySwitches)
        }
        return lines.joined(separator: "\n")
    }

    /// The first line is the status; nil if it cannot be read.
    public init?(encoded text: String) {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        guard let first = lines.first, let status = ServerStatus(encoded: first) else { return nil }
        self.status = status
        var process = ProcessSample()
        var sawProcess = false
        for line in lines.dropFirst() {
            let parts = line.split(separator: "=", maxSplits: 1)
            guard parts.count == 2, let value = Int64(parts[1]) else { continue }
            let small = Int(clamping: value)
            switch parts[0] {
            case "log.records": logRecords = small
            case "log.bytes": logBytes = small
            case "log.dropped": logDropped = small
            case "log.evicted": logEvicted = small
            case "cpu.user_ns": process.userCPU = value; sawProcess = true
            case "cpu.system_ns": process.systemCPU = value; sawProcess = true
            case "threads": process.threads = small; sawProcess = true
            case "memory.resident": process.residentBytes = value; sawProcess = true
            case "memory.peak": process.peakResidentBytes = value; sawProcess = true
            case "memory.locked": process.lockedBytes = value; sawProcess = true
            case "fds": process.openDescriptors = small; sawProcess = true
            case "faults.major": process.majorFaults = value; sawProcess = true
            case "switches.voluntary": process.voluntarySwitches = value; sawProcess = true
            case "switches.involuntary": process.involuntarySwitches = value; sawProcess = true
            default: continue
            }
        }
        self.process = sawProcess ? process : nil
    }
}
