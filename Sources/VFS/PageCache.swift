import VFSCore

/// A write-back page cache: a `BlockStore` in front of a `BlockStore`, so a file system mounted
/// on it reads and writes memory, and the device sees I/O only on a miss, a write-back or an
/// eviction.
///
/// - A fixed pool of `pageCount` pages is allocated once; the page map's capacity is reserved
///   up front, so a read or write through the cache allocates nothing.
/// - Replacement is least-recently-used (an intrusive doubly linked list over slot indices).
/// - Writes mark pages dirty; dirty pages reach the backing store on `writeBack()` (the server
///   calls it periodically), on `flush()` (fsync, sync, unmount: write-back then the backing
///   store's flush) or when an eviction needs the slot. Runs of consecutive dirty pages go out
///   as one write.
/// - Read-ahead: a miss on the page after the previous miss is taken as a sequential read, and
///   up to `readAheadPages` following pages are loaded with the same backing read (Linux's
///   ondemand readahead does the same on a larger scale).
/// - Direct page I/O: on a backing store that is `DirectPageIO` (storage_server), the pool lives
///   in memory the store provides (registered with the server for the device's DMA) and misses,
///   read-ahead, write-back and evictions name pages by their offset in the pool: no staging
///   area, no copy between the cache and the device. Runs of consecutive pages in consecutive
///   slots still go out as one request; a run whose slots are scattered is split where they are.
public final class PageCache: BlockStore {
    public let backing: BlockStore
    public let pageSize: Int
    public let pageCount: Int
    public let readAheadPages: Int
    public var sectorSize: Int { backing.sectorSize }
    public let capacity: UInt64

    // Statistics (tests and the server's log).
    public private(set) var hits = 0
    public private(set) var misses = 0
    public private(set) var pagesReadAhead = 0
    public private(set) var pagesWrittenBack = 0
    public private(set) var evictions = 0
    public private(set) var dirtyPageCount = 0
    /// Backing requests issued for page I/O (either path), for tests and the server's log.
    public private(set) var backingReads = 0
    public private(set) var backingWrites = 0

    /// The backing store as `DirectPageIO` when the pool lives in its memory (nil: copying path).
    private let direct: (any DirectPageIO)?
    /// Whether pages move between the device and the pool with no copy in the cache.
    public var usesDirectPageIO: Bool { direct != nil }
    private let pool: UnsafeMutableRawPointer
    /// Read-ahead and write-back runs are assembled here on the copying path (nil when direct:
    /// pages go straight from and to their slots).
    private let staging: UnsafeMutableRawPointer?
    /// The slots a direct read-ahead run takes (capacity reserved: no allocation per miss).
    private var runSlots: [Int32] = []
    private var pageOfSlot: [UInt64]
    private var dirty: [Bool]
    private var previous: [Int32]
    private var next: [Int32]
    private var mostRecent: Int32 = -1
    private var leastRecent: Int32 = -1
    private var slotOfPage: [UInt64: Int32] = [:]
    private var freeSlots: [Int32]
    private var lastMiss: UInt64 = .max
    private static let noPage = UInt64.max

    /// `pageSize` is rounded up to a multiple of the backing store's sector size. With
    /// `directPageIO` (the default) and a `DirectPageIO` backing store that provides the pool,
    /// page I/O names pool offsets; otherwise the cache owns its pool and copies.
    public init(backing: BlockStore, pageSize: Int = 4096, pageCount: Int = 2048, readAheadPages: Int = 16,
                directPageIO: Bool = true) {
        precondition(pageCount >= 2, "a page cache needs at least two pages")
        let sector = backing.sectorSize
        self.backing = backing
        self.pageSize = (max(pageSize, sector) + sector - 1) / sector * sector
        self.pageCount = pageCount
        self.readAheadPages = max(1, min(readAheadPages, pageCount / 2))
        self.capacity = backing.capacity
        if directPageIO, let store = backing as? any DirectPageIO,
           let provided = store.providePagePool(byteCount: self.pageSize * pageCount) {
            direct = store
            pool = provided
            staging = nil
        } else {
            direct = nil
            pool = .allocate(byteCount: self.pageSize * pageCount, alignment: 4096)
            staging = .allocate(byteCount: self.pageSize * self.readAheadPages, alignment: 4096)
        }
        pageOfSlot = Array(repeating: Self.noPage, count: pageCount)
        dirty = Array(repeating: false, count: pageCount)
        previous = Array(repeating: -1, count: pageCount)
        next = Array(repeating: -1, count: pageCount)
        freeSlots = (0..<Int32(pageCount)).reversed()
        slotOfPage.reserveCapacity(pageCount)
        runSlots.reserveCapacity(self.readAheadPages)
    }

    deinit {
        // A provided pool belongs to the backing store (which outlives us: we hold it).
        if direct == nil { pool.deallocate() }
        staging?.deallocate()
    }

    public var cachedPageCount: Int { slotOfPage.count }

    /// Bytes of page `page` (the last page of a store may be short).
    private func length(of page: UInt64) -> Int {
        Int(min(UInt64(pageSize), capacity - page * UInt64(pageSize)))
    }

    private func bytes(of slot: Int32) -> UnsafeMutableRawPointer { pool + Int(slot) * pageSize }

    /// Reads `page` from the backing store into `slot`; on failure the slot goes back to the
    /// free list (it holds nothing).
    private func load(_ page: UInt64, into slot: Int32) throws(FSError) {
        backingReads += 1
        do throws(FSError) {
            if let direct {
                try direct.readPages(at: page * UInt64(pageSize), poolOffset: Int(slot) * pageSize, count: length(of: page))
            } else {
                try backing.read(at: page * UInt64(pageSize), into: UnsafeMutableRawBufferPointer(start: bytes(of: slot), count: length(of: page)))
            }
        } catch {
            freeSlots.append(slot)
            throw error
        }
    }

    /// Writes `count` pages from `page` on, held in consecutive slots from `slot`, with one
    /// backing request (direct path only: the copying path stages runs).
    private func storeDirect(_ direct: any DirectPageIO, _ page: UInt64, from slot: Int32, count: Int) throws(FSError) {
        var bytes = 0
        for index in 0..<count { bytes += length(of: page + UInt64(index)) }
        backingWrites += 1
        try direct.writePages(at: page * UInt64(pageSize), poolOffset: Int(slot) * pageSize, count: bytes)
    }

    // MARK: BlockStore

    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(FSError) {
        try checkRange(offset, buffer.count)
        var done = 0
        while done < buffer.count {
            let position = offset + UInt64(done)
            let page = position / UInt64(pageSize)
            let within = Int(position % UInt64(pageSize))
            let count = min(pageSize - within, buffer.count - done)
            let slot = try slotForReading(page)
            (buffer.baseAddress! + done).copyMemory(from: bytes(of: slot) + within, byteCount: count)
            done += count
        }
    }

    public func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(FSError) {
        try checkRange(offset, buffer.count)
        var done = 0
        while done < buffer.count {
            let position = offset + UInt64(done)
            let page = position / UInt64(pageSize)
            let within = Int(position % UInt64(pageSize))
            let count = min(pageSize - within, buffer.count - done)
            let slot: Int32
            if let cached = slotOfPage[page] {
                hits += 1
                touch(cached)
                slot = cached
            } else if within == 0 && count == length(of: page) {
                // The whole page is overwritten: no need to read it first.
                slot = try takeSlot()
                install(page, in: slot)
            } else {
                misses += 1
                slot = try takeSlot()
                try load(page, into: slot)
                install(page, in: slot)
            }
            (bytes(of: slot) + within).copyMemory(from: buffer.baseAddress! + done, byteCount: count)
            if !dirty[Int(slot)] {
                dirty[Int(slot)] = true
                dirtyPageCount += 1
            }
            done += count
        }
    }

    /// Write-back, then the backing store's flush: everything written is on stable storage.
    public func flush() throws(FSError) {
        try writeBack()
        try backing.flush()
    }

    // MARK: Write-back

    /// Writes every dirty page to the backing store (runs of consecutive pages as one write),
    /// without flushing it. Pages stay cached, clean.
    public func writeBack() throws(FSError) {
        guard dirtyPageCount > 0 else { return }
        var pages: [UInt64] = []
        pages.reserveCapacity(dirtyPageCount)
        for slot in 0..<pageCount where dirty[slot] { pages.append(pageOfSlot[slot]) }
        pages.sort()
        if let direct {
            // Straight from the slots: a request per run of consecutive pages in consecutive
            // slots (no staging limit; the store splits what is too large for one request).
            var index = 0
            while index < pages.count {
                let first = slotOfPage[pages[index]]!
                var run = 1
                while index + run < pages.count, pages[index + run] == pages[index] + UInt64(run),
                      slotOfPage[pages[index + run]]! == first + Int32(run) { run += 1 }
                try storeDirect(direct, pages[index], from: first, count: run)
                for page in pages[index..<(index + run)] { dirty[Int(slotOfPage[page]!)] = false }
                dirtyPageCount -= run
                pagesWrittenBack += run
                index += run
            }
            return
        }
        let staging = staging!
        var index = 0
        while index < pages.count {
            var run = 1
            while index + run < pages.count, run < readAheadPages, pages[index + run] == pages[index] + UInt64(run) { run += 1 }
            var bytes = 0
            for page in pages[index..<(index + run)] {
                let slot = slotOfPage[page]!
                let count = length(of: page)
                (staging + bytes).copyMemory(from: self.bytes(of: slot), byteCount: count)
                bytes += count
            }
            backingWrites += 1
            try backing.write(at: pages[index] * UInt64(pageSize), from: UnsafeRawBufferPointer(start: staging, count: bytes))
            for page in pages[index..<(index + run)] {
                dirty[Int(slotOfPage[page]!)] = false
            }
            dirtyPageCount -= run
            pagesWrittenBack += run
            index += run
        }
    }

    /// Drops every clean page (tests: the next reads must come from the backing store).
    public func dropCleanPages() {
        for slot in 0..<Int32(pageCount) where pageOfSlot[Int(slot)] != Self.noPage && !dirty[Int(slot)] {
            slotOfPage[pageOfSlot[Int(slot)]] = nil
            pageOfSlot[Int(slot)] = Self.noPage
            unlink(slot)
            freeSlots.append(slot)
        }
    }

    // MARK: Slots

    private func slotForReading(_ page: UInt64) throws(FSError) -> Int32 {
        if let slot = slotOfPage[page] {
            hits += 1
            touch(slot)
            return slot
        }
        misses += 1
        let sequential = lastMiss != Self.noPage && page == lastMiss + 1
        lastMiss = page
        let pageOffset = page * UInt64(pageSize)
        guard sequential else {
            let slot = try takeSlot()
            try load(page, into: slot)
            install(page, in: slot)
            return slot
        }
        // Sequential: this page and the uncached ones after it, in one read.
        let lastPage = (capacity - 1) / UInt64(pageSize)
        var run = 1
        while run < readAheadPages, page + UInt64(run) <= lastPage, slotOfPage[page + UInt64(run)] == nil { run += 1 }
        if let direct { return try readAheadDirect(direct, page, run: run) }
        let staging = staging!
        var total = 0
        for index in 0..<run { total += length(of: page + UInt64(index)) }
        backingReads += 1
        try backing.read(at: pageOffset, into: UnsafeMutableRawBufferPointer(start: staging, count: total))
        var first: Int32 = -1
        var position = 0
        for index in 0..<run {
            let current = page + UInt64(index)
            let slot = try takeSlot()
            let count = length(of: current)
            bytes(of: slot).copyMemory(from: staging + position, byteCount: count)
            position += count
            install(current, in: slot)
            if index == 0 { first = slot }
        }
        pagesReadAhead += run - 1
        lastMiss = page + UInt64(run - 1)
        // The first page was installed before the others, so it is not the least recent one.
        touch(first)
        return first
    }

    /// Read-ahead straight into the slots: all `run` slots are taken first, then each stretch of
    /// consecutive slots is one read (a fresh or evenly evicted pool hands out consecutive slots,
    /// so a run is usually one request).
    private func readAheadDirect(_ direct: any DirectPageIO, _ page: UInt64, run: Int) throws(FSError) -> Int32 {
        runSlots.removeAll(keepingCapacity: true)
        do throws(FSError) {
            for _ in 0..<run { runSlots.append(try takeSlot()) }
            var start = 0
            while start < run {
                var end = start + 1
                var bytes = length(of: page + UInt64(start))
                while end < run, runSlots[end] == runSlots[end - 1] + 1 {
                    bytes += length(of: page + UInt64(end))
                    end += 1
                }
                backingReads += 1
                try direct.readPages(at: (page + UInt64(start)) * UInt64(pageSize), poolOffset: Int(runSlots[start]) * pageSize, count: bytes)
                start = end
            }
        } catch {
            // Nothing was installed: every slot taken goes back (freeSlots has room for all).
            freeSlots.append(contentsOf: runSlots)
            runSlots.removeAll(keepingCapacity: true)
            throw error
        }
        for index in 0..<run { install(page + UInt64(index), in: runSlots[index]) }
        pagesReadAhead += run - 1
        lastMiss = page + UInt64(run - 1)
        // The first page was installed before the others, so it is not the least recent one.
        touch(runSlots[0])
        return runSlots[0]
    }

    /// A free slot, evicting the least recently used page (written back first if dirty).
    private func takeSlot() throws(FSError) -> Int32 {
        if let slot = freeSlots.popLast() { return slot }
        let victim = leastRecent
        precondition(victim >= 0, "page cache with no pages")
        let page = pageOfSlot[Int(victim)]
        if dirty[Int(victim)] {
            if let direct {
                try storeDirect(direct, page, from: victim, count: 1)
            } else {
                backingWrites += 1
                try backing.write(at: page * UInt64(pageSize), from: UnsafeRawBufferPointer(start: bytes(of: victim), count: length(of: page)))
            }
            dirty[Int(victim)] = false
            dirtyPageCount -= 1
            pagesWrittenBack += 1
        }
        slotOfPage[page] = nil
        pageOfSlot[Int(victim)] = Self.noPage
        unlink(victim)
        evictions += 1
        return victim
    }

    private func install(_ page: UInt64, in slot: Int32) {
        pageOfSlot[Int(slot)] = page
        slotOfPage[page] = slot
        pushFront(slot)
    }

    private func touch(_ slot: Int32) {
        guard mostRecent != slot else { return }
        unlink(slot)
        pushFront(slot)
    }

    private func pushFront(_ slot: Int32) {
        previous[Int(slot)] = -1
        next[Int(slot)] = mostRecent
        if mostRecent >= 0 { previous[Int(mostRecent)] = slot }
        mostRecent = slot
        if leastRecent < 0 { leastRecent = slot }
    }

    private func unlink(_ slot: Int32) {
        let before = previous[Int(slot)], after = next[Int(slot)]
        if before >= 0 { next[Int(before)] = after } else if mostRecent == slot { mostRecent = after }
        if after >= 0 { previous[Int(after)] = before } else if leastRecent == slot { leastRecent = before }
        previous[Int(slot)] = -1
        next[Int(slot)] = -1
    }
}
