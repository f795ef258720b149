#if canImport(Glibc)
import Glibc
#endif

/// One restart of a supervised server laid out on a timeline, from the supervisor's log records
/// (`serverctl logs NAME --json`, stamped with CLOCK_REALTIME when the supervisor wrote or
/// received them) and the server's own `startup phases (us after main at realtime N): k=us ...`
/// line (its steps on its own clock, placed by the realtime of its main(), or of its activation
/// for a standby instance: `after activation`). Every offset is in
/// nanoseconds after `origin` (the SIGKILL, or the SIGSTOP for the watchdog case).
///
/// Figures only: nothing here is asserted against a time (issue 4: printed, not asserted).
struct RestartTimeline {
    struct Record {
        var time: Int64
        var text: String
    }

    /// (phase, nanoseconds after origin), in the order they happened.
    var phases: [(name: String, offset: Int64)] = []

    /// Parses `serverctl logs --json` output: one record per line.
    static func records(_ json: String) -> [Record] {
        json.split(separator: "\n").compactMap { line -> Record? in
            let object = SupervisedStorageSuite.ServerJSON(raw: String(line))
            guard let time = object.text("time").flatMap(parseTimestamp), let text = object.text("text") else { return nil }
            return Record(time: time, text: text)
        }
    }

    /// `origin`: CLOCK_REALTIME ns of the event that started it all. `newPID`: the instance that
    /// came back. `answered`: CLOCK_REALTIME ns when the suite's probe got its first answer;
    /// `connected`: when the connect of that probe succeeded (with the supervisor holding the
    /// listening socket, while the server may still be down).
    init(records: [Record], origin: Int64, newPID: Int64, answered: Int64, connected: Int64? = nil) {
        let after = records.filter { $0.time >= origin }
        func first(_ predicate: (String) -> Bool, from: Int64 = Int64.min) -> Record? {
            after.first { $0.time >= from && predicate($0.text) }
        }
        func add(_ name: String, _ time: Int64?) {
            if let time { phases.append((name, time - origin)) }
        }
        let watchdog = first { $0.hasPrefix("watchdog: no heartbeat") }
        add("watchdog fired", watchdog?.time)
        let exit = first({ $0.hasPrefix("instance ") && ($0.contains("killed by signal") || $0.contains("(watchdog)")) },
                         from: watchdog?.time ?? Int64.min)
        add("exit seen (pidfd)", exit?.time)
        let quiesced = first({ $0.hasPrefix("devices quiesced in ") }, from: exit?.time ?? Int64.min)
        add("quiesce done", quiesced?.time)
        let decided = first({ $0.hasPrefix("restarting ") }, from: exit?.time ?? Int64.min)
        add("restart decided", decided?.time)
        if let started = first({ $0.hasPrefix("instance ") && $0.contains("started as pid \(newPID) ") }) {
            if let micros = Self.number(after: "(spawned in ", in: started.text) {
                add("fork+exec begins", started.time - micros * 1000)
            }
            add("fork+exec done", started.time)
        }
        add("standby activated", first { $0.hasPrefix("instance ") && $0.contains("activated standby pid \(newPID) ") }?.time)
        if let line = first({ $0.hasPrefix("startup phases (us after ") }),
           let main = Self.number(after: "at realtime ", in: line.text) {
            add(line.text.hasPrefix("startup phases (us after activation ") ? "server activated" : "server main()", main)
            let pairs = line.text.split(separator: ":", maxSplits: 1).last.map { $0.split(separator: " ") } ?? []
            for pair in pairs {
                let parts = pair.split(separator: "=")
                if parts.count == 2, let micros = Int64(parts[1]) { add("server " + parts[0], main + micros * 1000) }
            }
        }
        add("REGISTER seen", first { $0.hasPrefix("instance ") && $0.contains("registered (pid \(newPID))") }?.time)
        add("probe connected", connected)
        add("answering", answered)
        phases.sort { $0.offset < $1.offset }
    }

    func offset(_ name: String) -> Int64? { phases.first { $0.name == name }?.offset }

    /// `name +12.3` pairs in milliseconds, and the gap from the previous step in brackets.
    var line: String {
        var previous: Int64 = 0
        return phases.map { phase in
            defer { previous = phase.offset }
            return "\(phase.name) \(Self.milliseconds(phase.offset)) (+\(Self.milliseconds(phase.offset - previous)))"
        }.joined(separator: " | ")
    }

    /// The median of each phase over several timelines (phases in the first one's order).
    static func medians(_ timelines: [RestartTimeline]) -> String {
        guard let first = timelines.first else { return "" }
        return first.phases.map { phase in
            let values = timelines.compactMap { $0.offset(phase.name) }
            return "\(phase.name) \(milliseconds(median(values)))"
        }.joined(separator: " | ")
    }

    static func median(_ values: [Int64]) -> Int64 {
        guard !values.isEmpty else { return 0 }
        let sorted = values.sorted()
        return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
    }

    static func milliseconds(_ nanoseconds: Int64) -> String {
        let tenths = (nanoseconds + (nanoseconds >= 0 ? 50_000 : -50_000)) / 100_000
        let sign = tenths < 0 ? "-" : ""
        return "\(sign)\(abs(tenths) / 10).\(abs(tenths) % 10)"
    }

    static func number(after needle: String, in text: String) -> Int64? {
        guard let range = text.firstRange(of: needle) else { return nil }
        return Int64(text[range.upperBound...].prefix { $0.isNumber })
    }

    static func realtimeNow() -> Int64 {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        return Int64(time.tv_sec) * 1_000_000_000 + Int64(time.tv_nsec)
    }

    /// `2026-11-27T14:40:51.123456789Z` (the supervisor's log format) to ns since the epoch.
    static func parseTimestamp(_ text: String) -> Int64? {
        let bytes = Array(text.utf8)
        guard bytes.count == 30, bytes[4] == 45, bytes[10] == 84, bytes[19] == 46 else { return nil }
        func number(_ range: Range<Int>) -> Int64? { Int64(String(decoding: bytes[range], as: UTF8.self)) }
        guard let year = number(0..<4), let month = number(5..<7), let day = number(8..<10), let hour = number(11..<13),
              let minute = number(14..<16), let second = number(17..<19), let fraction = number(20..<29)
        else { return nil }
        // Days from the civil date (proleptic Gregorian), March-based years.
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
        let days = era * 146_097 + yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear - 719_468
        return (days * 86_400 + hour * 3600 + minute * 60 + second) * 1_000_000_000 + fraction
    }
}
