import Foundation
import IPC
import XCTest
@testable import Storage
#if canImport(Glibc)
import Glibc
#endif

/// `limitless-storage`'s logic (`StorageTool`) against a RAM-backed block server in a temporary
/// runtime directory.
final class StorageToolTests: XCTestCase {
    private var directory = ""
    private var device: MemoryBlockDevice!
    private var server: IPCServer!

    override func setUpWithError() throws {
        var template = Array("/tmp/limitless-stool-XXXXXX".utf8CString)
        directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        device = MemoryBlockDevice(namespaces: [
            1: BlockGeometry(blockSize: 512, blockCount: 8192),
            2: BlockGeometry(blockSize: 4096, blockCount: 1024),
        ])
    }

    override func tearDown() {
        server?.stop()
        server = nil
        device = nil
        _ = rmdir(directory)
    }

    private func startServer(in dir: String? = nil) throws -> BlockClient {
        let block = BlockServer(device: device)
        server = try block.makeIPCServer(name: "storage", directory: dir ?? directory)
        server.start()
        return try StorageTool.connect(name: "storage", directory: dir ?? directory)
    }

    func testInfoProbesUntilENOENT() throws {
        let client = try startServer()
        let namespaces = try StorageTool.namespaces(client)
        XCTAssertEqual(namespaces, [
            .init(nsid: 1, geometry: BlockGeometry(blockSize: 512, blockCount: 8192)),
            .init(nsid: 2, geometry: BlockGeometry(blockSize: 4096, blockCount: 1024)),
        ])
        XCTAssertEqual(StorageTool.formatInfo(namespaces, json: false), """
            NSID  BLOCK SIZE  BLOCKS  CAPACITY
            1            512    8192   4.0 MiB
            2           4096    1024   4.0 MiB

            """)
        XCTAssertEqual(StorageTool.formatInfo(namespaces, json: true),
                       "{\"namespaces\":[{\"nsid\":1,\"block_size\":512,\"block_count\":8192,\"capacity_bytes\":4194304},"
                       + "{\"nsid\":2,\"block_size\":4096,\"block_count\":1024,\"capacity_bytes\":4194304}]}\n")
        XCTAssertEqual(try StorageTool.namespaces(client, nsid: 2).map(\.nsid), [2])
        XCTAssertThrowsError(try StorageTool.namespaces(client, nsid: 3)) { error in
            XCTAssertEqual((error as? StorageTool.Failure)?.message,
                           "geometry of namespace 3 failed with ENOENT: namespace 3 does not exist")
        }
    }

    func testWriteThenReadRoundTripAndHex() throws {
        let client = try startServer()
        // 100 KiB + 100 bytes onto 512-byte blocks: several 64 KiB requests and a padded last block.
        let data = StorageTool.pattern(seed: 42, count: 100 * 1024 + 100)
        XCTAssertEqual(StorageTool.pattern(seed: 42, count: 64), Array(data.prefix(64)), "the pattern is deterministic")
        var lines: [String] = []
        var now = ContinuousClock.now
        let progress = StorageTool.ProgressReporter(verb: "wrote", total: UInt64(data.count), enabled: true,
                                                    clock: { now += .milliseconds(10); return now }) { lines.append($0) }
        let summary = try StorageTool.write(client, nsid: 1, lba: 10, data: data, progress: progress)
        XCTAssertEqual(summary, StorageTool.WriteSummary(nsid: 1, lba: 10, blocks: 201, bytes: 102_500, paddedBytes: 412))
        XCTAssertEqual(summary.format(json: false),
                       "wrote 201 blocks (100.5 KiB) to namespace 1 at LBA 10; the last block was padded with 412 zero bytes\n")
        XCTAssertEqual(lines.last, "wrote 100.1 KiB / 100.1 KiB (100%)\n")

        let back = try StorageTool.readAll(client, nsid: 1, lba: 10, blocks: 201)
        XCTAssertEqual(Array(back.prefix(data.count)), data)
        XCTAssertEqual(Array(back.suffix(412)), [UInt8](repeating: 0, count: 412))

        // Hex through the tool: offsets from the namespace's byte 0 (LBA 10 × 512 = 0x1400).
        let text = "Hello, Limitless block tool!\n"
        try StorageTool.write(client, nsid: 1, lba: 10, data: Array(text.utf8))
        var dump = ""
        try StorageTool.readHex(client, nsid: 1, lba: 10, blocks: 1) { dump += $0 }
        let dumpLines = dump.split(separator: "\n", omittingEmptySubsequences: false)
        XCTAssertEqual(dumpLines.count, 512 / 16 + 1)
        XCTAssertEqual(dumpLines[0], "00001400: 4865 6c6c 6f2c 204c 696d 6974 6c65 7373  Hello, Limitless")
        XCTAssertEqual(dumpLines[1], "00001410: 2062 6c6f 636b 2074 6f6f 6c21 0a00 0000   block tool!....")
        XCTAssertEqual(dumpLines[2], "00001420: 0000 0000 0000 0000 0000 0000 0000 0000  ................")
        XCTAssertEqual(StorageTool.hexdump([0x41, 0x42, 0x43], offset: 0), "00000000: 4142 43                                  ABC\n")
    }

    func testPastTheEndIsRefusedBeforeSending() throws {
        let client = try startServer()
        let before = try StorageTool.readAll(client, nsid: 2, lba: 1020, blocks: 4)
        // 5 blocks from LBA 1020 of a 1024-block namespace: nothing may be written.
        let data = [UInt8](repeating: 0xAB, count: 4 * 4096 + 1)
        XCTAssertThrowsError(try StorageTool.write(client, nsid: 2, lba: 1020, data: data)) { error in
            XCTAssertEqual((error as? StorageTool.Failure)?.message,
                           "LBA 1020 + 5 blocks runs past the end of namespace 2 (1024 blocks of 4096 bytes, last LBA 1023); nothing was sent")
        }
        XCTAssertEqual(try StorageTool.readAll(client, nsid: 2, lba: 1020, blocks: 4), before)
        XCTAssertThrowsError(try StorageTool.readAll(client, nsid: 2, lba: 1024, blocks: 1))
        XCTAssertThrowsError(try StorageTool.readAll(client, nsid: 2, lba: 0, blocks: 0))
    }

    func testProgressFormattingAndCadence() {
        XCTAssertEqual(StorageTool.formatProgress(verb: "read", done: 12 << 20, total: 64 << 20), "read 12.0 MiB / 64.0 MiB (18%)")
        XCTAssertEqual(StorageTool.formatProgress(verb: "wrote", done: 0, total: 1000), "wrote 0 B / 1000 B (0%)")
        XCTAssertEqual(StorageTool.formatProgress(verb: "read", done: 1536, total: 1536), "read 1.5 KiB / 1.5 KiB (100%)")
        XCTAssertEqual(StorageTool.humanBytes(3 << 40), "3.0 TiB")

        // Every 10% (clock frozen), then the final line once.
        var lines: [String] = []
        let frozen = ContinuousClock.now
        let reporter = StorageTool.ProgressReporter(verb: "read", total: 100, enabled: true, clock: { frozen }) { lines.append($0) }
        for done in stride(from: 1, through: 100, by: 1) { reporter.update(done: UInt64(done)) }
        reporter.finish(done: 100)
        XCTAssertEqual(lines.count, 10)
        XCTAssertEqual(lines.first, "read 10 B / 100 B (10%)\n")
        XCTAssertEqual(lines.last, "read 100 B / 100 B (100%)\n")

        // Every interval even without a new 10%; nothing when disabled.
        var now = ContinuousClock.now
        var timed: [String] = []
        let slow = StorageTool.ProgressReporter(verb: "read", total: 1000, enabled: true, clock: { now }) { timed.append($0) }
        slow.update(done: 1)
        now += .seconds(1)
        slow.update(done: 2)
        XCTAssertEqual(timed, ["read 2 B / 1000 B (0%)\n"])
        var none: [String] = []
        let off = StorageTool.ProgressReporter(verb: "read", total: 10, enabled: false) { none.append($0) }
        off.update(done: 10)
        off.finish(done: 10)
        XCTAssertEqual(none, [])
    }

    func testNoServerMessage() {
        XCTAssertThrowsError(try StorageTool.connect(name: "storage", directory: directory)) { error in
            XCTAssertEqual((error as? StorageTool.Failure)?.message,
                           "no storage server at \(directory)/storage.sock: start storage_server or the supervisor")
        }
        XCTAssertEqual(StorageTool.runtimeDirectory(option: nil, environment: nil), "/run/limitless")
        XCTAssertEqual(StorageTool.runtimeDirectory(option: nil, environment: "/tmp/x"), "/tmp/x")
        XCTAssertEqual(StorageTool.runtimeDirectory(option: "/tmp/y", environment: "/tmp/x"), "/tmp/y")
    }

    func testBenchReportsFigures() throws {
        let client = try startServer()
        let result = try StorageTool.bench(client, options: .init(nsid: 2, seconds: 0.2, queueDepth: 4, ioSize: 4096, mode: .mixed))
        XCTAssertGreaterThan(result.operations, 0)
        XCTAssertEqual(result.reads + result.writes, result.operations)
        XCTAssertLessThanOrEqual(result.p50Nanoseconds, result.p99Nanoseconds)
        let text = result.format(json: false)
        for label in ["IOPS", "MB/s", "latency p50", "latency p99"] { XCTAssertTrue(text.contains(label), label) }
        XCTAssertThrowsError(try StorageTool.bench(client, options: .init(nsid: 2, ioSize: 1000)))
        XCTAssertEqual(StorageTool.percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.5), 5)
        XCTAssertEqual(StorageTool.percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.99), 10)
    }

    func testBenchThroughSharedAndRegisteredBuffers() throws {
        let client = try startServer()
        for path in [StorageTool.BenchDataPath.shared, .zeroCopy] {
            let before = device.directTransfers
            let result = try StorageTool.bench(client, options: .init(nsid: 2, seconds: 0.2, queueDepth: 8, ioSize: 4096,
                                                                      mode: .mixed, dataPath: path))
            XCTAssertGreaterThan(result.operations, 0, "\(path)")
            XCTAssertTrue(result.format(json: true).contains("\"data_path\":\"\(path.rawValue)\""))
            if path == .zeroCopy {
                XCTAssertEqual(device.directTransfers - before, result.operations, "every zero-copy I/O went straight to the mapping")
            } else {
                XCTAssertEqual(device.directTransfers, before, "shared without registering copies")
            }
        }
        // The bench unregistered its buffer at the end.
        XCTAssertTrue(device.clientMappings.isEmpty)
    }

    /// Not a check: with LIMITLESS_STORAGE_DEMO_DIR set, serves the RAM device there for
    /// LIMITLESS_STORAGE_DEMO_SECONDS (default 60) so `limitless-storage` can be tried by hand.
    func testServeRAMDeviceForManualRuns() throws {
        guard let dir = ProcessInfo.processInfo.environment["LIMITLESS_STORAGE_DEMO_DIR"] else {
            throw XCTSkip("set LIMITLESS_STORAGE_DEMO_DIR to serve a RAM device for manual runs")
        }
        let seconds = Double(ProcessInfo.processInfo.environment["LIMITLESS_STORAGE_DEMO_SECONDS"] ?? "") ?? 60
        _ = try startServer(in: dir)
        Thread.sleep(forTimeInterval: seconds)
    }
}
