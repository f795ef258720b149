import CLimitless
import IPC
#if canImport(Glibc)
import Glibc
#endif

/// The live-server fuzz: one IPCServer in a temporary runtime directory, a fuzzing client on a
/// raw SOCK_SEQPACKET socket, and a well-behaved IPCClient pinging throughout.
struct ServerFuzz {
    let seed: UInt64
    let directory: String
    let server: IPCServer
    let generator = DatagramGenerator()
    let receiveBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Message.maxDatagramSize + 64, alignment: 16)
    /// Descriptors attached to some datagrams: sealed memfds (writable or write-sealed), an
    /// unsealed memfd, /dev/null. The server gets duplicates; these stay ours.
    var attachments: [Int32] = []
    var fuzzFD: Int32 = -1
    var outstanding = 0
    var sent = 0, replies = 0, reconnects = 0, pings = 0, withDescriptors = 0, busy = 0
    var statuses: [Int32: Int] = [:]

    init(seed: UInt64) throws {
        self.seed = seed
        var template = Array("/tmp/limitless-fuzz-XXXXXX".utf8CString)
        directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        // The handler reads all the data it is given (inline or shared) and echoes up to 64 bytes.
        server = try IPCServer(name: "fuzz", directory: directory) { request, payload, _ in
            var sum: UInt64 = 0
            for byte in payload.data { sum &+= UInt64(byte) }
            let echo = min(64, payload.data.count)
            for index in 0..<echo { payload.reply[index] = payload.data[index] }
            if let writable = payload.writableData, !writable.isEmpty { writable[0] = writable[0] &+ 1 }
            return IPCReply(param1: sum, param2: UInt64(payload.data.count), param3: UInt64(request.type.rawValue), payloadCount: echo)
        }
    }

    static func openDescriptorCount() -> Int {
        guard let dir = opendir("/proc/self/fd") else { return -1 }
        defer { closedir(dir) }
        var count = 0
        while readdir(dir) != nil { count += 1 }
        return count
    }

    static func memfd(size: Int, seals: Int32) -> Int32 {
        let fd = CL_memfd_create("fuzz", CL_MFD_CLOEXEC | CL_MFD_ALLOW_SEALING)
        precondition(fd >= 0, "memfd_create failed")
        ftruncate(fd, off_t(size))
        if seals != 0 { _ = CL_fcntl_int(fd, CL_F_ADD_SEALS, seals) }
        return fd
    }

    func waitUntil(seconds: Double, _ condition: () -> Bool) -> Bool {
        let end = monotonicSeconds() + seconds
        while !condition() {
            if monotonicSeconds() > end { return false }
            usleep(10_000)
        }
        return true
    }

    mutating func connectFuzzer() -> Bool {
        if fuzzFD >= 0 { close(fuzzFD) }
        fuzzFD = socket(AF_UNIX, CL_SOCK_SEQPACKET | CL_SOCK_CLOEXEC | CL_SOCK_NONBLOCK, 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let path = Array(server.endpoint.socketPath.utf8)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: path)
            raw[path.count] = 0
        }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fuzzFD, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        return result == 0 || CL_errno() == EINPROGRESS || CL_errno() == EAGAIN
    }

    /// Reads every reply waiting (up to `wait` ms for the first). Returns false on a violation;
    /// reconnects when the server dropped us.
    mutating func drain(wait: Int32) -> Bool {
        var first = true
        while true {
            var entry = pollfd(fd: fuzzFD, events: Int16(POLLIN), revents: 0)
            if poll(&entry, 1, first ? wait : 0) <= 0 { return true }
            first = false
            var fds: (Int32, Int32) = (-1, -1)
            var fdCount: Int32 = 0, flags: Int32 = 0
            let count = withUnsafeMutableBytes(of: &fds) { raw in
                CL_ipc_recv(fuzzFD, receiveBuffer.baseAddress, receiveBuffer.count, raw.baseAddress!.assumingMemoryBound(to: Int32.self),
                            2, &fdCount, &flags, CL_MSG_DONTWAIT)
            }
            if fdCount > 0 {
                print("VIOLATION: the server sent \(fdCount) descriptor(s) in a reply")
                return false
            }
            if count < 0 {
                let code = CL_errno()
                if code == EAGAIN || code == EINTR { return true }
                reconnects += 1
                outstanding = 0
                return connectFuzzer()
            }
            if count == 0 {
                outstanding = 0
                reconnects += 1
                return connectFuzzer()
            }
            let reply = UnsafeRawBufferPointer(start: receiveBuffer.baseAddress, count: count)
            guard let message = try? Message.decode(reply), message.flags.contains(.reply) else {
                print("VIOLATION: a reply from the server does not decode as a reply: \(hex(UnsafeRawBufferPointer(rebasing: reply[0..<min(64, count)])))")
                return false
            }
            if message.status == .EBUSY { busy += 1 }
            statuses[message.status.rawValue, default: 0] += 1
            replies += 1
            outstanding = max(0, outstanding - 1)
        }
    }

    /// Sends one datagram; on a full socket drains replies and retries; reconnects when dropped.
    mutating func send(_ length: Int, descriptors: [Int32]) -> Bool {
        for _ in 0..<1000 {
            let result = descriptors.withUnsafeBufferPointer { fds in
                CL_ipc_send(fuzzFD, generator.buffer.baseAddress, length, nil, 0, fds.baseAddress, Int32(fds.count),
                            CL_MSG_DONTWAIT | CL_MSG_NOSIGNAL)
            }
            if result >= 0 {
                outstanding += 1
                return true
            }
            let code = CL_errno()
            switch code {
            case EAGAIN, ENOBUFS, EINTR:
                if !drain(wait: 100) { return false }
            case EMSGSIZE:
                return true  // over the socket's own limit: nothing sent, nothing to answer
            case EPIPE, ECONNRESET, ENOTCONN, ECONNREFUSED:
                reconnects += 1
                outstanding = 0
                if !connectFuzzer() { return false }
            default:
                print("VIOLATION: sendmsg failed with errno \(code)")
                return false
            }
        }
        print("VIOLATION: the server took no datagram for 1000 attempts")
        return false
    }

    mutating func run(count: Int, pingEvery: Int, duration: Double?) -> Bool {
        defer { cleanUp() }
        server.start()
        print("limitless-fuzz server: seed \(seed), \(count) datagrams, server at \(server.endpoint.socketPath)")
        attachments = [Self.memfd(size: 4096, seals: CL_F_SEAL_SHRINK | CL_F_SEAL_GROW),
                       Self.memfd(size: 65536, seals: CL_F_SEAL_SHRINK | CL_F_SEAL_GROW | CL_F_SEAL_WRITE),
                       Self.memfd(size: 4096, seals: 0),
                       Self.memfd(size: 0, seals: CL_F_SEAL_SHRINK),
                       open("/dev/null", O_RDWR | O_CLOEXEC)]
        // Warm up (the server's first-connection allocations), then take the baseline.
        do {
            let warm = try IPCClient.connect(name: "fuzz", directory: directory)
            _ = try warm.sendReceive(Message(type: .ipcPing), timeout: .seconds(5))
        } catch {
            print("VIOLATION: warm-up ping failed: \(error)")
            return false
        }
        guard waitUntil(seconds: 5, { server.connectionCount == 0 }) else { print("VIOLATION: warm-up connection not freed"); return false }
        let baseline = Self.openDescriptorCount()
        let start = monotonicSeconds()
        let deadline = duration.map { start + $0 } ?? .infinity
        do {
            let pinger: IPCClient
            do { pinger = try IPCClient.connect(name: "fuzz", directory: directory) } catch {
                print("VIOLATION: could not connect the pinging client: \(error)")
                return false
            }
            guard connectFuzzer() else { print("VIOLATION: could not connect the fuzzing client"); return false }
            while sent < count {
                var random = SplitMix64(seed: seed, iteration: UInt64(sent))
                var length: Int
                var descriptors: [Int32] = []
                if random.chance(10) {
                    // A share: MSG_IPC_SHARE with one descriptor (sometimes two, or an unsuitable one).
                    length = generator.valid(&random, requestsOnly: true)
                    generator.store32(MessageType.ipcShare.rawValue, at: 0)
                    descriptors = [random.pick(attachments)]
                    if random.chance(10) { descriptors.append(random.pick(attachments)) }
                    if random.chance(20) { length = Message.headerSize }
                } else if random.chance(40) {
                    length = generator.valid(&random, requestsOnly: true)  // served: keeps the connection alive
                    if random.chance(10) { generator.store32(MessageType.ipcRelease.rawValue, at: 0) }
                } else {
                    let strategy = Strategy(rawValue: random.below(Strategy.allCases.count))!
                    length = generator.generate(strategy, &random)
                    if random.chance(3) { descriptors = [random.pick(attachments)] }
                }
                if !descriptors.isEmpty { withDescriptors += 1 }
                guard send(length, descriptors: descriptors) else { return false }
                sent += 1
                // Mostly stay under the server's queue depth (16) so most datagrams reach the decoder;
                // now and then let it overflow (EBUSY replies).
                if outstanding >= ((sent / 500) % 10 == 9 ? 64 : 8) { guard drain(wait: 100) else { return false } }
                if sent % pingEvery == 0 {
                    do {
                        let reply = try pinger.sendReceive(Message(type: .ipcPing), timeout: .seconds(5))
                        guard reply.status == .ok else { print("VIOLATION: ping answered \(reply.status)"); return false }
                        pings += 1
                    } catch {
                        print("VIOLATION: the well-behaved client's ping failed after \(sent) datagrams: \(error)")
                        return false
                    }
                    if monotonicSeconds() >= deadline { break }
                }
            }
            guard drain(wait: 200) else { return false }
            close(fuzzFD)
            fuzzFD = -1
        }
        let elapsed = monotonicSeconds() - start
        let settled = waitUntil(seconds: 10) {
            server.connectionCount == 0 && server.sharedRegionCount == 0 && Self.openDescriptorCount() == baseline
        }
        print("datagrams: \(sent) in \(Double(Int(elapsed * 100)) / 100) s (\(formatRate(sent, elapsed))), "
            + "\(withDescriptors) with descriptors; replies \(replies) (EBUSY \(busy)); reconnects \(reconnects); pings \(pings) ok")
        print("reply statuses: " + statuses.keys.sorted().map { "\(IPCStatus(rawValue: $0)) \(statuses[$0]!)" }.joined(separator: ", "))
        print("after: connections \(server.connectionCount), shared regions \(server.sharedRegionCount), "
            + "descriptors \(Self.openDescriptorCount()) (baseline \(baseline))")
        guard settled else {
            print("VIOLATION: the server did not return to its baseline (seed \(seed))")
            return false
        }
        print("violations: 0")
        return true
    }

    func cleanUp() {
        if fuzzFD >= 0 { close(fuzzFD) }
        server.stop()
        for fd in attachments { close(fd) }
        generator.deallocate()
        receiveBuffer.deallocate()
        rmdir(directory)
    }
}
