import VFSCore

/// A jbd2-format log (`JournalFormat`): writes whole transactions and replays committed ones
/// after a crash. The log lives either in the blocks of ext3's journal inode (`logStore` is the
/// file system's own store) or, for a plain ext2 mount, in a memory region the supervisor holds
/// across vfs_server's restarts (`WriteBackLog.swift`); the commit and replay are the same.
///
/// Every commit here is also checkpointed at once and the log marked empty, so the log never
/// holds more than one transaction of ours. That keeps block reuse simple: a block freed in a
/// transaction is reused only after its commit, by which time no older transaction can be
/// replayed over it, so no revoke records are needed. Replay still reads any number of
/// transactions and honours revoke blocks, as a journal left by the kernel or e2fsprogs may
/// hold them.
final class Journal {
    /// The file system's store: where the blocks go in place.
    let store: BlockStore
    /// Where the log's blocks are: `store` for ext3, the supervisor-held memory for a write-back log.
    let logStore: BlockStore
    let blockSize: Int
    /// Block of `logStore` holding each log block (the journal inode's map, resolved at mount;
    /// 0, 1, 2... for a write-back log).
    let blocks: [UInt32]
    /// Blocks of the file system, to refuse a tag pointing outside it.
    let fileSystemBlocks: UInt32
    var superblock: JournalSuperblock
    let log: (String) -> Void

    /// Transactions committed and blocks copied into the log since mount (figures for the log
    /// and the benchmark).
    private(set) var commits = 0
    private(set) var blocksJournalled = 0

    /// The log whose superblock is block `blocks[0]` of `logStore` (the file system's store
    /// unless given), checked against the space it has.
    init(store: BlockStore, logStore: BlockStore? = nil, blockSize: Int, blocks: [UInt32], fileSystemBlocks: UInt32,
         log: @escaping (String) -> Void) throws(FSError) {
        self.store = store
        self.logStore = logStore ?? store
        self.blockSize = blockSize
        self.blocks = blocks
        self.fileSystemBlocks = fileSystemBlocks
        self.log = log
        let raw = try Ext2FileSystem.readBytes(self.logStore, at: UInt64(blocks[0]) * UInt64(blockSize), count: blockSize)
        superblock = JournalSuperblock(raw: raw)
        try superblock.validate(blockSize: blockSize, inodeBlocks: UInt64(blocks.count))
    }

    /// Whether the log is in the file system's own store (ext3) rather than apart from it.
    private var logIsInFileSystem: Bool { logStore === store }

    /// Puts on stable storage what was written to the log (a no-op for memory, which outlives
    /// the process by itself).
    private func flushLog() throws(FSError) { try logStore.flush() }

    /// Whether the log holds transactions (s_start set).
    var holdsTransactions: Bool { superblock.start != 0 }

    /// The most blocks one transaction may change: a quarter of the log, as jbd2 limits its
    /// transactions (j_max_transaction_buffers), so one that goes over a little still fits.
    var transactionLimit: Int { Int(superblock.maxLength - superblock.first) / 4 }

    /// Tags that fit one descriptor block: the header, a UUID after the first tag.
    var tagsPerDescriptor: Int {
        (blockSize - JournalFormat.headerSize - JournalFormat.uuidSize) / JournalFormat.tagSize
    }

    /// Log blocks a transaction of `count` blocks takes: descriptors, copies, the commit block.
    func logBlocks(for count: Int) -> Int {
        (count + tagsPerDescriptor - 1) / tagsPerDescriptor + count + 1
    }

    /// Whether a transaction of `count` blocks fits the log at all.
    func fits(_ count: Int) -> Bool { logBlocks(for: count) <= Int(superblock.maxLength - superblock.first) }

    private func next(_ position: UInt32) -> UInt32 {
        position + 1 == superblock.maxLength ? superblock.first : position + 1
    }

    private func readLog(_ position: UInt32) throws(FSError) -> [UInt8] {
        try Ext2FileSystem.readBytes(logStore, at: UInt64(blocks[Int(position)]) * UInt64(blockSize), count: blockSize)
    }

    private func writeLog(_ position: UInt32, _ bytes: [UInt8]) throws(FSError) {
        try Ext2FileSystem.writeBytes(logStore, at: UInt64(blocks[Int(position)]) * UInt64(blockSize), bytes)
    }

    private func writeSuperblock() throws(FSError) { try writeLog(0, superblock.raw) }

    // MARK: Commit

    /// Writes `changes` (file-system block and its new contents, sorted) as one transaction, then
    /// in place. The order is what makes it atomic (jbd2's commit, ordered mode):
    /// 1. descriptors and copies into the log, the superblock pointing at them; flush, which also
    ///    puts on disk the file data written before (ordered: data before the metadata naming it;
    ///    with the log apart, the file system's store is flushed for the data);
    /// 2. the commit block; flush: from here a crash replays the transaction;
    /// 3. the blocks in place (checkpoint); flush;
    /// 4. the superblock marks the log empty with the next sequence number; flush. Without this
    ///    flush the next transaction's copies could reach the disk (a page-cache eviction, a
    ///    drive's cache) while the superblock still points at this one's descriptor, and a replay
    ///    would write the new copies over this transaction's blocks.
    func commit(_ changes: [(block: UInt32, bytes: [UInt8])]) throws(FSError) {
        guard !changes.isEmpty else { return }
        precondition(fits(changes.count), "transaction of \(changes.count) blocks does not fit the journal")
        let sequence = superblock.sequence
        var position = superblock.first
        var index = 0
        while index < changes.count {
            let batch = changes[index..<min(index + tagsPerDescriptor, changes.count)]
            var descriptor = [UInt8](repeating: 0, count: blockSize)
            JournalFormat.Header(blockType: JournalFormat.descriptorBlock, sequence: sequence).store(into: &descriptor)
            var offset = JournalFormat.headerSize
            let descriptorPosition = position
            position = next(position)
            for (n, change) in batch.enumerated() {
                var flags: UInt32 = n == 0 ? 0 : JournalFormat.flagSameUUID
                if n == batch.count - 1 { flags |= JournalFormat.flagLastTag }
                var copy = change.bytes
                if copy.be32(0) == JournalFormat.magic {
                    // A copy must not look like a header to the replay's scan.
                    copy.setBE32(0, 0)
                    flags |= JournalFormat.flagEscape
                }
                descriptor.setBE32(offset, change.block)
                descriptor.setBE32(offset + 4, flags)
                offset += JournalFormat.tagSize
                if n == 0 {
                    descriptor.replaceSubrange(offset..<(offset + JournalFormat.uuidSize), with: superblock.uuid)
                    offset += JournalFormat.uuidSize
                }
                try writeLog(position, copy)
                position = next(position)
            }
            try writeLog(descriptorPosition, descriptor)
            index += batch.count
        }
        superblock.start = superblock.first
        try writeSuperblock()
        try store.flush()
        if !logIsInFileSystem { try flushLog() }

        var commitBlock = [UInt8](repeating: 0, count: blockSize)
        JournalFormat.Header(blockType: JournalFormat.commitBlock, sequence: sequence).store(into: &commitBlock)
        // h_commit_sec / h_commit_nsec (struct commit_header), shown by debugfs logdump.
        let now = Ext2FileSystem.now()
        commitBlock.setBE32(48, UInt32(truncatingIfNeeded: UInt64(bitPattern: now.seconds) >> 32))
        commitBlock.setBE32(52, UInt32(truncatingIfNeeded: now.seconds))
        commitBlock.setBE32(56, now.nanoseconds)
        try writeLog(position, commitBlock)
        try flushLog()

        for change in changes {
            try Ext2FileSystem.writeBytes(store, at: UInt64(change.block) * UInt64(blockSize), change.bytes)
        }
        try store.flush()

        superblock.start = 0
        superblock.sequence = sequence &+ 1
        try writeSuperblock()
        try flushLog()
        commits += 1
        blocksJournalled += changes.count
    }

    /// Marks the log empty and on disk (after a replay, and at unmount).
    func markEmpty() throws(FSError) {
        superblock.start = 0
        try writeSuperblock()
        try flushLog()
    }

    // MARK: Recovery

    /// What a replay found and did.
    struct Recovery {
        var transactions = 0
        var blocksReplayed = 0
        var blocksRevoked = 0
        /// The first and last sequence numbers replayed.
        var sequences: ClosedRange<UInt32>? = nil
    }

    /// One transaction read from the log: where each copy is and which block it belongs to.
    private struct LoggedTransaction {
        var sequence: UInt32
        var copies: [(position: UInt32, block: UInt32, escaped: Bool)] = []
        var revoked: [UInt32] = []
    }

    /// Replays the committed transactions in the log (jbd2's recovery: scan for the end of the
    /// log, gather revoke records, write the copies not revoked), then marks the log empty.
    /// Only transactions whose commit block was written count; a scan stops at the first block
    /// whose header is missing or carries another sequence number.
    func recover() throws(FSError) -> Recovery {
        var recovery = Recovery()
        guard holdsTransactions else { return recovery }
        let unsupported = superblock.unsupportedFeatures
        guard unsupported.isEmpty else {
            throw FSError(.notSupported, "the journal needs recovery but uses features this implementation does not replay: \(unsupported.joined(separator: ", ")); run e2fsck -fy")
        }
        var committed: [LoggedTransaction] = []
        var current = LoggedTransaction(sequence: superblock.sequence)
        var position = superblock.start
        var walked = 0
        scan: while walked < Int(superblock.maxLength) {
            let block = try readLog(position)
            guard let header = JournalFormat.Header(block), header.sequence == current.sequence else { break }
            walked += 1
            switch header.blockType {
            case JournalFormat.descriptorBlock:
                var offset = JournalFormat.headerSize
                var copyPosition = next(position)
                while offset + JournalFormat.tagSize <= blockSize {
                    let target = block.be32(offset)
                    let flags = block.be32(offset + 4) & 0xFFFF
                    offset += JournalFormat.tagSize
                    if flags & JournalFormat.flagSameUUID == 0 { offset += JournalFormat.uuidSize }
                    current.copies.append((copyPosition, target, flags & JournalFormat.flagEscape != 0))
                    copyPosition = next(copyPosition)
                    walked += 1
                    if flags & JournalFormat.flagLastTag != 0 { break }
                }
                position = copyPosition
                continue scan
            case JournalFormat.commitBlock:
                committed.append(current)
                current = LoggedTransaction(sequence: current.sequence &+ 1)
            case JournalFormat.revokeBlock:
                // r_count: bytes used in the block, the 16-byte revoke header included.
                let used = min(Int(block.be32(12)), blockSize)
                var offset = 16
                while offset + 4 <= used {
                    current.revoked.append(block.be32(offset))
                    offset += 4
                }
            default:
                break scan
            }
            position = next(position)
        }

        // A revoke in transaction R cancels copies of that block in transactions up to R.
        var revokedUpTo: [UInt32: UInt32] = [:]
        for transaction in committed {
            for block in transaction.revoked { revokedUpTo[block] = transaction.sequence }
        }
        // Every target checked before anything is written: a damaged log is refused whole,
        // never half replayed.
        for transaction in committed {
            if let copy = transaction.copies.first(where: { $0.block >= fileSystemBlocks }) {
                throw FSError.corrupted("journal transaction \(transaction.sequence) names block \(copy.block), outside the file system (\(fileSystemBlocks) blocks); run e2fsck -fy")
            }
        }
        for transaction in committed {
            for copy in transaction.copies {
                // Sequence numbers wrap: compare by their difference, as jbd2's tid_gt does.
                if let upTo = revokedUpTo[copy.block], Int32(bitPattern: transaction.sequence &- upTo) <= 0 {
                    recovery.blocksRevoked += 1
                    continue
                }
                var bytes = try readLog(copy.position)
                if copy.escaped { bytes.setBE32(0, JournalFormat.magic) }
                try Ext2FileSystem.writeBytes(store, at: UInt64(copy.block) * UInt64(blockSize), bytes)
                recovery.blocksReplayed += 1
            }
            recovery.transactions += 1
        }
        if let first = committed.first, let last = committed.last { recovery.sequences = first.sequence...last.sequence }
        try store.flush()
        // The next transaction gets a number past any the log has seen, as jbd2 does, so stale
        // blocks of an unfinished transaction can never pass for a new one's.
        superblock.sequence = current.sequence &+ 1
        try markEmpty()
        return recovery
    }
}
