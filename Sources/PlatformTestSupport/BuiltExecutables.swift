import Glibc

/// For tests that run the package's own executables (vfs_server, limitless-fuse, ...) as real
/// processes: SwiftPM puts them next to the test bundle, in .build/debug (or release).
public enum BuiltExecutables {
    /// The folder holding the test bundle, found from this process's arguments.
    public static var directory: String {
        let me = CommandLine.arguments.first { $0.contains(".xctest") } ?? CommandLine.arguments[0]
        var parts = me.split(separator: "/", omittingEmptySubsequences: false)
        while let last = parts.last, !last.hasSuffix(".xctest") { parts.removeLast() }
        if !parts.isEmpty { parts.removeLast() }
        return parts.joined(separator: "/")
    }

    /// The path of executable `name` if it was built, else nil (a test then skips, saying so).
    public static func path(_ name: String) -> String? {
        let path = directory + "/" + name
        return access(path, X_OK) == 0 ? path : nil
    }
}
