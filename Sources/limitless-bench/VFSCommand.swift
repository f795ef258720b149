import ArgumentParser
import Bench
#if canImport(Glibc)
import Glibc
#endif

/// `limitless-bench vfs`: the issue-6 workload against a kernel-mounted directory (--posix) or
/// against vfs_server (--server). Phases are chosen per run so the caller can make the read cold
/// between a `metadata,write` run and a `read,cleanup` run.
struct VFSCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vfs",
        abstract: "create/stat/unlink per second and sequential write/read MB/s, on a kernel mount or on vfs_server.",
        discussion: """
            Exactly one of --posix DIR (plain syscalls under DIR, e.g. the kernel's ext2 mount) or \
            --server NAME (vfs_server at RUNTIME_DIR/NAME.sock through VFSClient). Prints one line per \
            operation: "vfsbench target=... op=create|stat|unlink count= seconds= ops_per_s= p50_us= p99_us=" \
            and "op=seqwrite|seqread ... bytes= mb_per_s=" (10^6 bytes per second). The write's time runs \
            to fsync's return. The read is only cold if the caller made it so between phases (Scripts/vfs-bench.sh \
            drops the kernel's caches or restarts vfs_server). Figures only, never asserted.
            """)

    @Option(help: "Run against this directory with plain syscalls.")
    var posix: String?

    @Option(help: "Run against vfs_server with this socket name (RUNTIME_DIR/NAME.sock).")
    var server: String?

    @Option(help: "The runtime directory of --server (default: LIMITLESS_RUNTIME_DIR or /run/limitless).")
    var runtimeDir: String?

    @Option(help: "The directory inside the target that the workload uses.")
    var directory = "/vfsbench"

    @Option(help: "Files created, stat'ed and unlinked.")
    var files = 500

    @Option(help: "The sequential file's size in MiB.")
    var mebibytes = 16

    @Option(name: .customLong("chunk-kib"), help: "KiB per write and per read call.")
    var chunkKiB = 128

    @Option(help: "Comma-separated, run in this order: metadata, write, read, cleanup.")
    var phases = "metadata,write,read,cleanup"

    @Option(help: "The target's name in the printed lines (default: kernel for --posix, ours for --server).")
    var label: String?

    private static let knownPhases: Set<Substring> = ["metadata", "write", "read", "cleanup"]

    func validate() throws {
        guard (posix == nil) != (server == nil) else { throw ValidationError("give exactly one of --posix DIR or --server NAME") }
        guard files > 0, mebibytes > 0, chunkKiB > 0 else { throw ValidationError("--files, --mebibytes and --chunk-kib must be positive") }
        guard directory.hasPrefix("/") else { throw ValidationError("--directory is absolute inside the target") }
        for phase in phases.split(separator: ",") where !Self.knownPhases.contains(phase) {
            throw ValidationError("unknown phase \(phase): use metadata, write, read, cleanup")
        }
    }

    func run() throws {
        let target: VFSBenchTarget
        if let posix {
            target = PosixBenchTarget(root: posix, label: label ?? "kernel")
        } else {
            let runtime = runtimeDir ?? VFSCommand.defaultRuntimeDirectory()
            target = try VFSClientBenchTarget.connect(name: server!, directory: runtime, label: label ?? "ours")
        }
        var options = VFSWorkload.Options()
        options.files = files
        options.mebibytes = mebibytes
        options.chunkKiB = chunkKiB
        options.directory = directory
        let workload = VFSWorkload(options: options)
        for phase in phases.split(separator: ",") {
            let rows: [VFSWorkload.Figures]
            switch phase {
            case "metadata": rows = try workload.metadata(on: target)
            case "write": rows = [try workload.sequentialWrite(on: target)]
            case "read": rows = [try workload.sequentialRead(on: target)]
            default:
                try workload.cleanUp(on: target)
                rows = []
            }
            for row in rows { print(row.line(target: target.label)) }
        }
    }

    private static func defaultRuntimeDirectory() -> String {
        if let value = getenv("LIMITLESS_RUNTIME_DIR") { return String(cString: value) }
        return "/run/limitless"
    }
}
