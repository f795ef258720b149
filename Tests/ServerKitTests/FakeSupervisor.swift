import CLimitless
import IPC
import Supervision
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// The supervisor's side of the contract, played by a test: a SEQPACKET socket pair (our end
/// here, the other at the child's descriptor 3), a checkpoint store (the child's descriptor 4),
/// and a real `limitless-testserver` child started with posix_spawn.
final class FakeSupervisor {
    struct Received {
        var message: Message
        var text: String
    }

    let store: CheckpointStore
    private(set) var received: [Received] = []
    private var channel: Int32 = -1
    private var childEnd: Int32 = -1
    private(set) var pid: pid_t = 0
    private(set) var exitStatus: Int32?
    let outputPath: String
    /// Reply to MSG_SUPERVISOR_REGISTER automatically.
    var answerRegister = true

    init() throws {
        store = try CheckpointStore(name: "serverkit-test", capacity: 64 << 10)
        outputPath = "/tmp/serverkit-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).out"
    }

    deinit {
        if pid > 0 && exitStatus == nil {
            kill(pid, SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
        }
        if channel >= 0 { close(channel) }
        if childEnd >= 0 { close(childEnd) }
        unlink(outputPath)
        unlink(outputPath + ".err")
    }

    /// The built test server next to the test bundle, or nil.
    static func testServerPath() -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let count = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        var candidates: [String] = []
        if count > 0 {
            let exe = String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            var directory = exe
            // .../debug/LimitlessPackageTests.xctest (a file on Linux) or inside a bundle.
            while let slash = directory.lastIndex(of: "/"), !directory.isEmpty {
                directory = String(directory[..<slash])
                candidates.append(directory + "/limitless-testserver")
                if candidates.count > 4 { break }
            }
        }
        if let argument = CommandLine.arguments.first, let slash = argument.lastIndex(of: "/") {
            candidates.append(String(argument[..<slash]) + "/limitless-testserver")
        }
        return candidates.first { access($0, X_OK) == 0 }
    }

    /// Starts the test server with the contract's descriptors and environment; `standby`: as a
    /// standby instance (descriptor 3 only, LIMITLESS_STANDBY=1, no instance number).
    func spawn(arguments: [String] = [], name: String = "testsrv", instance: Int = 1, watchdogMs: Int? = nil,
               extraEnvironment: [String: String] = [:], standby: Bool = false) throws {
        guard let path = Self.testServerPath() else {
            throw XCTSkip("limitless-testserver not found next to the test bundle; build it first "
                          + "(swift build --scratch-path .build-sk --product limitless-testserver)")
        }
        if channel >= 0 { close(channel) }
        if childEnd >= 0 { close(childEnd) }
        received = []
        exitStatus = nil
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, CL_SOCK_SEQPACKET | CL_SOCK_CLOEXEC, 0, &pair) == 0 else {
            throw XCTSkip("socketpair(SOCK_SEQPACKET) failed: errno \(errno)")
        }
        channel = pair[0]
        // High numbers, so dup2 onto 3 and 4 never overwrites a source.
        childEnd = fcntl(pair[1], F_DUPFD_CLOEXEC, 200)
        close(pair[1])
        let checkpointCopy = fcntl(store.fileDescriptor.rawValue, F_DUPFD_CLOEXEC, 200)
        defer { close(checkpointCopy) }

        var environment = [
            "LIMITLESS_SERVER_NAME": name, "LIMITLESS_INSTANCE": String(instance),
            "LIMITLESS_RUNTIME_DIR": "/tmp", "PATH": "/usr/bin:/bin",
        ]
        if let watchdogMs { environment["LIMITLESS_WATCHDOG_MS"] = String(watchdogMs) }
        if standby {
            environment["LIMITLESS_INSTANCE"] = nil
            environment["LIMITLESS_STANDBY"] = "1"
        }
        for (key, value) in extraEnvironment { environment[key] = value }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, childEnd, 3)
        if !standby { posix_spawn_file_actions_adddup2(&actions, checkpointCopy, 4) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, outputPath + ".err", O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        let argv: [UnsafeMutablePointer<CChar>?] = ([path, "--no-serve"] + arguments).map { strdup($0) } + [nil]
        let envp: [UnsafeMutablePointer<CChar>?] = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        var child: pid_t = 0
        let result = posix_spawn(&child, path, &actions, nil, argv, envp)
        guard result == 0 else { throw XCTSkip("posix_spawn \(path) failed: errno \(result)") }
        pid = child
        close(childEnd)
        childEnd = -1
    }

    /// What the child printed to stdout so far.
    var output: String {
        guard let file = fopen(outputPath, "r") else { return "" }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = fread(&chunk, 1, chunk.count, file)
            if count <= 0 { break }
            bytes += chunk[..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    var errorOutput: String {
        guard let file = fopen(outputPath + ".err", "r") else { return "" }
        defer { fclose(file) }
        var chunk = [CChar](repeating: 0, count: 65536)
        let count = fread(&chunk, 1, chunk.count - 1, file)
        return String(decoding: chunk[..<max(0, count)].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Reads what the child sent for up to `milliseconds` (answering REGISTER).
    func pump(milliseconds: Int32) {
        var buffer = [UInt8](repeating: 0, count: Message.maxDatagramSize)
        let deadline = Self.now() + Int64(milliseconds)
        while true {
            let left = deadline - Self.now()
            if left <= 0 { return }
            var entry = pollfd(fd: channel, events: Int16(POLLIN), revents: 0)
            guard poll(&entry, 1, Int32(left)) > 0 else { continue }
            var fds: Int32 = -1, fdCount: Int32 = 0, flags: Int32 = 0
            let count = buffer.withUnsafeMutableBytes {
                CL_ipc_recv(channel, $0.baseAddress, $0.count, &fds, 1, &fdCount, &flags, CL_MSG_DONTWAIT)
            }
            if fdCount > 0 { close(fds) }
            if count <= 0 {
                if count == 0 || (errno != EAGAIN && errno != EINTR) { return }  // the child closed its end
                continue
            }
            guard let message = buffer.withUnsafeBytes({ try? Message.decode(UnsafeRawBufferPointer(rebasing: $0[..<count])) }) else {
                continue
            }
            var text = ""
            if case .inline(let offset, let size) = message.data {
                text = String(decoding: buffer[(Message.headerSize + offset)..<(Message.headerSize + offset + size)], as: UTF8.self)
            }
            received.append(Received(message: message, text: text))
            if message.type == .supervisorRegister && answerRegister {
                send(Message(type: .supervisorRegister, flags: .reply, sequence: message.sequence))
            }
        }
    }

    /// Pumps until `condition` holds or `seconds` pass; returns whether it held.
    @discardableResult
    func wait(seconds: Double = 10, for condition: (FakeSupervisor) -> Bool) -> Bool {
        let deadline = Self.now() + Int64(seconds * 1000)
        while Self.now() < deadline {
            if condition(self) { return true }
            pump(milliseconds: 20)
            reap()
            usleep(2000)
        }
        return condition(self)
    }

    func send(_ message: Message, payload: [UInt8] = [], descriptor: Int32 = -1) {
        var header = [UInt8](repeating: 0, count: Message.headerSize)
        header.withUnsafeMutableBytes { message.encode(into: $0) }
        var fd = descriptor
        let sent = header.withUnsafeBytes { head in
            payload.withUnsafeBytes { body in
                CL_ipc_send(channel, head.baseAddress, head.count, body.baseAddress, body.count, &fd, descriptor >= 0 ? 1 : 0,
                            CL_MSG_NOSIGNAL)
            }
        }
        XCTAssertGreaterThan(sent, 0, "sending \(message.type) to the child failed: errno \(errno)")
    }

    func messages(_ type: MessageType) -> [Received] { received.filter { $0.message.type == type } }

    /// Collects the child's exit status if it has exited.
    func reap() {
        guard pid > 0, exitStatus == nil else { return }
        var status: Int32 = 0
        if waitpid(pid, &status, WNOHANG) == pid { exitStatus = status }
    }

    /// Waits for the child to exit; its raw wait status, or nil on timeout.
    func waitForExit(seconds: Double = 10) -> Int32? {
        wait(seconds: seconds) { $0.exitStatus != nil }
        return exitStatus
    }

    static func exitCode(_ status: Int32) -> Int32? { status & 0x7F == 0 ? (status >> 8) & 0xFF : nil }
    static func terminatingSignal(_ status: Int32) -> Int32? {
        let signal = status & 0x7F
        return signal != 0 && signal != 0x7F ? signal : nil
    }

    static func now() -> Int64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Int64(time.tv_sec) * 1000 + Int64(time.tv_nsec) / 1_000_000
    }
}
