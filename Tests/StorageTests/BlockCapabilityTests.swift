import CLimitless
import Foundation
import IPC
import ServerKit
import XCTest
@testable import Storage
#if canImport(Glibc)
import Glibc
#endif

/// CAP_BLOCK_READ / CAP_BLOCK_WRITE as descriptors: a block server over a real IPC socket, a
/// token table filled as the supervisor fills it (MSG_SUPERVISOR_BLOCK_TOKEN ends in
/// `BlockCapabilityTokens.update`), and clients that present tokens, forged ones, or none.
final class BlockCapabilityTests: XCTestCase {
    private var directory = ""
    private var server: IPCServer!
    private var block: BlockServer!
    private var tokens: BlockCapabilityTokens!
    private var logged: BlockServerTests.LogBox!
    private var opened: [Int32] = []

    override func setUpWithError() throws {
        var template = Array("/tmp/limitless-blockcap-XXXXXX".utf8CString)
        directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        let device = MemoryBlockDevice(namespaces: [1: BlockGeometry(blockSize: 512, blockCount: 1024)])
        let box = BlockServerTests.LogBox()
        logged = box
        tokens = BlockCapabilityTokens()
        // storage_server's default: without a token, root only.
        block = BlockServer(device: device, policy: .rootOnly, tokens: tokens) { box.append($0) }
        server = try block.makeIPCServer(name: "storage", directory: directory)
        server.start()
    }

    override func tearDown() {
        server?.stop()
        server = nil
        for fd in opened { close(fd) }
        _ = rmdir(directory)
    }

    /// A token as the supervisor makes one: an empty sealed memfd.
    func makeToken() -> Int32 {
        let fd = CL_memfd_create("test-token", CL_MFD_CLOEXEC | CL_MFD_ALLOW_SEALING)
        XCTAssertGreaterThanOrEqual(fd, 0)
        opened.append(fd)
        return fd
    }

    func connect() throws -> BlockClient { try BlockClient.connect(name: "storage", directory: directory) }

    func write(_ client: BlockClient) throws -> IPCStatus {
        let data = [UInt8](repeating: 0x5A, count: 512)
        return try data.withUnsafeBytes { try client.write(1, lba: 3, blocks: 1, data: $0) }
    }

    func testReadTokenAllowsReadingButNotWriting() throws {
        let read = makeToken()
        XCTAssertTrue(tokens.update(descriptor: read, rights: .read, holder: "vfs_server"))
        let client = try connect()
        XCTAssertEqual(try client.present(token: read), .success(.read))
        XCTAssertEqual(try client.openNamespace(1), .success(BlockGeometry(blockSize: 512, blockCount: 1024)))
        XCTAssertEqual(try client.read(1, lba: 0, blocks: 1), .success([UInt8](repeating: 0, count: 512)))
        // Root, but a connection that presented tokens has exactly their rights.
        XCTAssertEqual(try write(client), .EACCES)
        XCTAssertEqual(try client.flush(1), .EACCES)
        XCTAssertEqual(try client.trim(1, lba: 0, blocks: 1), .EACCES)
        XCTAssertTrue(logged.all.contains { $0.contains("refused MSG_BLOCK_WRITE") && $0.contains("lacks CAP_BLOCK_WRITE")
                                            && $0.contains("presented tokens for CAP_BLOCK_READ") }, "\(logged.all)")
        XCTAssertEqual(block.refusals, 3)

        // The write token too: now it may write. Both rights in the reply.
        let write = makeToken()
        XCTAssertTrue(tokens.update(descriptor: write, rights: .write, holder: "vfs_server"))
        XCTAssertEqual(try client.present(token: write), .success([.read, .write]))
        XCTAssertEqual(try self.write(client), .ok)
        XCTAssertEqual(try client.read(1, lba: 3, blocks: 1), .success([UInt8](repeating: 0x5A, count: 512)))
    }

    func testForgedTokenAndMissingDescriptorAreRefused() throws {
        let real = makeToken()
        tokens.update(descriptor: real, rights: [.read, .write], holder: "vfs_server")
        let client = try connect()
        // Another memfd, a regular file, a pipe: none is a token the supervisor gave out.
        XCTAssertEqual(try client.present(token: makeToken()), .failure(.EACCES))
        let file = open(directory + "/not-a-token", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        XCTAssertGreaterThanOrEqual(file, 0)
        opened.append(file)
        XCTAssertEqual(try client.present(token: file), .failure(.EACCES))
        unlink(directory + "/not-a-token")
        XCTAssertTrue(logged.all.contains { $0.contains("presented a descriptor that is no CAP_BLOCK token") }, "\(logged.all)")
        // Without a descriptor at all.
        let bare = try client.connection.sendReceive(Message(type: .blockPresentCapability))
        XCTAssertEqual(bare.status, .EINVAL)
        // A descriptor on a message that takes none is still a protocol error.
        let smuggled = try client.connection.sendReceive(Message(type: .blockRead, param1: 1, param2: 0, param3: 1), descriptor: real)
        XCTAssertEqual(smuggled.status, .EBADMSG)
        // Refused presents leave the connection as it was (root, no tokens: the uid rule), and
        // the server serves on; the real token still works.
        XCTAssertEqual(try write(client), .ok)
        XCTAssertEqual(try client.present(token: real), .success([.read, .write]))
        XCTAssertEqual(block.connectionsWithTokens, 1)
    }

    func testRevokedTokenStopsWorkingOnTheNextRequest() throws {
        let read = makeToken(), write = makeToken()
        tokens.update(descriptor: read, rights: .read, holder: "vfs_server")
        tokens.update(descriptor: write, rights: .write, holder: "vfs_server")
        var client: BlockClient! = try connect()
        XCTAssertEqual(try client.present(token: read), .success(.read))
        XCTAssertEqual(try client.present(token: write), .success([.read, .write]))
        XCTAssertEqual(try self.write(client), .ok)
        // The supervisor withdraws CAP_BLOCK_WRITE (rights 0): the same connection's next write fails.
        tokens.update(descriptor: write, rights: [], holder: "vfs_server")
        XCTAssertEqual(tokens.count, 1)
        XCTAssertEqual(try self.write(client), .EACCES)
        XCTAssertEqual(try client.read(1, lba: 3, blocks: 1).map(\.count), .success(512))
        // Presenting it again does not bring it back.
        XCTAssertEqual(try client.present(token: write), .failure(.EACCES))
        // A new grant is a new token; the old one stays dead even if the table learns it again
        // under a new serial (the same inode, as after inode reuse).
        tokens.update(descriptor: write, rights: .write, holder: "someone-else")
        XCTAssertEqual(try self.write(client), .EACCES)
        // Its connection ends: the server forgets what it presented.
        client = nil
        let deadline = ContinuousClock.now + .seconds(10)
        while block.connectionsWithTokens > 0, ContinuousClock.now < deadline { usleep(10_000) }
        XCTAssertEqual(block.connectionsWithTokens, 0)
    }

    /// A process of another uid (nobody) over the real socket: without a token it is refused
    /// (the uid rule admits root only), with a READ token it reads and still may not write.
    func testNonRootClientNeedsAToken() throws {
        guard geteuid() == 0 else { throw XCTSkip("needs root to run a client as another uid") }
        let read = makeToken()
        tokens.update(descriptor: read, rights: .read, holder: "reader")
        let path = directory + "/storage.sock"
        XCTAssertEqual(chmod(directory, 0o755), 0)
        XCTAssertEqual(chmod(path, 0o777), 0)
        func request(_ type: MessageType, sequence: UInt32) -> [UInt8] {
            var bytes = [UInt8](repeating: 0, count: Message.headerSize)
            let message = Message(type: type, param1: 1, param2: 0, param3: 1, sequence: sequence)
            bytes.withUnsafeMutableBytes { message.encode(into: $0) }
            return bytes
        }
        let present = request(.blockPresentCapability, sequence: 1)
        let readRequest = request(.blockRead, sequence: 2)
        var zero = [UInt8](repeating: 0x5A, count: 512)
        var writeRequest = request(.blockWrite, sequence: 3)
        var inline = Message(type: .blockWrite, param1: 1, param2: 3, param3: 1, sequence: 3)
        inline.setInlineData(count: 512)
        writeRequest.withUnsafeMutableBytes { inline.encode(into: $0) }
        writeRequest += zero
        zero = []
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in path.utf8.enumerated() { raw[index] = byte }
        }
        var reply = [UInt8](repeating: 0, count: Message.maxDatagramSize)

        // Exit codes: 0 as expected; 10+ the step that went wrong.
        func child(presentToken: Bool) -> Int32 {
            let pid = fork()
            if pid == 0 {
                // Only system calls from here: the child of a multithreaded process.
                if setgroups(0, nil) != 0 || setgid(65534) != 0 || setuid(65534) != 0 { _exit(10) }
                let socketFD = socket(AF_UNIX, CL_SOCK_SEQPACKET, 0)
                if socketFD < 0 { _exit(11) }
                let connected = withUnsafePointer(to: &address) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(socketFD, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
                }
                if connected != 0 { _exit(12) }
                func exchange(_ bytes: [UInt8], descriptor: Int32) -> Int32 {
                    var fd = descriptor
                    let sent = bytes.withUnsafeBytes { CL_ipc_send(socketFD, $0.baseAddress, $0.count, nil, 0, &fd, descriptor >= 0 ? 1 : 0, 0) }
                    if sent < 0 { _exit(13) }
                    let count = reply.withUnsafeMutableBytes { recv(socketFD, $0.baseAddress, $0.count, 0) }
                    if count < Message.headerSize { _exit(14) }
                    return reply.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 60, as: Int32.self) }
                }
                if presentToken {
                    if exchange(present, descriptor: read) != 0 { _exit(15) }
                    if exchange(readRequest, descriptor: -1) != 0 { _exit(16) }
                    if exchange(writeRequest, descriptor: -1) != IPCStatus.EACCES.rawValue { _exit(17) }
                } else {
                    if exchange(readRequest, descriptor: -1) != IPCStatus.EACCES.rawValue { _exit(18) }
                    if exchange(writeRequest, descriptor: -1) != IPCStatus.EACCES.rawValue { _exit(19) }
                }
                _exit(0)
            }
            var status: Int32 = 0
            XCTAssertEqual(waitpid(pid, &status, 0), pid)
            XCTAssertEqual(status & 0x7F, 0, "the child died by signal \(status & 0x7F)")
            return (status >> 8) & 0xFF
        }
        XCTAssertEqual(child(presentToken: false), 0)
        XCTAssertTrue(logged.all.contains { $0.contains("uid 65534") && $0.contains("lacks CAP_BLOCK_READ")
                                            && $0.contains("no token presented") }, "\(logged.all)")
        XCTAssertEqual(child(presentToken: true), 0)
        XCTAssertTrue(logged.all.contains { $0.contains("uid 65534") && $0.contains("lacks CAP_BLOCK_WRITE")
                                            && $0.contains("presented tokens for CAP_BLOCK_READ") }, "\(logged.all)")
        // Root without a token (an administrator's limitless-storage) still reads and writes.
        let admin = try connect()
        XCTAssertEqual(try write(admin), .ok)
    }
}

/// storage_server's seccomp filter, installed in a forked child: what serving needs works, and
/// the network, new files and exec are refused with EPERM.
final class StorageSandboxTests: XCTestCase {
    func testStorageFilterRefusesNetworkFilesAndExec() throws {
        let program = try StorageSandbox.policy(granted: ["CAP_BLOCK_READ", "CAP_BLOCK_WRITE", "CAP_DMA_ALLOC", "CAP_IRQ_NVME0",
                                                          "CAP_MMIO_NVME0", "CAP_PCI_CONFIG"]).program()
        let newFile = "/tmp/limitless-sandbox-\(getpid())"
        let page = mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        XCTAssertNotNil(page)
        var arguments: [UnsafeMutablePointer<CChar>?] = [nil]
        let child = fork()
        if child == 0 {
            if CL_sk_set_no_new_privs() != 0 { _exit(10) }
            if SeccompPolicy.install(program) != nil { _exit(11) }
            if socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0) >= 0 || CL_errno() != EPERM { _exit(12) }
            if open(newFile, O_RDWR | O_CREAT, 0o600) >= 0 || CL_errno() != EPERM { _exit(13) }
            if open("/etc/hostname", O_RDONLY) >= 0 || CL_errno() != EPERM { _exit(14) }
            if execve("/bin/true", &arguments, &arguments) == 0 || CL_errno() != EPERM { _exit(15) }
            // A TTY ioctl is none of VFIO's requests.
            if ioctl(0, UInt(TCGETS)) == 0 || CL_errno() != EPERM { _exit(16) }
            // What serving needs: AF_UNIX sockets, kill(pid, 0) and msync for vanished clients,
            // VFIO's map request (EBADF here: the call itself passed the filter), unlink.
            if socket(AF_UNIX, CL_SOCK_SEQPACKET, 0) < 0 { _exit(17) }
            if kill(getppid(), 0) != 0 { _exit(18) }
            if msync(page, 4096, MS_ASYNC) != 0 { _exit(19) }
            if ioctl(-1, CL_VFIO_IOMMU_MAP_DMA) == 0 || CL_errno() != EBADF { _exit(20) }
            if unlink(newFile) == 0 || CL_errno() != ENOENT { _exit(21) }
            _exit(0)
        }
        XCTAssertGreaterThan(child, 0)
        var status: Int32 = 0
        XCTAssertEqual(waitpid(child, &status, 0), child)
        munmap(page, 4096)
        unlink(newFile)
        let meaning = [10: "no_new_privs", 11: "install", 12: "socket(AF_INET) not refused with EPERM",
                       13: "creating a file not refused with EPERM", 14: "opening a file not refused with EPERM",
                       15: "execve not refused with EPERM", 16: "a TTY ioctl not refused", 17: "socket(AF_UNIX) refused",
                       18: "kill(pid, 0) refused", 19: "msync refused", 20: "VFIO_IOMMU_MAP_DMA refused", 21: "unlink refused"]
        let code = Int((status >> 8) & 0xFF)
        XCTAssertEqual(status & 0x7F, 0, "the child died by signal \(status & 0x7F)")
        XCTAssertEqual(code, 0, meaning[code] ?? "exit \(code)")
    }
}
