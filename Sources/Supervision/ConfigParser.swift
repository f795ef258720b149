import Glibc

/// Reads `servers.conf`. The format (documented for users at the top of the example servers.conf
/// and in `limitless-supervisor --help`):
///
///     start_server NAME PATH [ARGS...]      one per server, as in the seed, not indented
///       device LABEL SELECTOR               indented lines below it: that server's settings
///       capabilities CAP_... [CAP_...]
///       restart never|on-failure|always [backoff=D] [max-backoff=D] [limit=N/T]
///       user NAME / group NAME
///       depends NAME...
///       checkpoint D / watchdog D
///       standby yes|no                       a pre-started instance for fast restarts
///       listen yes|no                        the supervisor holds RUNTIME_DIR/NAME.sock (default yes)
///       page_cache_log SIZE                  the CAP_PAGE_CACHE memfd's size, e.g. 16M (the default)
///
/// Indentation rather than `NAME.setting = value`: a server's whole description reads as one
/// block, and the seed's `start_server` lines stay valid as they are.
///
/// The parser never stops at the first mistake: every line is checked, and all problems are
/// returned together with their line and column.
public enum ConfigParser {
    /// Longer lines are refused: nothing legitimate needs them, and a binary file given by
    /// mistake should fail quickly with a clear message.
    public static let maximumLineLength = 4096
    public static let maximumFileSize = 1 << 20
    public static let maximumNameLength = 64

    /// The setting keywords, for messages and suggestions.
    public static let settingKeywords = ["device", "capabilities", "restart", "user", "group", "depends", "checkpoint", "watchdog", "standby", "listen", "page_cache_log"]

    /// Reads and parses the file at `path`.
    public static func load(path: String) throws(ConfigurationErrors) -> SupervisorConfiguration {
        switch ConfigFile.read(path: path, limit: maximumFileSize) {
        case .success(let bytes): return try parse(bytes, file: path)
        case .failure(let refusal): throw ConfigurationErrors([ConfigDiagnostic(SourceLocation(file: path, line: 0), refusal.message)])
        }
    }

    public static func parse(_ text: String, file: String) throws(ConfigurationErrors) -> SupervisorConfiguration {
        try parse(Array(text.utf8), file: file)
    }

    public static func parse(_ bytes: [UInt8], file: String) throws(ConfigurationErrors) -> SupervisorConfiguration {
        var parser = Parser(file: file)
        parser.run(bytes)
        return try parser.finish()
    }
}

/// One server while its block is being read, with where each part was written.
private struct ServerDraft {
    var configuration: ServerConfiguration
    /// Whether the start_server line itself was valid; settings of an invalid one are still
    /// checked, but the server is not part of the result.
    var valid: Bool
    var settingLines: [String: Int] = [:]
    var deviceUses: [(capability: Capability, location: SourceLocation)] = []
    var dependsLocation: SourceLocation?
}

private struct Parser {
    let file: String
    var diagnostics: [ConfigDiagnostic] = []
    var drafts: [ServerDraft] = []
    var current: Int?
    var declaredAt: [String: Int] = [:]
    var sawAnyLine = false

    init(file: String) { self.file = file }

    mutating func error(_ line: Int, _ column: Int = 0, _ message: String) {
        diagnostics.append(ConfigDiagnostic(SourceLocation(file: file, line: line, column: column), message))
    }

    mutating func run(_ bytes: [UInt8]) {
        if bytes.isEmpty {
            error(1, 0, "the file is empty; declare servers with `start_server NAME PATH [ARGS...]` (see servers.conf in the repository)")
            return
        }
        var lineNumber = 0
        var start = 0
        while start < bytes.count {
            lineNumber += 1
            let end = bytes[start...].firstIndex(of: UInt8(ascii: "\n")) ?? bytes.count
            var line = Array(bytes[start..<end])
            start = end + 1
            if line.last == UInt8(ascii: "\r") { line.removeLast() }
            self.line(line, number: lineNumber)
        }
    }

    mutating func line(_ line: [UInt8], number: Int) {
        guard line.count <= ConfigParser.maximumLineLength else {
            error(number, 0, "line is \(line.count) bytes long; the limit is \(ConfigParser.maximumLineLength). "
                + "Is this a configuration file?")
            return
        }
        if let nul = line.firstIndex(of: 0) {
            error(number, nul + 1, "NUL byte in the line; configuration files are text. Is this a configuration file?")
            return
        }
        if let control = line.firstIndex(where: { ($0 < 0x20 && $0 != UInt8(ascii: "\t")) || $0 == 0x7F }) {
            error(number, control + 1, "control character 0x\(hex(line[control])) in the line; remove it")
            return
        }
        guard String(validating: line, as: UTF8.self) != nil else {
            error(number, 0, "the line is not valid UTF-8; save the file as UTF-8")
            return
        }
        let words: [ConfigTokenizer.Word]
        switch ConfigTokenizer.words(line) {
        case .success(let result): words = result
        case .failure(let failure):
            error(number, failure.column, failure.message)
            return
        }
        guard let keyword = words.first else { return }  // blank or comment
        sawAnyLine = true
        let indented = line.first == UInt8(ascii: " ") || line.first == UInt8(ascii: "\t")
        if indented {
            guard let current else {
                error(number, keyword.column, "`\(keyword.text)` is indented, so it is a server setting, but no start_server line "
                    + "comes before it; settings go on indented lines below their start_server line")
                return
            }
            setting(keyword, Array(words.dropFirst()), line: number, server: current)
        } else if keyword.text == "start_server" {
            startServer(keyword, Array(words.dropFirst()), line: number)
        } else if ConfigParser.settingKeywords.contains(keyword.text) {
            error(number, keyword.column, "`\(keyword.text)` is a server setting; indent it below its start_server line")
        } else {
            error(number, keyword.column, "unknown keyword `\(keyword.text)`; lines start with start_server, and settings are "
                + "indented below it" + Suggestion.clause(for: keyword.text, among: ["start_server"] + ConfigParser.settingKeywords))
        }
    }

    // MARK: start_server

    mutating func startServer(_ keyword: ConfigTokenizer.Word, _ arguments: [ConfigTokenizer.Word], line: Int) {
        let example = "e.g. `start_server storage_server /system/servers/drivers/storage_server`"
        var valid = true
        var name = arguments.first?.text ?? ""
        var path = ""
        if arguments.isEmpty {
            error(line, keyword.column, "start_server needs a NAME and a PATH, \(example)")
            valid = false
        } else if arguments.count == 1 {
            error(line, keyword.column, "start_server \(name) has no PATH; give the executable's absolute path after the name, \(example)")
            valid = false
        }
        if let nameWord = arguments.first {
            if let problem = Parser.nameProblem(nameWord.text) {
                error(line, nameWord.column, problem)
                valid = false
            } else if let earlier = declaredAt[nameWord.text] {
                error(line, nameWord.column, "server \(nameWord.text) is already declared at line \(earlier); server names must be unique")
                valid = false
            } else {
                declaredAt[nameWord.text] = line
            }
            name = nameWord.text
        }
        if arguments.count >= 2 {
            let pathWord = arguments[1]
            path = pathWord.text
            if !path.hasPrefix("/") {
                error(line, pathWord.column, "PATH \(path) is not absolute; write the full path, e.g. /system/servers/drivers/\(name)")
                valid = false
            }
        }
        let configuration = ServerConfiguration(
            name: name, path: path, arguments: arguments.dropFirst(2).map(\.text),
            location: SourceLocation(file: file, line: line))
        drafts.append(ServerDraft(configuration: configuration, valid: valid))
        current = drafts.count - 1
    }

    /// Names become log file names, memfd names and capability owners: keep them to letters,
    /// digits, `_`, `-` and `.`, not starting with `.` or `-` (no hidden files, no options).
    static func nameProblem(_ name: String) -> String? {
        let allowed = name.utf8.allSatisfy {
            (48...57).contains($0) || (65...90).contains($0) || (97...122).contains($0) || $0 == 95 || $0 == 45 || $0 == 46
        }
        if !allowed || name.isEmpty {
            return "server name \"\(name)\" may only contain letters, digits, _, - and ."
        }
        if name.hasPrefix(".") || name.hasPrefix("-") {
            return "server name \(name) must not start with . or -"
        }
        if name.utf8.count > ConfigParser.maximumNameLength {
            return "server name is \(name.utf8.count) characters long; the limit is \(ConfigParser.maximumNameLength)"
        }
        return nil
    }

    // MARK: settings

    /// The one `yes` or `no` a setting takes; nil (and the error reported) otherwise.
    mutating func yesOrNo(_ keyword: ConfigTokenizer.Word, _ arguments: [ConfigTokenizer.Word], line: Int, example: String) -> Bool? {
        guard arguments.count == 1, let value = ["yes": true, "no": false][arguments[0].text] else {
            error(line, arguments.first?.column ?? keyword.column, "`\(keyword.text)` takes yes or no, e.g. \(example)")
            return nil
        }
        return value
    }

    mutating func setting(_ keyword: ConfigTokenizer.Word, _ arguments: [ConfigTokenizer.Word], line: Int, server: Int) {
        let name = drafts[server].configuration.name
        let singular = ["restart", "user", "group", "checkpoint", "watchdog", "standby", "listen", "page_cache_log"]
        if singular.contains(keyword.text) {
            if let earlier = drafts[server].settingLines[keyword.text] {
                error(line, keyword.column, "`\(keyword.text)` is already set for \(name) at line \(earlier); keep one")
                return
            }
            drafts[server].settingLines[keyword.text] = line
        }
        func requireArguments(_ usage: String) -> Bool {
            if arguments.isEmpty { error(line, keyword.column, "`\(keyword.text)` needs \(usage)") }
            return !arguments.isEmpty
        }
        switch keyword.text {
        case "device":
            guard arguments.count == 2 else {
                error(line, keyword.column, "`device` takes a label and a selector, e.g. `device NVME0 0000:00:03.0`, "
                    + "`device NIC0 8086:10d3` or `device NVME0 class=010802`")
                return
            }
            device(label: arguments[0], selector: arguments[1], line: line, server: server)
        case "capabilities":
            guard requireArguments("one or more capability names, e.g. `capabilities CAP_DMA_ALLOC CAP_BLOCK_READ`") else { return }
            for word in arguments { capability(word, line: line, server: server) }
        case "restart":
            guard requireArguments("a policy: never, on-failure or always") else { return }
            restart(arguments, line: line, server: server)
        case "user", "group":
            guard arguments.count == 1 else {
                error(line, keyword.column, "`\(keyword.text)` takes one \(keyword.text) name or number, e.g. `\(keyword.text) storage`")
                return
            }
            let value = arguments[0]
            guard Parser.isAccountName(value.text) else {
                error(line, value.column, "\"\(value.text)\" is not a valid \(keyword.text) name; use letters, digits, _ and -, "
                    + "starting with a letter or _, or a number")
                return
            }
            if keyword.text == "user" { drafts[server].configuration.user = value.text } else { drafts[server].configuration.group = value.text }
        case "depends":
            guard requireArguments("the names of the servers this one needs, e.g. `depends storage_server`") else { return }
            if drafts[server].dependsLocation == nil {
                drafts[server].dependsLocation = SourceLocation(file: file, line: line, column: arguments[0].column)
            }
            for word in arguments {
                if drafts[server].configuration.dependencies.contains(word.text) {
                    error(line, word.column, "\(name) already depends on \(word.text)")
                } else {
                    drafts[server].configuration.dependencies.append(word.text)
                }
            }
        case "checkpoint", "watchdog":
            guard arguments.count == 1 else {
                error(line, keyword.column, "`\(keyword.text)` takes one interval, e.g. `\(keyword.text) 5s`")
                return
            }
            guard let interval = duration(arguments[0], line: line) else { return }
            guard interval >= .milliseconds(10) else {
                error(line, arguments[0].column, "\(keyword.text) interval \(arguments[0].text) is below 10ms; the supervisor "
                    + "cannot keep up with that, use at least 10ms")
                return
            }
            if keyword.text == "checkpoint" {
                drafts[server].configuration.checkpointInterval = interval
            } else {
                drafts[server].configuration.watchdogInterval = interval
            }
        case "standby":
            guard let value = yesOrNo(keyword, arguments, line: line, example: "`standby yes` "
                + "(a pre-started instance waits to take over when the server exits)") else { return }
            drafts[server].configuration.standby = value
        case "listen":
            guard let value = yesOrNo(keyword, arguments, line: line, example: "`listen no` "
                + "(for a server that does not serve RUNTIME_DIR/NAME.sock; by default the supervisor holds it)") else { return }
            drafts[server].configuration.listens = value
        case "page_cache_log":
            guard arguments.count == 1 else {
                error(line, keyword.column, "`page_cache_log` takes one size, e.g. `page_cache_log 16M` (K, M or G; the default is 16M)")
                return
            }
            guard let size = Parser.byteSize(arguments[0].text) else {
                error(line, arguments[0].column, "\"\(arguments[0].text)\" is not a size; write a number with K, M or G, e.g. 16M")
                return
            }
            let range = PageCacheLog.sizeRange
            guard range.contains(size), size % 4096 == 0 else {
                error(line, arguments[0].column, "page_cache_log \(arguments[0].text) must be a multiple of 4K from \(range.lowerBound >> 10)K to \(range.upperBound >> 30)G")
                return
            }
            drafts[server].configuration.pageCacheLogSize = size
        default:
            error(line, keyword.column, "unknown setting `\(keyword.text)`; settings are "
                + ConfigParser.settingKeywords.joined(separator: ", ")
                + Suggestion.clause(for: keyword.text, among: ConfigParser.settingKeywords))
        }
    }

    mutating func device(label: ConfigTokenizer.Word, selector: ConfigTokenizer.Word, line: Int, server: Int) {
        guard DeviceLabel.isValid(label.text) else {
            error(line, label.column, "device label \"\(label.text)\" must be upper-case letters, digits and _, starting with a "
                + "letter (it becomes part of CAP_MMIO_<LABEL>), e.g. NVME0")
            return
        }
        if drafts[server].configuration.devices.contains(where: { $0.label == label.text }) {
            error(line, label.column, "device \(label.text) is already declared for \(drafts[server].configuration.name)")
            return
        }
        guard let parsed = DeviceSelector(selector.text) else {
            error(line, selector.column, "\"\(selector.text)\" is not a PCI device; write an address DDDD:BB:DD.F "
                + "(e.g. 0000:00:03.0, as `lspci -D` shows), vendor:device IDs (e.g. 8086:10d3) or a class (e.g. class=010802)")
            return
        }
        drafts[server].configuration.devices.append(ServerConfiguration.Device(label: label.text, selector: parsed))
    }

    mutating func capability(_ word: ConfigTokenizer.Word, line: Int, server: Int) {
        guard let capability = Capability(word.text) else {
            var message = "unknown capability \(word.text)"
            if let near = Suggestion.closest(to: word.text, among: Capability.plain.keys.sorted()) {
                message += "; did you mean \(near)?"
            } else if word.text.hasPrefix("CAP_MMIO") || word.text.hasPrefix("CAP_IRQ") {
                message += "; device capabilities are CAP_MMIO_<LABEL> and CAP_IRQ_<LABEL> with the label of a `device` line"
            } else {
                message += "; known capabilities: " + Capability.knownNames.joined(separator: " ")
            }
            error(line, word.column, message)
            return
        }
        if drafts[server].configuration.capabilities.contains(capability) {
            error(line, word.column, "\(capability) is already granted to \(drafts[server].configuration.name)")
            return
        }
        drafts[server].configuration.capabilities.insert(capability)
        if capability.device != nil {
            drafts[server].deviceUses.append((capability, SourceLocation(file: file, line: line, column: word.column)))
        }
    }

    mutating func restart(_ arguments: [ConfigTokenizer.Word], line: Int, server: Int) {
        guard let mode = RestartPolicy.Mode(rawValue: arguments[0].text) else {
            error(line, arguments[0].column, "unknown restart policy \(arguments[0].text); use never, on-failure or always"
                + Suggestion.clause(for: arguments[0].text, among: RestartPolicy.Mode.allCases.map(\.rawValue)))
            return
        }
        var policy = RestartPolicy(mode: mode)
        var valid = true
        var seen: Set<String> = []
        for option in arguments.dropFirst() {
            let parts = option.text.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let key = String(parts[0])
            let keys = ["backoff", "max-backoff", "limit", "healthy"]
            guard parts.count == 2, keys.contains(key) else {
                error(line, option.column, "unknown restart option \(option.text); options are backoff=D, max-backoff=D, "
                    + "limit=N/T and healthy=D|never, e.g. `restart on-failure backoff=100ms max-backoff=30s limit=5/60s healthy=10s`"
                    + Suggestion.clause(for: key, among: keys))
                valid = false
                continue
            }
            guard seen.insert(key).inserted else {
                error(line, option.column, "restart option \(key) is given twice")
                valid = false
                continue
            }
            let value = ConfigTokenizer.Word(text: String(parts[1]), column: option.column + key.utf8.count + 1)
            switch key {
            case "backoff":
                if let duration = duration(value, line: line) { policy.initialBackoff = duration } else { valid = false }
            case "max-backoff":
                if let duration = duration(value, line: line) { policy.maximumBackoff = duration } else { valid = false }
            case "healthy":
                // An instance that ran this long before failing restarts without the backoff pause.
                if value.text == "never" {
                    policy.healthyRun = nil
                } else if let duration = duration(value, line: line) {
                    policy.healthyRun = duration
                } else {
                    valid = false
                }
            default:
                let limit = value.text.split(separator: "/", omittingEmptySubsequences: false)
                guard limit.count == 2, let count = Int(limit[0]), (1...1000).contains(count) else {
                    error(line, value.column, "restart limit \"\(value.text)\" must be N/T: at most N restarts (1 to 1000) "
                        + "within T, e.g. limit=5/60s")
                    valid = false
                    continue
                }
                let periodWord = ConfigTokenizer.Word(text: String(limit[1]), column: value.column + limit[0].utf8.count + 1)
                guard let period = duration(periodWord, line: line) else {
                    valid = false
                    continue
                }
                policy.intensity = RestartPolicy.Intensity(restarts: count, period: period)
            }
        }
        if mode == .never, !seen.isEmpty {
            error(line, arguments[1].column, "restart never takes no options; remove them, or use on-failure")
            valid = false
        }
        if valid, policy.initialBackoff > policy.maximumBackoff {
            error(line, arguments[0].column, "restart backoff \(DurationText.format(policy.initialBackoff)) is longer than "
                + "max-backoff \(DurationText.format(policy.maximumBackoff)); the first pause cannot exceed the cap")
            valid = false
        }
        if valid, policy.intensity.period == .zero {
            error(line, arguments[0].column, "restart limit period must be longer than 0s")
            valid = false
        }
        if valid { drafts[server].configuration.restart = policy }
    }

    mutating func duration(_ word: ConfigTokenizer.Word, line: Int) -> Duration? {
        switch DurationText.parse(word.text) {
        case .success(let duration): return duration
        case .failure(let problem):
            error(line, word.column, problem.description)
            return nil
        }
    }

    /// "16M", "512K", "1G" or plain bytes; nil if malformed or past Int.
    static func byteSize(_ text: String) -> Int? {
        let shifts: [Character: Int] = ["K": 10, "M": 20, "G": 30]
        var digits = Substring(text), shift = 0
        if let last = text.last, let unit = shifts[Character(last.uppercased())] {
            digits = text.dropLast()
            shift = unit
        }
        guard !digits.isEmpty, digits.allSatisfy(\.isASCII), let value = Int(digits), value >= 0,
              value <= Int.max >> shift else { return nil }
        return value << shift
    }

    /// POSIX-portable user and group names, or numeric ids.
    static func isAccountName(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        guard !bytes.isEmpty, bytes.count <= 32 else { return false }
        if bytes.allSatisfy({ (48...57).contains($0) }) { return UInt32(text) != nil }
        guard bytes[0] == 95 || (97...122).contains(bytes[0]) || (65...90).contains(bytes[0]) else { return false }
        return bytes.allSatisfy { (48...57).contains($0) || (65...90).contains($0) || (97...122).contains($0) || $0 == 95 || $0 == 45 }
    }

    // MARK: whole-file checks

    mutating func finish() throws(ConfigurationErrors) -> SupervisorConfiguration {
        for draft in drafts {
            let labels = draft.configuration.devices.map(\.label)
            for use in draft.deviceUses where !labels.contains(use.capability.device!) {
                let label = use.capability.device!
                let declared = labels.isEmpty
                    ? "\(draft.configuration.name) declares no devices; add `device \(label) <BDF>`"
                    : "\(draft.configuration.name) declares " + labels.joined(separator: ", ")
                        + Suggestion.clause(for: label, among: labels)
                diagnostics.append(ConfigDiagnostic(use.location, "\(use.capability) names device \(label), but \(declared)"))
            }
        }
        for draft in drafts where !draft.configuration.capabilities.contains(.pageCache) {
            guard let line = draft.settingLines["page_cache_log"] else { continue }
            error(line, 0, "page_cache_log is set, but \(draft.configuration.name) is not granted CAP_PAGE_CACHE, whose memory "
                + "it sizes; add CAP_PAGE_CACHE to its capabilities or remove this line")
        }
        if drafts.isEmpty, diagnostics.isEmpty {
            error(1, 0, sawAnyLine ? "no start_server lines; nothing to supervise" : "the file has only comments and blank lines; "
                + "declare servers with `start_server NAME PATH [ARGS...]`")
        }
        // A refused start_server line keeps its server out of the dependency graph; its own
        // depends line is still checked for names nobody declares.
        for draft in drafts where !draft.valid {
            for dependency in draft.configuration.dependencies where declaredAt[dependency] == nil {
                diagnostics.append(ConfigDiagnostic(
                    draft.dependsLocation ?? draft.configuration.location,
                    "\(draft.configuration.name) depends on \(dependency), which no start_server line declares"
                        + Suggestion.clause(for: dependency, among: declaredAt.keys.sorted())))
            }
        }
        let servers = drafts.filter(\.valid).map(\.configuration)
        do {
            let configuration = try SupervisorConfiguration(servers: servers)
            if diagnostics.isEmpty { return configuration }
        } catch {
            for problem in error.problems {
                let draft = drafts.first { $0.valid && $0.configuration.name == problem.server }!
                diagnostics.append(ConfigDiagnostic(draft.dependsLocation ?? draft.configuration.location, problem.description))
            }
        }
        // File order, so a reader can walk through them top to bottom.
        let ordered = diagnostics.enumerated().sorted {
            ($0.element.location.line, $0.offset) < ($1.element.location.line, $1.offset)
        }.map(\.element)
        throw ConfigurationErrors(ordered)
    }
}

private func hex(_ byte: UInt8) -> String {
    let digits = String(byte, radix: 16)
    return digits.count == 1 ? "0" + digits : digits
}
