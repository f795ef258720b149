import CLimitless
import IPC
import ServerKit
#if canImport(Glibc)
import Glibc
#endif

/// What limitless-testserver does, step by step, each step printing one line to stdout.
struct TestServerBehaviour {
    struct Plan {
        var crashAfterMs: Int?
        var crashSignal: Int32
        var exitCode: Int32?
        var exitAfterMs: Int?
        var hangAfterMs: Int?
        var floodLog: Int?
        var corruptCheckpoint: Bool
        var saveCheckpoint: String?
        var printCheckpointOnly: Bool
        var seccomp: Bool
        var serve: Bool
        var echo = false
        var rings = 0
        var probeIoctl = false
    }

    let runtime: ServerRuntime
    let plan: Plan

    /// Runs until told to stop or to misbehave; returns the exit code.
    func run() throws -> Int32 {
        switch runtime.loadCheckpoint() {
        case .none: say("checkpoint: none")
        case .restored(let bytes, _, _): say("checkpoint: " + String(decoding: bytes, as: UTF8.self))
        case .corrupt(let reason): say("checkpoint corrupt: starting fresh (\(reason))")
        }
        if plan.printCheckpointOnly { return 0 }

        if let text = plan.saveCheckpoint {
            let sequence = try runtime.saveCheckpoint(Array(text.utf8), stateVersion: 1)
            say("checkpoint saved: sequence \(sequence)")
        }
        if plan.corruptCheckpoint {
            let store = runtime.checkpointStore
            let garbage = [UInt8](repeating: 0xA5, count: 64)
            for slot in 0..<2 {
                _ = garbage.withUnsafeBytes { pwrite(store.fileDescriptor.rawValue, $0.baseAddress, 64, off_t(store.slotOffset(slot))) }
            }
            say("checkpoint corrupted")
        }

        var endpoint: IPCServer?
        if plan.serve {
            do {
                var configuration = IPCServer.Configuration()
                configuration.maxRings = plan.rings
                let handler: IPCServer.Handler = plan.echo ? Self.echo : Self.refuseAll
                let server = try IPCServer(name: runtime.name, directory: runtime.environment.runtimeDirectory,
                                           configuration: configuration, handler: handler)
                server.start()
                endpoint = server
                say("serving: \(server.endpoint.socketPath)")
            } catch {
                runtime.log(.warning, "not serving an endpoint: \(error)")
                say("serving: no (\(error))")
            }
        }

        if plan.seccomp {
            try runtime.dropPrivileges()
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            let code = errno
            say(fd < 0 ? "seccomp: socket(AF_INET) refused: errno \(code)" : "seccomp: socket(AF_INET) allowed")
            if fd >= 0 { close(fd) }
            if plan.probeIoctl { say("ioctl VFIO_IOMMU_GET_INFO on stdin: errno \(Self.probeIoctl(0))") }
        }

        if !runtime.capabilityNames.isEmpty {
            say("capabilities: " + runtime.capabilityNames.joined(separator: ","))
        }
        // Block tokens: which file each CAP_BLOCK_* descriptor is, and which tokens the
        // supervisor passes this server as a block provider (the inodes must match).
        for name in runtime.capabilityNames where name.hasPrefix("CAP_BLOCK_") {
            if let fd = try? runtime.capability(name), fd >= 0 { say("token: \(name) inode \(Self.inode(fd))") }
        }
        runtime.onBlockToken { notice in
            print("block token: \(notice.holder) rights \(notice.rights) inode \(Self.inode(notice.descriptor))")
            fflush(nil)
        }
        // What a block provider does before serving: take the tokens queued for it (an activated
        // standby: also those its activation announced, which may still be on their way).
        try runtime.receiveQueuedBlockTokens()
        say("block tokens taken")
        // Grants and revokes at run time: what the descriptor is, to show it is the real thing.
        runtime.onCapabilityChange { change in
            var line = "capability: \(change.name) " + (change.granted ? "granted" : "revoked")
            if change.fd >= 0 { line += " fd \(change.fd) (\(Self.describe(descriptor: change.fd)))" }
            if plan.probeIoctl && change.fd >= 0 { line += "; ioctl VFIO_IOMMU_GET_INFO on it: errno \(Self.probeIoctl(change.fd))" }
            print(line)
            fflush(nil)
        }
        // Dependencies going down and up: this server keeps running and says so.
        runtime.onDependencyChange { notice in
            print("dependency: \(notice.name) \(notice.state)")
            fflush(nil)
        }
        try runtime.register()
        say("registered: \(runtime.name) instance \(runtime.instance)")
        runtime.log(.info, "limitless-testserver instance \(runtime.instance) serving")

        if let lines = plan.floodLog {
            for index in 0..<lines { runtime.log(.debug, "flood line \(index)") }
            say("flood: \(lines) lines, \(runtime.totalDroppedLogRecords) dropped")
        }

        let start = monotonicMilliseconds()
        let reason = runtime.runUntilStopped(tick: .milliseconds(10)) {
            let elapsed = monotonicMilliseconds() - start
            if let after = plan.crashAfterMs, elapsed >= after { crash() }
            if let code = plan.exitCode, elapsed >= (plan.exitAfterMs ?? 0) {
                say("exiting: code \(code)")
                exit(code)
            }
            if let after = plan.hangAfterMs, elapsed >= after { hang() }
        }
        say("stopping: \(reason)")
        runtime.shutdown()
        endpoint?.stop()
        return 0
    }

    static func inode(_ descriptor: Int32) -> UInt64 {
        var info = stat()
        return fstat(descriptor, &info) == 0 ? UInt64(info.st_ino) : 0
    }

    /// ioctl(fd, VFIO_IOMMU_GET_INFO) and its errno: EPERM when the seccomp filter (or the
    /// supervisor deciding for it) refuses it, the descriptor's own answer (ENOTTY for a file)
    /// when it runs.
    static func probeIoctl(_ fd: Int32) -> Int32 {
        var buffer = [UInt8](repeating: 0, count: 64)
        let result = buffer.withUnsafeMutableBytes { CL_ioctl_ptr(fd, CL_VFIO_IOMMU_GET_INFO, $0.baseAddress) }
        return result < 0 ? errno : 0
    }

    /// What /proc/self/fd/N points at (`/dev/null`, `/memfd:NAME (deleted)`, `anon_inode:[eventfd]`).
    static func describe(descriptor: Int32) -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        let count = readlink("/proc/self/fd/\(descriptor)", &buffer, buffer.count - 1)
        return count > 0 ? String(decoding: buffer.prefix(count).map { UInt8(bitPattern: $0) }, as: UTF8.self) : "unknown"
    }

    /// --echo: the request's data back (param1 > 0: that many bytes, the data repeated, or
    /// 0, 1, 2... without data); param1 the data's length, param2 this pid. Thread-safe (it keeps
    /// no state), as handlers serving rings must be.
    static let refuseAll: IPCServer.Handler = { _, _, _ in .error(.ENOSYS) }

    static let echo: IPCServer.Handler = { request, payload, _ in
        let data = payload.data
        let wanted = request.param1 > 0 ? Int(min(request.param1, UInt64(payload.reply.count))) : data.count
        for index in 0..<wanted {
            payload.reply[index] = data.isEmpty ? UInt8(truncatingIfNeeded: index) : data[index % data.count]
        }
        return IPCReply(param1: UInt64(data.count), param2: UInt64(getpid()), payloadCount: wanted)
    }

    private func crash() -> Never {
        say("crashing: signal \(plan.crashSignal)")
        var none = rlimit(rlim_cur: 0, rlim_max: 0)
        setrlimit(Int32(RLIMIT_CORE.rawValue), &none)  // no core file per deliberate crash
        signal(plan.crashSignal, SIG_DFL)  // not the Swift runtime's backtracer
        raise(plan.crashSignal)
        _exit(128 + plan.crashSignal)
    }

    private func hang() -> Never {
        runtime.pauseHeartbeats()
        say("hanging")
        while true { sleep(3600) }
    }

    private func say(_ line: String) {
        print(line)
        fflush(nil)
    }

    private func monotonicMilliseconds() -> Int {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return Int(now.tv_sec) * 1000 + Int(now.tv_nsec) / 1_000_000
    }
}
