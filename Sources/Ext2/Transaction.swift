import VFSCore

/// The metadata changed since the last commit of a journalled mount. Reads see these blocks
/// (`metaBlock` looks here first); nothing of them reaches the disk in place before their commit.
struct RunningTransaction {
    /// Changed metadata blocks, whole, by block number.
    var blocks: [UInt32: [UInt8]] = [:]
    /// Blocks freed in this transaction. They are not handed out again before the commit: until
    /// then the disk still has them in use (as file data or as metadata a replay might rewrite),
    /// so writing file data into one would damage what a crash brings back.
    var freed = Set<UInt32>()

    mutating func change(_ block: UInt32, _ bytes: [UInt8], cache: inout [UInt32: [UInt8]]) {
        blocks[block] = bytes
        // One copy of a changed block: the transaction's.
        cache.removeValue(forKey: block)
    }

    /// A block leaves the file system: its pending contents go (a freed block is never
    /// journalled as metadata, so a replay cannot write it over what it holds next).
    mutating func free(_ block: UInt32) {
        blocks.removeValue(forKey: block)
        freed.insert(block)
    }
}

/// The journalled mount: opening (and replaying) the journal, commits, and when they happen.
/// Commits come on sync (fsync, the VFS's periodic write-back), at unmount, after an operation
/// that left the transaction larger than the journal's limit, and before an operation when the
/// blocks held back as freed are most of what is free. Operations are never split: a commit
/// falls between two, so each transaction holds whole operations (as a jbd2 handle never spans
/// transactions).
extension Ext2FileSystem {
    /// Finds the journal inode's blocks, replays a journal that needs it, and takes the journal
    /// for a read-write mount. Returns whether transactions were replayed.
    func openJournal() throws(FSError) -> Bool {
        let number = InodeNumber(superblock.journalInode)
        guard number != 0 else {
            log("ext2: refusing to mount: the journal is on an external device (s_journal_inum 0), which is not supported")
            throw FSError(.notSupported, "external journal device")
        }
        let journal: Journal
        do throws(FSError) {
            let inode = try loadInode(number)
            guard inode.type == .regular else { throw corrupt("journal inode \(number) is not a regular file") }
            let count = inode.size / UInt64(blockSize)
            guard count >= 4, count <= UInt64(geometry.blocksCount) else { throw corrupt("journal inode \(number) has size \(inode.size)") }
            var blocks: [UInt32] = []
            blocks.reserveCapacity(Int(count))
            for logical in 0..<count {
                let block = try mapBlock(inode, logical, number)
                guard block != 0 else { throw corrupt("journal inode \(number) has a hole at block \(logical)") }
                blocks.append(block)
            }
            journal = try Journal(store: store, blockSize: blockSize, blocks: blocks,
                                  fileSystemBlocks: geometry.blocksCount, log: log)
        } catch {
            log("ext2: refusing to mount: journal: \(error.detail)")
            throw error
        }

        var recovered = false
        if journal.holdsTransactions {
            let recovery: Journal.Recovery
            do throws(FSError) { recovery = try journal.recover() } catch {
                log("ext2: refusing to mount: journal recovery failed: \(error.detail)")
                throw error
            }
            let sequences = recovery.sequences.map { " (sequence \($0.lowerBound)...\($0.upperBound))" } ?? ""
            log("ext2: journal: replayed \(recovery.transactions) committed transactions\(sequences), \(recovery.blocksReplayed) blocks, \(recovery.blocksRevoked) revoked")
            try reloadAfterReplay()
            recovered = true
        }
        if recovered && superblock.featureIncompat & Features.incompatRecover != 0 {
            // Replayed: the file system is whole again.
            superblock.featureIncompat &= ~Features.incompatRecover
            try writeSuperblock(inPlace: true)
            try store.flush()
        }
        let unsupported = journal.superblock.unsupportedFeatures
        if !unsupported.isEmpty && !isReadOnly {
            log("ext2: mounting read-only: the journal uses features this implementation does not write: \(unsupported.joined(separator: ", "))")
            isReadOnly = true
        }
        if !isReadOnly {
            self.journal = journal
            try adoptOrphans()
        }
        return recovered
    }

    /// After a replay the superblock and descriptors on disk are the ones to believe.
    func reloadAfterReplay() throws(FSError) {
        cache.removeAll()
        let sb = Superblock(raw: try Self.readBytes(store, at: Superblock.offset, count: Superblock.size))
        let replayed = try Geometry(sb, capacity: store.capacity)
        guard replayed.blockSize == geometry.blockSize, replayed.blocksCount == geometry.blocksCount,
              replayed.inodesCount == geometry.inodesCount, replayed.blocksPerGroup == geometry.blocksPerGroup else {
            throw corrupt("the superblock replayed from the journal describes another layout")
        }
        superblock = sb
        descriptors = try Self.readDescriptors(store, geometry, log: log)
    }

    /// Writes the running transaction through the journal (a no-op without changes).
    func commitTransaction() throws(FSError) {
        guard let journal else { return }
        try flushMetadata()
        guard !transaction.blocks.isEmpty else {
            transaction.freed.removeAll()
            return try store.flush()
        }
        let changes = transaction.blocks.sorted { $0.key < $1.key }.map { (block: $0.key, bytes: $0.value) }
        if journal.fits(changes.count) {
            try journal.commit(changes)
        } else {
            // Only an operation larger than the whole journal gets here (the limit commits well
            // before): its blocks go in place unjournalled, as ext2 would write them.
            log("ext2: journal: a transaction of \(changes.count) blocks does not fit the journal; writing it in place unjournalled")
            try store.flush()
            for change in changes { try writeBytes(at: UInt64(change.block) * UInt64(blockSize), change.bytes) }
            try store.flush()
        }
        for change in changes where cache.count < cacheLimit { cache[change.block] = change.bytes }
        transaction.blocks.removeAll(keepingCapacity: true)
        // Only now, with the frees on disk, may the freed blocks be handed out again (a failed
        // commit keeps them held back and the transaction whole for the next try).
        transaction.freed.removeAll()
    }

    /// Before an operation: commit when the blocks held back as freed are most of what is free,
    /// so the operation does not fail for want of space a commit would release.
    func commitIfFreedSpaceIsNeeded() throws(FSError) {
        guard journal != nil, !transaction.freed.isEmpty else { return }
        let free = Int(superblock.freeBlocksCount)
        let reserve = max(256, Int(geometry.blocksCount) / 64)
        if free - transaction.freed.count < reserve { try commitTransaction() }
    }

    /// After an operation: commit when the transaction reached the journal's limit.
    func commitIfLarge() throws(FSError) {
        guard let journal, transaction.blocks.count >= journal.transactionLimit else { return }
        try commitTransaction()
    }
}

/// The orphan list (ext3 s_last_orphan, chained through i_dtime): inodes whose last name went
/// while the VFS still holds them open. With a journal the list is on disk, in the same
/// transaction as the unlink, so after a crash the image is consistent (e2fsck and Linux know
/// the list) and a restarted server knows which inodes to free once their descriptors close.
extension Ext2FileSystem {
    /// Notes that `number` lost its last name; the caller stores `inode`.
    func orphan(_ number: InodeNumber, _ inode: inout Inode) {
        guard unlinkedInodes.insert(number).inserted, journal != nil else { return }
        inode.dtime = superblock.lastOrphan
        superblock.lastOrphan = UInt32(number)
        superblockDirty = true
    }

    /// Takes `number` off the on-disk orphan list (before it is freed).
    func removeOrphan(_ number: InodeNumber) throws(FSError) {
        guard journal != nil, superblock.lastOrphan != 0 else { return }
        var previous: InodeNumber = 0
        var current = InodeNumber(superblock.lastOrphan)
        var steps = 0
        while current != 0 && current != number {
            steps += 1
            guard steps <= Int(geometry.inodesCount) else { throw corrupt("the orphan list loops") }
            previous = current
            current = InodeNumber(try loadInode(current).dtime)
        }
        guard current == number else { return }
        let next = try loadInode(number).dtime
        if previous == 0 {
            superblock.lastOrphan = next
            superblockDirty = true
        } else {
            var inode = try loadInode(previous)
            inode.dtime = next
            try storeInode(previous, inode)
        }
    }

    /// At a journalled mount: the orphans a crash left become this mount's unlinked inodes, kept
    /// for descriptors the restarted VFS restores and freed when those close, or at unmount.
    func adoptOrphans() throws(FSError) {
        var current = superblock.lastOrphan
        var adopted: [InodeNumber] = []
        while current != 0 {
            let number = InodeNumber(current)
            // A damaged list is left to e2fsck (it rebuilds the counts); the mount goes on.
            guard number >= InodeNumber(geometry.firstInode), number <= InodeNumber(geometry.inodesCount),
                  adopted.count < Int(geometry.inodesCount), !adopted.contains(number) else {
                log("ext2: corrupted: the orphan list names inode \(number); not following it further")
                break
            }
            let inode = try loadInode(number)
            guard inode.linksCount == 0, inode.mode != 0 else {
                log("ext2: corrupted: the orphan list names inode \(number), which has \(inode.linksCount) links (mode 0o\(String(inode.mode, radix: 8))); not following it further")
                break
            }
            adopted.append(number)
            current = inode.dtime
        }
        guard !adopted.isEmpty else { return }
        unlinkedInodes.formUnion(adopted)
        log("ext2: \(adopted.count) orphan inodes (unlinked while open) kept until their descriptors close or unmount: \(adopted.map(String.init).joined(separator: ", "))")
    }
}
