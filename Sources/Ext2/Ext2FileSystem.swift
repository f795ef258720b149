import VFSCore
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A mounted ext2 file system (revision 0 or 1) on a `BlockStore`. Metadata blocks (bitmaps,
/// inode table, indirect and directory blocks) go through a small cache; file data goes straight
/// to the store. Without a journal metadata is written through; with one (ext3's has_journal,
/// or a plain ext2 mount given a write-back log, WriteBackLog.swift) it collects in the running
/// transaction and reaches the disk through the log on commit (Transaction.swift). Single-threaded, as the `FileSystem` contract promises.
public final class Ext2FileSystem: FileSystem {
    /// "ext3" when the image has a journal (has_journal: it was opened, replayed if needed, and
    /// journals this mount's changes when read-write), "ext2" otherwise: what `df` and the mount
    /// log show, as Linux names the two.
    public let typeName: String
    public var rootInode: InodeNumber { 2 }
    public internal(set) var isReadOnly: Bool

    let store: BlockStore
    let geometry: Geometry
    var superblock: Superblock
    var descriptors: [GroupDescriptor]
    let log: (String) -> Void
    var superblockDirty = false
    /// Groups whose descriptor changed since the table was last written.
    var dirtyDescriptorBlocks = Set<Int>()
    var mounted = true
    /// Inodes whose last name went in this mount and that are not evicted yet. The VFS evicts
    /// each before unmount; unmount frees any it missed so the image stays consistent.
    var unlinkedInodes = Set<InodeNumber>()

    /// Write-through cache of metadata blocks, dropped wholesale when it grows past its limit
    /// (8 MiB of blocks).
    var cache: [UInt32: [UInt8]] = [:]
    let cacheLimit: Int
    /// The ext3 journal when the image has one, or the write-back log of a plain ext2 mount,
    /// when the mount is read-write; nil for plain ext2 without a log (write-through) and
    /// read-only mounts.
    var journal: Journal? = nil
    /// Metadata changed since the last commit (journalled mounts only).
    var transaction = RunningTransaction()
    /// One block of scratch space for partial-block data reads and writes.
    let scratch: UnsafeMutableRawBufferPointer
    let blockSize: Int
    let directIO: Bool

    init(store: BlockStore, readOnly: Bool, writeBackLog: BlockStore? = nil, log: @escaping (String) -> Void) throws(FSError) {
        self.store = store
        self.log = log
        let raw = try Self.readBytes(store, at: Superblock.offset, count: Superblock.size)
        let sb = Superblock(raw: raw)
        let geometry: Geometry
        do throws(FSError) { geometry = try Geometry(sb, capacity: store.capacity) } catch {
            log("ext2: refusing to mount: \(error.detail)")
            throw error
        }
        self.geometry = geometry
        blockSize = geometry.blockSize
        cacheLimit = max(64, (8 << 20) / geometry.blockSize)
        directIO = geometry.blockSize % store.sectorSize == 0

        let hasJournal = sb.featureCompat & Features.compatHasJournal != 0
        typeName = hasJournal ? "ext3" : "ext2"
        // needs_recovery means something only with a journal to recover from.
        let understood = Features.incompatSupported | (hasJournal ? Features.incompatRecover : 0)
        let unknownIncompat = sb.featureIncompat & ~understood
        if unknownIncompat != 0 {
            let names = Features.names(unknownIncompat, Features.incompatNames, "incompat")
            log("ext2: refusing to mount: unsupported incompatible features: \(names.joined(separator: ", "))")
            throw FSError(.notSupported, "unsupported incompatible features: \(names.joined(separator: ", "))")
        }
        var forceReadOnly = false
        let unknownROCompat = sb.featureROCompat & ~Features.roCompatSupported
        if unknownROCompat != 0 && !readOnly {
            let names = Features.names(unknownROCompat, Features.roCompatNames, "ro_compat")
            log("ext2: mounting read-only: features safe only to read: \(names.joined(separator: ", "))")
            forceReadOnly = true
        }
        isReadOnly = readOnly || forceReadOnly

        descriptors = try Self.readDescriptors(store, geometry, log: log)
        scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: geometry.blockSize, alignment: 64)
        superblock = sb

        var recovered = false
        if hasJournal {
            // May replay the journal, which rereads the superblock and the descriptors.
            recovered = try openJournal()
        } else if !isReadOnly, let writeBackLog {
            // May replay the log, which rereads the superblock and the descriptors.
            recovered = try openWriteBackLog(writeBackLog)
        } else if let writeBackLog {
            // Read-only: nothing is replayed (that writes), but say so when a commit waits.
            noteUnreplayedWriteBackLog(writeBackLog)
        } else if !isReadOnly {
            log("ext2: no journal: a crash in the middle of a write-back may leave the image needing `e2fsck -fy`; `tune2fs -j` adds one (ext3)")
        }
        let state = superblock.state
        if !recovered && (state & Superblock.validFS == 0 || state & Superblock.errorFS != 0) {
            log("ext2: mounting a file system that was not cleanly unmounted or has errors (s_state \(state)); run e2fsck")
        }
        // The kernel's ext2 trusts the group descriptors' counts over the superblock's summary.
        let freeBlocks = descriptors.reduce(UInt64(0)) { $0 + UInt64($1.freeBlocks) }
        let freeInodes = descriptors.reduce(UInt64(0)) { $0 + UInt64($1.freeInodes) }
        if freeBlocks != UInt64(superblock.freeBlocksCount) || freeInodes != UInt64(superblock.freeInodesCount) {
            superblock.freeBlocksCount = UInt32(truncatingIfNeeded: freeBlocks)
            superblock.freeInodesCount = UInt32(truncatingIfNeeded: freeInodes)
            superblockDirty = true
        }

        let root = try loadInode(2)
        guard root.isDirectory else {
            log("ext2: refusing to mount: the root inode is not a directory")
            throw FSError.corrupted("root inode is not a directory (mode 0o\(String(root.mode, radix: 8)))")
        }

        if !isReadOnly {
            // Mounted read-write: not clean until unmount (s_state), one more mount (s_mnt_count).
            superblock.state &= ~Superblock.validFS
            superblock.mountCount &+= 1
            superblock.mountTime = UInt32(truncatingIfNeeded: Self.now().seconds)
            // A journalled mount needs recovery until unmount (EXT3_FEATURE_INCOMPAT_RECOVER).
            // Not with a write-back log: plain ext2 has no such flag, and its log is not on disk.
            if hasJournal && journal != nil { superblock.featureIncompat |= Features.incompatRecover }
            superblockDirty = true
            try writeSuperblock(inPlace: true)
            try store.flush()
        }
    }

    deinit { scratch.deallocate() }

    /// Reads and checks the group descriptor table: the block after the superblock's (ext2
    /// s_first_data_block + 1).
    static func readDescriptors(_ store: BlockStore, _ geometry: Geometry, log: (String) -> Void) throws(FSError) -> [GroupDescriptor] {
        let blockSize = geometry.blockSize
        let tableBytes = try readBytes(store, at: UInt64(geometry.firstDataBlock + 1) * UInt64(blockSize),
                                       count: geometry.descriptorBlocks * blockSize)
        var descriptors: [GroupDescriptor] = []
        descriptors.reserveCapacity(geometry.groupCount)
        for group in 0..<geometry.groupCount {
            let descriptor = GroupDescriptor(tableBytes, at: group * GroupDescriptor.size)
            do throws(FSError) { try descriptor.validate(group: group, geometry) } catch {
                log("ext2: refusing to mount: \(error.detail)")
                throw error
            }
            descriptors.append(descriptor)
        }
        return descriptors
    }

    static func now() -> FileTime {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return FileTime(seconds: Int64(ts.tv_sec), nanoseconds: UInt32(ts.tv_nsec))
    }

    // MARK: Errors

    /// An inconsistency in the image: logged, returned as EUCLEAN.
    func corrupt(_ detail: String) -> FSError {
        log("ext2: corrupted: \(detail)")
        return FSError.corrupted(detail)
    }

    func checkWritable() throws(FSError) {
        guard mounted else { throw FSError(.badFileDescriptor, "file system is unmounted") }
        guard !isReadOnly else { throw FSError(.readOnlyFileSystem, "ext2 mounted read-only") }
    }

    func checkMounted() throws(FSError) {
        guard mounted else { throw FSError(.badFileDescriptor, "file system is unmounted") }
    }

    // MARK: Raw I/O

    /// Reads `count` bytes at any offset, widening to the store's sector alignment.
    static func readBytes(_ store: BlockStore, at offset: UInt64, count: Int) throws(FSError) -> [UInt8] {
        let sector = UInt64(store.sectorSize)
        let start = offset - offset % sector
        let end = (offset + UInt64(count) + sector - 1) / sector * sector
        guard end <= store.capacity else { throw FSError.io("read of \(count) bytes at \(offset) past the device end (\(store.capacity))") }
        var buffer = [UInt8](repeating: 0, count: Int(end - start))
        try store.read(at: start, into: &buffer)
        if start == offset && buffer.count == count { return buffer }
        let skip = Int(offset - start)
        return Array(buffer[skip..<(skip + count)])
    }

    /// Writes bytes at any offset, reading and merging partial sectors first.
    func writeBytes(at offset: UInt64, _ bytes: [UInt8]) throws(FSError) {
        try Self.writeBytes(store, at: offset, bytes)
    }

    static func writeBytes(_ store: BlockStore, at offset: UInt64, _ bytes: [UInt8]) throws(FSError) {
        let sector = UInt64(store.sectorSize)
        if offset % sector == 0 && UInt64(bytes.count) % sector == 0 {
            try store.write(at: offset, from: bytes)
            return
        }
        let start = offset - offset % sector
        let end = (offset + UInt64(bytes.count) + sector - 1) / sector * sector
        var merged = try readBytes(store, at: start, count: Int(end - start))
        let skip = Int(offset - start)
        merged.replaceSubrange(skip..<(skip + bytes.count), with: bytes)
        try store.write(at: start, from: merged)
    }

    /// A block number a structure points at must lie inside the file system.
    func checkBlock(_ block: UInt32, _ what: @autoclosure () -> String) throws(FSError) {
        guard block >= geometry.firstDataBlock, block < geometry.blocksCount else {
            throw corrupt("\(what()) points at block \(block), outside 1...\(geometry.blocksCount - 1)")
        }
    }

    /// Whether `block` holds fixed metadata: a superblock or descriptor copy, reserved descriptor
    /// blocks, a bitmap, or an inode table. File blocks never may.
    func isMetadata(_ block: UInt32) -> Bool {
        guard block >= geometry.firstDataBlock, block < geometry.blocksCount else { return true }
        let group = Int((block - geometry.firstDataBlock) / geometry.blocksPerGroup)
        let start = geometry.groupStart(group)
        if block < start + geometry.superblockAreaBlocks(group) { return true }
        let d = descriptors[group]
        if block == d.blockBitmap || block == d.inodeBitmap { return true }
        return block >= d.inodeTable && block - d.inodeTable < geometry.inodeTableBlocks
    }

    /// A block a file's map or a directory points at: inside the file system and not metadata.
    func checkFileBlock(_ block: UInt32, _ what: @autoclosure () -> String) throws(FSError) {
        try checkBlock(block, what())
        guard !isMetadata(block) else { throw corrupt("\(what()) points at metadata block \(block)") }
    }

    /// A metadata block (bitmap, inode table, indirect or directory block), through the cache.
    func metaBlock(_ block: UInt32) throws(FSError) -> [UInt8] {
        if let changed = transaction.blocks[block] { return changed }
        if let cached = cache[block] { return cached }
        try checkBlock(block, "metadata read")
        let bytes = try Self.readBytes(store, at: UInt64(block) * UInt64(blockSize), count: blockSize)
        if cache.count >= cacheLimit { cache.removeAll(keepingCapacity: true) }
        cache[block] = bytes
        return bytes
    }

    /// A metadata block to change: taken out of the cache so the caller holds the only reference
    /// and changes it in place (no copy per bit set); writeMetaBlock / writeMetaRange put it back.
    /// A block of the running transaction stays in it (a caller that gives up must not lose
    /// the transaction's change), so changing it copies it once.
    func takeMetaBlock(_ block: UInt32) throws(FSError) -> [UInt8] {
        let bytes = try metaBlock(block)
        cache.removeValue(forKey: block)
        return bytes
    }

    /// Replaces a metadata block in the cache and on the store (in the running transaction when
    /// journalled).
    func writeMetaBlock(_ block: UInt32, _ bytes: [UInt8]) throws(FSError) {
        try checkBlock(block, "metadata write")
        precondition(bytes.count == blockSize)
        if journal != nil { return transaction.change(block, bytes, cache: &cache) }
        if cache.count >= cacheLimit { cache.removeAll(keepingCapacity: true) }
        cache[block] = bytes
        try writeBytes(at: UInt64(block) * UInt64(blockSize), bytes)
    }

    /// Writes `count` bytes at `offset` of a block already updated in the cache (only the
    /// sectors that changed go to the store).
    func writeMetaRange(_ block: UInt32, _ bytes: [UInt8], offset: Int, count: Int) throws(FSError) {
        try checkBlock(block, "metadata write")
        if journal != nil { return transaction.change(block, bytes, cache: &cache) }
        cache[block] = bytes
        let sector = store.sectorSize
        guard directIO else { return try writeBytes(at: UInt64(block) * UInt64(blockSize), bytes) }
        let start = offset - offset % sector
        let end = min(blockSize, (offset + count + sector - 1) / sector * sector)
        try store.write(at: UInt64(block) * UInt64(blockSize) + UInt64(start), from: bytes, range: start..<end)
    }

    // MARK: Inodes

    func checkInodeNumber(_ number: InodeNumber) throws(FSError) {
        guard number >= 1, number <= InodeNumber(geometry.inodesCount) else {
            throw FSError(.invalidArgument, "inode \(number) out of range 1...\(geometry.inodesCount)")
        }
    }

    /// Where inode `number` lives: inode table block and byte offset in it.
    func inodeLocation(_ number: InodeNumber) -> (block: UInt32, offset: Int) {
        let index = Int(number - 1)
        let group = index / Int(geometry.inodesPerGroup)
        let byte = (index % Int(geometry.inodesPerGroup)) * geometry.inodeSize
        return (descriptors[group].inodeTable + UInt32(byte / blockSize), byte % blockSize)
    }

    func loadInode(_ number: InodeNumber) throws(FSError) -> Inode {
        try checkInodeNumber(number)
        let (block, offset) = inodeLocation(number)
        let bytes = try metaBlock(block)
        let inode = Inode(raw: Array(bytes[offset..<(offset + geometry.inodeSize)]))
        let flags = inode.flags
        if flags & (Inode.extentsFlag | Inode.inlineDataFlag) != 0 {
            throw corrupt("inode \(number) uses extents or inline data (flags 0x\(String(flags, radix: 16))), which ext2 does not have")
        }
        return inode
    }

    func storeInode(_ number: InodeNumber, _ inode: Inode) throws(FSError) {
        try checkInodeNumber(number)
        let (block, offset) = inodeLocation(number)
        var bytes = try takeMetaBlock(block)
        bytes.replaceSubrange(offset..<(offset + geometry.inodeSize), with: inode.raw)
        try writeMetaRange(block, bytes, offset: offset, count: geometry.inodeSize)
    }

    /// An inode a caller names (the VFS passes numbers it got from lookup): in range, in use.
    func liveInode(_ number: InodeNumber) throws(FSError) -> Inode {
        guard number >= 1, number <= InodeNumber(geometry.inodesCount) else {
            throw FSError(.invalidArgument, "inode \(number) out of range 1...\(geometry.inodesCount)")
        }
        let inode = try loadInode(number)
        guard inode.mode != 0 else { throw corrupt("inode \(number) is not in use (mode 0)") }
        return inode
    }

    // MARK: Superblock and descriptors

    /// Writes the superblock: into the running transaction when journalled, unless `inPlace`
    /// (at mount and unmount, when the journal is empty).
    func writeSuperblock(inPlace: Bool = false) throws(FSError) {
        superblock.writeTime = UInt32(truncatingIfNeeded: Self.now().seconds)
        if journal != nil && !inPlace {
            // The superblock is bytes 1024..<2048, block 1 of 1 KiB blocks, inside block 0 of larger.
            let block = UInt32(Superblock.offset / UInt64(blockSize))
            let start = Int(Superblock.offset % UInt64(blockSize))
            var bytes = try metaBlock(block)
            bytes.replaceSubrange(start..<(start + Superblock.size), with: superblock.raw)
            transaction.change(block, bytes, cache: &cache)
        } else {
            try writeBytes(at: Superblock.offset, superblock.raw)
        }
        superblockDirty = false
    }

    /// Writes the superblock and any changed descriptor-table blocks (primary copies, as the
    /// kernel's ext2 does; backups are e2fsck's and resize2fs's business).
    func flushMetadata() throws(FSError) {
        for tableBlock in dirtyDescriptorBlocks.sorted() {
            let perBlock = blockSize / GroupDescriptor.size
            let first = tableBlock * perBlock
            // Bytes past the last group keep what the table block had.
            let block = geometry.firstDataBlock + 1 + UInt32(tableBlock)
            var bytes = journal != nil ? try metaBlock(block)
                : try Self.readBytes(store, at: UInt64(block) * UInt64(blockSize), count: blockSize)
            for group in first..<min(first + perBlock, descriptors.count) {
                descriptors[group].store(into: &bytes, at: (group - first) * GroupDescriptor.size)
            }
            if journal != nil {
                transaction.change(block, bytes, cache: &cache)
            } else {
                try writeBytes(at: UInt64(block) * UInt64(blockSize), bytes)
            }
        }
        dirtyDescriptorBlocks.removeAll()
        if superblockDirty { try writeSuperblock() }
    }

    func descriptorChanged(_ group: Int) {
        dirtyDescriptorBlocks.insert(group * GroupDescriptor.size / blockSize)
        superblockDirty = true
    }

    // MARK: Mount-wide operations

    public func statistics() throws(FSError) -> FileSystemStatistics {
        try checkMounted()
        let free = UInt64(superblock.freeBlocksCount)
        let reserved = UInt64(superblock.reservedBlocksCount)
        return FileSystemStatistics(
            blockSize: blockSize, totalBlocks: UInt64(geometry.blocksCount), freeBlocks: free,
            availableBlocks: free > reserved ? free - reserved : 0, totalInodes: UInt64(geometry.inodesCount),
            freeInodes: UInt64(superblock.freeInodesCount), maxNameLength: FileName.maxLength)
    }

    public func sync() throws(FSError) {
        try checkMounted()
        if !isReadOnly { try flushMetadata() }
        if journal != nil {
            // The commit flushes the store (file data first, ordered mode).
            try commitTransaction()
        } else {
            try store.flush()
        }
    }

    public func unmount() throws(FSError) {
        try checkMounted()
        if !isReadOnly {
            for number in unlinkedInodes.sorted() {
                log("ext2: inode \(number) was unlinked but never evicted; freeing it at unmount")
                do throws(FSError) { try evict(number) } catch { log("ext2: could not free inode \(number): \(error)") }
            }
            try flushMetadata()
            if let journal {
                try commitTransaction()
                try journal.markEmpty()
                log("ext2: \(typeName == "ext3" ? "journal" : "write-back log"): \(journal.commits) commits, \(journal.blocksJournalled) blocks journalled in this mount")
                // With the log empty and on disk, the superblock is written in place.
                superblock.featureIncompat &= ~Features.incompatRecover
            }
            // Cleanly unmounted (ext2 s_state EXT2_VALID_FS).
            superblock.state |= Superblock.validFS
            try writeSuperblock(inPlace: true)
        }
        try store.flush()
        mounted = false
        cache.removeAll()
    }
}
