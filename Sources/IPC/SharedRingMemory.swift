import CLimitless
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// One memfd holding a request/response ring pair, mapped into this process. Created by one side
/// (`create`), passed to the other as a descriptor (SCM_RIGHTS, or inherited), and attached there
/// (`attach`), which validates everything the creator wrote before trusting it.
///
/// The mapping stays until the last endpoint made from it is gone: endpoints hold a reference to
/// this object (one retain when an endpoint is made, none per message).
public final class SharedRingMemory: @unchecked Sendable {
    public let layout: RingLayout
    /// The memfd; give it to the peer. Closed when this object goes away.
    public let descriptor: FileDescriptor
    let base: UnsafeMutableRawPointer
    let mappedSize: Int

    private init(layout: RingLayout, descriptor: FileDescriptor, base: UnsafeMutableRawPointer, mappedSize: Int) {
        self.layout = layout
        self.descriptor = descriptor
        self.base = base
        self.mappedSize = mappedSize
    }

    deinit {
        munmap(base, mappedSize)
        try? descriptor.close()
    }

    // memfd and sealing constants: their glibc names need _GNU_SOURCE (linux/memfd.h, linux/fcntl.h).
    private static let memfdCloseOnExec: UInt32 = 0x0001
    private static let memfdAllowSealing: UInt32 = 0x0002
    private static let addSeals: Int32 = 1033  // F_LINUX_SPECIFIC_BASE + 9
    private static let getSeals: Int32 = 1034
    private static let sealSeal: Int32 = 0x0001
    private static let sealShrink: Int32 = 0x0002
    private static let sealGrow: Int32 = 0x0004

    /// Makes a new sealed memfd with an empty ring pair. Sealed against shrinking and growing so a
    /// peer cannot truncate it and turn our next slot access into SIGBUS.
    public static func create(layout: RingLayout, name: String = "limitless-ring") throws(RingError) -> SharedRingMemory {
        let fd = CL_memfd_create(name, memfdCloseOnExec | memfdAllowSealing)
        guard fd >= 0 else { throw .systemCall("memfd_create", Errno(rawValue: CL_errno())) }
        let descriptor = FileDescriptor(rawValue: fd)
        let size = layout.totalSize
        guard ftruncate(fd, off_t(size)) == 0 else {
            let errno = Errno(rawValue: CL_errno())
            try? descriptor.close()
            throw .systemCall("ftruncate (ring memfd, \(size) bytes)", errno)
        }
        guard fcntl(fd, addSeals, sealShrink | sealGrow | sealSeal) == 0 else {
            let errno = Errno(rawValue: CL_errno())
            try? descriptor.close()
            throw .systemCall("fcntl(F_ADD_SEALS)", errno)
        }
        let base: UnsafeMutableRawPointer
        do { base = try map(fd: fd, size: size) } catch {
            try? descriptor.close()
            throw error
        }
        // A fresh memfd reads as zeros: indices 0, stamps 0, nobody asleep. Only headers to write.
        writeHeader(at: base, magic: RingLayout.pairMagic, layout: layout, lastField: UInt32(RingLayout.ringCount))
        for ring in 0..<RingLayout.ringCount {
            writeHeader(at: base + layout.ringOffset(ring), magic: RingLayout.ringMagic, layout: layout, lastField: UInt32(ring))
        }
        return SharedRingMemory(layout: layout, descriptor: descriptor, base: base, mappedSize: size)
    }

    /// Maps a ring pair memfd made by the peer, after checking its seals, size, headers and
    /// indices. Takes ownership of `descriptor` (closed when the returned object goes away, or on
    /// error). Anything inconsistent is an error; nothing read here is trusted before it is checked.
    public static func attach(descriptor: FileDescriptor) throws(RingError) -> SharedRingMemory {
        do {
            return try attachValidating(descriptor)
        } catch {
            try? descriptor.close()
            throw error
        }
    }

    private static func attachValidating(_ descriptor: FileDescriptor) throws(RingError) -> SharedRingMemory {
        let fd = descriptor.rawValue
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw .systemCall("fstat (ring memfd)", Errno(rawValue: CL_errno())) }
        let size = Int(info.st_size)
        let seals = fcntl(fd, getSeals)
        guard seals >= 0, seals & sealShrink != 0 else { throw .notSealed(seals: seals) }
        guard size >= RingLayout.pairHeaderSize else { throw .truncated(size: size, needed: RingLayout.pairHeaderSize) }

        // Read the pair header by value, so it cannot change between checking and using it.
        var header = [UInt8](repeating: 0, count: 24)
        let got = header.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard got == 24 else { throw .truncated(size: size, needed: RingLayout.pairHeaderSize) }
        let magic = header.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: RingLayout.magicOffset, as: UInt64.self) }
        let field = { (offset: Int) in header.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: UInt32.self) } }
        guard magic == RingLayout.pairMagic else { throw .badMagic(where: "the pair header", found: magic) }
        guard field(RingLayout.versionOffset) == RingLayout.version else {
            throw .unsupportedVersion(found: field(RingLayout.versionOffset), supported: RingLayout.version)
        }
        guard field(RingLayout.ringCountOffset) == UInt32(RingLayout.ringCount) else {
            throw .headerMismatch(field: "ring count", found: UInt64(field(RingLayout.ringCountOffset)), expected: UInt64(RingLayout.ringCount))
        }
        let layout = try RingLayout(slotSize: Int(field(RingLayout.slotSizeOffset)), capacity: Int(field(RingLayout.capacityOffset)))
        guard size >= layout.totalSize else { throw .truncated(size: size, needed: layout.totalSize) }

        let base = try map(fd: fd, size: layout.totalSize)
        do {
            for ring in 0..<RingLayout.ringCount {
                try validateRing(ring, base: base, layout: layout)
            }
        } catch {
            munmap(base, layout.totalSize)
            throw error
        }
        return SharedRingMemory(layout: layout, descriptor: descriptor, base: base, mappedSize: layout.totalSize)
    }

    /// Checks one ring's header against the validated layout, and its indices against each other.
    private static func validateRing(_ ring: Int, base: UnsafeMutableRawPointer, layout: RingLayout) throws(RingError) {
        let header = base + layout.ringOffset(ring)
        func u32(_ offset: Int) -> UInt64 { UInt64(CL_dma_read32(header + offset)) }
        let magic = CL_dma_read64(header + RingLayout.magicOffset)
        guard magic == RingLayout.ringMagic else { throw .badMagic(where: "the \(RingLayout.ringName(ring)) ring header", found: magic) }
        let checks: [(String, UInt64, UInt64)] = [
            ("version", u32(RingLayout.versionOffset), UInt64(RingLayout.version)),
            ("slot size", u32(RingLayout.slotSizeOffset), UInt64(layout.slotSize)),
            ("capacity", u32(RingLayout.capacityOffset), UInt64(layout.capacity)),
            ("ring index", u32(RingLayout.ringCountOffset), UInt64(ring)),
        ]
        for (name, found, expected) in checks where found != expected {
            throw .headerMismatch(field: "\(RingLayout.ringName(ring)) ring \(name)", found: found, expected: expected)
        }
        _ = try indices(ring, base: base, layout: layout)
    }

    /// Head and tail of `ring` as they are now in shared memory, checked: they differ by at most
    /// the capacity. The head may pass the published tail: a consumer reads a slot as soon as its
    /// stamp is set, and the producer publishes the tail after the stamps (once per batch).
    static func indices(_ ring: Int, base: UnsafeMutableRawPointer, layout: RingLayout) throws(RingError) -> (head: UInt64, tail: UInt64) {
        let header = base + layout.ringOffset(ring)
        let head = CL_dma_read64(header + RingLayout.headOffset)
        let tail = CL_dma_read64(header + RingLayout.tailOffset)
        guard RingLayout.plausible(head: head, tail: tail, capacity: UInt64(layout.capacity)) else {
            throw .corruptIndices(ring: RingLayout.ringName(ring), head: head, tail: tail, capacity: layout.capacity)
        }
        return (head, tail)
    }

    /// The client's side: it produces requests (ring 0) and consumes responses (ring 1).
    public func clientEnd() throws(RingError) -> RingClientEnd {
        RingClientEnd(requests: try RingProducer(memory: self, ring: 0), responses: try RingConsumer(memory: self, ring: 1))
    }

    /// The server's side: it consumes requests (ring 0) and produces responses (ring 1).
    public func serverEnd() throws(RingError) -> RingServerEnd {
        RingServerEnd(requests: try RingConsumer(memory: self, ring: 0), responses: try RingProducer(memory: self, ring: 1))
    }

    private static func map(fd: Int32, size: Int) throws(RingError) -> UnsafeMutableRawPointer {
        let address = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let address, CL_is_map_failed(address) == 0 else {
            throw .systemCall("mmap (ring memfd, \(size) bytes)", Errno(rawValue: CL_errno()))
        }
        return address
    }

    private static func writeHeader(at header: UnsafeMutableRawPointer, magic: UInt64, layout: RingLayout, lastField: UInt32) {
        header.storeBytes(of: magic, toByteOffset: RingLayout.magicOffset, as: UInt64.self)
        header.storeBytes(of: RingLayout.version, toByteOffset: RingLayout.versionOffset, as: UInt32.self)
        header.storeBytes(of: UInt32(layout.slotSize), toByteOffset: RingLayout.slotSizeOffset, as: UInt32.self)
        header.storeBytes(of: UInt32(layout.capacity), toByteOffset: RingLayout.capacityOffset, as: UInt32.self)
        header.storeBytes(of: lastField, toByteOffset: RingLayout.ringCountOffset, as: UInt32.self)
    }
}
