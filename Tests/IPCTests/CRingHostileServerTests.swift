import CLimitless
import Foundation
import XCTest
@testable import IPC
#if canImport(Glibc)
import Glibc
#endif

/// The C library's ring against a hostile server: a fake server (this test, speaking the wire
/// protocol by hand) answers MSG_IPC_RING_ATTACH with broken ring memfds, then breaks working
/// rings while the C client waits for a reply. Every case is -EPROTO, never a crash or a hang.
extension CAPITests {
    private static let hostileProgram = #"""
    #include <stdio.h>
    #include <stdlib.h>
    #include "limitless_ipc.h"

    int main(int argc, char **argv) {
        if (argc < 2) return 2;
        pid_t server = (pid_t)atoi(argv[1]);
        for (int i = 0; i < 7; i++) {  /* one connection per case */
            ipc_ring_t *ring = NULL;
            int attached = ipc_ring_attach(server, 128, 16, &ring);
            printf("attach %d: %d\n", i, attached);
            if (attached == 0) {
                ipc_message_t msg = { 0 }, reply = { 0 };
                msg.type = MSG_VFS_STAT;
                printf("exchange %d: %d\n", i, ipc_ring_send_receive(ring, &msg, &reply));
                ipc_ring_detach(ring);
            }
            ipc_close(server);
        }
        printf("done\n");
        return 0;
    }
    """#

    /// Where a ring's words sit (RingLayout, format 1) for a 128-byte slot, 16-slot pair.
    private enum Hostile {
        static let layout = try! RingLayout(slotSize: 128, capacity: 16)
        static func ring(_ index: Int) -> Int { layout.ringOffset(index) }
        static let tail = 128, slots = 512
    }

    /// Case by case: the memfd the fake server hands out, and what it does once the client sent
    /// a request. Keeps the memory alive until the client is done.
    private static func hostileRing(_ scenario: Int) throws -> (fd: Int32, memory: SharedRingMemory?) {
        if scenario == 0 {  // a memfd without seals: the server could shrink it under the client
            let fd = CL_memfd_create("unsealed", CL_MFD_CLOEXEC)
            XCTAssertEqual(ftruncate(fd, off_t(Hostile.layout.totalSize)), 0)
            return (fd, nil)
        }
        let memory = try SharedRingMemory.create(layout: Hostile.layout)
        let base = memory.base
        switch scenario {
        case 1: base.storeBytes(of: 0x1234, as: UInt64.self)  // pair magic
        case 2: base.storeBytes(of: 15, toByteOffset: 16, as: UInt32.self)  // capacity, not a power of two
        case 3: base.storeBytes(of: 1 << 20, toByteOffset: 16, as: UInt32.self)  // a capacity the memfd is too small for
        case 4: (base + Hostile.ring(0) + Hostile.tail).storeBytes(of: 1000, as: UInt64.self)  // tail 1000 slots past head
        default: break
        }
        return (memory.descriptor.rawValue, memory)
    }

    /// After the attach: 5 answers with a reply whose data lies outside its slot; 6 publishes an
    /// impossible reply tail and no reply (the client looks at the tail before sleeping).
    private static func breakRing(_ scenario: Int, _ memory: SharedRingMemory) {
        let base = memory.base
        let request = base + Hostile.ring(0) + Hostile.slots
        for _ in 0..<5000 where CL_dma_read64(request) != 1 { usleep(1000) }
        let replies = base + Hostile.ring(1)
        if scenario == 5 {
            let slot = replies + Hostile.slots
            let sequence = UInt32(littleEndian: (request + 8 + 20).loadUnaligned(as: UInt32.self))
            Message(type: .vfsStat, flags: .reply, dataPointer: 1000, dataSize: 8, sequence: sequence)
                .encode(into: UnsafeMutableRawBufferPointer(start: slot + 8, count: 120))
            CL_mmio_write64(slot, 0, 1)
        } else {
            CL_mmio_write64(replies, Hostile.tail, 1000)
        }
    }

    func testCRingClientRefusesAndSurvivesAHostileServer() throws {
        let endpoint = try IPCEndpoint(name: "hostile", directory: directory)
        let listener = try endpoint.listen()
        defer {
            closeDescriptor(listener)
            endpoint.removeFiles()
        }
        let source = directory + "/hostile.c"
        try Self.hostileProgram.write(toFile: source, atomically: true, encoding: .utf8)
        let binary = directory + "/hostile"
        try compile([source], into: binary)

        // The fake server: one connection per case, on its own thread.
        let failures = FailureLog()
        let server = Thread {
            for scenario in 0..<7 {
                var entry = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
                guard poll(&entry, 1, 10_000) == 1 else { return failures.add("case \(scenario): no connection") }
                let connection = accept(listener, nil, nil)
                guard connection >= 0 else { return failures.add("case \(scenario): accept failed") }
                defer { close(connection) }
                var header = [UInt8](repeating: 0, count: Message.headerSize)
                guard recv(connection, &header, header.count, 0) == header.count,
                      let request = try? header.withUnsafeBytes({ try Message.decode($0) }), request.type == .ipcRingAttach else {
                    return failures.add("case \(scenario): no MSG_IPC_RING_ATTACH")
                }
                guard let (fd, memory) = try? Self.hostileRing(scenario) else { return failures.add("case \(scenario): no memfd") }
                var reply = [UInt8](repeating: 0, count: Message.headerSize)
                reply.withUnsafeMutableBytes {
                    Message(type: .ipcRingAttach, flags: .reply, param1: 128, param2: 16, sequence: request.sequence).encode(into: $0)
                }
                var descriptors = [fd]
                _ = CL_ipc_send(connection, reply, reply.count, nil, 0, &descriptors, 1, CL_MSG_NOSIGNAL)
                if memory == nil { close(fd) }
                if let memory, scenario >= 5 { Self.breakRing(scenario, memory) }
                // Until the client closes this connection (ipc_close), then the next case.
                var byte: UInt8 = 0
                while recv(connection, &byte, 1, 0) > 0 {}
                withExtendedLifetime(memory) {}
            }
        }
        server.start()
        let result = run(binary, [String(getpid())], environment: ["LIMITLESS_RUNTIME_DIR=" + directory])
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertEqual(failures.all, [])
        let eproto = -EPROTO
        let expected = (0..<5).map { "attach \($0): \(eproto)" }
            + ["attach 5: 0", "exchange 5: \(eproto)", "attach 6: 0", "exchange 6: \(eproto)", "done"]
        XCTAssertEqual(result.output.split(separator: "\n").map(String.init), expected, result.output)
    }

    final class FailureLog: @unchecked Sendable {
        private let lock = NSLock()
        private var failures: [String] = []
        func add(_ failure: String) { lock.lock(); failures.append(failure); lock.unlock() }
        var all: [String] { lock.lock(); defer { lock.unlock() }; return failures }
    }
}
