import ArgumentParser
import IPC
import VFS
import VFSCore
#if canImport(Glibc)
import Glibc
#endif

/// Thin front end: argument parsing and stdin/stdout/stderr. The logic is `VFSClient` and
/// `FileTool` (Sources/VFS).
struct LimitlessFS: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "limitless-fs",
        abstract: "Files and directories through vfs_server (MSG_VFS_*): ls, cat, put, get, mkdir, rm, rmdir, mv, stat, df, ln, chmod.",
        discussion: """
            Talks to a running vfs_server at RUNTIME_DIR/NAME.sock; paths are absolute paths in its namespace. \
            The server checks permissions with this process's uid and gid (as the kernel reports them). \
            Errors are reported like coreutils and make the exit status 1. Protocol: Sources/VFS/VFSProtocol.swift.
            """,
        subcommands: [List.self, Cat.self, Put.self, Get.self, MakeDirectory.self, Remove.self, RemoveDirectory.self,
                      Move.self, Stat.self, DiskFree.self, Link.self, ChangeMode.self])
}

struct ServerOptions: ParsableArguments {
    @Option(name: .customLong("runtime-dir"), help: "The runtime directory (default: $LIMITLESS_RUNTIME_DIR or /run/limitless).")
    var runtimeDir: String?

    @Option(help: "The VFS server's name: RUNTIME_DIR/NAME.sock.")
    var server: String = "vfs"

    func connect() throws -> VFSClient {
        let directory = runtimeDir ?? getenv("LIMITLESS_RUNTIME_DIR").map { String(cString: $0) } ?? IPCRuntime.defaultDirectory
        do {
            return try VFSClient.connect(name: server, directory: directory)
        } catch {
            Tool.say("limitless-fs: no VFS server at \(directory)/\(server).sock: start vfs_server or the supervisor")
            throw ExitCode.failure
        }
    }
}

enum Tool {
    static func say(_ text: String) { write(2, text + "\n") }
    static func out(_ text: String) { write(1, text) }

    static func write(_ fd: Int32, _ text: String) {
        let bytes = Array(text.utf8)
        _ = try? writeAll(fd: fd, bytes)
    }

    static func writeAll(fd: Int32, _ bytes: [UInt8]) throws {
        var written = 0
        while written < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + written, $0.count - written) }
            if n < 0 {
                if errno == EINTR { continue }
                throw ExitCode.failure
            }
            written += n
        }
    }

    /// Runs `body` for each item; failures are printed ("limitless-fs: MESSAGE") and the
    /// command exits 1 after trying every item, as coreutils does.
    static func each(_ items: [String], _ body: (String) throws(FileTool.Failure) -> Void) throws {
        var failed = false
        for item in items {
            do { try body(item) } catch {
                say("limitless-fs: \(error.message)")
                failed = true
            }
        }
        if failed { throw ExitCode.failure }
    }

    static func readLocal(_ path: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else {
            say("limitless-fs: cannot open '\(path)' for reading: \(String(cString: strerror(errno)))")
            throw ExitCode.failure
        }
        defer { close(fd) }
        var data: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                say("limitless-fs: error reading '\(path)': \(String(cString: strerror(errno)))")
                throw ExitCode.failure
            }
            if n == 0 { return data }
            data += buffer[0..<n]
        }
    }
}

extension LimitlessFS {
    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "List directory contents (sorted; -l for details).")
        @OptionGroup var server: ServerOptions
        @Flag(name: .short, help: "Long format: mode, links, uid, gid, size, mtime, name.") var l = false
        @Flag(name: .short, help: "Include names starting with '.'.") var a = false
        @Argument(help: "Paths (default /).") var paths: [String] = []

        func run() throws {
            let client = try server.connect()
            let targets = paths.isEmpty ? ["/"] : paths
            try Tool.each(targets) { (path) throws(FileTool.Failure) in
                let lines = try FileTool.list(client, path, long: l, all: a)
                if targets.count > 1 { Tool.out("\(path):\n") }
                Tool.out(lines.map { $0 + "\n" }.joined())
            }
        }
    }

    struct Cat: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print files to stdout.")
        @OptionGroup var server: ServerOptions
        @Argument(help: "Files.") var paths: [String]

        func run() throws {
            let client = try server.connect()
            try Tool.each(paths) { (path) throws(FileTool.Failure) in
                let data = try FileTool.attempt("", path) { () throws(VFSError) in try client.readFile(path) }
                _ = try? Tool.writeAll(fd: 1, data)
            }
        }
    }

    struct Put: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Copy a local file into the VFS (created or replaced, then fsync'd).",
            discussion: "If REMOTE is a directory, the file keeps its name inside it.")
        @OptionGroup var server: ServerOptions
        @Option(help: "Permission bits of a new file (octal).") var mode: String = "644"
        @Argument(help: "The local file.") var local: String
        @Argument(help: "The path in the VFS.") var remote: String

        func run() throws {
            guard let permissions = UInt32(mode, radix: 8) else { throw ValidationError("--mode wants octal bits, got \(mode)") }
            let client = try server.connect()
            let data = try Tool.readLocal(local)
            var target = remote
            if let attributes = try? client.stat(remote), attributes.type == .directory {
                target = (remote.hasSuffix("/") ? remote : remote + "/") + (local.split(separator: "/").last.map(String.init) ?? local)
            }
            try Tool.each([target]) { (path) throws(FileTool.Failure) in
                try FileTool.attempt("cannot create regular file", path) { () throws(VFSError) in try client.writeFile(path, data, mode: permissions) }
            }
        }
    }

    struct Get: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Copy a file out of the VFS into a local file ('-' for stdout).")
        @OptionGroup var server: ServerOptions
        @Argument(help: "The path in the VFS.") var remote: String
        @Argument(help: "The local file.") var local: String

        func run() throws {
            let client = try server.connect()
            var data: [UInt8] = []
            try Tool.each([remote]) { (path) throws(FileTool.Failure) in
                data = try FileTool.attempt("cannot open", path) { () throws(VFSError) in try client.readFile(path) }
            }
            if local == "-" {
                try Tool.writeAll(fd: 1, data)
                return
            }
            let fd = open(local, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            guard fd >= 0 else {
                Tool.say("limitless-fs: cannot create regular file '\(local)': \(String(cString: strerror(errno)))")
                throw ExitCode.failure
            }
            defer { close(fd) }
            try Tool.writeAll(fd: fd, data)
        }
    }

    struct MakeDirectory: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "mkdir", abstract: "Make directories.")
        @OptionGroup var server: ServerOptions
        @Flag(name: .short, help: "Make parents as needed; no error if it exists.") var p = false
        @Option(help: "Permission bits (octal).") var mode: String = "755"
        @Argument(help: "Directories.") var paths: [String]

        func run() throws {
            guard let permissions = UInt32(mode, radix: 8) else { throw ValidationError("--mode wants octal bits, got \(mode)") }
            let client = try server.connect()
            try Tool.each(paths) { (path) throws(FileTool.Failure) in
                if p {
                    try FileTool.makeDirectories(client, path, mode: permissions)
                } else {
                    try FileTool.attempt("cannot create directory", path) { () throws(VFSError) in try client.mkdir(path, mode: permissions) }
                }
            }
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove files (not directories).")
        @OptionGroup var server: ServerOptions
        @Argument(help: "Files.") var paths: [String]

        func run() throws {
            let client = try server.connect()
            try Tool.each(paths) { (path) throws(FileTool.Failure) in
                try FileTool.attempt("cannot remove", path) { () throws(VFSError) in try client.unlink(path) }
            }
        }
    }

    struct RemoveDirectory: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rmdir", abstract: "Remove empty directories.")
        @OptionGroup var server: ServerOptions
        @Argument(help: "Directories.") var paths: [String]

        func run() throws {
            let client = try server.connect()
            try Tool.each(paths) { (path) throws(FileTool.Failure) in
                try FileTool.attempt("failed to remove", path) { () throws(VFSError) in try client.rmdir(path) }
            }
        }
    }

    struct Move: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "mv", abstract: "Rename a file or directory (within one file system).")
        @OptionGroup var server: ServerOptions
        @Argument(help: "The old path.") var source: String
        @Argument(help: "The new path; into it if it is a directory.") var destination: String

        func run() throws {
            let client = try server.connect()
            var target = destination
            if let attributes = try? client.stat(destination), attributes.type == .directory,
               (try? client.stat(source, followSymlinks: false))?.inode != attributes.inode {
                target = (destination.hasSuffix("/") ? destination : destination + "/") + (source.split(separator: "/").last.map(String.init) ?? source)
            }
            try Tool.each([source]) { (path) throws(FileTool.Failure) in
                do throws(VFSError) { try client.rename(path, to: target) } catch {
                    throw FileTool.Failure("cannot move '\(path)' to '\(target)': \(error.message)")
                }
            }
        }
    }

    struct Stat: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show files' attributes.")
        @OptionGroup var server: ServerOptions
        @Flag(name: .customShort("L"), help: "Follow a final symlink.") var dereference = false
        @Argument(help: "Paths.") var paths: [String]

        func run() throws {
            let client = try server.connect()
            try Tool.each(paths) { (path) throws(FileTool.Failure) in
                let attributes = try FileTool.attempt("cannot stat", path) { () throws(VFSError) in try client.stat(path, followSymlinks: dereference) }
                Tool.out(FileTool.statReport(attributes, path: path))
            }
        }
    }

    struct DiskFree: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "df", abstract: "Space on the file systems holding the paths (default /).")
        @OptionGroup var server: ServerOptions
        @Argument(help: "Paths.") var paths: [String] = []

        func run() throws {
            let client = try server.connect()
            var entries: [VFSProtocol.MountStatistics] = []
            var failed = false
            do {
                try Tool.each(paths.isEmpty ? ["/"] : paths) { (path) throws(FileTool.Failure) in
                    entries.append(try FileTool.attempt("", path) { () throws(VFSError) in try client.statfs(path) })
                }
            } catch { failed = true }
            Tool.out(FileTool.dfReport(entries))
            if failed { throw ExitCode.failure }
        }
    }

    struct Link: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ln", abstract: "Make a hard link, or a symbolic link with -s.")
        @OptionGroup var server: ServerOptions
        @Flag(name: .short, help: "Symbolic link (TARGET is stored as given).") var s = false
        @Argument(help: "The target.") var target: String
        @Argument(help: "The new link's path.") var link: String

        func run() throws {
            let client = try server.connect()
            try Tool.each([link]) { (path) throws(FileTool.Failure) in
                do throws(VFSError) {
                    if s { try client.symlink(target: target, at: path) } else { try client.link(target, to: path) }
                } catch {
                    throw FileTool.Failure("failed to create \(s ? "symbolic " : "hard ")link '\(path)': \(error.message)")
                }
            }
        }
    }

    struct ChangeMode: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "chmod", abstract: "Change permission bits (octal mode).")
        @OptionGroup var server: ServerOptions
        @Argument(help: "Octal mode, e.g. 755.") var mode: String
        @Argument(help: "Paths.") var paths: [String]

        func run() throws {
            guard let bits = UInt32(mode, radix: 8), bits <= 0o7777 else { throw ValidationError("invalid mode: '\(mode)'") }
            let client = try server.connect()
            try Tool.each(paths) { (path) throws(FileTool.Failure) in
                try FileTool.attempt("changing permissions of", path) { () throws(VFSError) in try client.chmod(path, mode: bits) }
            }
        }
    }
}

LimitlessFS.main()
