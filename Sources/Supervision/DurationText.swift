/// Durations in the configuration are written as an integer and a unit: `250us`, `100ms`, `5s`,
/// `2m`, `1h`. A bare number is refused: whether `5` meant seconds or milliseconds is exactly the
/// kind of mistake that makes a watchdog fire a thousand times too early.
enum DurationText {
    static let units: [(suffix: String, nanoseconds: Int64)] = [
        ("ns", 1), ("us", 1_000), ("ms", 1_000_000), ("s", 1_000_000_000), ("m", 60_000_000_000), ("h", 3_600_000_000_000),
    ]

    /// The duration, or what is wrong with the text.
    static func parse(_ text: String) -> Result<Duration, DurationError> {
        let digits = text.utf8.prefix { (48...57).contains($0) }
        let unit = String(decoding: text.utf8.dropFirst(digits.count), as: UTF8.self)
        guard !digits.isEmpty else { return .failure(.notANumber(text)) }
        guard !unit.isEmpty else { return .failure(.missingUnit(text)) }
        guard let scale = units.first(where: { $0.suffix == unit })?.nanoseconds else {
            return .failure(.unknownUnit(text, unit: unit))
        }
        // Cap at a day's worth of the unit's multiples: no interval here needs more, and the cap
        // keeps the multiplication far from overflow.
        guard digits.count <= 12, let value = Int64(String(decoding: digits, as: UTF8.self)),
              value.multipliedReportingOverflow(by: scale).overflow == false,
              value * scale <= 7 * 86_400 * 1_000_000_000
        else { return .failure(.tooLong(text)) }
        return .success(.nanoseconds(value * scale))
    }

    /// The shortest exact rendering (`100ms`, `5s`, `2m`), for printing a configuration back.
    static func format(_ duration: Duration) -> String {
        let nanoseconds = nanoseconds(duration)
        for (suffix, scale) in units.reversed() where nanoseconds % scale == 0 && (nanoseconds != 0 || suffix == "s") {
            return "\(nanoseconds / scale)\(suffix)"
        }
        return "\(nanoseconds)ns"
    }

    static func nanoseconds(_ duration: Duration) -> Int64 {
        let (seconds, attoseconds) = duration.components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}

enum DurationError: Error, Equatable, CustomStringConvertible {
    case notANumber(String)
    case missingUnit(String)
    case unknownUnit(String, unit: String)
    case tooLong(String)

    var description: String {
        switch self {
        case .notANumber(let text):
            return "\"\(text)\" is not a duration; write a whole number and a unit, e.g. 100ms, 5s, 2m"
        case .missingUnit(let text):
            return "duration \"\(text)\" has no unit; write \(text)ms or \(text)s (units: ns, us, ms, s, m, h)"
        case .unknownUnit(let text, let unit):
            return "duration \"\(text)\" has an unknown unit \"\(unit)\"; units are ns, us, ms, s, m, h"
                + Suggestion.clause(for: unit, among: DurationText.units.map(\.suffix))
        case .tooLong(let text):
            return "duration \"\(text)\" is longer than 7 days; no supervisor interval needs that much"
        }
    }
}
