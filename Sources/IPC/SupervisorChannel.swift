/// How the supervisor starts a server and how the two talk: the contract between
/// `Supervision` (the supervisor's side) and `ServerKit` (every server's side).
///
/// At exec the server inherits, besides stdin (/dev/null), stdout and stderr (pipes the
/// supervisor reads into its log store):
/// - `supervisorFD` (3): one end of a SOCK_SEQPACKET socket pair; the other end stays with the
///   supervisor. Messages on it are ordinary IPC messages (`Message`, 64-byte header plus inline
///   payload) of the `MSG_SUPERVISOR_*` types below.
/// - `checkpointFD` (4): the server's checkpoint memfd (a `CheckpointStore`), the same one every
///   instance of this server gets, so a restarted instance finds what its predecessor saved.
/// - one descriptor per granted capability, from 5 up, named in the environment.
/// - after them, the server's listening socket (`listenVariable` names its number): the
///   supervisor binds and listens on `RUNTIME_DIR/NAME.sock` once, as the server's user, writes
///   `NAME.pid` for each instance, and passes every instance the same socket, so clients that
///   connect between instances wait in its backlog (`InheritedListener`). Removed when the
///   server is stopped, not when it restarts.
///
/// Environment:
/// - `LIMITLESS_SERVER_NAME`: the server's name from servers.conf.
/// - `LIMITLESS_CAPABILITIES`: `CAP_NAME=FD,CAP_NAME=FD,...` (a capability granted without a
///   descriptor appears as `CAP_NAME=-1`; CAP_BLOCK_READ / CAP_BLOCK_WRITE are token memfds the
///   block provider checks, see `supervisorBlockToken`).
/// - `LIMITLESS_RUNTIME_DIR`: where servers' sockets live (default /run/limitless).
/// - `LIMITLESS_INSTANCE`: 1 for the first start, then counting restarts.
/// - `LIMITLESS_WATCHDOG_MS`: the heartbeat deadline in milliseconds (absent: no watchdog).
/// - `LIMITLESS_LISTEN_FD`: the listening socket's descriptor (absent: the server binds its own).
///
/// Messages, server to supervisor (the supervisor replies to REGISTER only):
/// - `supervisorRegister`: the server is initialised and serving; param1 = instance.
/// - `supervisorHeartbeat`: alive; must arrive at least once per watchdog interval.
/// - `supervisorLog`: a structured record; param1 = level (0 trace ... 6 critical), inline text.
/// - `supervisorCheckpointSave`: a new checkpoint generation was written into `checkpointFD`;
///   param1 = its sequence number.
/// - `supervisorSeccompListener`: once, when it drops privileges: its seccomp filter's listener
///   (SCM_RIGHTS); the supervisor answers the VFIO ioctls the filter puts to it (those of
///   capabilities not held at the start) by the server's grants at that moment.
/// - replies (flag `.reply`) to the supervisor's grant and revoke, confirming them: inline name;
///   a grant's param2 = the descriptor's number in the server (-1: none).
/// Supervisor to server:
/// - `supervisorCapabilityGrant`: param1 = 1 grant / 0 revoke, inline capability name; a grant
///   carries the descriptor with SCM_RIGHTS (`serverctl grant`).
/// - `supervisorCapabilityRevoke`: inline capability name; the server closes the descriptor and
///   confirms. One that does not confirm within the supervisor's revoke deadline is restarted
///   without the capability (a process cannot be made to close a descriptor) (`serverctl revoke`).
/// - `supervisorBlockToken`: to a block provider: the CAP_BLOCK_* token of a server that uses it
///   (SCM_RIGHTS), param1 = the right (1 read, 2 write; 0 withdrawn), inline the holder's name.
///   Those for a starting provider are queued before it is spawned.
/// - `supervisorDependencyState`: a server this one depends on went down / came up / failed
///   (param1 = `DependencyState`, param2 = its instance, inline name). The dependent keeps running.
/// Stopping is SIGTERM, then SIGKILL after the grace period.
///
/// A standby instance (servers.conf `standby yes`) is started with only descriptor 3 (its own
/// channel), no checkpoint, no capabilities, no listening socket, and `LIMITLESS_STANDBY=1` in
/// place of `LIMITLESS_CAPABILITIES`, `LIMITLESS_INSTANCE`, `LIMITLESS_WATCHDOG_MS` and
/// `LIMITLESS_LISTEN_FD`. It sends
/// `supervisorStandbyReady` and waits. `supervisorStandbyActivate` carries the missing variables
/// inline (`NAME=value` lines) and, with SCM_RIGHTS, the checkpoint memfd followed by the
/// capability descriptors and the listening socket in the order of their numbers (4, 5, 6...); once they are in place it
/// runs as an instance started with them would.
public enum SupervisorChannel {
    public static let supervisorFD: Int32 = 3
    public static let checkpointFD: Int32 = 4
    public static let firstCapabilityFD: Int32 = 5

    public static let serverNameVariable = "LIMITLESS_SERVER_NAME"
    public static let capabilitiesVariable = "LIMITLESS_CAPABILITIES"
    public static let runtimeDirectoryVariable = "LIMITLESS_RUNTIME_DIR"
    public static let instanceVariable = "LIMITLESS_INSTANCE"
    public static let watchdogVariable = "LIMITLESS_WATCHDOG_MS"
    public static let standbyVariable = "LIMITLESS_STANDBY"
    /// A standby's expected capability names (comma-separated, no descriptors: names carry no
    /// authority), for building its seccomp filter before its activation; removed at activation.
    public static let standbyCapabilitiesVariable = "LIMITLESS_STANDBY_CAPABILITIES"
    public static let listenVariable = "LIMITLESS_LISTEN_FD"

    /// Parses `CAP_A=5,CAP_B=-1` into name and descriptor pairs; nil if malformed.
    public static func parseCapabilities(_ text: String) -> [(name: String, fd: Int32)]? {
        if text.isEmpty { return [] }
        var result: [(name: String, fd: Int32)] = []
        for item in text.split(separator: ",", omittingEmptySubsequences: false) {
            let parts = item.split(separator: "=", omittingEmptySubsequences: false)
            guard parts.count == 2, parts[0].hasPrefix("CAP_"), parts[0].count <= 64,
                  parts[0].allSatisfy({ $0.isUppercase || $0.isNumber || $0 == "_" }),
                  let fd = Int32(parts[1]), fd >= -1 else { return nil }
            result.append((String(parts[0]), fd))
        }
        return result
    }

    public static func formatCapabilities(_ capabilities: [(name: String, fd: Int32)]) -> String {
        capabilities.map { "\($0.name)=\($0.fd)" }.joined(separator: ",")
    }
}
