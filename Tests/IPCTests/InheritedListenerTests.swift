import XCTest
#if canImport(Glibc)
import Glibc
#endif

@testable import IPC

/// `IPCServer` serving on a listening socket it was handed (`InheritedListener`, what the
/// supervisor passes as LIMITLESS_LISTEN_FD) rather than binding, and binding as before when it
/// was handed none or one bound elsewhere.
final class InheritedListenerTests: RuntimeDirectoryTestCase {
    private static let pid: IPCServer.Handler = { _, _, _ in IPCReply(param1: UInt64(getpid())) }

    private func inode(_ path: String) -> UInt64? {
        var status = stat()
        return lstat(path, &status) == 0 ? UInt64(status.st_ino) : nil
    }

    func testStandaloneServerBindsAndWritesItsOwnFiles() throws {
        XCTAssertNil(InheritedListener.pending)
        let server = try IPCServer(name: "alone", directory: directory, handler: Self.pid)
        server.start()
        XCTAssertFalse(server.adoptedListener)
        XCTAssertEqual(IPCEndpoint.readPID(server.endpoint.pidPath), getpid())
        let client = try IPCClient.connect(name: "alone", directory: directory)
        XCTAssertEqual(try client.sendReceive(Message(type: .vfsRead)).message.param1, UInt64(getpid()))
        server.stop()
        XCTAssertNil(inode(server.endpoint.socketPath), "a server that bound its socket removes it")
        XCTAssertNil(IPCEndpoint.readPID(server.endpoint.pidPath))
    }

    func testAdoptedListenerServesClientsThatConnectedBeforeTheServerExisted() throws {
        let endpoint = try IPCEndpoint(name: "held", directory: directory)
        let listener = try endpoint.makeListeningSocket()
        defer { close(listener) }
        let inodeBefore = try XCTUnwrap(inode(endpoint.socketPath))
        XCTAssertNil(IPCEndpoint.readPID(endpoint.pidPath), "no pid file: the holder writes it")
        // Connected and sent while nothing serves: both wait in the socket.
        let early = try IPCClient.connect(name: "held", directory: directory)
        let sequence = try early.send(Message(type: .vfsRead))

        // As ServerKit does with LIMITLESS_LISTEN_FD, from a descriptor of its own.
        let inherited = dup(listener)
        InheritedListener.offer(inherited)
        let other = try IPCServer(name: "other", directory: directory, handler: Self.pid)
        XCTAssertFalse(other.adoptedListener, "bound to held.sock, not other.sock: not taken")
        XCTAssertEqual(InheritedListener.pending, inherited)
        other.stop()

        let server = try IPCServer(name: "held", directory: directory, handler: Self.pid)
        XCTAssertTrue(server.adoptedListener)
        XCTAssertNil(InheritedListener.pending, "taken once")
        server.start()
        XCTAssertEqual(try early.awaitReply(sequence: sequence, timeout: .seconds(10)).message.param1, UInt64(getpid()))
        XCTAssertEqual(inode(endpoint.socketPath), inodeBefore, "not bound again")
        XCTAssertNil(IPCEndpoint.readPID(endpoint.pidPath), "the adopting server writes no pid file")
        server.stop()
        XCTAssertEqual(inode(endpoint.socketPath), inodeBefore, "the holder's socket stays")
        XCTAssertEqual(fcntl(inherited, F_GETFD), -1, "the server closed its copy")

        // The holder's socket still queues clients for the next server.
        let later = try IPCClient.connect(name: "held", directory: directory)
        let laterSequence = try later.send(Message(type: .vfsRead))
        InheritedListener.offer(dup(listener))
        let next = try IPCServer(name: "held", directory: directory, handler: Self.pid)
        next.start()
        XCTAssertEqual(try later.awaitReply(sequence: laterSequence, timeout: .seconds(10)).status, .ok)
        next.stop()
    }

    func testPIDFileWriteFollowsNoPlantedSymlink() throws {
        let endpoint = try IPCEndpoint(name: "planted", directory: directory)
        let victim = directory + "/victim"
        XCTAssertTrue(FileManager.default.createFile(atPath: victim, contents: Data("keep".utf8)))
        XCTAssertEqual(symlink(victim, endpoint.pidPath + ".tmp"), 0)
        try endpoint.writePIDFile(pid: 4242)
        XCTAssertEqual(IPCEndpoint.readPID(endpoint.pidPath), 4242)
        XCTAssertEqual(try String(contentsOfFile: victim, encoding: .utf8), "keep", "the symlink's target is untouched")
    }

    func testOfferOfSomethingNotListeningIsNotTaken() throws {
        var pair: [Int32] = [-1, -1]
        XCTAssertEqual(socketpair(AF_UNIX, CL_SOCK_SEQPACKET_VALUE, 0, &pair), 0)
        defer { close(pair[0]); close(pair[1]) }
        InheritedListener.offer(pair[0])
        let server = try IPCServer(name: "plain", directory: directory, handler: Self.pid)
        XCTAssertFalse(server.adoptedListener)
        server.stop()
        InheritedListener.offer(-1)
    }
}

private let CL_SOCK_SEQPACKET_VALUE = Int32(SOCK_SEQPACKET.rawValue)
