import ArgumentParser
import IPC
import Storage
#if canImport(Glibc)
import Glibc
#endif

/// Thin front end: argument parsing and stdin/stdout/stderr. The logic is `StorageTool`
/// (Sources/Storage/StorageTool.swift).
@main
struct LimitlessStorage: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "limitless-storage",
        abstract: "Info, read, write and a quick benchmark on a storage server's namespaces (MSG_BLOCK_*).",
        discussion: """
            Talks to a running storage_server at RUNTIME_DIR/NAME.sock. Long reads and writes report progress \
            on stderr when it is a terminal, or with --progress. Protocol: Sources/Storage/BlockProtocol.swift.
            """,
        subcommands: [Info.self, Read.self, Write.self, Bench.self])
}

struct ServerOptions: ParsableArguments {
    @Option(name: .customLong("runtime-dir"), help: "The runtime directory (default: $LIMITLESS_RUNTIME_DIR or /run/limitless).")
    var runtimeDir: String?

    @Option(help: "The storage server's name: RUNTIME_DIR/NAME.sock.")
    var server: String = "storage"

    var directory: String {
        StorageTool.runtimeDirectory(option: runtimeDir, environment: getenv("LIMITLESS_RUNTIME_DIR").map { String(cString: $0) })
    }

    func connect() throws -> BlockClient {
        try Tool.run { () throws(StorageTool.Failure) in try StorageTool.connect(name: server, directory: directory) }
    }
}

enum Tool {
    /// Straight to the descriptors (no stdio buffering, no shared FILE globals).
    static func say(_ text: String) {
        _ = try? writeAll(fd: 2, Array(text.utf8), name: "stderr", quiet: true)
    }

    static func out(_ text: String) {
        _ = try? writeAll(fd: 1, Array(text.utf8), name: "stdout", quiet: true)
    }

    /// Runs `body`; a `StorageTool.Failure` becomes "limitless-storage: message" and exit 1.
    @discardableResult
    static func run<T>(_ body: () throws(StorageTool.Failure) -> T) throws -> T {
        do {
            return try body()
        } catch {
            say("limitless-storage: \(error.message)\n")
            throw ExitCode.failure
        }
    }

    static func progress(verb: String, total: UInt64, forced: Bool) -> StorageTool.ProgressReporter {
        let terminal = isatty(2) == 1
        return StorageTool.ProgressReporter(verb: verb, total: total, enabled: terminal || forced, redraw: terminal) { say($0) }
    }

    /// All of a descriptor (stdin or a file).
    static func readAll(fd: Int32, name: String) throws -> [UInt8] {
        var data: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                say("limitless-storage: cannot read \(name): \(String(cString: strerror(errno)))\n")
                throw ExitCode.failure
            }
            if n == 0 { return data }
            data += buffer[0..<n]
        }
    }

    static func writeAll(fd: Int32, _ bytes: [UInt8], name: String, quiet: Bool = false) throws {
        var written = 0
        while written < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + written, $0.count - written) }
            if n < 0 {
                if errno == EINTR { continue }
                if quiet { throw ExitCode.failure }
                say("limitless-storage: cannot write \(name): \(String(cString: strerror(errno)))\n")
                throw ExitCode.failure
            }
            written += n
        }
    }
}

extension LimitlessStorage {
    struct Info: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Namespaces' block size, block count and capacity (probes nsid 1, 2, … until ENOENT, at most 16).")

        @OptionGroup var server: ServerOptions
        @Option(help: "Only this namespace.") var nsid: UInt32?
        @Flag(help: "JSON output.") var json = false

        func run() throws {
            let client = try server.connect()
            let namespaces = try Tool.run { () throws(StorageTool.Failure) in try StorageTool.namespaces(client, nsid: nsid) }
            Tool.out(StorageTool.formatInfo(namespaces, json: json))
        }
    }

    struct Read: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Read blocks: an xxd-style hex dump on stdout (offsets from the namespace's byte 0), or raw with --output.",
            discussion: "Sent as requests of at most 64 KiB each.")

        @OptionGroup var server: ServerOptions
        @Option(help: "Namespace.") var nsid: UInt32
        @Option(help: "First block.") var lba: UInt64
        @Option(help: "How many blocks.") var blocks: UInt64
        @Option(help: "Write the raw bytes to FILE, or to stdout with '-'.") var output: String?
        @Flag(help: "Report progress on stderr even when it is not a terminal.") var progress = false

        func run() throws {
            let client = try server.connect()
            let geometry = try Tool.run { () throws(StorageTool.Failure) in try StorageTool.geometry(client, nsid: nsid) }
            try Tool.run { () throws(StorageTool.Failure) in try StorageTool.checkRange(geometry, nsid: nsid, lba: lba, blocks: blocks) }
            let reporter = Tool.progress(verb: "read", total: blocks * UInt64(geometry.blockSize), forced: progress)
            guard let output else {
                try Tool.run { () throws(StorageTool.Failure) in
                    try StorageTool.readHex(client, nsid: nsid, lba: lba, blocks: blocks, progress: reporter) { Tool.out($0) }
                }
                return
            }
            let fd: Int32
            if output == "-" {
                fd = 1
            } else {
                fd = open(output, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
                guard fd >= 0 else {
                    Tool.say("limitless-storage: cannot open \(output): \(String(cString: strerror(errno)))\n")
                    throw ExitCode.failure
                }
            }
            defer { if fd != 1 { close(fd) } }
            var writeError: (any Error)?
            try Tool.run { () throws(StorageTool.Failure) in
                try StorageTool.read(client, nsid: nsid, lba: lba, blocks: blocks, progress: reporter) { (chunk: [UInt8]) throws(StorageTool.Failure) in
                    do { try Tool.writeAll(fd: fd, chunk, name: output) } catch {
                        writeError = error
                        throw StorageTool.Failure("stopped: cannot write \(output)")
                    }
                }
            }
            if let writeError { throw writeError }
        }
    }

    struct Write: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write blocks from --input (FILE or '-' for stdin) or a --pattern; the last block is padded with zeros.",
            discussion: "Refuses a range past the end of the namespace before sending anything. Sent as requests of at most 64 KiB.")

        @OptionGroup var server: ServerOptions
        @Option(help: "Namespace.") var nsid: UInt32
        @Option(help: "First block.") var lba: UInt64
        @Option(help: "Read the data from FILE, or stdin with '-'.") var input: String?
        @Option(help: "Write a deterministic pseudo-random pattern from this seed (with --blocks).") var pattern: UInt64?
        @Option(help: "How many blocks of --pattern.") var blocks: UInt64?
        @Flag(help: "JSON summary.") var json = false
        @Flag(help: "Report progress on stderr even when it is not a terminal.") var progress = false

        func validate() throws {
            switch (input, pattern) {
            case (.some, .some): throw ValidationError("give either --input or --pattern, not both")
            case (.none, .none): throw ValidationError("give --input FILE|- or --pattern SEED --blocks B")
            case (.some, .none): if blocks != nil { throw ValidationError("--blocks goes with --pattern (with --input the input's size decides)") }
            case (.none, .some): if (blocks ?? 0) == 0 { throw ValidationError("--pattern needs --blocks B (B > 0)") }
            }
        }

        func run() throws {
            let client = try server.connect()
            let geometry = try Tool.run { () throws(StorageTool.Failure) in try StorageTool.geometry(client, nsid: nsid) }
            let data: [UInt8]
            if let pattern, let blocks {
                // Checked before generating (and before sending): the pattern could be huge.
                try Tool.run { () throws(StorageTool.Failure) in try StorageTool.checkRange(geometry, nsid: nsid, lba: lba, blocks: blocks) }
                data = StorageTool.pattern(seed: pattern, count: Int(blocks) * geometry.blockSize)
            } else if let input {
                if input == "-" {
                    data = try Tool.readAll(fd: 0, name: "stdin")
                } else {
                    let fd = open(input, O_RDONLY)
                    guard fd >= 0 else {
                        Tool.say("limitless-storage: cannot open \(input): \(String(cString: strerror(errno)))\n")
                        throw ExitCode.failure
                    }
                    defer { close(fd) }
                    data = try Tool.readAll(fd: fd, name: input)
                }
            } else {
                throw ValidationError("give --input FILE|- or --pattern SEED --blocks B")
            }
            let reporter = Tool.progress(verb: "wrote", total: UInt64(data.count), forced: progress)
            let summary = try Tool.run { () throws(StorageTool.Failure) in
                try StorageTool.write(client, nsid: nsid, lba: lba, data: data, progress: reporter)
            }
            Tool.out(summary.format(json: json))
        }
    }

    struct Bench: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Random aligned I/O through the server for a few seconds: IOPS, MB/s, latency p50/p99.",
            discussion: "--write and --mixed overwrite the namespace with a pattern: use a scratch namespace. Figures only.")

        @OptionGroup var server: ServerOptions
        @Option(help: "Namespace.") var nsid: UInt32
        @Option(help: "How long (0.1 to 600 s).") var seconds: Double = 5
        @Option(help: "Requests in flight (1 to 32).") var queueDepth: Int = 1
        @Option(help: "Bytes per I/O (a multiple of the namespace block size, at most 64 KiB).") var blockSize: Int = 4096
        @Flag(help: "Random reads (default), writes, or half and half.") var mode: StorageTool.BenchMode = .read
        @Flag(help: "JSON output.") var json = false
        @Flag(help: "Data path: in the messages (default), through a shared region (copied by the server), or a registered shared region (zero copy: the device reads and writes this process's pages).")
        var data: StorageTool.BenchDataPath = .inline

        func run() throws {
            let client = try server.connect()
            let options = StorageTool.BenchOptions(nsid: nsid, seconds: seconds, queueDepth: queueDepth, ioSize: blockSize, mode: mode,
                                                   dataPath: data)
            let result = try Tool.run { () throws(StorageTool.Failure) in try StorageTool.bench(client, options: options) }
            Tool.out(result.format(json: json))
        }
    }
}

extension StorageTool.BenchMode: EnumerableFlag {}
extension StorageTool.BenchDataPath: EnumerableFlag {}
