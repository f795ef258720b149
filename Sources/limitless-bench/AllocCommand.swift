import ArgumentParser
import Bench
#if canImport(Glibc)
import Glibc
#endif

extension HotPathProbe.Path: ExpressibleByArgument {}
extension HotPathProbe.ServerKind: ExpressibleByArgument {}

struct AllocCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "alloc",
        abstract: "Counts the hot paths' heap allocations and retains, run under Tests/AllocationCounter/alloc_counter.so.",
        discussion: """
            Two processes, each started with LD_PRELOAD=alloc_counter.so and its own LIMITLESS_ALLOC_COUNTERS file: \
            `alloc --serve ipc|storage --name N --directory D` serves (until killed), then \
            `alloc --path P --name N --directory D --server-counters FILE` warms up, runs COUNT and 10 x COUNT operations \
            of path P (socket, batch, ring, storage, block-ring) and prints per window \
            `alloc P ops=N client_allocs=.. client_retains=.. client_releases=.. server_allocs=.. server_retains=.. server_releases=..`. \
            LIMITLESS_ALLOC_TRACE=N prints the backtraces of the first N allocations in each window (both processes' \
            stderr); LIMITLESS_RETAIN_TRACE=N the same for retains. Tests/BenchTests/HotPathAllocationTests.swift runs it.
            """)

    @Option(help: "Serve this kind of server (until killed) instead of measuring.")
    var serve: HotPathProbe.ServerKind?
    @Option(help: "The path to measure.")
    var path: HotPathProbe.Path?
    @Option(help: "The server's socket name (DIRECTORY/NAME.sock).")
    var name = "alloc"
    @Option(help: "The runtime directory holding the socket.")
    var directory: String
    @Option(help: "The server's counters file (its LIMITLESS_ALLOC_COUNTERS).")
    var serverCounters: String?
    @Option(help: "Operations in the first window (the second has ten times as many).")
    var count = 1_000
    @Option(help: "Operations before the first window.")
    var warmup = 1_000

    func validate() throws {
        guard (serve == nil) != (path == nil) else { throw ValidationError("give exactly one of --serve and --path") }
        if path != nil && serverCounters == nil { throw ValidationError("--path needs --server-counters") }
        guard count > 0, warmup >= 0 else { throw ValidationError("--count must be positive, --warmup 0 or more") }
    }

    func run() throws {
        if let serve { try HotPathProbe.serve(serve, name: name, directory: directory) }
        guard let path, let serverCounters else { return }
        guard let server = AllocationCounters(path: serverCounters) else {
            throw ValidationError("\(serverCounters) holds no counters: start the server under alloc_counter.so with LIMITLESS_ALLOC_COUNTERS=\(serverCounters)")
        }
        let windows = try HotPathProbe.measure(path, name: name, directory: directory, serverCounters: server, count: count, warmup: warmup,
                                               traceAllocations: Self.environmentNumber("LIMITLESS_ALLOC_TRACE"),
                                               traceRetains: Self.environmentNumber("LIMITLESS_RETAIN_TRACE"))
        for window in windows { print(window.line(path)) }
    }

    static func environmentNumber(_ name: String) -> Int64 {
        guard let value = getenv(name) else { return 0 }
        return Int64(String(cString: value)) ?? 0
    }
}
