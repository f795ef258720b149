import PlatformTestSupport
import Foundation
import SystemPackage
import VFSCore
import XCTest
@testable import Ext2

/// A store that dies after its first `limit` writes: that write and every later one fail and
/// persist nothing, as when the process is killed (writes that returned are in the kernel's
/// page cache and survive; later ones never happen). With `unflushedKept` set, only a random
/// part (seeded) of the writes since the last flush survives, in any order, as after a power
/// loss or when the lost writes sat in vfs_server's own page cache: `durable` is then what the
/// disk holds.
final class CrashingStore: BlockStore {
    let backing: MemoryBlockStore
    let limit: Int
    private(set) var writes = 0
    var crashed: Bool { writes >= limit }
    /// nil: every write that returned survives; else the seed choosing which unflushed ones do.
    let unflushedKept: UInt64?
    private var flushed: [UInt8]
    private var unflushed: [(offset: Int, bytes: [UInt8])] = []

    init(bytes: [UInt8], crashAfter limit: Int, unflushedKept seed: UInt64? = nil) {
        backing = MemoryBlockStore(bytes: bytes)
        self.limit = limit
        unflushedKept = seed
        flushed = seed == nil ? [] : backing.bytes
    }

    /// The disk after the crash.
    var durable: [UInt8] {
        guard let seed = unflushedKept else { return backing.bytes }
        var bytes = flushed
        var random = SplitMix(seed: seed)
        for write in unflushed where random.next() % 2 == 0 {
            bytes.replaceSubrange(write.offset..<(write.offset + write.bytes.count), with: write.bytes)
        }
        return bytes
    }

    var sectorSize: Int { backing.sectorSize }
    var capacity: UInt64 { backing.capacity }

    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(FSError) {
        try backing.read(at: offset, into: buffer)
    }

    func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(FSError) {
        try countWrite()
        try backing.write(at: offset, from: buffer)
        if unflushedKept != nil { unflushed.append((Int(offset), Array(buffer))) }
    }

    /// Counts a write toward the crash point; throws from the crash on. The process dies at its
    /// Nth write wherever it goes (`ProcessMemoryLog` counts its writes here too).
    func countWrite() throws(FSError) {
        guard writes < limit else { throw FSError(.ioError, "crashed (after write \(limit))") }
        writes += 1
    }

    func flush() throws(FSError) {
        if crashed { throw FSError(.ioError, "crashed (after write \(limit))") }
        for write in unflushed {
            flushed.replaceSubrange(write.offset..<(write.offset + write.bytes.count), with: write.bytes)
        }
        unflushed.removeAll()
    }
}

/// Memory that outlives the process (the supervisor's CAP_PAGE_CACHE memfd) as the process sees
/// it: its writes count toward `process`'s crash point and stop there, but what was written
/// stays (`memory`, for the next mount).
final class ProcessMemoryLog<Memory: BlockStore>: BlockStore {
    let memory: Memory
    let process: CrashingStore

    init(memory: Memory, process: CrashingStore) {
        self.memory = memory
        self.process = process
    }

    var sectorSize: Int { memory.sectorSize }
    var capacity: UInt64 { memory.capacity }

    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(FSError) {
        try memory.read(at: offset, into: buffer)
    }

    func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(FSError) {
        try process.countWrite()
        try memory.write(at: offset, from: buffer)
    }

    func flush() throws(FSError) {}
}

extension ProcessMemoryLog where Memory == MemoryBlockStore {
    convenience init(bytes: Int, process: CrashingStore) {
        self.init(memory: MemoryBlockStore(bytes: [UInt8](repeating: 0, count: bytes)), process: process)
    }
}
