import CFUSE
import VFS
import VFSCore
#if canImport(Glibc)
import Glibc
#endif

// Free functions, not static members: a C function pointer cannot capture, and a static
// member used inside the closures would capture the enum's metatype.

/// The `FUSEOperations` given to fuse_new as private data (the init callback hands it on).
private func operations() -> FUSEOperations {
    Unmanaged<FUSEOperations>.fromOpaque(fuse_get_context()!.pointee.private_data!).takeUnretainedValue()
}

/// 0, or the negative errno of the failure.
private func run(_ body: (FUSEOperations) throws(VFSError) -> Void) -> Int32 {
    do {
        try body(operations())
        return 0
    } catch {
        return FUSEOperations.errno(error)
    }
}

private func string(_ path: UnsafePointer<CChar>?) -> String? { path.map { String(cString: $0) } }

/// The descriptor in a fuse_file_info, when FUSE passes one.
private func handle(_ info: UnsafeMutablePointer<fuse_file_info>?) -> Int32? {
    info.map { Int32(truncatingIfNeeded: $0.pointee.fh) }
}

/// libfuse's table of C function pointers, each a thin adapter: C arguments to Swift values,
/// a `FUSEOperations` call, the result back into libfuse's buffers, a `VFSError` to a negative
/// errno. Operations left nil (mknod, xattrs, locks, ioctl...) are ENOSYS to the caller, which
/// is what libfuse answers for a missing operation.
enum FUSECallbacks {
    static func table() -> fuse_operations {
        var ops = fuse_operations()
        ops.`init` = { _, config in
            // use_ino: st_ino is the server's inode number (ls -i, cp's hard-link detection).
            // Unlinking an open file keeps libfuse's default (hard_remove off): it is renamed to
            // .fuse_hiddenNNN until its last close, because the kernel's fstat of it arrives
            // without a file handle, and libfuse could only answer ESTALE for a file with no
            // name; so the open file keeps working, as POSIX wants.
            config?.pointee.use_ino = 1
            return fuse_get_context()!.pointee.private_data
        }
        ops.getattr = { path, st, info in
            run { (ops) throws(VFSError) in
                let attributes = try ops.getattr(string(path), handle: handle(info))
                FUSEOperations.fill(&st!.pointee, from: attributes)
            }
        }
        ops.readlink = { path, buffer, size in
            run { (ops) throws(VFSError) in
                let target = Array(try ops.readlink(string(path) ?? "").utf8)
                // FUSE's buffer holds size bytes including the NUL; a longer target is cut, as
                // readlink(2) cuts it.
                let count = max(0, min(target.count, size - 1))
                for index in 0..<count { buffer![index] = CChar(bitPattern: target[index]) }
                buffer![count] = 0
            }
        }
        ops.mkdir = { path, mode in run { (ops) throws(VFSError) in try ops.mkdir(string(path)!, mode: UInt32(mode)) } }
        ops.unlink = { path in run { (ops) throws(VFSError) in try ops.unlink(string(path)!) } }
        ops.rmdir = { path in run { (ops) throws(VFSError) in try ops.rmdir(string(path)!) } }
        ops.symlink = { target, path in run { (ops) throws(VFSError) in try ops.symlink(target: string(target)!, at: string(path)!) } }
        ops.rename = { old, new, flags in run { (ops) throws(VFSError) in try ops.rename(string(old)!, to: string(new)!, flags: flags) } }
        ops.link = { old, new in run { (ops) throws(VFSError) in try ops.link(string(old)!, to: string(new)!) } }
        ops.chmod = { path, mode, _ in run { (ops) throws(VFSError) in try ops.chmod(string(path), mode: UInt32(mode)) } }
        ops.chown = { path, uid, gid, _ in run { (ops) throws(VFSError) in try ops.chown(string(path), uid: uid, gid: gid) } }
        ops.truncate = { path, size, info in
            run { (ops) throws(VFSError) in
                guard size >= 0 else { throw VFSError(.EINVAL) }
                try ops.truncate(string(path), handle: handle(info), size: UInt64(size))
            }
        }
        ops.utimens = { path, times, _ in
            run { (ops) throws(VFSError) in
                // NULL times means "now" for both (utimes(path, NULL)).
                let now = timespec(tv_sec: 0, tv_nsec: FUSEOperations.utimeNow)
                try ops.utimens(string(path), access: times?[0] ?? now, modification: times?[1] ?? now)
            }
        }
        ops.open = { path, info in
            run { (ops) throws(VFSError) in
                info!.pointee.fh = UInt64(try ops.open(string(path)!, flags: info!.pointee.flags))
            }
        }
        ops.create = { path, mode, info in
            run { (ops) throws(VFSError) in
                info!.pointee.fh = UInt64(try ops.create(string(path)!, flags: info!.pointee.flags, mode: UInt32(mode)))
            }
        }
        ops.read = { _, buffer, size, offset, info in
            do throws(VFSError) {
                guard offset >= 0 else { return -EINVAL }
                let bytes = try operations().read(handle(info)!, count: size, offset: UInt64(offset))
                bytes.withUnsafeBytes { _ = memcpy(buffer!, $0.baseAddress!, $0.count) }
                return Int32(bytes.count)
            } catch {
                return FUSEOperations.errno(error)
            }
        }
        ops.write = { _, buffer, size, offset, info in
            do throws(VFSError) {
                guard offset >= 0 else { return -EINVAL }
                let bytes = Array(UnsafeRawBufferPointer(start: buffer, count: size))
                return Int32(try operations().write(handle(info)!, bytes, offset: UInt64(offset)))
            } catch {
                return FUSEOperations.errno(error)
            }
        }
        ops.statfs = { path, sv in
            run { (ops) throws(VFSError) in FUSEOperations.fill(&sv!.pointee, from: try ops.statfs(string(path) ?? "/")) }
        }
        // flush (every close(2)) has nothing to do: writes went to the server as they came.
        ops.flush = { _, _ in 0 }
        ops.release = { _, info in run { (ops) throws(VFSError) in try ops.release(handle(info)!) } }
        ops.fsync = { _, _, info in run { (ops) throws(VFSError) in try ops.fsync(handle(info)!) } }
        ops.opendir = { path, info in
            run { (ops) throws(VFSError) in info!.pointee.fh = UInt64(try ops.opendir(string(path)!)) }
        }
        ops.readdir = { path, buffer, filler, _, info, _ in
            run { (ops) throws(VFSError) in
                for entry in try ops.readdir(string(path), handle: handle(info)!) {
                    var st = stat()
                    st.st_ino = UInt(entry.inode)
                    st.st_mode = entry.type.modeBits
                    // Offset 0: libfuse keeps the whole listing and serves later reads from it.
                    // The name's bytes as they are (not every name is UTF-8), NUL-terminated.
                    let full = (entry.name.bytes + [0]).withUnsafeBytes {
                        filler!(buffer, $0.baseAddress!.assumingMemoryBound(to: CChar.self), &st, 0, fuse_fill_dir_flags(rawValue: 0))
                    }
                    if full != 0 { break }
                }
            }
        }
        ops.releasedir = { _, info in run { (ops) throws(VFSError) in try ops.release(handle(info)!) } }
        ops.fsyncdir = { _, _, info in run { (ops) throws(VFSError) in try ops.fsync(handle(info)!) } }
        return ops
    }
}
