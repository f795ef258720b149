import XCTest
import CLimitless
#if canImport(Glibc)
import Glibc
#endif
@testable import IPC

/// The rings between two real processes. The child is forked and only uses the ring (mapped
/// before the fork, MAP_SHARED, so both see one memfd), starts no threads, and leaves with _exit:
/// it reports through its exit status.
final class RingTwoProcessTests: XCTestCase {
    /// Runs `child` in a forked process; returns its exit status.
    private func fork(_ child: () -> Int32) -> pid_t {
        let pid = Glibc.fork()
        if pid == 0 { _exit(child()) }
        XCTAssertGreaterThan(pid, 0, "fork failed")
        return pid
    }
    private func exitStatus(_ pid: pid_t) -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        // WIFEXITED / WEXITSTATUS are macros.
        return status & 0x7F == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
    }

    func testAMillionMessagesArriveInOrder() throws {
        let count: UInt64 = 1_000_000
        let memory = try SharedRingMemory.create(layout: RingLayout(slotSize: 64, capacity: 256))
        var server = try memory.serverEnd()
        let pid = fork {
            guard var client = try? memory.clientEnd() else { return 2 }
            var message = (UInt64(0), ~UInt64(0))
            for sequence in 0..<count {
                message = (sequence, ~sequence)
                guard (try? withUnsafeBytes(of: &message) { try client.requests.send($0, timeoutNanoseconds: 5_000_000_000) }) == true else { return 3 }
            }
            return 0
        }
        var expected: UInt64 = 0
        var misordered = 0
        var buffer = (UInt64(0), UInt64(0))
        while expected < count {
            guard try server.requests.waitForMessage(timeoutNanoseconds: 5_000_000_000) else {
                XCTFail("no message \(expected) within 5 s")
                break
            }
            _ = withUnsafeMutableBytes(of: &buffer) { server.requests.tryReceive(into: $0) }
            if buffer.0 != expected || buffer.1 != ~expected { misordered += 1 }
            expected += 1
        }
        XCTAssertEqual(misordered, 0)
        XCTAssertEqual(expected, count)
        XCTAssertEqual(exitStatus(pid), 0)
    }

    func testSleepingConsumerIsWokenByTheProducer() throws {
        let memory = try SharedRingMemory.create(layout: RingLayout(slotSize: 64, capacity: 16))
        var server = try memory.serverEnd()
        let pid = fork {
            guard var client = try? memory.clientEnd() else { return 2 }
            usleep(50_000)
            guard (try? withUnsafeBytes(of: UInt64(7)) { try client.requests.trySend($0) }) == true else { return 3 }
            return Int32(client.requests.wakeups)  // expected: exactly one futex wake
        }
        let start = CL_monotonic_ns()
        // Spin 10 µs, then sleep in slices of up to 10 s: only the wake can end the wait early.
        let policy = RingWaitPolicy(spinNanoseconds: 10_000, sleepSliceNanoseconds: 10_000_000_000)
        XCTAssertTrue(try server.requests.waitForMessage(policy: policy, timeoutNanoseconds: 10_000_000_000))
        let waited = CL_monotonic_ns() - start
        XCTAssertEqual(server.requests.tryReceive { $0.load(as: UInt64.self) }, 7)
        XCTAssertGreaterThanOrEqual(server.requests.sleeps, 1, "the consumer went to sleep in the kernel")
        XCTAssertLessThan(waited, 2_000_000_000, "woken by the producer, not by a timeout")
        XCTAssertEqual(exitStatus(pid), 1, "the producer issued one futex wake")
    }

    func testRoundTripsWithAnEchoServer() throws {
        let rounds = 20_000
        let memory = try SharedRingMemory.create(layout: RingLayout(slotSize: 64, capacity: 64))
        var client = try memory.clientEnd()
        let pid = fork {
            guard var server = try? memory.serverEnd() else { return 2 }
            var message = [UInt8](repeating: 0, count: 56)
            for _ in 0..<rounds {
                let got = message.withUnsafeMutableBytes { buffer in
                    (try? server.requests.receive(into: buffer, timeoutNanoseconds: 5_000_000_000)) == true
                }
                guard got else { return 3 }
                message[0] &+= 1  // the reply differs from the request
                guard (try? message.withUnsafeBytes { try server.responses.send($0) }) == true else { return 4 }
            }
            return 0
        }
        var request = [UInt8](repeating: 0, count: 56)
        var response = [UInt8](repeating: 0, count: 56)
        for round in 0..<rounds {
            request[0] = UInt8(truncatingIfNeeded: round)
            request[1] = UInt8(truncatingIfNeeded: round >> 8)
            let ok = try request.withUnsafeBytes { req in
                try response.withUnsafeMutableBytes { try client.sendReceive(req, into: $0, timeoutNanoseconds: 5_000_000_000) }
            }
            XCTAssertTrue(ok)
            XCTAssertEqual(response[0], request[0] &+ 1)
            XCTAssertEqual(response[1], request[1])
            if !ok { break }
        }
        XCTAssertEqual(exitStatus(pid), 0)
    }
}
