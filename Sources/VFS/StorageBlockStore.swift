import IPC
import Storage
import VFSCore

/// A `BlockStore` over one namespace of storage_server (`BlockClient`, MSG_BLOCK_*): the VFS's
/// backend on real hardware. Reads always go through one shared-memory region (shared once at
/// start: no allocation per request); writes up to 64 KiB go inline, larger ones through the
/// region. Transfers larger than the region are split.
public final class StorageBlockStore: BlockStore {
    public let client: BlockClient
    public let nsid: UInt32
    public let sectorSize: Int
    public let capacity: UInt64
    public static let regionSize = 1 << 20

    private final class Region {
        let memory: SharedMemory
        let handle: UInt32
        init(memory: consuming SharedMemory, handle: UInt32) {
            self.memory = memory
            self.handle = handle
        }
    }
    private let region: Region

    /// Opens namespace `nsid` and shares the transfer region. EIO/ENOENT name what failed.
    public init(client: BlockClient, nsid: UInt32) throws(FSError) {
        self.client = client
        self.nsid = nsid
        let geometry: BlockGeometry
        do {
            switch try client.openNamespace(nsid) {
            case .success(let found): geometry = found
            case .failure(let status): throw FSError(.init(rawValue: status.rawValue), "storage namespace \(nsid): \(status)")
            }
            let memory = try SharedMemory(size: Self.regionSize, name: "vfs-storage")
            let handle = try client.connection.share(memory)
            region = Region(memory: memory, handle: handle)
        } catch let error as FSError {
            throw error
        } catch {
            throw FSError(.ioError, "storage server: \(error)")
        }
        sectorSize = geometry.blockSize
        capacity = geometry.capacityBytes
    }

    private func check(_ status: IPCStatus, _ what: String) throws(FSError) {
        guard status.isOK else { throw FSError(.init(rawValue: status.rawValue), "storage \(what) on nsid \(nsid): \(status)") }
    }

    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(FSError) {
        try checkRange(offset, buffer.count)
        var done = 0
        while done < buffer.count {
            let chunk = min(buffer.count - done, Self.regionSize)
            let lba = (offset + UInt64(done)) / UInt64(sectorSize)
            do {
                try check(try client.read(nsid, lba: lba, blocks: UInt64(chunk / sectorSize), sharedHandle: region.handle,
                                          count: UInt32(chunk)), "read")
            } catch let error as FSError {
                throw error
            } catch {
                throw FSError(.ioError, "storage read: \(error)")
            }
            (buffer.baseAddress! + done).copyMemory(from: region.memory.bytes.baseAddress!, byteCount: chunk)
            done += chunk
        }
    }

    public func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(FSError) {
        try checkRange(offset, buffer.count)
        var done = 0
        while done < buffer.count {
            let lba = (offset + UInt64(done)) / UInt64(sectorSize)
            let remaining = buffer.count - done
            do {
                if remaining <= BlockProtocol.maxInlineBytes {
                    let slice = UnsafeRawBufferPointer(rebasing: buffer[done...])
                    try check(try client.write(nsid, lba: lba, blocks: UInt64(remaining / sectorSize), data: slice), "write")
                    done += remaining
                } else {
                    let chunk = min(remaining, Self.regionSize)
                    region.memory.mutableBytes!.baseAddress!.copyMemory(from: buffer.baseAddress! + done, byteCount: chunk)
                    try check(try client.write(nsid, lba: lba, blocks: UInt64(chunk / sectorSize), sharedHandle: region.handle,
                                               count: UInt32(chunk)), "write")
                    done += chunk
                }
            } catch let error as FSError {
                throw error
            } catch {
                throw FSError(.ioError, "storage write: \(error)")
            }
        }
    }

    public func flush() throws(FSError) {
        do {
            try check(try client.flush(nsid), "flush")
        } catch let error as FSError {
            throw error
        } catch {
            throw FSError(.ioError, "storage flush: \(error)")
        }
    }
}
