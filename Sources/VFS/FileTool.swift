import VFSCore

/// What limitless-fs does beyond parsing arguments: the output formats (ls -l, stat, df) and
/// the multi-step commands (mkdir -p, rm of several paths), on a `VFSClient`. Errors come out as
/// coreutils words them: "cannot remove '/x': No such file or directory".
public enum FileTool {
    public struct Failure: Error, CustomStringConvertible {
        public var message: String
        public init(_ message: String) { self.message = message }
        public var description: String { message }
    }

    /// Runs `body`, turning a `VFSError` into "VERB 'PATH': strerror".
    public static func attempt<T>(_ verb: String, _ path: String, _ body: () throws(VFSError) -> T) throws(Failure) -> T {
        do {
            return try body()
        } catch {
            throw Failure(verb.isEmpty ? "\(path): \(error.message)" : "\(verb) '\(path)': \(error.message)")
        }
    }

    /// "drwxr-xr-x", with s/S/t/T for setuid, setgid and sticky as ls shows them.
    public static func modeString(_ attributes: FileAttributes) -> String {
        let typeLetter: Character
        switch attributes.type {
        case .directory: typeLetter = "d"
        case .symbolicLink: typeLetter = "l"
        case .characterDevice: typeLetter = "c"
        case .blockDevice: typeLetter = "b"
        case .fifo: typeLetter = "p"
        case .socket: typeLetter = "s"
        default: typeLetter = "-"
        }
        let p = attributes.permissions
        var letters: [Character] = [typeLetter]
        for (shift, special, set, unset) in [(6, Permissions.setUID, "s", "S"), (3, Permissions.setGID, "s", "S"), (0, Permissions.sticky, "t", "T")] {
            let bits = (p >> UInt32(shift)) & 7
            letters.append(bits & 4 != 0 ? "r" : "-")
            letters.append(bits & 2 != 0 ? "w" : "-")
            let execute = bits & 1 != 0
            if p & special != 0 {
                letters.append(Character(execute ? set : unset))
            } else {
                letters.append(execute ? "x" : "-")
            }
        }
        return String(letters)
    }

    /// One `ls -l` line: mode, links, uid, gid, size, mtime (seconds since the epoch), name.
    public static func longListing(_ attributes: FileAttributes, name: String, linkTarget: String? = nil) -> String {
        var line = "\(modeString(attributes)) \(pad(attributes.linkCount, 3)) \(pad(attributes.uid, 5)) \(pad(attributes.gid, 5)) "
            + "\(pad(attributes.size, 10)) \(attributes.modificationTime.seconds) \(name)"
        if let linkTarget { line += " -> \(linkTarget)" }
        return line
    }

    private static func pad<T: BinaryInteger>(_ value: T, _ width: Int) -> String {
        let text = String(value)
        return String(repeating: " ", count: max(0, width - text.count)) + text
    }

    /// What `ls` prints for one path: a directory's entries (sorted, without . and ..), or
    /// the path itself.
    public static func list(_ client: VFSClient, _ path: String, long: Bool, all: Bool) throws(Failure) -> [String] {
        let attributes = try attempt("cannot access", path) { () throws(VFSError) in try client.stat(path) }
        guard attributes.type == .directory else {
            return [long ? longListing(attributes, name: path) : path]
        }
        let entries = try attempt("cannot open directory", path) { () throws(VFSError) in try client.list(path) }
        let names = entries.map(\.name.description).filter { all || !$0.hasPrefix(".") }.sorted()
        guard long else { return names }
        let base = path.hasSuffix("/") ? path : path + "/"
        var lines: [String] = []
        for name in names {
            let full = base + name
            let entry = try attempt("cannot access", full) { () throws(VFSError) in try client.stat(full, followSymlinks: false) }
            let target = entry.type == .symbolicLink ? try? client.readlink(full) : nil
            lines.append(longListing(entry, name: name, linkTarget: target))
        }
        return lines
    }

    /// `stat`'s report.
    public static func statReport(_ attributes: FileAttributes, path: String) -> String {
        """
          File: \(path)
          Size: \(attributes.size)\tBlocks: \(attributes.blocks512)\t\(attributes.type)
         Inode: \(attributes.inode)\tLinks: \(attributes.linkCount)
        Access: (\(String(attributes.permissions, radix: 8))/\(modeString(attributes)))\tUid: \(attributes.uid)\tGid: \(attributes.gid)
        Modify: \(attributes.modificationTime.seconds).\(attributes.modificationTime.nanoseconds)
        Change: \(attributes.changeTime.seconds).\(attributes.changeTime.nanoseconds)

        """
    }

    /// `df`'s table, sizes in 1 KiB blocks like coreutils' df.
    public static func dfReport(_ entries: [VFSProtocol.MountStatistics]) -> String {
        var text = "Filesystem     1K-blocks       Used  Available Use% Mounted on\n"
        for entry in entries {
            let s = entry.statistics
            let unit = UInt64(s.blockSize) / 1024
            let total = s.totalBlocks * unit, used = (s.totalBlocks - s.freeBlocks) * unit, available = s.availableBlocks * unit
            let percent = used + available == 0 ? 0 : (used * 100 + used + available - 1) / (used + available)
            text += entry.typeName.padding(toLength: 14, withPad: " ", startingAt: 0)
                + " \(pad(total, 9)) \(pad(used, 10)) \(pad(available, 10)) \(pad(percent, 3))% \(entry.mountPoint)\(entry.isReadOnly ? " (ro)" : "")\n"
        }
        return text
    }

    /// mkdir -p: every missing directory along `path`; an existing directory is fine.
    public static func makeDirectories(_ client: VFSClient, _ path: String, mode: UInt32) throws(Failure) {
        var prefix = ""
        for component in path.split(separator: "/") {
            prefix += "/" + component
            do {
                try client.mkdir(prefix, mode: mode)
            } catch where error.status == .EEXIST {
                let attributes = try attempt("cannot create directory", prefix) { () throws(VFSError) in try client.stat(prefix) }
                guard attributes.type == .directory else { throw Failure("cannot create directory '\(prefix)': File exists") }
            } catch {
                throw Failure("cannot create directory '\(prefix)': \(error.message)")
            }
        }
    }
}

extension String {
    fileprivate func padding(toLength length: Int, withPad pad: String, startingAt _: Int) -> String {
        count >= length ? self : self + String(repeating: pad, count: length - count)
    }
}
