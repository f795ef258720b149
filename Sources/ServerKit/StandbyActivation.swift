import CLimitless
import IPC
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The server's side of a standby instance (servers.conf `standby yes`; the supervisor's side is
/// `Supervisor+Standby`). A standby is the server's own binary started ahead of need with only
/// its supervisor channel (descriptor 3) and `LIMITLESS_STANDBY=1`: it has parsed its arguments
/// and done every start-up step before `ServerRuntime` by the time it gets here, and waits here,
/// holding no capability and no checkpoint, until the supervisor activates it in place of a
/// crashed instance.
///
/// `awaitActivation()` sends MSG_SUPERVISOR_STANDBY_READY and blocks on the channel for
/// MSG_SUPERVISOR_STANDBY_ACTIVATE, then puts what came with it where an instance started with it
/// would have it: the checkpoint memfd at 4, the capability descriptors at 5, 6, ... (the numbers
/// `LIMITLESS_CAPABILITIES` names), and the variables into the environment, with
/// `LIMITLESS_STANDBY` removed. `ServerEnvironment.current` then reads them as usual, so server
/// code cannot tell a standby from a fresh start (its start-up measurements, `activatedAt`,
/// excepted).
public enum StandbyActivation {
    /// Whether this process was started as a standby.
    public static var isStandby: Bool { getenv(SupervisorChannel.standbyVariable) != nil }

    /// CLOCK_MONOTONIC nanoseconds when this process received its activation; nil when it was
    /// not started as a standby (or not activated yet).
    nonisolated(unsafe) public private(set) static var activatedAt: UInt64?

    /// How many MSG_SUPERVISOR_BLOCK_TOKEN messages the activation announced (its param1): the
    /// supervisor queues them right behind it, and `ServerRuntime.receiveQueuedBlockTokens`
    /// waits for them, so a provider never listens before it knows its clients' tokens.
    nonisolated(unsafe) public private(set) static var announcedBlockTokens = 0

    /// The capability names the supervisor expects to pass at activation
    /// (`LIMITLESS_STANDBY_CAPABILITIES`), for preparing ahead what depends only on the names
    /// (`ServerRuntime.prepareSeccompFilter`); nil when not a standby or not told.
    public static var expectedCapabilities: [String]? {
        guard isStandby, let value = getenv(SupervisorChannel.standbyCapabilitiesVariable) else { return nil }
        return String(cString: value).split(separator: ",").map(String.init)
    }

    /// The variables an activation may set: the ones a standby is started without.
    static let activationVariables: Set<String> = [
        SupervisorChannel.capabilitiesVariable, SupervisorChannel.instanceVariable, SupervisorChannel.watchdogVariable,
        SupervisorChannel.listenVariable,
    ]

    /// Waits for the supervisor to activate this standby (see the type's comment). Called from
    /// `ServerEnvironment.current` on the main thread before anything else of ServerKit runs.
    /// Throws `supervisorGone` when the supervisor closes the channel (it stopped the server, or
    /// itself), `standbyActivation` for an activation that cannot be put in place.
    static func awaitActivation() throws(ServerKitError) {
        let channel = SupervisorChannel.supervisorFD
        guard ServerEnvironment.isDescriptorOpen(channel) else { throw .supervisorChannelMissing }
        // Warm the code the activation runs before saying ready: the restart's clock starts
        // at the activation, and the supervisor only activates a ready standby.
        StandbyWarmUp.run()
        try send(Message(type: .supervisorStandbyReady), on: channel)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Message.maxDatagramSize, alignment: 16)
        defer { buffer.deallocate() }
        var descriptors = [Int32](repeating: -1, count: 253)
        while true {
            var count = 0, flags: Int32 = 0
            let received = descriptors.withUnsafeMutableBufferPointer { fds in
                var got: Int32 = 0
                let result = CL_ipc_recv(channel, buffer.baseAddress, buffer.count, fds.baseAddress, Int32(fds.count), &got, &flags, 0)
                count = Int(got)
                return result
            }
            if received < 0 {
                if CL_errno() == EINTR { continue }
                throw .channel("recvmsg (waiting as a standby)", Errno(rawValue: CL_errno()))
            }
            if received == 0 { throw .supervisorGone }
            let receivedAt = CL_monotonic_ns()
            let passed = Array(descriptors.prefix(count))
            guard let message = try? Message.decode(UnsafeRawBufferPointer(start: buffer.baseAddress, count: received)),
                  message.type == .supervisorStandbyActivate, flags & CL_MSG_TRUNC == 0 else {
                // Nothing else is meant for a standby; whatever came is not kept.
                for fd in passed { _ = close(fd) }
                continue
            }
            let payload = UnsafeRawBufferPointer(start: buffer.baseAddress! + Message.headerSize, count: received - Message.headerSize)
            var text = ""
            if case .inline(let offset, let size) = message.data, offset + size <= payload.count {
                text = String(decoding: UnsafeRawBufferPointer(rebasing: payload[offset..<(offset + size)]), as: UTF8.self)
            }
            do throws(ServerKitError) {
                try place(passed)
                StartupSteps.mark("placed")
                try apply(variables: text)
                StartupSteps.mark("variables-set")
            } catch {
                for fd in passed { _ = close(fd) }
                throw error
            }
            activatedAt = receivedAt
            announcedBlockTokens = Int(clamping: message.param1)
            return
        }
    }

    /// Moves `descriptors` to 4, 5, 6, ... (close-on-exec off, as at exec: ServerRuntime marks
    /// them close-on-exec itself). Each is first copied above every target so that placing one
    /// cannot overwrite another; a target already open in this process means the server opened
    /// something there before ServerKit, which the descriptor would silently replace: refused.
    static func place(_ descriptors: [Int32]) throws(ServerKitError) {
        guard !descriptors.isEmpty else { throw .standbyActivation("no checkpoint descriptor came with it") }
        let lowest = SupervisorChannel.checkpointFD + Int32(descriptors.count) + 64
        var copies: [Int32] = []
        defer { for fd in copies { _ = close(fd) } }
        for fd in descriptors {
            let copy = CL_fcntl_int(fd, F_DUPFD_CLOEXEC, lowest)
            guard copy >= 0 else { throw .standbyActivation("fcntl(F_DUPFD_CLOEXEC): \(Errno(rawValue: CL_errno()))") }
            copies.append(copy)
        }
        for fd in descriptors { _ = close(fd) }
        for (index, copy) in copies.enumerated() {
            let target = SupervisorChannel.checkpointFD + Int32(index)
            guard !ServerEnvironment.isDescriptorOpen(target) else {
                throw .standbyActivation("descriptor \(target) is already open in this process (opened before ServerRuntime); "
                    + "open nothing before ServerRuntime in a server with `standby yes`")
            }
            guard dup2(copy, target) == target else { throw .standbyActivation("dup2 to \(target): \(Errno(rawValue: CL_errno()))") }
        }
    }

    /// Sets the `NAME=value` lines of `text`: only the variables a standby lacks.
    static func apply(variables text: String) throws(ServerKitError) {
        for (name, value) in try assignments(text) { setenv(name, value, 1) }
        unsetenv(SupervisorChannel.standbyVariable)
        unsetenv(SupervisorChannel.standbyCapabilitiesVariable)
    }

    /// The `NAME=value` lines of `text` as pairs; throws for a line that is not one of the
    /// variables an activation may set. Apart from `apply` so the warm-up can run it.
    static func assignments(_ text: String) throws(ServerKitError) -> [(name: String, value: String)] {
        var pairs: [(name: String, value: String)] = []
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2, activationVariables.contains(String(parts[0])) else {
                throw .standbyActivation("unexpected line \"\(line)\" (only \(activationVariables.sorted().joined(separator: ", ")) are set)")
            }
            pairs.append((String(parts[0]), String(parts[1])))
        }
        return pairs
    }

    static func send(_ message: Message, on channel: Int32) throws(ServerKitError) {
        let sent = withUnsafeTemporaryAllocation(byteCount: Message.headerSize, alignment: 16) { header in
            message.encode(into: header)
            return CL_ipc_send(channel, header.baseAddress, Message.headerSize, nil, 0, nil, 0, CL_MSG_NOSIGNAL)
        }
        if sent < 0 {
            let code = CL_errno()
            if code == EPIPE || code == ECONNRESET { throw .supervisorGone }
            throw .channel("sendmsg (standby ready)", Errno(rawValue: code))
        }
    }
}
