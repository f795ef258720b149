import VFSCore

/// A plain ext2 mount with a write-back log: a jbd2-format log (`Journal`) whose blocks live in
/// memory outside the image, which the supervisor creates once per server and hands to every
/// instance (CAP_PAGE_CACHE). The mount then behaves like a journalled one (the running
/// transaction, commits on sync, periodic write-back, unmount and size, `Transaction.swift`),
/// so a crash of the process at any point leaves the image plus the log consistent, and the
/// next mount replays the last commit. Nothing about the image changes: no journal inode, no
/// feature flag, no needs_recovery; the kernel and e2fsprogs see the same plain ext2 as before.
///
/// The log covers a crash of the process only: the memory does not survive a power loss or a
/// reboot (nor does the kernel's ext2 promise anything there).
///
/// The log is block 0 (a jbd2 superblock carrying the file system's UUID) and then the
/// transaction blocks, each block of the memory one log block. An all-zero region is a new log.
extension Ext2FileSystem {
    /// The smallest log this mount uses: the superblock and room for a transaction of a few
    /// operations (the transaction limit is a quarter of the log).
    static let writeBackLogMinimumBlocks = 64

    /// Opens (and replays when it holds a committed transaction) the write-back log in
    /// `logStore` for this read-write plain ext2 mount. A log that is not this file system's
    /// (another UUID or layout), is stale (see below) or is damaged is refused with a line
    /// saying why; then, when the image was cleanly unmounted, nothing in the log can be needed
    /// and a new log starts; otherwise the log may hold the image's last commit, so the mount
    /// goes on read-only (safe: nothing is written over an image that may need that commit, and
    /// the log is kept for inspection) until e2fsck -fy has repaired the image. Returns whether
    /// blocks were replayed.
    func openWriteBackLog(_ logStore: BlockStore) throws(FSError) -> Bool {
        let count = logStore.capacity / UInt64(blockSize)
        let kib = logStore.capacity / 1024
        guard count >= UInt64(Self.writeBackLogMinimumBlocks) else {
            log("ext2: refusing to mount: the write-back log has \(kib) KiB, fewer than \(Self.writeBackLogMinimumBlocks) blocks of \(blockSize) bytes; give it more (servers.conf page_cache_log)")
            throw FSError(.invalidArgument, "write-back log of \(kib) KiB is too small")
        }
        let maxLength = UInt32(min(count, UInt64(UInt32.max)))
        let blocks = Array(0..<maxLength)
        let first = try Self.readBytes(logStore, at: 0, count: blockSize)

        var journal: Journal? = nil
        var refusal: String? = nil
        if first.allSatisfy({ $0 == 0 }) {
            // A region the supervisor just created: nothing was ever logged.
        } else {
            let found = JournalSuperblock(raw: first)
            do throws(FSError) {
                let opened = try Journal(store: store, logStore: logStore, blockSize: blockSize, blocks: blocks,
                                         fileSystemBlocks: geometry.blocksCount, log: log)
                if found.uuid != superblock.uuid {
                    refusal = "it belongs to the file system with UUID \(Self.uuidText(found.uuid)), not this one (\(Self.uuidText(superblock.uuid)))"
                } else if found.maxLength != maxLength {
                    refusal = "it describes a log of \(found.maxLength) blocks in a region of \(maxLength)"
                } else if !found.unsupportedFeatures.isEmpty {
                    refusal = "it uses features this implementation does not write: \(found.unsupportedFeatures.joined(separator: ", "))"
                } else {
                    journal = opened
                }
            } catch {
                refusal = "it is damaged: \(error.detail)"
            }
        }

        // Our mount clears s_state's valid bit and counts itself in s_mnt_count on disk before
        // its first commit. So a log holding a transaction is stale when the image has since
        // been cleanly unmounted (e2fsck -fy, another system) or mounted by anyone else (another
        // mount count): replaying it would write old blocks over newer ones.
        let thisImagesLastMount = UInt32(superblock.mountCount) + 1
        if let opened = journal, opened.holdsTransactions {
            if superblock.state & Superblock.validFS != 0 {
                refusal = "it is stale: it holds a transaction, but the image was cleanly unmounted since"
                journal = nil
            } else if opened.superblock.takenAtMountCount != thisImagesLastMount {
                refusal = "it is stale: it holds a transaction of mount \(Int(opened.superblock.takenAtMountCount) - 1), but the image's last mount is \(superblock.mountCount)"
                journal = nil
            }
        }

        var replayed = false
        if let opened = journal, opened.holdsTransactions {
            do throws(FSError) {
                let recovery = try opened.recover()
                log("ext2: write-back log: replayed \(recovery.blocksReplayed) blocks of \(recovery.transactions) committed transactions")
                try reloadAfterReplay()
                replayed = true
            } catch {
                refusal = "its replay failed: \(error.detail)"
                journal = nil
            }
        }
        if let refusal {
            guard superblock.state & Superblock.validFS != 0 else {
                log("ext2: write-back log refused: \(refusal); the image was not cleanly unmounted and the log may hold its last commit: mounting read-only; run `e2fsck -fy` on the image, then restart")
                isReadOnly = true
                return false
            }
            log("ext2: write-back log refused: \(refusal); the image was cleanly unmounted, so nothing in the log is needed: starting a new log")
        }
        if journal == nil {
            let empty = JournalSuperblock.empty(blockSize: blockSize, maxLength: maxLength, uuid: superblock.uuid)
            try Self.writeBytes(logStore, at: 0, empty.raw)
            journal = try Journal(store: store, logStore: logStore, blockSize: blockSize, blocks: blocks,
                                  fileSystemBlocks: geometry.blocksCount, log: log)
        }
        // This mount writes s_mnt_count one higher (Ext2FileSystem.init).
        journal!.superblock.takenAtMountCount = UInt32(superblock.mountCount &+ 1) + 1
        try journal!.markEmpty()
        log("ext2: write-back log in supervisor-held memory (\(kib) KiB): a crash of vfs_server keeps the image consistent")
        self.journal = journal
        try adoptOrphans()
        return replayed
    }

    /// A read-only mount does not replay (replaying writes the image): when the log holds a
    /// transaction for this file system, the mount says that what it serves may be missing the
    /// last commit and how to apply it.
    func noteUnreplayedWriteBackLog(_ logStore: BlockStore) {
        guard logStore.capacity >= UInt64(blockSize),
              let first = try? Self.readBytes(logStore, at: 0, count: blockSize), !first.allSatisfy({ $0 == 0 }) else { return }
        let found = JournalSuperblock(raw: first)
        guard found.uuid == superblock.uuid, found.start != 0 else { return }
        log("ext2: the write-back log holds a transaction not yet replayed: this read-only mount serves the image without it (and may see it inconsistent); mount it read-write once to replay it")
    }

    static func uuidText(_ bytes: ArraySlice<UInt8>) -> String {
        bytes.enumerated().map { index, byte in
            ([4, 6, 8, 10].contains(index) ? "-" : "") + (byte < 16 ? "0" : "") + String(byte, radix: 16)
        }.joined()
    }
}
