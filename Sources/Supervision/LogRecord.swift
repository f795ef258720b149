/// One line of a server's log, as the supervisor keeps it.
public struct LogRecord: Hashable, Sendable, CustomStringConvertible {
    /// Nanoseconds since the Unix epoch, stamped by the supervisor when the line arrived.
    public var timestamp: Int64
    public var server: String
    public var stream: LogStream
    public var level: LogLevel
    /// One line, without its newline.
    public var text: String

    public init(timestamp: Int64, server: String, stream: LogStream, level: LogLevel, text: String) {
        self.timestamp = timestamp
        self.server = server
        self.stream = stream
        self.level = level
        self.text = text
    }

    /// The line as it is written to NAME.log: `2026-11-27T14:40:51.123456789Z stderr warning text`,
    /// with backslashes and control characters in the text escaped so one record stays one line.
    public var fileLine: String {
        "\(LogTimestamp.format(timestamp)) \(stream.rawValue) \(level.rawValue) \(LogRecord.escape(text))"
    }

    /// Reads back a line written by `fileLine`; nil for anything else.
    public init?(fileLine line: Substring, server: String) {
        let parts = line.split(separator: " ", maxSplits: 3, omittingEmptySubsequences: false)
        guard parts.count >= 3, let timestamp = LogTimestamp.parse(parts[0]), let stream = LogStream(rawValue: String(parts[1])),
              let level = LogLevel(rawValue: String(parts[2]))
        else { return nil }
        self.init(timestamp: timestamp, server: server, stream: stream, level: level,
                  text: parts.count == 4 ? LogRecord.unescape(parts[3]) : "")
    }

    public var description: String { "\(server) \(fileLine)" }

    static func escape(_ text: String) -> String {
        var escaped = ""
        escaped.reserveCapacity(text.utf8.count)
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\\": escaped += "\\\\"
            case "\n": escaped += "\\n"
            case "\t": escaped += "\\t"
            case "\r": escaped += "\\r"
            case _ where scalar.value < 0x20 || scalar.value == 0x7F:
                let digits = String(scalar.value, radix: 16)
                escaped += "\\x" + (digits.count == 1 ? "0" : "") + digits
            default: escaped.unicodeScalars.append(scalar)
            }
        }
        return escaped
    }

    static func unescape(_ text: Substring) -> String {
        var result = ""
        var scalars = text.unicodeScalars.makeIterator()
        while let scalar = scalars.next() {
            guard scalar == "\\", let next = scalars.next() else {
                result.unicodeScalars.append(scalar)
                continue
            }
            switch next {
            case "n": result += "\n"
            case "t": result += "\t"
            case "r": result += "\r"
            case "x":
                let digits = [scalars.next(), scalars.next()].compactMap { $0 }.map(Character.init)
                if let value = UInt8(String(digits), radix: 16) { result.unicodeScalars.append(Unicode.Scalar(value)) }
            default: result.unicodeScalars.append(next)
            }
        }
        return result
    }
}

/// Where a line came from.
public enum LogStream: String, Hashable, Sendable, CaseIterable {
    case stdout, stderr
    /// Sent by the server through the logging API, with its own level.
    case structured
    /// Written by the supervisor about the server (restarts, dropped lines).
    case supervisor
}

/// Severity, in syslog's order.
public enum LogLevel: String, Hashable, Sendable, CaseIterable, Comparable {
    case debug, info, notice, warning, error, critical

    public static func < (lhs: LogLevel, rhs: LogLevel) -> Bool {
        allCases.firstIndex(of: lhs)! < allCases.firstIndex(of: rhs)!
    }
}

/// RFC 3339 UTC timestamps with nanoseconds, without Foundation.
public enum LogTimestamp {
    public static func format(_ nanoseconds: Int64) -> String {
        let seconds = nanoseconds >= 0 ? nanoseconds / 1_000_000_000 : (nanoseconds - 999_999_999) / 1_000_000_000
        let fraction = nanoseconds - seconds * 1_000_000_000
        let days = seconds >= 0 ? seconds / 86_400 : (seconds - 86_399) / 86_400
        let secondOfDay = seconds - days * 86_400
        let (year, month, day) = civil(days: days)
        func pad(_ value: Int64, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return "\(pad(year, 4))-\(pad(month, 2))-\(pad(day, 2))T\(pad(secondOfDay / 3600, 2)):\(pad(secondOfDay / 60 % 60, 2))"
            + ":\(pad(secondOfDay % 60, 2)).\(pad(fraction, 9))Z"
    }

    /// Parses exactly what `format` writes.
    public static func parse(_ text: Substring) -> Int64? {
        let bytes = Array(text.utf8)
        guard bytes.count == 30, bytes[4] == 45, bytes[7] == 45, bytes[10] == 84, bytes[13] == 58, bytes[16] == 58,
              bytes[19] == 46, bytes[29] == 90
        else { return nil }
        func number(_ range: Range<Int>) -> Int64? {
            guard bytes[range].allSatisfy({ (48...57).contains($0) }) else { return nil }
            return Int64(String(decoding: bytes[range], as: UTF8.self))
        }
        guard let year = number(0..<4), let month = number(5..<7), let day = number(8..<10), let hour = number(11..<13),
              let minute = number(14..<16), let second = number(17..<19), let fraction = number(20..<29),
              (1...12).contains(month), (1...31).contains(day), hour < 24, minute < 60, second < 61
        else { return nil }
        let days = daysFromCivil(year: year, month: month, day: day)
        return ((days * 86_400 + hour * 3600 + minute * 60 + second) * 1_000_000_000) + fraction
    }

    /// Howard Hinnant's civil_from_days: days since 1970-01-01 to a proleptic Gregorian date.
    static func civil(days: Int64) -> (year: Int64, month: Int64, day: Int64) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let mp = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }

    /// The inverse (days_from_civil).
    static func daysFromCivil(year: Int64, month: Int64, day: Int64) -> Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }
}
