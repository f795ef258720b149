import Dispatch
import IPC
import Storage
import VFS
import VFSCore
import XCTest

/// storage_server restarts under the supervisor after a crash; the VFS's block store must carry
/// on across it: reconnect by name, share its region again, send the interrupted request again.
/// Here the "restart" is a new BlockServer on the same RAM device (what survives a real restart
/// is the device's contents).
final class StorageReconnectTests: XCTestCase {
    private final class ServerBox: @unchecked Sendable {
        var servers: [IPCServer] = []
        let lock = NSLock()
        func add(_ server: IPCServer) { lock.lock(); servers.append(server); lock.unlock() }
        func stopAll() { lock.lock(); servers.forEach { $0.stop() }; lock.unlock() }
    }

    /// What the restarting thread needs; it only starts a server while the test thread waits.
    private struct Restart: @unchecked Sendable {
        let test: StorageReconnectTests
        let device: MemoryBlockDevice
        let directory: String
        let box: ServerBox
    }

    private func serve(_ device: MemoryBlockDevice, _ directory: String, into box: ServerBox) throws {
        let server = try BlockServer(device: device).makeIPCServer(name: "storage", directory: directory)
        server.start()
        box.add(server)
    }

    private func pattern(_ count: Int, seed: UInt8) -> [UInt8] { (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31) &+ seed } }

    func testWritesAndReadsCarryOnAcrossAStorageServerRestart() throws {
        let device = MemoryBlockDevice(namespaces: [1: BlockGeometry(blockSize: 512, blockCount: 4096)])
        let directory = makeTemporaryDirectory(self)
        let box = ServerBox()
        addTeardownBlock { box.stopAll() }
        try serve(device, directory, into: box)
        let store = try StorageBlockStore(name: "storage", directory: directory, nsid: 1)

        let first = pattern(8192, seed: 1)
        try first.withUnsafeBytes { try store.write(at: 0, from: $0) }
        box.stopAll()  // the server dies: its clients are disconnected, its socket removed

        // It comes back a little later, on the same device.
        let restarted = expectation(description: "restarted")
        let restart = Restart(test: self, device: device, directory: directory, box: box)
        DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(200)) {
            do { try restart.test.serve(restart.device, restart.directory, into: restart.box) } catch { XCTFail("restart: \(error)") }
            restarted.fulfill()
        }
        // Large (through the shared region, which must be shared again) and small (inline).
        let large = pattern(256 * 1024, seed: 2)
        try large.withUnsafeBytes { try store.write(at: 64 * 1024, from: $0) }
        wait(for: [restarted], timeout: 30)
        let small = pattern(1024, seed: 3)
        try small.withUnsafeBytes { try store.write(at: 1024 * 512, from: $0) }
        XCTAssertEqual(store.reconnects, 1)

        var back = [UInt8](repeating: 0, count: large.count)
        try back.withUnsafeMutableBytes { try store.read(at: 64 * 1024, into: $0) }
        XCTAssertEqual(back, large)
        var onDevice = [UInt8](repeating: 0, count: first.count)
        try onDevice.withUnsafeMutableBytes { try device.read(nsid: 1, lba: 0, blocks: 16, into: $0) }
        XCTAssertEqual(onDevice, first, "what was written before the restart is still there")
        onDevice = [UInt8](repeating: 0, count: small.count)
        try onDevice.withUnsafeMutableBytes { try device.read(nsid: 1, lba: 1024, blocks: 2, into: $0) }
        XCTAssertEqual(onDevice, small)
        try store.flush()
    }

    /// A storage server that admits nobody without a token (not even root): the store presents
    /// its CAP_BLOCK_* tokens on the first connection and again after the restart, where the new
    /// server learned the same tokens afresh (from the supervisor, in storage_server).
    func testTokensArePresentedAgainAfterARestart() throws {
        let fixture = makeTokenFixture()
        let (directory, read, write, tokenServers) = (fixture.directory, fixture.read, fixture.write, fixture.servers)
        try fixture.start()
        // Without tokens even root is refused by this server.
        XCTAssertThrowsError(try StorageBlockStore(name: "storage", directory: directory, nsid: 1))
        let store = try StorageBlockStore(name: "storage", directory: directory, nsid: 1, tokens: { [read, write] })
        let first = pattern(4096, seed: 4)
        try first.withUnsafeBytes { try store.write(at: 0, from: $0) }
        XCTAssertEqual(tokenServers.last.connectionsWithTokens, 1)
        tokenServers.stopAll()
        try fixture.start()
        let second = pattern(4096, seed: 5)
        try second.withUnsafeBytes { try store.write(at: 8192, from: $0) }
        XCTAssertEqual(store.reconnects, 1)
        XCTAssertEqual(tokenServers.last.connectionsWithTokens, 1)
        XCTAssertEqual(tokenServers.last.refusals, 0)
        var back = [UInt8](repeating: 0, count: second.count)
        try back.withUnsafeMutableBytes { try store.read(at: 8192, into: $0) }
        XCTAssertEqual(back, second)
    }

    /// A CAP_BLOCK_WRITE granted while the store runs (serverctl grant): once another thread
    /// asks (`tokenRefresh.request()`, as vfs_server's onCapabilityChange handler does), the
    /// store presents its tokens on the live connection before its next request, so the write
    /// refused before now succeeds without a reconnect.
    func testATokenGrantedAtRunTimeIsPresentedOnTheLiveConnection() throws {
        let fixture = makeTokenFixture()
        let (directory, read, write) = (fixture.directory, fixture.read, fixture.write)
        try fixture.start()
        let block = fixture.servers.last

        // At start the process holds CAP_BLOCK_READ only.
        let held = HeldTokens([read])
        let refresh = TokenRefresh()
        let store = try StorageBlockStore(name: "storage", directory: directory, nsid: 1, tokens: { held.current }, tokenRefresh: refresh)
        var lines: [String] = []
        store.log = { lines.append($0) }
        let data = pattern(4096, seed: 6)
        XCTAssertThrowsError(try data.withUnsafeBytes { try store.write(at: 0, from: $0) }) { error in
            XCTAssertEqual((error as? FSError)?.errno, .permissionDenied, "\(error)")
        }
        var back = [UInt8](repeating: 0, count: 4096)
        try back.withUnsafeMutableBytes { try store.read(at: 0, into: $0) }
        XCTAssertEqual(store.tokenRepresentations, 0)

        // The grant arrives on another thread (ServerKit's supervisor link).
        held.current = [read, write]
        let granted = expectation(description: "granted")
        DispatchQueue.global().async {
            refresh.request()
            granted.fulfill()
        }
        wait(for: [granted], timeout: 10)
        try data.withUnsafeBytes { try store.write(at: 0, from: $0) }
        XCTAssertEqual(store.tokenRepresentations, 1)
        XCTAssertEqual(store.reconnects, 0, "presented on the same connection")
        XCTAssertTrue(lines.contains { $0.contains("held since a run-time grant") && $0.contains("now has CAP_BLOCK_READ+CAP_BLOCK_WRITE") }, "\(lines)")
        try back.withUnsafeMutableBytes { try store.read(at: 0, into: $0) }
        XCTAssertEqual(back, data)
        // Presented once: later requests do not present again.
        try data.withUnsafeBytes { try store.write(at: 4096, from: $0) }
        XCTAssertEqual(store.tokenRepresentations, 1)
        XCTAssertEqual(block.connectionsWithTokens, 1)
    }

    /// The grant reaches this process before the storage server has learned the token (each
    /// reads its supervisor channel on its own): the refused presentation is made again before
    /// the next request, which then works.
    func testATokenPresentedBeforeTheServerKnowsItIsPresentedAgain() throws {
        let fixture = makeTokenFixture()
        let table = try fixture.start(knowingWrite: false)
        let refresh = TokenRefresh()
        let store = try StorageBlockStore(name: "storage", directory: fixture.directory, nsid: 1,
                                          tokens: { [fixture.read, fixture.write] }, tokenRefresh: refresh)
        let data = pattern(4096, seed: 7)
        refresh.request()
        XCTAssertThrowsError(try data.withUnsafeBytes { try store.write(at: 0, from: $0) })
        XCTAssertEqual(store.tokenRepresentations, 1)
        table.update(descriptor: fixture.write, rights: .write, holder: "vfs_server")
        try data.withUnsafeBytes { try store.write(at: 0, from: $0) }
        XCTAssertEqual(store.tokenRepresentations, 2)
        try data.withUnsafeBytes { try store.write(at: 4096, from: $0) }
        XCTAssertEqual(store.tokenRepresentations, 2, "accepted: not presented again")
        XCTAssertEqual(store.reconnects, 0)
    }

    /// A RAM device served by block servers that admit nobody without a token (not even
    /// root), and two tokens they know: CAP_BLOCK_READ and CAP_BLOCK_WRITE of "vfs_server".
    private struct TokenFixture {
        let device = MemoryBlockDevice(namespaces: [1: BlockGeometry(blockSize: 512, blockCount: 4096)])
        let directory: String
        let read: Int32
        let write: Int32
        let servers = TokenServers()

        /// A new server on the device (the first, or one after a "restart") that learned both
        /// tokens (the read token only unless `knowingWrite`); its table, to teach it more.
        @discardableResult
        func start(knowingWrite: Bool = true) throws -> BlockCapabilityTokens {
            let tokens = BlockCapabilityTokens()
            tokens.update(descriptor: read, rights: .read, holder: "vfs_server")
            if knowingWrite { tokens.update(descriptor: write, rights: .write, holder: "vfs_server") }
            let block = BlockServer(device: device, policy: BlockAccessPolicy(readers: .uids([]), writers: .uids([])), tokens: tokens)
            let server = try block.makeIPCServer(name: "storage", directory: directory)
            server.start()
            servers.add(block, server)
            return tokens
        }
    }

    private func makeTokenFixture() -> TokenFixture {
        let directory = makeTemporaryDirectory(self)
        // Any file serves as a token here; the supervisor's are sealed memfds.
        let read = open(directory + "/read-token", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        let write = open(directory + "/write-token", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        XCTAssertGreaterThanOrEqual(read, 0)
        XCTAssertGreaterThanOrEqual(write, 0)
        let fixture = TokenFixture(directory: directory, read: read, write: write)
        let servers = fixture.servers
        addTeardownBlock {
            servers.stopAll()
            close(read)
            close(write)
        }
        return fixture
    }

    /// The descriptors a test process "holds", changed by the test between requests.
    private final class HeldTokens: @unchecked Sendable {
        private let lock = NSLock()
        private var tokens: [Int32]
        init(_ tokens: [Int32]) { self.tokens = tokens }
        var current: [Int32] {
            get { lock.lock(); defer { lock.unlock() }; return tokens }
            set { lock.lock(); tokens = newValue; lock.unlock() }
        }
    }

    private final class TokenServers: @unchecked Sendable {
        private var servers: [(BlockServer, IPCServer)] = []
        private let lock = NSLock()
        func add(_ block: BlockServer, _ server: IPCServer) { lock.lock(); servers.append((block, server)); lock.unlock() }
        func stopAll() { lock.lock(); servers.forEach { $0.1.stop() }; lock.unlock() }
        var last: BlockServer { lock.lock(); defer { lock.unlock() }; return servers.last!.0 }
    }

    func testAServerThatDoesNotComeBackFailsWithEIOAfterTheDeadline() throws {
        let device = MemoryBlockDevice(namespaces: [1: BlockGeometry(blockSize: 512, blockCount: 64)])
        let directory = makeTemporaryDirectory(self)
        let box = ServerBox()
        try serve(device, directory, into: box)
        let store = try StorageBlockStore(name: "storage", directory: directory, nsid: 1)
        store.reconnectDeadline = .milliseconds(300)
        box.stopAll()
        XCTAssertThrowsError(try [UInt8](repeating: 7, count: 512).withUnsafeBytes { try store.write(at: 0, from: $0) }) { error in
            XCTAssertEqual((error as? FSError)?.errno, .ioError)
            XCTAssertTrue("\(error)".contains("did not come back"), "\(error)")
        }
        XCTAssertEqual(store.reconnects, 0)
    }

    func testAStoreMadeFromAClientDoesNotReconnect() throws {
        let device = MemoryBlockDevice(namespaces: [1: BlockGeometry(blockSize: 512, blockCount: 64)])
        let directory = makeTemporaryDirectory(self)
        let box = ServerBox()
        try serve(device, directory, into: box)
        let store = try StorageBlockStore(client: try BlockClient.connect(name: "storage", directory: directory), nsid: 1)
        box.stopAll()
        try serve(device, directory, into: box)
        defer { box.stopAll() }
        XCTAssertThrowsError(try [UInt8](repeating: 7, count: 512).withUnsafeBytes { try store.write(at: 0, from: $0) }) { error in
            XCTAssertEqual((error as? FSError)?.errno, .ioError)
        }
    }
}
