#if canImport(Glibc)
import Glibc
#endif
import CLimitless
import SystemPackage

/// The system calls the VFIO and UIO backends make, behind one protocol so unit tests can script
/// what "the kernel" answers (the idea of swift-nio's SyscallAbstractionLayer). Production code
/// uses `LinuxKernel`; none of this is on a per-I/O path.
public protocol KernelInterface: AnyObject {
    func open(_ path: String, flags: Int32) throws(Errno) -> Int32
    func close(_ fd: Int32)
    /// ioctl with a pointer argument; returns the (non-negative) result.
    func ioctl(_ fd: Int32, _ request: UInt, _ argument: UnsafeMutableRawPointer?) throws(Errno) -> Int32
    /// ioctl with an integer argument.
    func ioctl(_ fd: Int32, _ request: UInt, value: UInt) throws(Errno) -> Int32
    func pread(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer, offset: Int64) throws(Errno) -> Int
    func pwrite(_ fd: Int32, _ buffer: UnsafeRawBufferPointer, offset: Int64) throws(Errno) -> Int
    func mmap(length: Int, protection: Int32, flags: Int32, fd: Int32, offset: Int64) throws(Errno) -> UnsafeMutableRawPointer
    func munmap(_ address: UnsafeMutableRawPointer, length: Int)
    func eventfd() throws(Errno) -> Int32
    /// Waits until `fd` is readable or `timeoutMilliseconds` pass (-1: forever). True when readable.
    func waitReadable(_ fd: Int32, timeoutMilliseconds: Int32) throws(Errno) -> Bool
    func read(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int
    func write(_ fd: Int32, _ buffer: UnsafeRawBufferPointer) throws(Errno) -> Int
}

/// The real kernel. EINTR is retried in one place, as swift-system does.
public final class LinuxKernel: KernelInterface, Sendable {
    public static let shared = LinuxKernel()
    public init() {}

    @inline(__always)
    private func retrying<T: BinaryInteger>(_ call: () -> T) throws(Errno) -> T {
        while true {
            let result = call()
            if result >= 0 { return result }
            let code = CL_errno()
            if code != EINTR { throw Errno(rawValue: code) }
        }
    }

    public func open(_ path: String, flags: Int32) throws(Errno) -> Int32 {
        try retrying { Glibc.open(path, flags | O_CLOEXEC) }
    }
    public func close(_ fd: Int32) { _ = Glibc.close(fd) }
    public func ioctl(_ fd: Int32, _ request: UInt, _ argument: UnsafeMutableRawPointer?) throws(Errno) -> Int32 {
        try retrying { CL_ioctl_ptr(fd, request, argument) }
    }
    public func ioctl(_ fd: Int32, _ request: UInt, value: UInt) throws(Errno) -> Int32 {
        try retrying { CL_ioctl_val(fd, request, value) }
    }
    public func pread(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer, offset: Int64) throws(Errno) -> Int {
        try retrying { Glibc.pread(fd, buffer.baseAddress, buffer.count, off_t(offset)) }
    }
    public func pwrite(_ fd: Int32, _ buffer: UnsafeRawBufferPointer, offset: Int64) throws(Errno) -> Int {
        try retrying { Glibc.pwrite(fd, buffer.baseAddress, buffer.count, off_t(offset)) }
    }
    public func mmap(length: Int, protection: Int32, flags: Int32, fd: Int32, offset: Int64) throws(Errno) -> UnsafeMutableRawPointer {
        guard let pointer = Glibc.mmap(nil, length, protection, flags, fd, off_t(offset)),
              CL_is_map_failed(pointer) == 0
        else { throw Errno(rawValue: CL_errno()) }
        return pointer
    }
    public func munmap(_ address: UnsafeMutableRawPointer, length: Int) { _ = Glibc.munmap(address, length) }
    public func eventfd() throws(Errno) -> Int32 {
        try retrying { CL_eventfd(0, CL_EFD_CLOEXEC | CL_EFD_NONBLOCK) }
    }
    public func waitReadable(_ fd: Int32, timeoutMilliseconds: Int32) throws(Errno) -> Bool {
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let ready = try retrying { Glibc.poll(&entry, 1, timeoutMilliseconds) }
        return ready > 0 && entry.revents & Int16(POLLIN) != 0
    }
    public func read(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        try retrying { Glibc.read(fd, buffer.baseAddress, buffer.count) }
    }
    public func write(_ fd: Int32, _ buffer: UnsafeRawBufferPointer) throws(Errno) -> Int {
        try retrying { Glibc.write(fd, buffer.baseAddress, buffer.count) }
    }
}
