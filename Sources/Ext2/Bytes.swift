/// Little-endian field access on on-disk structures held as byte arrays (every ext2 field is
/// little-endian). Callers pass offsets inside the structure's fixed layout; offsets derived from
/// disk values are checked before they get here.
extension Array where Element == UInt8 {
    @inline(__always) func le16(_ offset: Int) -> UInt16 {
        UInt16(self[offset]) | UInt16(self[offset + 1]) << 8
    }

    @inline(__always) func le32(_ offset: Int) -> UInt32 {
        precondition(offset >= 0 && offset + 4 <= count)
        return withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: UInt32.self)) }
    }

    @inline(__always) mutating func setLE16(_ offset: Int, _ value: UInt16) {
        self[offset] = UInt8(truncatingIfNeeded: value)
        self[offset + 1] = UInt8(truncatingIfNeeded: value >> 8)
    }

    @inline(__always) mutating func setLE32(_ offset: Int, _ value: UInt32) {
        precondition(offset >= 0 && offset + 4 <= count)
        withUnsafeMutableBytes { $0.storeBytes(of: value.littleEndian, toByteOffset: offset, as: UInt32.self) }
    }
}

/// Rounds a directory record length up to ext2's 4-byte alignment (EXT2_DIR_REC_LEN).
@inline(__always) func directoryRecordLength(nameLength: Int) -> Int { (8 + nameLength + 3) & ~3 }

import VFSCore

/// Array-based store access with typed errors (Array's withUnsafeBytes rethrows untyped).
extension BlockStore {
    func read(at offset: UInt64, into bytes: inout [UInt8]) throws(FSError) {
        var failure: FSError? = nil
        bytes.withUnsafeMutableBytes { raw in
            do throws(FSError) { try read(at: offset, into: raw) } catch { failure = error }
        }
        if let failure { throw failure }
    }

    func write(at offset: UInt64, from bytes: [UInt8], range: Range<Int>? = nil) throws(FSError) {
        var failure: FSError? = nil
        bytes.withUnsafeBytes { raw in
            let part = range.map { UnsafeRawBufferPointer(rebasing: raw[$0]) } ?? raw
            do throws(FSError) { try write(at: offset, from: part) } catch { failure = error }
        }
        if let failure { throw failure }
    }
}
