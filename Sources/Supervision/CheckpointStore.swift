import CLimitless
import Glibc
import SystemPackage

/// A server's saved state, kept by the supervisor in a memfd so it survives the server's crash
/// (and never touches a disk). One store per server.
///
/// The memfd holds two slots of equal size, each a `CheckpointHeader` and a payload. A save goes
/// to the slot that does not hold the newest valid checkpoint: its header is cleared, the payload
/// written, and the header (with a sequence number one higher) written last. The newest valid
/// checkpoint therefore stays untouched until the new one is complete; a crash at any point of a
/// save leaves either the old generation or the new one, never a torn mix. `load()` checks both
/// slots and returns the valid one with the higher sequence number.
///
/// The memfd can be handed to the server itself (`fileDescriptor`): it is sealed against shrinking
/// and growing, so a server cannot pull the storage from under the supervisor, and everything a
/// server writes is checked before it is believed.
public final class CheckpointStore {
    public static let defaultCapacity = 8 << 20

    /// The memfd. The store owns it and closes it when released.
    public let fileDescriptor: FileDescriptor
    /// The largest payload a save accepts.
    public let capacity: Int
    /// Bytes per slot: the header and `capacity`, rounded up to whole pages.
    let slotSize: Int
    /// The newest valid checkpoint's slot and sequence, known from the last save or load.
    private var newest: (slot: Int, sequence: UInt64)?

    /// Creates a memfd named `limitless-checkpoint:NAME` (visible in /proc/PID/fd) holding up to
    /// `capacity` bytes of state; untouched pages cost no memory.
    public init(name: String, capacity: Int = CheckpointStore.defaultCapacity) throws(CheckpointError) {
        precondition(capacity > 0, "a checkpoint store needs a positive capacity")
        let slotSize = CheckpointStore.slotSize(capacity: capacity)
        self.fileDescriptor = try SealedMemory.create(name: "limitless-checkpoint:" + name, size: 2 * slotSize)
        self.capacity = capacity
        self.slotSize = slotSize
    }

    /// Takes over an existing checkpoint memfd (one a restarted supervisor got back, or a test's
    /// file), with the capacity it was created with, and finds its newest valid checkpoint.
    public init(adopting fileDescriptor: FileDescriptor, capacity: Int) {
        precondition(capacity > 0, "a checkpoint store needs a positive capacity")
        self.fileDescriptor = fileDescriptor
        self.capacity = capacity
        self.slotSize = CheckpointStore.slotSize(capacity: capacity)
        if case .restored(let checkpoint, _) = try? load() { newest = (checkpoint.slot, checkpoint.sequence) }
    }

    deinit { _ = try? fileDescriptor.close() }

    static func slotSize(capacity: Int) -> Int {
        let page = 4096
        return (CheckpointHeader.size + capacity + page - 1) / page * page
    }

    /// Byte offset of a slot (0 or 1) in the memfd.
    public func slotOffset(_ slot: Int) -> Int { slot * slotSize }

    /// Saves a new generation and returns its sequence number. `stateVersion` is the server's
    /// schema number for `bytes`, returned by `load()` so a newer server can tell an old layout.
    @discardableResult
    public func save(
        _ bytes: UnsafeRawBufferPointer, stateVersion: UInt32, timestamp: Int64 = CheckpointStore.now()
    ) throws(CheckpointError) -> UInt64 {
        guard bytes.count <= capacity else { throw .tooLarge(size: bytes.count, capacity: capacity) }
        let slot = newest.map { 1 - $0.slot } ?? 0
        let sequence = (newest?.sequence ?? 0) + 1
        let offset = Int64(slotOffset(slot))
        let header = CheckpointHeader(
            stateVersion: stateVersion, sequence: sequence, length: UInt64(bytes.count), timestamp: timestamp,
            payloadChecksum: CRC32C.checksum(bytes))
        do {
            // Invalidate first: a crash after this leaves the slot plainly empty, not a stale
            // header over a half-new payload.
            let blank = [UInt8](repeating: 0, count: CheckpointHeader.size)
            _ = try blank.withUnsafeBytes { try fileDescriptor.writeAll(toAbsoluteOffset: offset, $0) }
            _ = try fileDescriptor.writeAll(toAbsoluteOffset: offset + Int64(CheckpointHeader.size), bytes)
            _ = try header.bytes.withUnsafeBytes { try fileDescriptor.writeAll(toAbsoluteOffset: offset, $0) }
        } catch let error as Errno {
            throw .systemCall("writing checkpoint slot \(slot)", error)
        } catch {
            throw .systemCall("writing checkpoint slot \(slot)", .ioError)
        }
        newest = (slot, sequence)
        return sequence
    }

    @discardableResult
    public func save(_ bytes: [UInt8], stateVersion: UInt32, timestamp: Int64 = CheckpointStore.now()) throws(CheckpointError) -> UInt64 {
        // withUnsafeBytes does not carry typed throws through; a Result does.
        let result = bytes.withUnsafeBytes { buffer in
            Result { () throws(CheckpointError) -> UInt64 in try save(buffer, stateVersion: stateVersion, timestamp: timestamp) }
        }
        return try result.get()
    }

    /// The newest valid checkpoint, or why there is none. Damaged slots are reported, never
    /// trusted; a read error of the memfd itself is thrown.
    public func load() throws(CheckpointError) -> CheckpointLoad {
        let fileSize: Int64
        do {
            fileSize = try fileDescriptor.seek(offset: 0, from: .end)
        } catch {
            throw .systemCall("finding the checkpoint memfd's size", error as? Errno ?? .ioError)
        }
        var found: [Checkpoint] = []
        var problems: [CheckpointCorruption] = []
        var emptySlots = 0
        for slot in 0..<2 {
            switch try read(slot: slot, fileSize: fileSize) {
            case .empty: emptySlots += 1
            case .valid(let checkpoint): found.append(checkpoint)
            case .damaged(let reason): problems.append(CheckpointCorruption(slot: slot, reason: reason))
            }
        }
        if let best = found.max(by: { $0.sequence < $1.sequence }) {
            newest = (best.slot, best.sequence)
            return .restored(best, problems: problems)
        }
        newest = nil
        return problems.isEmpty ? .empty : .corrupt(problems)
    }

    private enum SlotContent {
        case empty
        case valid(Checkpoint)
        case damaged(CheckpointCorruption.Reason)
    }

    private func read(slot: Int, fileSize: Int64) throws(CheckpointError) -> SlotContent {
        let offset = Int64(slotOffset(slot))
        let available = max(0, min(Int64(CheckpointHeader.size), fileSize - offset))
        let headerBytes = try read(count: Int(available), at: offset)
        if headerBytes.isEmpty || headerBytes.allSatisfy({ $0 == 0 }) { return .empty }
        let header: CheckpointHeader
        switch CheckpointHeader.decode(headerBytes, capacity: capacity) {
        case .success(let decoded): header = decoded
        case .failure(let reason): return .damaged(reason)
        }
        let payloadOffset = offset + Int64(CheckpointHeader.size)
        let length = Int(header.length)
        guard fileSize - payloadOffset >= Int64(length) else {
            return .damaged(.truncated(needed: length, available: Int(max(0, fileSize - payloadOffset))))
        }
        let payload = try read(count: length, at: payloadOffset)
        let computed = CRC32C.checksum(payload)
        guard computed == header.payloadChecksum else {
            return .damaged(.payloadChecksum(stored: header.payloadChecksum, computed: computed))
        }
        return .valid(Checkpoint(
            stateVersion: header.stateVersion, sequence: header.sequence, timestamp: header.timestamp, bytes: payload, slot: slot))
    }

    private func read(count: Int, at offset: Int64) throws(CheckpointError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var filled = 0
        do {
            while filled < count {
                let got = try bytes.withUnsafeMutableBytes { buffer in
                    try fileDescriptor.read(
                        fromAbsoluteOffset: offset + Int64(filled),
                        into: UnsafeMutableRawBufferPointer(rebasing: buffer[filled...]))
                }
                if got == 0 { break }
                filled += got
            }
        } catch {
            throw .systemCall("reading the checkpoint memfd", error as? Errno ?? .ioError)
        }
        return Array(bytes[..<filled])
    }

    /// Nanoseconds since the Unix epoch.
    public static func now() -> Int64 {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        return Int64(time.tv_sec) * 1_000_000_000 + Int64(time.tv_nsec)
    }

    // <linux/memfd.h> and <linux/fcntl.h> values; the headers need _GNU_SOURCE, which the shim
    // avoids (see CL_memfd_create), and they are fixed kernel ABI.
    static let memfdCloseOnExec: UInt32 = 0x0001
    static let memfdAllowSealing: UInt32 = 0x0002
    static let addSeals: Int32 = 1033  // F_LINUX_SPECIFIC_BASE + 9
    static let sealSeal: Int32 = 0x0001
    static let sealShrink: Int32 = 0x0002
    static let sealGrow: Int32 = 0x0004
}

/// One saved generation.
public struct Checkpoint: Hashable, Sendable {
    public var stateVersion: UInt32
    public var sequence: UInt64
    /// Nanoseconds since the Unix epoch at save.
    public var timestamp: Int64
    public var bytes: [UInt8]
    /// The slot it was read from (0 or 1).
    public var slot: Int
}

/// What `load()` found.
public enum CheckpointLoad: Hashable, Sendable, CustomStringConvertible {
    /// Nothing was ever saved: start fresh, nothing is wrong.
    case empty
    /// The newest valid checkpoint; `problems` are damaged slots that were skipped (an older or
    /// torn generation), worth a log line but not an error.
    case restored(Checkpoint, problems: [CheckpointCorruption])
    /// Saves happened but none survived intact: the server must start fresh.
    case corrupt([CheckpointCorruption])

    public var checkpoint: Checkpoint? {
        if case .restored(let checkpoint, _) = self { return checkpoint }
        return nil
    }

    public var description: String {
        switch self {
        case .empty:
            return "no checkpoint saved yet: starting fresh"
        case .restored(let checkpoint, let problems):
            return "checkpoint \(checkpoint.sequence) (state version \(checkpoint.stateVersion), \(checkpoint.bytes.count) bytes)"
                + (problems.isEmpty ? "" : "; skipped " + problems.map(\.description).joined(separator: "; "))
        case .corrupt(let problems):
            return "corrupt: starting fresh (" + problems.map(\.description).joined(separator: "; ") + ")"
        }
    }
}

/// Why a slot's contents were not believed.
public struct CheckpointCorruption: Hashable, Sendable, CustomStringConvertible {
    public var slot: Int
    public var reason: Reason

    public enum Reason: Error, Hashable, Sendable, CustomStringConvertible {
        case badMagic(found: UInt32)
        case headerChecksum(stored: UInt32, computed: UInt32)
        case unsupportedFormat(version: UInt16, headerSize: UInt16)
        /// The header claims more payload than a slot holds.
        case lengthBeyondSlot(length: UInt64, capacity: Int)
        /// The memfd ends before the header or payload does.
        case truncated(needed: Int, available: Int)
        case payloadChecksum(stored: UInt32, computed: UInt32)

        public var description: String {
            switch self {
            case .badMagic(let found): return "bad magic 0x\(String(found, radix: 16)) (expected \"LMCK\")"
            case .headerChecksum(let stored, let computed):
                return "header checksum 0x\(String(stored, radix: 16)) does not match its contents (0x\(String(computed, radix: 16)))"
            case .unsupportedFormat(let version, let headerSize):
                return "format version \(version) with a \(headerSize)-byte header; this supervisor reads version "
                    + "\(CheckpointHeader.formatVersion) with \(CheckpointHeader.size)"
            case .lengthBeyondSlot(let length, let capacity):
                return "length \(length) is beyond the slot's \(capacity) bytes"
            case .truncated(let needed, let available):
                return "truncated: needs \(needed) bytes, the memfd has \(available)"
            case .payloadChecksum(let stored, let computed):
                return "payload checksum 0x\(String(computed, radix: 16)) does not match the header's 0x\(String(stored, radix: 16)) "
                    + "(a torn or damaged write)"
            }
        }
    }

    public var description: String { "slot \(slot): \(reason)" }
}

public enum CheckpointError: Error, Hashable, Sendable, CustomStringConvertible {
    case tooLarge(size: Int, capacity: Int)
    case systemCall(String, Errno)

    public var description: String {
        switch self {
        case .tooLarge(let size, let capacity):
            return "a checkpoint of \(size) bytes does not fit the store's \(capacity) bytes; save less state, or create "
                + "the store with a larger capacity"
        case .systemCall(let call, let errno):
            return "\(call) failed: \(errno) (errno \(errno.rawValue))"
                + (errno == .noMemory || errno == .noSpace ? "; the machine is short of memory for checkpoints" : "")
        }
    }
}
