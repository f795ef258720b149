import IPC

/// SplitMix64: small, fast, and every iteration's generator can be rebuilt from (seed, iteration),
/// so any failing input is reproducible alone (`--first-iteration I --iterations 1`).
struct SplitMix64 {
    var state: UInt64

    init(seed: UInt64, iteration: UInt64 = 0) {
        state = seed ^ (iteration &* 0x9E37_79B9_7F4A_7C15)
        _ = next()
    }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in 0..<bound (bound > 0).
    mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }
    mutating func chance(_ percent: Int) -> Bool { below(100) < percent }
    mutating func pick<T>(_ values: [T]) -> T { values[below(values.count)] }
}

/// How an input was made (reported per strategy, and in a reproducer).
enum Strategy: Int, CaseIterable, CustomStringConvertible {
    case valid, fieldMutation, bitFlips, truncation, extension_, randomLength, randomDataRange, randomFlagsAndHandle,
         interestingValues, pureRandom

    var description: String {
        switch self {
        case .valid: "valid"
        case .fieldMutation: "field-mutation"
        case .bitFlips: "bit-flips"
        case .truncation: "truncation"
        case .extension_: "extension"
        case .randomLength: "random-length"
        case .randomDataRange: "random-data-range"
        case .randomFlagsAndHandle: "random-flags-handle"
        case .interestingValues: "interesting-values"
        case .pureRandom: "pure-random"
        }
    }
}

/// Structure-aware generation of datagrams for `Message.decode` and for a live server: valid
/// headers (every registered type, inline or shared data, requests and replies), then mutated
/// field by field and bit by bit, cut, extended, given random lengths, data ranges, flags and
/// handles; plus pure random bytes.
struct DatagramGenerator {
    /// Room for the largest legal datagram plus some bytes past it (oversized inputs).
    static let capacity = Message.maxDatagramSize + 512
    let buffer: UnsafeMutableRawBufferPointer

    /// Registered types plus near misses (the oracle has its own list; this one only steers).
    static let types: [UInt32] = [0x1, 0x2, 0x3, 0x4, 0x100, 0x101, 0x102, 0x103, 0x104, 0x105, 0x106, 0x107,
                                  0x200, 0x201, 0x202, 0x203, 0x204, 0x205, 0x300, 0x301, 0x302, 0x303, 0x304, 0x305,
                                  0x400, 0x401, 0x402, 0x403, 0x404, 0x500, 0x501, 0x502, 0x503, 0x504, 0x505]
    static let nearMissTypes: [UInt32] = [0, 0x5, 0xFF, 0x108, 0x1FF, 0x206, 0x306, 0x405, 0x506, 0x600, 0x7777,
                                          0xFFFF_FFFF, 0x8000_0104, 0x0001_0104]
    static let interesting32: [UInt32] = [0, 1, 2, 3, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x1_0000, 0x1_0001, 0x7FFF_FFFF,
                                          0x8000_0000, 0xFFFF_FFFE, 0xFFFF_FFFF]
    static let interesting64: [UInt64] = [0, 1, 0x40, 0xFFFF, 0x1_0000, 0x1_0001, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF,
                                          0x1_0000_0000, 0x1_0000_0001, 0x7FFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0000,
                                          0xFFFF_FFFF_FFFF_FFFE, 0xFFFF_FFFF_FFFF_FFFF]
    /// Field offsets and widths in the header.
    static let fields: [(offset: Int, width: Int)] = [(0, 4), (4, 4), (8, 4), (12, 4), (16, 4), (20, 4), (24, 8), (32, 8),
                                                      (40, 8), (48, 8), (56, 4), (60, 4)]

    init() {
        buffer = .allocate(byteCount: Self.capacity, alignment: 16)
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
    }

    func deallocate() { buffer.deallocate() }

    func store32(_ value: UInt32, at offset: Int) { buffer.storeBytes(of: value.littleEndian, toByteOffset: offset, as: UInt32.self) }
    func store64(_ value: UInt64, at offset: Int) { buffer.storeBytes(of: value.littleEndian, toByteOffset: offset, as: UInt64.self) }
    func load32(at offset: Int) -> UInt32 { UInt32(littleEndian: buffer.loadUnaligned(fromByteOffset: offset, as: UInt32.self)) }

    /// A payload length: mostly small, sometimes around the limit.
    func payloadLength(_ random: inout SplitMix64) -> Int {
        switch random.below(100) {
        case 0..<60: return random.below(65)
        case 60..<90: return random.below(1025)
        case 90..<97: return random.below(Message.maxInlinePayload + 1)
        default: return Message.maxInlinePayload - random.below(4)
        }
    }

    /// Writes a valid datagram (one `Message.decode` must accept); returns its length.
    /// `requestsOnly`: no reply flag, status 0 (what a server should take).
    func valid(_ random: inout SplitMix64, requestsOnly: Bool = false) -> Int {
        let payload = payloadLength(&random)
        var flags: MessageFlags = []
        if !requestsOnly && random.chance(20) { flags.insert(.reply) }
        let shared = random.chance(25)
        var message = Message(type: MessageType(rawValue: random.pick(Self.types)), flags: flags,
                              param1: random.next(), param2: random.next(), param3: random.next(),
                              sequence: UInt32(truncatingIfNeeded: random.next()),
                              status: flags.contains(.reply) ? IPCStatus(rawValue: Int32(truncatingIfNeeded: random.next() % 200)) : .ok,
                              senderPID: random.chance(50) ? 0 : Int32(truncatingIfNeeded: random.next()),
                              senderUID: random.chance(50) ? 0 : UInt32(truncatingIfNeeded: random.next()),
                              senderGID: random.chance(50) ? 0 : UInt32(truncatingIfNeeded: random.next()))
        if shared {
            let handle = random.chance(70) ? UInt32(1 + random.below(8)) : max(1, UInt32(truncatingIfNeeded: random.next()))
            message.setSharedData(handle: handle, offset: random.chance(50) ? 0 : UInt32(truncatingIfNeeded: random.next() % 8192),
                                  count: UInt32(truncatingIfNeeded: random.chance(50) ? random.next() % 4097 : random.next()))
        } else if payload > 0 {
            let offset = random.below(payload + 1)
            message.setInlineData(offset: UInt32(offset), count: UInt32(random.below(payload - offset + 1)))
        }
        message.encode(into: buffer)
        if payload <= 512 {
            for index in 0..<payload { buffer[Message.headerSize + index] = UInt8(truncatingIfNeeded: random.next()) }
        }
        return Message.headerSize + payload
    }

    /// Writes one input by `strategy`; returns its length.
    func generate(_ strategy: Strategy, _ random: inout SplitMix64) -> Int {
        switch strategy {
        case .pureRandom:
            let length = random.chance(95) ? random.below(160) : random.below(Self.capacity + 1)
            var index = 0
            while index < min(length, 1024) {
                let word = random.next()
                for byte in 0..<8 where index + byte < length { buffer[index + byte] = UInt8(truncatingIfNeeded: word >> (8 * byte)) }
                index += 8
            }
            return length
        case .valid:
            return valid(&random)
        default:
            var length = valid(&random)
            let rounds = 1 + random.below(3)
            for round in 0..<rounds {
                length = mutate(round == 0 ? strategy : random.pick(Array(Strategy.allCases.dropFirst().dropLast())), length, &random)
            }
            return length
        }
    }

    private func mutate(_ strategy: Strategy, _ length: Int, _ random: inout SplitMix64) -> Int {
        var length = length
        switch strategy {
        case .fieldMutation:
            let field = random.pick(Self.fields)
            if field.width == 4 { store32(UInt32(truncatingIfNeeded: random.next()), at: field.offset) }
            else { store64(random.next(), at: field.offset) }
        case .interestingValues:
            let field = random.pick(Self.fields)
            let payload = UInt64(max(0, length - Message.headerSize))
            if field.offset == 0 {
                store32(random.chance(50) ? random.pick(Self.nearMissTypes) : random.pick(Self.types), at: 0)
            } else if field.width == 4 {
                let choices = Self.interesting32 + [UInt32(truncatingIfNeeded: payload), UInt32(truncatingIfNeeded: payload &+ 1),
                                                    UInt32(truncatingIfNeeded: payload &- 1)]
                store32(random.pick(choices), at: field.offset)
            } else {
                store64(random.pick(Self.interesting64 + [payload, payload &+ 1, payload &- 1, payload << 32 | 1]), at: field.offset)
            }
        case .bitFlips:
            let span = min(length, Message.headerSize + 8)
            if span > 0 {
                for _ in 0..<(1 + random.below(8)) {
                    let bit = random.below(span * 8)
                    buffer[bit / 8] ^= UInt8(1 << (bit % 8))
                }
            }
        case .truncation:
            if length > 0 { length = random.chance(50) ? random.below(min(length, Message.headerSize + 1)) : random.below(length) }
        case .extension_:
            length = min(Self.capacity, length + 1 + random.below(random.chance(90) ? 128 : 1024))
        case .randomLength:
            switch random.below(4) {
            case 0: length = Message.headerSize - 4 + random.below(9)
            case 1: length = Message.maxDatagramSize - 4 + random.below(9)
            case 2: length = random.below(Self.capacity + 1)
            default: length = random.below(Message.headerSize * 3)
            }
        case .randomDataRange:
            let payload = UInt64(max(0, length - Message.headerSize))
            let offset = random.chance(50) ? UInt64(random.below(Int(payload) + 2)) : random.pick(Self.interesting64)
            let size = random.chance(50) ? UInt32(random.below(Int(payload) + 2)) : random.pick(Self.interesting32)
            if length >= Message.headerSize {
                store64(offset, at: 48)
                store32(size, at: 56)
            }
        case .randomFlagsAndHandle:
            if length >= Message.headerSize {
                store32(random.chance(60) ? UInt32(random.below(4)) : random.pick(Self.interesting32 + [UInt32(truncatingIfNeeded: random.next())]), at: 8)
                let handle: UInt64 = random.chance(30) ? 0 : (random.chance(50) ? UInt64(random.below(10)) : random.next() & 0xFFFF_FFFF)
                store64(UInt64(truncatingIfNeeded: random.next() % 3 == 0 ? random.next() : 0) << 32 | handle, at: 48)
                if random.chance(30) { store32(UInt32(truncatingIfNeeded: random.next() % 300), at: 60) }
            }
        case .valid, .pureRandom:
            break
        }
        return length
    }
}

/// The same bytes as hex (a reproducer).
func hex(_ bytes: UnsafeRawBufferPointer) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var text = [UInt8]()
    text.reserveCapacity(bytes.count * 2)
    for byte in bytes {
        text.append(digits[Int(byte >> 4)])
        text.append(digits[Int(byte & 15)])
    }
    return String(decoding: text, as: UTF8.self)
}

func parseHex(_ text: String) -> [UInt8]? {
    let characters = Array(text.utf8).filter { $0 != 0x20 && $0 != 0x0A }
    guard characters.count % 2 == 0 else { return nil }
    func value(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: c - 0x30
        case 0x61...0x66: c - 0x61 + 10
        case 0x41...0x46: c - 0x41 + 10
        default: nil
        }
    }
    var bytes = [UInt8]()
    var index = 0
    while index < characters.count {
        guard let high = value(characters[index]), let low = value(characters[index + 1]) else { return nil }
        bytes.append(high << 4 | low)
        index += 2
    }
    return bytes
}
