import Glibc

/// What the kernel reports about one running server process, read from /proc by the supervisor
/// (which may read any of its children's files; serverctl, running as a user, may not). The
/// figures `serverctl stats` shows beside the supervisor's own counters.
public struct ProcessSample: Hashable, Sendable {
    /// CPU time in user and kernel mode (utime, stime of /proc/PID/stat), nanoseconds.
    public var userCPU: Int64 = 0
    public var systemCPU: Int64 = 0
    public var threads: Int = 0
    /// VmRSS and VmHWM of /proc/PID/status, bytes.
    public var residentBytes: Int64 = 0
    public var peakResidentBytes: Int64 = 0
    /// VmLck: memory locked (pinned DMA buffers count here for a VFIO driver).
    public var lockedBytes: Int64 = 0
    /// Entries of /proc/PID/fd: capability descriptors, sockets, memfds.
    public var openDescriptors: Int = 0
    /// Major page faults (majflt): a driver's hot path should have none.
    public var majorFaults: Int64 = 0
    /// voluntary_ctxt_switches / nonvoluntary_ctxt_switches of /proc/PID/status.
    public var voluntarySwitches: Int64 = 0
    public var involuntarySwitches: Int64 = 0

    public init() {}

    /// Reads `/proc/PID`; nil when the process is gone (or `root` does not have it).
    public static func read(pid: Int32, procRoot: String = "/proc") -> ProcessSample? {
        guard pid > 0, let stat = readText("\(procRoot)/\(pid)/stat"), let status = readText("\(procRoot)/\(pid)/status"),
              var sample = parse(stat: stat, status: status, clockTicksPerSecond: Int64(sysconf(Int32(_SC_CLK_TCK))))
        else { return nil }
        sample.openDescriptors = countEntries("\(procRoot)/\(pid)/fd")
        return sample
    }

    /// The fields of /proc/PID/stat and /proc/PID/status this type keeps (proc(5)). The command
    /// name in stat is in parentheses and may itself hold spaces and parentheses, so fields are
    /// counted from the last ')'.
    public static func parse(stat: String, status: String, clockTicksPerSecond: Int64) -> ProcessSample? {
        guard let close = stat.lastIndex(of: ")") else { return nil }
        // After ")": state(3) ppid(4) ... majflt(12) ... utime(14) stime(15) ... num_threads(20).
        let fields = stat[stat.index(after: close)...].split(separator: " ", omittingEmptySubsequences: true)
        func field(_ number: Int) -> Int64? {
            let index = number - 3
            return index >= 0 && index < fields.count ? Int64(fields[index]) : nil
        }
        guard let utime = field(14), let stime = field(15), let threads = field(20), let majflt = field(12),
              clockTicksPerSecond > 0 else { return nil }
        var sample = ProcessSample()
        let nanosecondsPerTick = 1_000_000_000 / clockTicksPerSecond
        sample.userCPU = utime.multipliedReportingOverflow(by: nanosecondsPerTick).partialValue
        sample.systemCPU = stime.multipliedReportingOverflow(by: nanosecondsPerTick).partialValue
        sample.threads = Int(clamping: threads)
        sample.majorFaults = majflt
        for line in status.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            guard parts.count == 2 else { continue }
            let words = parts[1].split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard let number = words.first.flatMap({ Int64($0) }) else { continue }
            let value = words.count > 1 && words[1] == "kB" ? number * 1024 : number
            switch parts[0] {
            case "VmRSS": sample.residentBytes = value
            case "VmHWM": sample.peakResidentBytes = value
            case "VmLck": sample.lockedBytes = value
            case "voluntary_ctxt_switches": sample.voluntarySwitches = value
            case "nonvoluntary_ctxt_switches": sample.involuntarySwitches = value
            default: break
            }
        }
        return sample
    }

    private static func readText(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { break }
            bytes += chunk[0..<count]
            if bytes.count > 1 << 20 { break }
        }
        return bytes.isEmpty ? nil : String(decoding: bytes, as: UTF8.self)
    }

    private static func countEntries(_ path: String) -> Int {
        guard let directory = opendir(path) else { return 0 }
        defer { closedir(directory) }
        var count = 0
        while let entry = readdir(directory) {
            let isDot = withUnsafeBytes(of: entry.pointee.d_name) { name in name[0] == 0x2E && (name[1] == 0 || (name[1] == 0x2E && name[2] == 0)) }
            if !isDot { count += 1 }
        }
        return count
    }
}
