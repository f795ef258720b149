import ArgumentParser
import IPC
import ServerKit
#if canImport(Glibc)
import Glibc
#endif

struct LimitlessTestServer: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "limitless-testserver",
        abstract: "A Limitless server that does nothing useful and misbehaves on request, for testing the supervisor.",
        discussion: """
            Restores its checkpoint and prints what it found ("checkpoint: TEXT", "checkpoint: none" or \
            "checkpoint corrupt: starting fresh (...)"), saves one if asked, registers with the supervisor, \
            heartbeats, then misbehaves as told or runs until SIGTERM (exit 0). Every step prints one line \
            to stdout. Run by hand (no LIMITLESS_SERVER_NAME) it runs standalone, logging to stderr.
            """)

    enum CrashSignal: String, ExpressibleByArgument, CaseIterable {
        case SEGV, ABRT, KILL
        var number: Int32 {
            switch self {
            case .SEGV: SIGSEGV
            case .ABRT: SIGABRT
            case .KILL: SIGKILL
            }
        }
    }

    @Option(help: "Die by a signal this many milliseconds after registering.")
    var crashAfterMs: Int?
    @Option(help: "The signal for --crash-after-ms.")
    var crashSignal: CrashSignal = .SEGV
    @Option(help: "Exit with this code (after --exit-after-ms, default at once after registering).")
    var exitCode: Int32?
    @Option(help: "When to exit with --exit-code, in milliseconds after registering.")
    var exitAfterMs: Int?
    @Option(help: "Stop heartbeats and stop responding (SIGTERM included) this many milliseconds after registering.")
    var hangAfterMs: Int?
    @Option(help: "Send this many log records as fast as possible after registering.")
    var floodLog: Int?
    @Flag(help: "Overwrite the checkpoint store's headers with garbage (after any --save-checkpoint).")
    var corruptCheckpoint = false
    @Flag(help: "Ignore SIGTERM (the supervisor must SIGKILL).")
    var ignoreSigterm = false
    @Flag(help: "Do not confirm capability revokes (the supervisor must restart it without them).")
    var ignoreRevoke = false
    @Option(help: "Save TEXT as the checkpoint before registering.")
    var saveCheckpoint: String?
    @Flag(help: "Print the checkpoint and exit 0 without registering.")
    var printCheckpoint = false
    @Flag(help: "Drop privileges with a seccomp filter before registering, and show that socket(AF_INET) is refused.")
    var seccomp = false
    @Flag(inversion: .prefixedNo, help: "Serve MSG_IPC_PING at RUNTIME_DIR/NAME.sock (default: when LIMITLESS_RUNTIME_DIR is set).")
    var serve: Bool?
    @Flag(help: "Answer every request (but MSG_IPC_PING, answered by IPCServer) with its data echoed: param1 > 0 asks for that many reply bytes (the data repeated, or 0, 1, 2... without data); the reply's param1 is the data's length, param2 this process's pid.")
    var echo = false
    @Option(help: "Offer shared-memory rings to this many clients (MSG_IPC_RING_ATTACH; default 0: refused).")
    var rings = 0
    @Flag(help: "With --seccomp: try VFIO_IOMMU_GET_INFO on stdin after dropping privileges and on every descriptor granted at run time, printing the errno.")
    var probeIoctl = false
    @Flag(help: "Started as a standby (servers.conf `standby yes`): hang before ServerKit, never reaching the activation point.")
    var stallAsStandby = false
    @Option(help: "The server's name when run standalone.")
    var name = "testserver"

    mutating func validate() throws {
        if exitAfterMs != nil && exitCode == nil { throw ValidationError("--exit-after-ms needs --exit-code") }
        for (flag, value) in [("--crash-after-ms", crashAfterMs), ("--exit-after-ms", exitAfterMs),
                              ("--hang-after-ms", hangAfterMs), ("--flood-log", floodLog), ("--rings", rings)] {
            if let value, value < 0 { throw ValidationError("\(flag) must be 0 or more") }
        }
    }

    func run() throws {
        var options = ServerRuntime.Options()
        if ignoreSigterm { options.stopSignals = [SIGINT] }
        if ignoreRevoke { options.acknowledgeRevocations = false }
        if stallAsStandby && StandbyActivation.isStandby {
            print("stalling as a standby")
            fflush(nil)
            while true { pause() }
        }
        let runtime: ServerRuntime
        do {
            runtime = try ServerRuntime(standaloneName: name, options: options)
        } catch {
            // A malformed environment is the supervisor's (or the caller's) mistake: say so, exit 78 (EX_CONFIG).
            var line = "limitless-testserver: \(error)\n"
            line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
            throw ExitCode(78)
        }
        if ignoreSigterm { signal(SIGTERM, SIG_IGN) }

        let behaviour = TestServerBehaviour(runtime: runtime, plan: .init(
            crashAfterMs: crashAfterMs, crashSignal: crashSignal.number, exitCode: exitCode, exitAfterMs: exitAfterMs,
            hangAfterMs: hangAfterMs, floodLog: floodLog, corruptCheckpoint: corruptCheckpoint,
            saveCheckpoint: saveCheckpoint, printCheckpointOnly: printCheckpoint, seccomp: seccomp,
            serve: serve ?? (getenv("LIMITLESS_RUNTIME_DIR") != nil), echo: echo, rings: rings, probeIoctl: probeIoctl))
        throw ExitCode(try behaviour.run())
    }
}
