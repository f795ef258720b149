import SystemPackage
import VFSCore

/// Limits path resolution applies, Linux's values.
public enum PathLimits {
    /// PATH_MAX, counting the terminating NUL a C caller would pass: paths of 4096 bytes or more
    /// are ENAMETOOLONG.
    public static let maxPathLength = 4096
    /// MAXSYMLINKS (include/linux/namei.h): more symlinks than this in one resolution is ELOOP.
    public static let maxSymlinkFollows = 40
}

/// A path split into components, checked: ENOENT if empty (POSIX: "" names nothing), EINVAL for
/// a NUL byte (a C client could never send one; one arriving here is abuse), ENAMETOOLONG for a
/// path of PATH_MAX or more or a component over 255 bytes.
struct ParsedPath {
    var isAbsolute: Bool
    var components: [FileName]
    /// "a/b/": the last component must be a directory.
    var trailingSlash: Bool

    init(_ path: [UInt8]) throws(FSError) {
        guard !path.isEmpty else { throw FSError(.noSuchFileOrDirectory, "empty path") }
        guard path.count < PathLimits.maxPathLength else {
            throw FSError(.fileNameTooLong, "path of \(path.count) bytes (limit \(PathLimits.maxPathLength - 1))")
        }
        guard !path.contains(0) else { throw FSError(.invalidArgument, "path holds a NUL byte") }
        isAbsolute = path.first == 0x2F
        trailingSlash = path.count > 1 && path.last == 0x2F
        components = []
        for part in path.split(separator: 0x2F, omittingEmptySubsequences: true) {
            components.append(try FileName(validating: part))
        }
    }
}

/// Where a path's last component goes: the directory that holds (or will hold) it, and its name
/// (nil for "/" itself).
struct ParentAndName {
    var directory: VNode
    var name: FileName?
    var trailingSlash: Bool
}

extension VFSService {
    /// The vnode `path` names, following symlinks (the last one too when `followFinal`). Relative
    /// paths are taken from the root: clients have no working directory here.
    func resolve(_ path: [UInt8], followFinal: Bool = true, _ credentials: Credentials) throws(FSError) -> VNode {
        let parsed = try ParsedPath(path)
        var budget = PathLimits.maxSymlinkFollows
        let vnode = try walk(parsed.components[...], from: try rootVNode(), followFinal: followFinal || parsed.trailingSlash,
                             budget: &budget, credentials)
        if parsed.trailingSlash, try attributes(vnode).type != .directory {
            throw FSError(.notDirectory, "trailing slash on a non-directory")
        }
        return vnode
    }

    /// The directory holding `path`'s last component (resolved, symlinks followed) and the name.
    func resolveParent(_ path: [UInt8], _ credentials: Credentials) throws(FSError) -> ParentAndName {
        let parsed = try ParsedPath(path)
        guard let last = parsed.components.last else {
            return ParentAndName(directory: try rootVNode(), name: nil, trailingSlash: parsed.trailingSlash)
        }
        var budget = PathLimits.maxSymlinkFollows
        let directory = try walk(parsed.components.dropLast(), from: try rootVNode(), followFinal: true, budget: &budget, credentials)
        let attributes = try attributes(directory)
        guard attributes.type == .directory else { throw FSError(.notDirectory, "a path component is not a directory") }
        try Permissions.check(attributes, .execute, credentials)
        return ParentAndName(directory: directory, name: last, trailingSlash: parsed.trailingSlash)
    }

    func rootVNode() throws(FSError) -> VNode {
        guard let root = mounts.root else { throw FSError(.noSuchFileOrDirectory, "no root file system mounted") }
        return root
    }

    /// Walks `components` from `start`. Every directory walked needs search (x) permission
    /// (POSIX path resolution); a symlink met mid-path is always followed, its target resolved
    /// from the directory holding it (or the root if absolute), all of it sharing one budget of
    /// `PathLimits.maxSymlinkFollows`.
    private func walk(_ components: ArraySlice<FileName>, from start: VNode, followFinal: Bool, budget: inout Int,
                      _ credentials: Credentials) throws(FSError) -> VNode {
        var current = start
        var index = components.startIndex
        while index < components.endIndex {
            let name = components[index]
            let isLast = index == components.endIndex - 1
            let child = try step(from: current, name, credentials)
            if !isLast || followFinal, try attributes(child).type == .symbolicLink {
                budget -= 1
                guard budget >= 0 else { throw FSError(.tooManySymbolicLinkLevels, "more than \(PathLimits.maxSymlinkFollows) symlinks") }
                let target = try fileSystem(of: child).readSymbolicLink(child.inode)
                let parsed = try ParsedPath(target)
                current = try walk(parsed.components[...], from: parsed.isAbsolute ? try rootVNode() : current,
                                   followFinal: true, budget: &budget, credentials)
                if parsed.trailingSlash, try attributes(current).type != .directory {
                    throw FSError(.notDirectory, "symlink target with a trailing slash is not a directory")
                }
            } else {
                current = child
            }
            index += 1
        }
        return current
    }

    /// One component from directory `directory`: ENOTDIR if it is not one, EACCES without
    /// search permission. ".." at the root stays there; ".." at the root of a mounted file
    /// system climbs to the directory it covers first (Linux's follow_dotdot); a name that is a
    /// mount point leads to the root of what is mounted there.
    func step(from directory: VNode, _ name: FileName, _ credentials: Credentials) throws(FSError) -> VNode {
        let attributes = try attributes(directory)
        guard attributes.type == .directory else { throw FSError(.notDirectory, "inode \(directory) is not a directory") }
        try Permissions.check(attributes, .execute, credentials)
        if name == .dot { return directory }
        if name == .dotDot {
            var current = directory
            while let mount = mounts.mount(current.mount), current == mount.root, let covered = mount.coveredDirectory {
                current = covered
            }
            if current == (try rootVNode()) { return current }
            let parent = try fileSystem(of: current).lookup(.dotDot, in: current.inode)
            return VNode(mount: current.mount, inode: parent)
        }
        let child = VNode(mount: directory.mount, inode: try fileSystem(of: directory).lookup(name, in: directory.inode))
        if let mounted = mounts.mounted(on: child) { return mounted.root }
        return child
    }
}
