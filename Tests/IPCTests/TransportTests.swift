import PlatformTestSupport
import CLimitless
import XCTest
@testable import IPC
#if canImport(Glibc)
import Glibc
#endif

/// Server and clients over real sockets in a temporary runtime directory; some clients are
/// separate processes (python3, spawned with posix_spawn) that write raw bytes.
final class TransportTests: RuntimeDirectoryTestCase {
    /// Echo-style handler used by most tests: param1 = sender pid, param2 = sender uid,
    /// reply payload = the request's data reversed.
    private static let echo: IPCServer.Handler = { request, payload, _ in
        let count = payload.data.count
        for index in 0..<count { payload.reply[index] = payload.data[count - 1 - index] }
        return IPCReply(param1: UInt64(bitPattern: Int64(request.senderPID)), param2: UInt64(request.senderUID),
                        param3: UInt64(payload.writableData == nil ? 0 : 1), payloadCount: count)
    }

    private func waitUntil(_ condition: () -> Bool, file: StaticString = #filePath, line: UInt = #line) {
        for _ in 0..<500 where !condition() { usleep(10_000) }
        XCTAssertTrue(condition(), "condition not reached within 5 s", file: file, line: line)
    }

    /// Runs `python3 -c code args...`; returns its pid, exit status and standard output.
    private func python(_ code: String, _ arguments: [String]) throws -> (pid: pid_t, status: Int32, output: String) {
        let outputPath = directory + "/python.out"
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        let argv = (["python3", "-c", code] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid = pid_t()
        let result = posix_spawnp(&pid, "python3", &actions, nil, argv, environ)
        guard result == 0 else { throw XCTSkip("python3 not available (posix_spawnp: \(result))") }
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        let fd = open(outputPath, O_RDONLY)
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: 4096)
        let count = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        return (pid, status, String(decoding: bytes[..<max(0, count)], as: UTF8.self))
    }

    private func sealedMemory(_ contents: [UInt8]) throws -> SharedMemory {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: contents.count, alignment: 8)
        defer { buffer.deallocate() }
        buffer.copyBytes(from: contents)
        return try SharedMemory(sealedCopyOf: UnsafeRawBufferPointer(buffer))
    }

    private func bytes(_ message: Message, payload: [UInt8] = []) -> [UInt8] {
        var header = [UInt8](repeating: 0, count: Message.headerSize)
        header.withUnsafeMutableBytes { message.encode(into: $0) }
        return header + payload
    }

    // MARK: Basic calls

    func testSynchronousAsynchronousAndBatchedCallsInOneProcess() throws {
        let server = try IPCServer(name: "vfs", directory: directory, handler: Self.echo)
        server.start()
        defer { server.stop() }
        let client = try IPCClient.connect(name: "vfs", directory: directory)

        var request = Message(type: .vfsWrite)
        request.setInlineData(offset: 1, count: 3)
        let payload: [UInt8] = [0, 1, 2, 3, 4]
        let reply = try payload.withUnsafeBytes { try client.sendReceive(request, payload: $0) }
        XCTAssertEqual(reply.status, .ok)
        XCTAssertTrue(reply.message.flags.contains(.reply))
        XCTAssertEqual(reply.message.type, .vfsWrite)
        XCTAssertEqual(reply.payload, [3, 2, 1])
        XCTAssertEqual(Int32(truncatingIfNeeded: reply.message.param1), getpid())
        XCTAssertEqual(reply.message.param2, UInt64(getuid()))

        let first = try client.send(Message(type: .vfsStat))
        let second = try client.send(Message(type: .vfsClose))
        XCTAssertEqual(try client.receive(timeout: .seconds(5)).sequence, first)
        XCTAssertEqual(try client.receive(timeout: .seconds(5)).sequence, second)

        // A batch larger than the queue: every request gets exactly one reply, OK or EBUSY (busy
        // replies go out at once and may overtake queued ones: match by sequence).
        let sequences = try client.sendBatch((0..<100).map { _ in Message(type: .ipcPing) })
        var seen: [UInt32: IPCStatus] = [:]
        for _ in sequences {
            let reply = try client.receive(timeout: .seconds(5))
            XCTAssertNil(seen[reply.sequence])
            seen[reply.sequence] = reply.status
        }
        XCTAssertEqual(Set(seen.keys), Set(sequences))
        XCTAssertTrue(seen.values.allSatisfy { $0 == .ok || $0 == .EBUSY })
        XCTAssertEqual(seen[sequences[0]], .ok)

        XCTAssertThrowsError(try client.receive(timeout: .milliseconds(50))) {
            guard case .timedOut = $0 as? IPCError else { return XCTFail("expected a timeout, got \($0)") }
        }
        XCTAssertThrowsError(try IPCClient.connect(name: "nobody", directory: directory)) {
            XCTAssertEqual($0 as? IPCError, .serverNotFound(name: "nobody", directory: directory))
        }
    }

    func testClientFindsServerByPIDThroughTheRegistry() throws {
        let server = try IPCServer(name: "power", directory: directory, handler: Self.echo)
        server.start()
        defer { server.stop() }
        let client = try IPCClient.connect(pid: getpid(), directory: directory)
        XCTAssertEqual(client.endpoint.name, "power")
        XCTAssertEqual(try client.sendReceive(Message(type: .ipcPing)).status, .ok)
        XCTAssertThrowsError(try IPCClient.connect(pid: 999_999, directory: directory))
        XCTAssertThrowsError(try IPCServer(name: "power", directory: directory, handler: Self.echo)) {
            XCTAssertEqual($0 as? IPCError, .addressInUse(directory + "/power.sock"))
        }
    }

    // MARK: Separate processes

    func testForgedSenderFieldsFromAnotherProcessAreReplacedByTheKernelsWord() throws {
        let server = try IPCServer(name: "vfs", directory: directory, handler: Self.echo)
        server.start()
        defer { server.stop() }
        let code = """
        import socket, struct, sys, os
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); s.connect(sys.argv[1])
        s.send(struct.pack('<IiIIIIQQQQIi', 0x104, 1, 0, 0, 0, 42, 0, 0, 0, 0, 0, 0))
        r = s.recv(70000)
        t, pid, fl, uid, gid, seq, p1, p2, p3, dp, ds, st = struct.unpack('<IiIIIIQQQQIi', r[:64])
        print(os.getpid(), p1, p2, st, seq)
        """
        let (pid, status, output) = try python(code, [directory + "/vfs.sock"])
        XCTAssertEqual(status, 0, output)
        let fields = output.split(separator: " ").map { Int64($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        XCTAssertEqual(fields.count, 5, output)
        XCTAssertEqual(fields[0], Int64(pid))
        XCTAssertEqual(fields[1], Int64(pid), "the handler saw the real pid, not the forged 1")
        XCTAssertEqual(fields[2], Int64(getuid()))
        XCTAssertEqual(fields[3], 0)
        XCTAssertEqual(fields[4], 42)
    }

    func testClientDyingMidCallFreesItsConnectionRegionsAndDescriptors() throws {
        let server = try IPCServer(name: "storage", directory: directory) { _, _, _ in
            usleep(50_000)  // the client is gone before this reply
            return .ok
        }
        server.start()
        defer { server.stop() }
        // Warm up (first connection's lazy allocations), then measure.
        _ = try IPCClient.connect(name: "storage", directory: directory).sendReceive(Message(type: .ipcPing))
        waitUntil { server.connectionCount == 0 }
        let baseline = openDescriptorCount()
        let code = """
        import socket, struct, sys, os, fcntl
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); s.connect(sys.argv[1])
        fd = os.memfd_create('x', os.MFD_ALLOW_SEALING); os.ftruncate(fd, 4096)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
        socket.send_fds(s, [struct.pack('<IiIIIIQQQQIi', 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0)], [fd])
        r = s.recv(70000)
        handle = struct.unpack('<IiIIIIQQQQIi', r[:64])[6]
        for i in range(5): s.send(struct.pack('<IiIIIIQQQQIi', 0x202, 0, 2, 0, 0, 2 + i, 0, 0, 0, handle, 4096, 0))
        print(handle)
        os._exit(0)
        """
        let (_, status, output) = try python(code, [directory + "/storage.sock"])
        XCTAssertEqual(status, 0, output)
        XCTAssertEqual(output.trimmingCharacters(in: .whitespacesAndNewlines), "1")
        waitUntil { server.connectionCount == 0 && server.sharedRegionCount == 0 }
        waitUntil { openDescriptorCount() == baseline }
        // Others carry on.
        XCTAssertEqual(try IPCClient.connect(name: "storage", directory: directory).sendReceive(Message(type: .ipcPing)).status, .ok)
    }

    // MARK: Bad input

    func testBadDatagramsGetErrorRepliesAndOtherClientsCarryOn() throws {
        let server = try IPCServer(name: "vfs", directory: directory, handler: Self.echo)
        server.start()
        defer { server.stop() }
        let bad = try IPCClient.connect(name: "vfs", directory: directory)
        let good = try IPCClient.connect(name: "vfs", directory: directory)

        func refusal(_ datagram: [UInt8], descriptors: [Int32] = []) throws -> Message {
            try datagram.withUnsafeBytes { try bad.sendRaw($0, descriptors: descriptors) }
            return try bad.receive(timeout: .seconds(5)).message
        }
        var reply = try refusal([1, 2, 3])
        XCTAssertEqual(reply.status, .EBADMSG)
        XCTAssertEqual(reply.param1, MessageError.truncated(count: 3).code)
        XCTAssertEqual(reply.type, .ipcError)

        reply = try refusal(bytes(Message(type: .vfsRead, sequence: 9), payload: [UInt8](repeating: 7, count: Message.maxInlinePayload + 100)))
        XCTAssertEqual(reply.status, .EMSGSIZE)
        XCTAssertEqual(reply.sequence, 9)

        var random = SplitMix(state: 7)
        for _ in 0..<50 {
            let garbage = (0..<Int(random.next() % 200)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            XCTAssertFalse(try refusal(garbage).status.isOK)
        }
        reply = try refusal(bytes(Message(type: MessageType(rawValue: 0x7777), sequence: 5)))
        XCTAssertEqual(reply.status, .ENOSYS)
        XCTAssertEqual(reply.sequence, 5)
        XCTAssertEqual(try refusal(bytes(Message(type: .vfsRead, flags: MessageFlags(rawValue: 1 << 9)))).status, .EBADMSG)
        XCTAssertEqual(try refusal(bytes(Message(type: .vfsRead, dataPointer: 4, dataSize: 8), payload: [1, 2])).status, .EBADMSG)
        XCTAssertEqual(try refusal(bytes(Message(type: .vfsRead, flags: .reply))).param1, IPCRefusal.replySentToServer)
        let stray = try SharedMemory(size: 4096)
        XCTAssertEqual(try refusal(bytes(Message(type: .vfsRead)), descriptors: [stray.fd.rawValue]).param1, IPCRefusal.unexpectedDescriptors)
        XCTAssertEqual(try refusal([], descriptors: []).status, .EBADMSG)

        // The good client never noticed; the bad one is still served (under the error limit).
        XCTAssertEqual(try good.sendReceive(Message(type: .ipcPing)).status, .ok)
        XCTAssertEqual(try bad.sendReceive(Message(type: .ipcPing)).status, .ok)
        XCTAssertEqual(server.sharedRegionCount, 0)
    }

    func testPersistentOffenderIsDisconnected() throws {
        var configuration = IPCServer.Configuration()
        configuration.maxProtocolErrors = 3
        let server = try IPCServer(name: "vfs", directory: directory, configuration: configuration, handler: Self.echo)
        server.start()
        defer { server.stop() }
        let bad = try IPCClient.connect(name: "vfs", directory: directory)
        for _ in 0..<3 { try [UInt8](repeating: 0xFF, count: 10).withUnsafeBytes { try bad.sendRaw($0) } }
        var replies = 0
        do {
            while true { _ = try bad.receive(timeout: .seconds(5)); replies += 1 }
        } catch {
            XCTAssertEqual(error, .disconnected)
        }
        XCTAssertEqual(replies, 3)
        waitUntil { server.connectionCount == 0 }
    }

    func testFullQueueGetsBusyRepliesNotSilence() throws {
        var configuration = IPCServer.Configuration()
        configuration.queueDepth = 4
        let server = try IPCServer(name: "usb", directory: directory, configuration: configuration, handler: Self.echo)
        defer { server.stop() }
        let client = try IPCClient.connect(name: "usb", directory: directory)
        server.serveOnce(timeout: .seconds(1))  // accept
        XCTAssertEqual(server.connectionCount, 1)
        let sequences = try client.sendBatch((0..<10).map { _ in Message(type: .usbListDevices) })
        server.serveOnce(timeout: .seconds(1))  // reads all ten in one wakeup
        var statuses: [UInt32: IPCStatus] = [:]
        for _ in 0..<10 {
            let reply = try client.receive(timeout: .seconds(5))
            statuses[reply.sequence] = reply.status
        }
        XCTAssertEqual(Set(statuses.keys), Set(sequences))
        XCTAssertEqual(statuses.values.filter { $0 == .ok }.count, 4)
        XCTAssertEqual(statuses.values.filter { $0 == .EBUSY }.count, 6)
        XCTAssertEqual(sequences.prefix(4).map { statuses[$0] }, [.ok, .ok, .ok, .ok])
    }

    // MARK: Shared memory

    func testSharedMemoryHandlesAndForgedHandles() throws {
        let server = try IPCServer(name: "storage", directory: directory, handler: Self.echo)
        server.start()
        defer { server.stop() }
        let client = try IPCClient.connect(name: "storage", directory: directory)

        let sealed = try sealedMemory(Array(1...100))
        let handle = try client.share(sealed)
        var request = Message(type: .blockWrite)
        request.setSharedData(handle: handle, offset: 10, count: 5)
        var reply = try client.sendReceive(request)
        XCTAssertEqual(reply.status, .ok)
        XCTAssertEqual(reply.payload, [15, 14, 13, 12, 11])
        XCTAssertEqual(reply.message.param3, 0, "a write-sealed region is not writable by the server")

        request.setSharedData(handle: 99, count: 5)
        XCTAssertEqual(try client.sendReceive(request).status, .EBADF)
        request.setSharedData(handle: handle, offset: 90, count: 20)
        XCTAssertEqual(try client.sendReceive(request).status, .EINVAL)

        // A writable region: the server writes, the client sees it.
        let writableServer = try IPCServer(name: "reader", directory: directory) { _, payload, _ in
            guard let target = payload.writableData else { return .error(.EROFS) }
            for index in target.indices { target[index] = 0xAB }
            return .ok
        }
        writableServer.start()
        defer { writableServer.stop() }
        let reader = try IPCClient.connect(name: "reader", directory: directory)
        let buffer = try SharedMemory(size: 8192)
        let bufferHandle = try reader.share(buffer)
        var read = Message(type: .blockRead)
        read.setSharedData(handle: bufferHandle, offset: 4096, count: 16)
        XCTAssertEqual(try reader.sendReceive(read).status, .ok)
        XCTAssertEqual(Array(buffer.bytes[4096..<4112]), [UInt8](repeating: 0xAB, count: 16))
        XCTAssertEqual(buffer.bytes[4112], 0)

        try client.release(handle: handle)
        XCTAssertEqual(server.sharedRegionCount, 0)
        request.setSharedData(handle: handle, count: 5)
        XCTAssertEqual(try client.sendReceive(request).status, .EBADF)
        XCTAssertThrowsError(try client.release(handle: handle))
        reply = try client.sendReceive(Message(type: .ipcPing))
        XCTAssertEqual(reply.status, .ok)
    }

    func testSealedMemoryCannotBeWrittenByTheReceiver() throws {
        let sealed = try sealedMemory([UInt8](repeating: 5, count: 4096))
        // What a receiver gets through SCM_RIGHTS is a new descriptor for the same file.
        var pair: [Int32] = [-1, -1]
        XCTAssertEqual(socketpair(AF_UNIX, CL_SOCK_SEQPACKET, 0, &pair), 0)
        defer { close(pair[0]); close(pair[1]) }
        var fd = sealed.fd.rawValue
        var zero: UInt8 = 0
        XCTAssertEqual(CL_ipc_send(pair[0], &zero, 1, nil, 0, &fd, 1, 0), 1)
        var received: [Int32] = [-1, -1]
        var count: Int32 = 0, flags: Int32 = 0
        XCTAssertEqual(CL_ipc_recv(pair[1], &zero, 1, &received, 2, &count, &flags, 0), 1)
        XCTAssertEqual(count, 1)
        let theirs = received[0]
        defer { close(theirs) }
        XCTAssertNotEqual(theirs, fd)
        XCTAssertEqual(SharedMemory.seals(of: theirs)! & CL_F_SEAL_WRITE, CL_F_SEAL_WRITE)
        var byte: UInt8 = 9
        XCTAssertEqual(pwrite(theirs, &byte, 1, 0), -1)
        XCTAssertEqual(errno, EPERM)
        let mapping = mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, theirs, 0)
        XCTAssertEqual(CL_is_map_failed(mapping), 1, "a writable shared mapping of a write-sealed memfd must be refused")
        XCTAssertEqual(ftruncate(theirs, 0), -1)
        XCTAssertEqual(sealed.bytes[0], 5)
    }

    func testDescriptorFloodIsBoundedAndLeavesNothingBehind() throws {
        var configuration = IPCServer.Configuration()
        configuration.maxHandlesPerClient = 4
        let server = try IPCServer(name: "vfs", directory: directory, configuration: configuration, handler: Self.echo)
        server.start()
        defer { server.stop() }
        _ = try IPCClient.connect(name: "vfs", directory: directory).sendReceive(Message(type: .ipcPing))
        waitUntil { server.connectionCount == 0 }
        let baseline = openDescriptorCount()
        do {
            let client = try IPCClient.connect(name: "vfs", directory: directory)
            var handles: [UInt32] = []
            var refused: [IPCStatus] = []
            for _ in 0..<10 {
                let memory = try SharedMemory(size: 4096)
                let result = Result { () throws(IPCError) -> UInt32 in try client.share(memory) }
                switch result {
                case .success(let handle): handles.append(handle)
                case .failure(.refused(_, let status)): refused.append(status)
                case .failure(let error): XCTFail("\(error)")
                }
            }
            XCTAssertEqual(handles, [1, 2, 3, 4])
            XCTAssertEqual(refused, [IPCStatus](repeating: .EMFILE, count: 6))
            XCTAssertEqual(server.sharedRegionCount, 4)

            // Many descriptors on one message; a plain file (not a memfd); an unsealed memfd.
            let fds = (0..<20).map { _ in CL_memfd_create("flood", CL_MFD_CLOEXEC) }
            defer { fds.forEach { close($0) } }
            try bytes(Message(type: .ipcShare)).withUnsafeBytes { try client.sendRaw($0, descriptors: fds) }
            XCTAssertEqual(try client.receive(timeout: .seconds(5)).message.param1, IPCRefusal.unexpectedDescriptors)
            try client.release(handle: 4)
            let unsealed = CL_memfd_create("unsealed", CL_MFD_CLOEXEC)
            ftruncate(unsealed, 4096)
            defer { close(unsealed) }
            XCTAssertThrowsError(try client.share(descriptor: unsealed)) { XCTAssertEqual($0 as? IPCError, .refused(.ipcShare, .EINVAL)) }
            let devNull = open("/dev/null", O_RDWR | O_CLOEXEC)
            defer { close(devNull) }
            XCTAssertThrowsError(try client.share(descriptor: devNull)) { XCTAssertEqual($0 as? IPCError, .refused(.ipcShare, .EINVAL)) }
            XCTAssertEqual(server.sharedRegionCount, 3)
        }
        waitUntil { server.connectionCount == 0 && server.sharedRegionCount == 0 }
        waitUntil { openDescriptorCount() == baseline }
    }
}
