/// A fixed number of optional elements allocated once, read and written in place.
///
/// Why not an Array: reading a field of an element (`table[slot]!.fd`) through Array's subscript
/// getter copies the whole element out, retaining every reference it holds, once per access; on
/// `IPCServer`'s per-request path that was dozens of retains per request (HotPathAllocationTests).
/// Here the subscript is an addressor, so the same expression loads just the field.
struct SlotTable<Element>: @unchecked Sendable {
    private let base: UnsafeMutablePointer<Element?>
    let count: Int

    /// `count` empty slots. Call `deallocate()` once when done.
    init(count: Int) {
        self.count = count
        base = .allocate(capacity: count)
        base.initialize(repeating: nil, count: count)
    }

    var indices: Range<Int> { 0..<count }

    subscript(slot: Int) -> Element? {
        unsafeAddress {
            precondition(slot >= 0 && slot < count, "slot out of range")
            return UnsafePointer(base + slot)
        }
        nonmutating unsafeMutableAddress {
            precondition(slot >= 0 && slot < count, "slot out of range")
            return base + slot
        }
    }

    func firstIndex(where predicate: (Element?) -> Bool) -> Int? {
        indices.first { predicate(base[$0]) }
    }

    func deallocate() {
        base.deinitialize(count: count)
        base.deallocate()
    }
}
