import SystemPackage

/// Everything a shared-memory ring can refuse, each with what happened and what to do next.
///
/// The other side of a ring is another process, possibly faulty or hostile: every value read from
/// the shared mapping is checked before it is used, and a value that cannot be right ends in one of
/// these errors, never in a crash or an access outside the mapping.
public enum RingError: Error, Equatable, CustomStringConvertible {
    /// Slot size or capacity the ring cannot be built with.
    case invalidLayout(slotSize: Int, capacity: Int, reason: String)
    /// A message longer than a slot's payload.
    case messageTooLarge(size: Int, limit: Int)
    /// The memory does not start with a ring header (wrong descriptor, or overwritten).
    case badMagic(where: String, found: UInt64)
    /// The header was written by an incompatible version of this code.
    case unsupportedVersion(found: UInt32, supported: UInt32)
    /// A ring header disagrees with the pair header it sits under.
    case headerMismatch(field: String, found: UInt64, expected: UInt64)
    /// The memfd is smaller than its header says the rings need.
    case truncated(size: Int, needed: Int)
    /// The memfd is not sealed against shrinking: the peer could truncate it and turn our next
    /// access into SIGBUS.
    case notSealed(seals: Int32)
    /// Head and tail of a ring cannot both be right: the peer wrote nonsense into shared memory.
    case corruptIndices(ring: String, head: UInt64, tail: UInt64, capacity: Int)
    /// A system call failed in a way no case above describes.
    case systemCall(String, Errno)

    public var description: String {
        switch self {
        case .invalidLayout(let slotSize, let capacity, let reason):
            return "cannot build a ring of \(capacity) slots of \(slotSize) bytes: \(reason)."
        case .messageTooLarge(let size, let limit):
            return "a \(size)-byte message does not fit a ring slot (at most \(limit) bytes of payload): send large data "
                + "through a shared-memory buffer and put its handle in the message, or create the ring with larger slots."
        case .badMagic(let place, let found):
            return "\(place) does not hold a Limitless ring (magic 0x\(String(found, radix: 16))): the descriptor is not a "
                + "ring memfd, or the peer overwrote its header; drop the connection."
        case .unsupportedVersion(let found, let supported):
            return "the ring header has version \(found), this build understands \(supported): run client and server from "
                + "the same build."
        case .headerMismatch(let field, let found, let expected):
            return "the ring header's \(field) is \(found), the pair header says \(expected): the peer corrupted shared "
                + "memory; drop the connection."
        case .truncated(let size, let needed):
            return "the ring memfd has \(size) bytes, its header needs \(needed): the descriptor is not the one the peer "
                + "created, or was truncated; drop the connection."
        case .notSealed(let seals):
            return "the ring memfd is not sealed against shrinking (seals 0x\(String(seals, radix: 16))): a peer could "
                + "truncate it under us; create rings with SharedRingMemory.create, which seals them."
        case .corruptIndices(let ring, let head, let tail, let capacity):
            return "the \(ring) ring's indices are impossible (head \(head), tail \(tail), capacity \(capacity)): the peer "
                + "wrote nonsense into shared memory; treat it as faulty and drop the connection."
        case .systemCall(let call, let errno):
            return "\(call) failed: \(errno) (errno \(errno.rawValue))."
        }
    }
}
