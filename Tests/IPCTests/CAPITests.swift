import CLimitless
import Foundation
import PlatformTestSupport
import XCTest
@testable import IPC
#if canImport(Glibc)
import Glibc
#endif

/// The C client library (Sources/limitless_ipc) against a Swift IPCServer: C programs are
/// compiled with the system's `cc` (-std=c11 -Wall -Wextra -Werror) and run as separate processes
/// with LIMITLESS_RUNTIME_DIR pointing at a temporary runtime directory.
final class CAPITests: RuntimeDirectoryTestCase {
    private static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path

    /// What the handler saw, request by request.
    final class Recorder: @unchecked Sendable {
        struct Seen {
            var type: MessageType
            var senderPID: Int32
            var senderUID: UInt32
            var shared: Bool
            var handle: UInt32
            var data: [UInt8]
            var writable: Bool
            var param1: UInt64
        }
        private let lock = NSLock()
        private var seen: [Seen] = []
        func add(_ entry: Seen) { lock.lock(); seen.append(entry); lock.unlock() }
        var all: [Seen] { lock.lock(); defer { lock.unlock() }; return seen }
    }

    /// A server recording every request. Replies: VFS_STAT "stat:" + data, param1 = sender pid,
    /// param2 = request param1 + 1; VFS_WRITE / BLOCK_WRITE the data echoed (up to 256 bytes),
    /// param1 = byte sum, param2 = count; VFS_READ param1 bytes of (i & 0xFF); VFS_OPEN ENOENT.
    private func startServer(_ recorder: Recorder, rings: Int = 0) throws -> IPCServer {
        var configuration = IPCServer.Configuration()
        configuration.maxRings = rings
        let server = try IPCServer(name: "vfs", directory: directory, configuration: configuration) { request, payload, _ in
            var handle: UInt32 = 0
            if case .shared(let h, _, _) = request.data { handle = h }
            recorder.add(.init(type: request.type, senderPID: request.senderPID, senderUID: request.senderUID,
                               shared: request.flags.contains(.sharedData), handle: handle, data: Array(payload.data),
                               writable: payload.writableData != nil, param1: request.param1))
            switch request.type {
            case .vfsStat:
                let prefix = Array("stat:".utf8)
                let count = prefix.count + payload.data.count
                for (index, byte) in (prefix + Array(payload.data)).enumerated() { payload.reply[index] = byte }
                return IPCReply(param1: UInt64(bitPattern: Int64(request.senderPID)), param2: request.param1 + 1, payloadCount: count)
            case .vfsWrite, .blockWrite:
                var sum: UInt64 = 0
                for byte in payload.data { sum += UInt64(byte) }
                let echo = min(256, payload.data.count)
                for index in 0..<echo { payload.reply[index] = payload.data[index] }
                return IPCReply(param1: sum, param2: UInt64(payload.data.count), payloadCount: echo)
            case .vfsRead:
                let count = Int(min(request.param1, UInt64(Message.maxInlinePayload)))
                for index in 0..<count { payload.reply[index] = UInt8(truncatingIfNeeded: index) }
                return IPCReply(param1: UInt64(count), payloadCount: count)
            case .vfsOpen:
                return .error(.ENOENT)
            default:
                return .error(.ENOSYS)
            }
        }
        server.start()
        return server
    }

    /// Runs `program arguments` with `environment` added; returns pid, exit status, stdout+stderr.
    func run(_ program: String, _ arguments: [String], environment: [String] = [], search: Bool = false)
        -> (pid: pid_t, spawned: Int32, status: Int32, output: String) {
        let outputPath = directory + "/out-\(UInt32.random(in: 0...UInt32.max)).txt"
        let pid: pid_t
        switch ChildProcess.spawn(program, arguments, environment: environment, outputPath: outputPath, search: search,
                                  dropping: { $0.hasPrefix("LIMITLESS_RUNTIME_DIR=") }) {
        case .success(let child): pid = child
        case .failure(let failure): return (0, failure.code, -1, "")
        }
        let status = ChildProcess.wait(pid)
        let output = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
        return (pid, 0, status, output)
    }

    /// Compiles C sources with the library into `output`; skips the test if there is no `cc`.
    func compile(_ sources: [String], into output: String) throws {
        let include = Self.repository + "/Sources/limitless_ipc/include"
        let library = ["limitless_ipc.c", "ring.c"].map { Self.repository + "/Sources/limitless_ipc/" + $0 }
        let result = run("cc", ["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-I", include] + sources + library + ["-o", output],
                         search: true)
        if result.spawned == ENOENT { throw XCTSkip("no C compiler: `cc` is not on PATH (posix_spawnp: ENOENT)") }
        XCTAssertEqual(result.spawned, 0, "posix_spawnp(cc) failed: \(result.spawned)")
        guard result.status == 0 else {
            throw CompileError(message: "cc failed (status \(result.status)):\n\(result.output)")
        }
        XCTAssertEqual(result.output, "", "the compiler printed diagnostics")
    }

    struct CompileError: Error, CustomStringConvertible { let message: String; var description: String { message } }

    private func waitUntil(_ condition: () -> Bool, file: StaticString = #filePath, line: UInt = #line) {
        for _ in 0..<500 where !condition() { usleep(10_000) }
        XCTAssertTrue(condition(), "condition not reached within 5 s", file: file, line: line)
    }

    // MARK: The example

    func testExampleClientTalksToASwiftServer() throws {
        let recorder = Recorder()
        let server = try startServer(recorder)
        defer { server.stop() }
        let binary = directory + "/client"
        try compile([Self.repository + "/Examples/c/client.c"], into: binary)
        let path = "/some/file.txt"
        let result = run(binary, [String(getpid()), path], environment: ["LIMITLESS_RUNTIME_DIR=" + directory])
        XCTAssertEqual(result.status, 0, result.output)
        let child = result.pid
        let lines = result.output.split(separator: "\n").map(String.init)

        // What the server saw: the real pid (the example writes 1 into sender_pid), the inline
        // bytes, and the shared region's content, named twice by the same handle (shared once).
        let seen = recorder.all
        XCTAssertEqual(seen.map(\.type), [.vfsStat, .vfsWrite, .vfsWrite])
        XCTAssertTrue(seen.allSatisfy { $0.senderPID == child && $0.senderUID == getuid() }, "\(seen.map(\.senderPID)) vs \(child)")
        XCTAssertEqual(seen[0].data, Array(path.utf8))
        XCTAssertFalse(seen[0].shared)
        XCTAssertEqual(seen[0].param1, 42)
        XCTAssertEqual(seen[1].data, Array("shared hello from C".utf8))
        XCTAssertEqual(seen[2].data, Array("hello from C".utf8))
        XCTAssertTrue(seen[1].shared && seen[2].shared)
        XCTAssertEqual(seen[1].handle, 1)
        XCTAssertEqual(seen[2].handle, 1, "the capability is passed to the server once and named by its handle after")
        XCTAssertFalse(seen[1].writable, "a capability is sealed against writes")

        // What the program printed.
        XCTAssertTrue(lines.contains("runtime_dir: " + directory), result.output)
        XCTAssertTrue(lines.contains("stat: status=0 (success) param1=\(child) param2=43 param3=0 data_size=\(5 + path.utf8.count) data=\"stat:\(path)\""),
                      result.output)
        let sum = "shared hello from C".utf8.reduce(0) { $0 + Int($1) }
        XCTAssertTrue(lines.contains("write: status=0 (success) param1=\(sum) param2=19 param3=0 data_size=19 data=\"shared hello from C\""),
                      result.output)
        XCTAssertTrue(lines.contains { $0.hasPrefix("async: status=0") && $0.hasSuffix("data=\"hello from C\"") }, result.output)
        XCTAssertEqual(lines.last, "done")
        waitUntil { server.connectionCount == 0 && server.sharedRegionCount == 0 }
    }

    // MARK: The library's edges

    private static let edgeProgram = #"""
    #include <errno.h>
    #include <stdint.h>
    #include <stdio.h>
    #include <stdlib.h>
    #include <string.h>
    #include <unistd.h>
    #include "limitless_ipc.h"

    static int checks;
    #define CHECK(cond) do { if (!(cond)) { printf("FAILED line %d: %s\n", __LINE__, #cond); return 1; } checks++; } while (0)
    #define PTR(p) ((uint64_t)(uintptr_t)(p))

    int main(int argc, char **argv) {
        if (argc < 3) return 2;
        pid_t server = (pid_t)atoi(argv[1]);
        char buffer[128];
        ipc_message_t msg, reply;

        /* A forged sender pid in the request: the server's handler reports the real one. */
        memset(&msg, 0, sizeof(msg));
        memset(&reply, 0, sizeof(reply));
        msg.type = MSG_VFS_STAT; msg.sender_pid = 1; msg.param1 = 7;
        msg.data_ptr = PTR("abc"); msg.data_size = 3;
        reply.data_ptr = PTR(buffer); reply.data_size = sizeof(buffer);
        CHECK(ipc_send_receive(server, &msg, &reply) == 0);
        CHECK(reply.status == 0 && reply.param1 == (uint64_t)getpid() && reply.param2 == 8);
        CHECK(reply.data_size == 8 && memcmp(buffer, "stat:abc", 8) == 0);
        CHECK(reply.type == MSG_VFS_STAT && (reply.flags & IPC_FLAG_REPLY) && reply.sender_pid == server);
        CHECK(reply.data_ptr == PTR(buffer));

        /* A reply larger than the buffer: -EMSGSIZE, the first bytes, the actual size. */
        memset(&msg, 0, sizeof(msg));
        msg.type = MSG_VFS_READ; msg.param1 = 1000;
        reply.data_ptr = PTR(buffer); reply.data_size = 10;
        CHECK(ipc_send_receive(server, &msg, &reply) == -EMSGSIZE);
        CHECK(reply.data_size == 1000 && reply.param1 == 1000 && buffer[9] == 9);
        /* A big reply that fits (64 KiB). */
        static unsigned char big[65536];
        msg.param1 = 65536;
        reply.data_ptr = PTR(big); reply.data_size = sizeof(big);
        CHECK(ipc_send_receive(server, &msg, &reply) == 0);
        CHECK(reply.data_size == 65536 && big[65535] == 0xFF && big[256] == 0);

        /* Errors from the server are statuses, not failures. */
        memset(&msg, 0, sizeof(msg));
        msg.type = MSG_VFS_OPEN;
        reply.data_ptr = 0; reply.data_size = 0;
        CHECK(ipc_send_receive(server, &msg, &reply) == 0 && reply.status == ENOENT);
        msg.type = 0x7777;  /* not in the registry */
        CHECK(ipc_send_receive(server, &msg, &reply) == 0 && reply.status == ENOSYS);

        /* Local refusals. */
        static unsigned char huge[65537];
        msg.type = MSG_VFS_WRITE; msg.data_ptr = PTR(huge); msg.data_size = sizeof(huge);
        CHECK(ipc_send_receive(server, &msg, &reply) == -EMSGSIZE);
        msg.data_size = 16; msg.flags = IPC_FLAG_REPLY;
        CHECK(ipc_send_receive(server, &msg, &reply) == -EINVAL);
        msg.flags = IPC_FLAG_SHARED; msg.data_ptr = 33;
        CHECK(ipc_send_receive(server, &msg, &reply) == -EBADF);
        msg.flags = 0; msg.data_ptr = 0;
        CHECK(ipc_send_receive(server, &msg, &reply) == -EINVAL);
        CHECK(ipc_send_receive(999999, &msg, &reply) == -ESRCH);
        CHECK(create_shared_memory_cap(NULL, 0) == -EINVAL);
        CHECK(ipc_receive(server, &reply, 50) == -ETIMEDOUT);

        /* Asynchronous sends; a synchronous call in between keeps their replies for ipc_receive. */
        uint32_t sequences[3], got;
        memset(&msg, 0, sizeof(msg));
        msg.type = MSG_VFS_STAT;
        for (int i = 0; i < 3; i++) { msg.param1 = 100 + i; CHECK(ipc_send_seq(server, &msg, &sequences[i]) == 0); }
        msg.param1 = 200;
        reply.data_ptr = PTR(buffer); reply.data_size = sizeof(buffer);
        CHECK(ipc_send_receive(server, &msg, &reply) == 0 && reply.param2 == 201);
        for (int i = 0; i < 3; i++) {
            reply.data_ptr = PTR(buffer); reply.data_size = sizeof(buffer);
            CHECK(ipc_receive_seq(server, &reply, 5000, &got) == 0);
            CHECK(got == sequences[i] && reply.param2 == (uint64_t)(101 + i));
        }

        /* A 1 MiB capability, used twice (shared once), its sum checked by the server. */
        size_t size = 1 << 20;
        unsigned char *data = malloc(size);
        uint64_t sum = 0;
        for (size_t i = 0; i < size; i++) { data[i] = (unsigned char)(i * 7); sum += data[i]; }
        int cap = create_shared_memory_cap(data, size);
        CHECK(cap >= 1);
        memset(data, 0, size);  /* the capability is a sealed copy: this changes nothing */
        memset(&msg, 0, sizeof(msg));
        msg.type = MSG_BLOCK_WRITE; msg.flags = IPC_FLAG_SHARED; msg.data_ptr = (uint64_t)cap; msg.data_size = (uint32_t)size;
        reply.data_ptr = 0; reply.data_size = 0;
        CHECK(ipc_send_receive(server, &msg, &reply) == -EMSGSIZE);  /* the echo does not fit 0 bytes */
        CHECK(reply.status == 0 && reply.param1 == sum && reply.param2 == size);
        msg.data_ptr = (uint64_t)cap | (uint64_t)(size - 4) << 32; msg.data_size = 4;
        reply.data_ptr = PTR(buffer); reply.data_size = sizeof(buffer);
        CHECK(ipc_send_receive(server, &msg, &reply) == 0 && reply.param2 == 4);
        CHECK(memcmp(buffer, (unsigned char[]){ (unsigned char)((size - 4) * 7), (unsigned char)((size - 3) * 7),
                                                (unsigned char)((size - 2) * 7), (unsigned char)((size - 1) * 7) }, 4) == 0);
        msg.data_ptr = (uint64_t)cap | (uint64_t)(size - 2) << 32;  /* past the end: the server says EINVAL */
        CHECK(ipc_send_receive(server, &msg, &reply) == 0 && reply.status == EINVAL);
        printf("shared-once\n");
        fflush(stdout);

        /* ipc_close: the next call reconnects and shares the capability again. */
        CHECK(ipc_close(server) == 0 && ipc_close(server) == -ENOENT);
        msg.data_ptr = (uint64_t)cap; msg.data_size = 8;
        reply.data_ptr = PTR(buffer); reply.data_size = sizeof(buffer);  /* the last call left data_size 0 */
        CHECK(ipc_send_receive(server, &msg, &reply) == 0 && reply.status == 0 && reply.param2 == 8);
        CHECK(ipc_release_shared_memory_cap(cap) == 0 && ipc_release_shared_memory_cap(cap) == -EBADF);
        CHECK(ipc_send_receive(server, &msg, &reply) == -EBADF);
        free(data);

        /* The runtime directory. */
        CHECK(ipc_set_runtime_dir("/nonexistent/limitless") == 0);
        CHECK(ipc_close(server) == 0);
        msg.flags = 0; msg.data_ptr = 0; msg.data_size = 0; msg.type = MSG_IPC_PING;
        CHECK(ipc_send_receive(server, &msg, &reply) == -ESRCH);
        CHECK(ipc_set_runtime_dir(NULL) == 0 && strcmp(ipc_runtime_dir(), argv[2]) == 0);
        CHECK(ipc_send_receive(server, &msg, &reply) == 0 && reply.status == 0);
        CHECK(strstr(ipc_strerror(-ESRCH), "pid") != NULL);

        printf("capi: %d checks passed\n", checks);
        return 0;
    }
    """#

    func testLibraryEdgesAgainstASwiftServer() throws {
        let recorder = Recorder()
        let server = try startServer(recorder)
        defer { server.stop() }
        let source = directory + "/edges.c"
        try Self.edgeProgram.write(toFile: source, atomically: true, encoding: .utf8)
        let binary = directory + "/edges"
        try compile([source], into: binary)
        let result = run(binary, [String(getpid()), directory], environment: ["LIMITLESS_RUNTIME_DIR=" + directory])
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains("shared-once"), result.output)
        XCTAssertTrue(result.output.hasSuffix("capi: 44 checks passed\n"), result.output)

        let seen = recorder.all
        XCTAssertFalse(seen.isEmpty)
        XCTAssertTrue(seen.allSatisfy { $0.senderPID == result.pid }, "every request carries the kernel's pid, never the forged 1")
        XCTAssertEqual(seen.first?.data, Array("abc".utf8))
        let shared = seen.filter(\.shared)
        // 1 MiB, its last 4 bytes (the out-of-range request is refused before the handler), and 8
        // bytes after ipc_close: a new connection, so the capability was shared again (handle 1 of
        // the new connection's table; without the new share it would have been EBADF).
        XCTAssertEqual(shared.map(\.data.count), [1 << 20, 4, 8])
        XCTAssertEqual(shared.map(\.handle), [1, 1, 1])
        XCTAssertEqual(shared.first?.data.count, 1 << 20)
        XCTAssertEqual(shared.first.map { $0.data[1000] }, UInt8(truncatingIfNeeded: 7000), "the server saw the copy, not the later memset")
        XCTAssertTrue(shared.allSatisfy { !$0.writable })
        waitUntil { server.connectionCount == 0 && server.sharedRegionCount == 0 }
    }

    // MARK: Rings

    func testRingClientRoundTripsAgainstASwiftServer() throws {
        let recorder = Recorder()
        let server = try startServer(recorder, rings: 1)
        defer { server.stop() }
        let binary = directory + "/ring_client"
        try compile([Self.repository + "/Examples/c/ring_client.c"], into: binary)
        let result = run(binary, [String(getpid())], environment: ["LIMITLESS_RUNTIME_DIR=" + directory])
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.hasSuffix("ring: 4026 checks passed\n"), result.output)

        // What the server saw: every request with the kernel's pid (the program forges 1), the
        // 1000 stat paths in order, and the shared region's bytes, which came over the ring.
        let seen = recorder.all
        XCTAssertTrue(seen.allSatisfy { $0.senderPID == result.pid }, "\(Set(seen.map(\.senderPID))) vs \(result.pid)")
        let stats = seen.filter { $0.type == .vfsStat }
        XCTAssertEqual(stats.prefix(1000).map { String(decoding: $0.data, as: UTF8.self) }, (0..<1000).map { "/file/\($0)" })
        let shared = seen.filter(\.shared)
        XCTAssertEqual(shared.map { String(decoding: $0.data, as: UTF8.self) }, ["shared over the ring"],
                       "the out-of-range request is refused before the handler")
        waitUntil { server.connectionCount == 0 && server.sharedRegionCount == 0 && server.ringCount == 0 }
    }

    /// `ring_client --bench`: figures printed, never asserted (the machine is shared and noisy);
    /// the run checks every echoed reply. The server here is a debug build: for figures, run it
    /// against a release `limitless-testserver --echo --rings 1` (README).
    func testRingClientBenchmarkModeRuns() throws {
        var configuration = IPCServer.Configuration()
        configuration.maxRings = 1
        let server = try IPCServer(name: "echo", directory: directory, configuration: configuration) { _, payload, _ in
            payload.reply.copyMemory(from: payload.data)
            return IPCReply(payloadCount: payload.data.count)
        }
        server.start()
        defer { server.stop() }
        let binary = directory + "/ring_bench"
        try compile([Self.repository + "/Examples/c/ring_client.c"], into: binary)
        let result = run(binary, [String(getpid()), "--bench", "4000"], environment: ["LIMITLESS_RUNTIME_DIR=" + directory])
        XCTAssertEqual(result.status, 0, result.output)
        print(result.output)
        let lines = result.output.split(separator: "\n")
        XCTAssertTrue(lines.contains { $0.hasPrefix("c ring   (ipc_ring_send_receive): RTT p50 ") }, result.output)
        XCTAssertTrue(lines.contains { $0.hasPrefix("c socket (ipc_send_receive):      RTT p50 ") }, result.output)
        XCTAssertTrue(lines.contains { $0.hasPrefix("c socket / ring RTT (p50): pooled ") }, result.output)
    }
}
