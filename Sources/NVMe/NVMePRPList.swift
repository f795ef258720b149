/// Physical Region Page entries for one command (NVMe Base 2.0 section 4.1.1 / 4.3, "Physical
/// Region Page Entry and List"): PRP1 is the data's first address and may carry an offset into
/// its page; if the data ends within PRP1's page PRP2 is unused, if it ends within the next
/// page PRP2 is that page, otherwise PRP2 points to a PRP list of page-aligned entries. A list
/// that does not fit in one page continues in another: the last entry of a full list page
/// then points to the next list page (and only then; a final single entry is data).
///
/// The list is written into memory the caller owns (an I/O queue preallocates it per command
/// slot), so building PRPs allocates nothing.
public struct NVMePRP: Equatable, Sendable {
    public var prp1: UInt64
    public var prp2: UInt64
    /// List pages written (0 when PRP2 is unused or a data page).
    public var listPages: Int

    public init(prp1: UInt64, prp2: UInt64, listPages: Int) {
        self.prp1 = prp1
        self.prp2 = prp2
        self.listPages = listPages
    }

    /// Entries in one list page.
    @inline(__always)
    static func entriesPerPage(_ pageSize: Int) -> Int { pageSize / 8 }

    /// Number of list pages a transfer of `length` bytes starting at page offset `offset` needs.
    public static func listPagesNeeded(length: Int, offset: Int, pageSize: Int = 4096) -> Int {
        let first = pageSize - offset % pageSize
        guard length > first else { return 0 }
        let remaining = length - first
        guard remaining > pageSize else { return 0 }
        var entries = (remaining + pageSize - 1) / pageSize
        let perPage = entriesPerPage(pageSize)
        var pages = 1
        while entries > perPage {
            entries -= perPage - 1
            pages += 1
        }
        return pages
    }

    /// The most list pages any transfer of up to `maximumTransfer` bytes needs, at any offset.
    public static func listPagesForMaximum(_ maximumTransfer: Int, pageSize: Int = 4096) -> Int {
        max(1, listPagesNeeded(length: maximumTransfer, offset: 4, pageSize: pageSize),
            listPagesNeeded(length: maximumTransfer, offset: 0, pageSize: pageSize))
    }

    /// Builds the PRPs for `length` bytes at device address `data` (contiguous in the device's
    /// address space). List pages go to `list` / `listDeviceAddress`, page aligned, up to
    /// `listCapacity` pages. Returns nil if the list would need more pages than that.
    /// `data` must be dword aligned (section 4.3: PRP1 bits 1:0 are zero).
    @inline(__always)
    public static func build(data: UInt64, length: Int, pageSize: Int = 4096,
                             list: UnsafeMutableRawPointer?, listDeviceAddress: UInt64, listCapacity: Int) -> NVMePRP? {
        precondition(length > 0 && data & 3 == 0, "PRP data must be non-empty and dword aligned")
        let mask = UInt64(pageSize - 1)
        let first = pageSize - Int(data & mask)
        if length <= first { return NVMePRP(prp1: data, prp2: 0, listPages: 0) }
        let second = (data & ~mask) &+ UInt64(pageSize)
        var remaining = length - first
        if remaining <= pageSize { return NVMePRP(prp1: data, prp2: second, listPages: 0) }
        guard let list, listDeviceAddress & mask == 0 else { return nil }
        let perPage = entriesPerPage(pageSize)
        var entries = (remaining + pageSize - 1) / pageSize
        var page = 0
        var next = second
        while true {
            guard page < listCapacity else { return nil }
            let base = list + page * pageSize
            if entries <= perPage {
                for index in 0..<entries {
                    base.storeBytes(of: (next &+ UInt64(index * pageSize)).littleEndian, toByteOffset: index * 8, as: UInt64.self)
                }
                break
            }
            for index in 0..<(perPage - 1) {
                base.storeBytes(of: (next &+ UInt64(index * pageSize)).littleEndian, toByteOffset: index * 8, as: UInt64.self)
            }
            next &+= UInt64((perPage - 1) * pageSize)
            entries -= perPage - 1
            remaining -= (perPage - 1) * pageSize
            page += 1
            let chain = listDeviceAddress &+ UInt64(page * pageSize)
            base.storeBytes(of: chain.littleEndian, toByteOffset: (perPage - 1) * 8, as: UInt64.self)
        }
        return NVMePRP(prp1: data, prp2: listDeviceAddress, listPages: page + 1)
    }
}
