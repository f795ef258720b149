import CLimitless
import Glibc
import SystemPackage

/// A memfd of fixed size, sealed against shrinking and growing (and further sealing): the
/// supervisor's checkpoint stores and page-cache logs.
enum SealedMemory {
    static func create(name: String, size: Int) throws(CheckpointError) -> FileDescriptor {
        let fd = CL_memfd_create(name, CheckpointStore.memfdCloseOnExec | CheckpointStore.memfdAllowSealing)
        guard fd >= 0 else { throw .systemCall("memfd_create", Errno(rawValue: CL_errno())) }
        let descriptor = FileDescriptor(rawValue: fd)
        if ftruncate(fd, off_t(size)) != 0 {
            let error = Errno(rawValue: CL_errno())
            _ = try? descriptor.close()
            throw .systemCall("ftruncate of the memfd \(name) to \(size) bytes", error)
        }
        _ = fcntl(fd, CheckpointStore.addSeals, CheckpointStore.sealShrink | CheckpointStore.sealGrow | CheckpointStore.sealSeal)
        return descriptor
    }
}
