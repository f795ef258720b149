import CLimitless

/// When ServerKit's own start-up steps ended (CLOCK_MONOTONIC ns), for a server's start-up
/// timeline (issue 4: crash to serving, phase by phase): placing an activated standby's
/// descriptors, reading the environment, setting up the runtime. Written on the main thread
/// before the server's own code runs on; read after `ServerRuntime` is set up.
public enum StartupSteps {
    nonisolated(unsafe) public private(set) static var all: [(name: String, at: UInt64)] = []

    static func mark(_ name: String) {
        all.append((name, CL_monotonic_ns()))
    }
}
