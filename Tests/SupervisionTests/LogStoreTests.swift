import PlatformTestSupport
import Glibc
import XCTest
@testable import Supervision

final class LogStoreTests: XCTestCase {
    let second: Int64 = 1_000_000_000
    let start: Int64 = 1_795_000_000 * 1_000_000_000

    func record(_ text: String, at timestamp: Int64, server: String = "vfs", stream: LogStream = .stdout,
                level: LogLevel = .info) -> LogRecord {
        LogRecord(timestamp: timestamp, server: server, stream: stream, level: level, text: text)
    }

    func testTimestampsFormatAndParseBack() {
        XCTAssertEqual(LogTimestamp.format(0), "1970-01-01T00:00:00.000000000Z")
        XCTAssertEqual(LogTimestamp.format(951_782_400 * second + 5), "2000-02-29T00:00:00.000000005Z")
        XCTAssertEqual(LogTimestamp.format(-1), "1969-12-31T23:59:59.999999999Z")
        var random = SplitMix(state: 3)
        for _ in 0..<2000 {
            let value = Int64.random(in: -2_000_000_000 * second...4_000_000_000 * second, using: &random)
            XCTAssertEqual(LogTimestamp.parse(Substring(LogTimestamp.format(value))), value)
        }
        XCTAssertNil(LogTimestamp.parse("2026-13-01T00:00:00.000000000Z"))
        XCTAssertNil(LogTimestamp.parse("yesterday"))
    }

    func testFileLinesEscapeAndRoundTrip() {
        let original = record("two\nlines\twith \\ and \u{1} and ünïcode", at: start, stream: .stderr, level: .error)
        XCTAssertFalse(original.fileLine.contains("\n"))
        XCTAssertEqual(LogRecord(fileLine: Substring(original.fileLine), server: "vfs"), original)
        XCTAssertNil(LogRecord(fileLine: "not a record", server: "vfs"))
    }

    func testQueriesByCountAndTime() throws {
        let store = try LogStore(LogStore.Configuration())
        for index in 0..<100 { store.append(record("line \(index)", at: start + Int64(index) * second)) }
        store.append(record("other server", at: start, server: "usb"))
        XCTAssertEqual(store.records(server: "vfs").count, 100)
        XCTAssertEqual(store.records(server: "vfs", last: 3).map(\.text), ["line 97", "line 98", "line 99"])
        XCTAssertEqual(store.records(server: "vfs", since: start + 95 * second).map(\.text).first, "line 95")
        XCTAssertEqual(store.records(server: "vfs", last: 2, since: start + 10 * second).map(\.text), ["line 98", "line 99"])
        XCTAssertEqual(store.records(server: "vfs", last: 0), [])
        XCTAssertEqual(store.records(server: "usb").map(\.text), ["other server"])
        XCTAssertEqual(store.records(server: "nobody"), [])
    }

    func testMemoryStaysWithinTheLimitAndOldestGoFirst() throws {
        var configuration = LogStore.Configuration()
        configuration.memoryLimit = 64 << 10
        configuration.maximumLineLength = 1024
        configuration.linesPerSecond = 1_000_000
        configuration.burst = 1_000_000
        let store = try LogStore(configuration)
        for index in 0..<20_000 {
            store.append(record("line \(index) " + String(repeating: "x", count: index % 200), at: start + Int64(index)))
            if index % 1000 == 0 { XCTAssertLessThanOrEqual(store.statistics(server: "vfs").bytes, configuration.memoryLimit) }
        }
        let statistics = store.statistics(server: "vfs")
        XCTAssertLessThanOrEqual(statistics.bytes, configuration.memoryLimit)
        XCTAssertGreaterThan(statistics.evicted, 0)
        XCTAssertEqual(statistics.records + statistics.evicted, 20_000)
        XCTAssertTrue(store.records(server: "vfs").last!.text.hasPrefix("line 19999 "))
        // A huge line is cut, not stored whole.
        store.append(record(String(repeating: "y", count: 100_000), at: start + 30_000))
        let cut = store.records(server: "vfs", last: 1)[0].text
        XCTAssertTrue(cut.hasSuffix("[\(100_000 - 1024) bytes cut]"), String(cut.suffix(40)))
    }

    func testAFloodIsDroppedCountedAndReported() throws {
        var configuration = LogStore.Configuration()
        configuration.linesPerSecond = 100
        configuration.burst = 200
        let store = try LogStore(configuration)
        var accepted = 0
        for index in 0..<100_000 where store.append(record("flood \(index)", at: start)) { accepted += 1 }
        XCTAssertEqual(accepted, 200)
        XCTAssertEqual(store.statistics(server: "vfs").dropped, 100_000 - 200)
        // One second later the bucket holds 100 lines again; the first accepted line is preceded
        // by the count of what was lost.
        XCTAssertTrue(store.append(record("calm again", at: start + second)))
        let tail = store.records(server: "vfs", last: 2)
        XCTAssertEqual(tail[0].stream, .supervisor)
        XCTAssertEqual(tail[0].level, .warning)
        XCTAssertTrue(tail[0].text.hasPrefix("99800 lines dropped"), tail[0].text)
        XCTAssertEqual(tail[1].text, "calm again")
    }

    func testFlushReportsAFloodThatJustStopped() throws {
        var configuration = LogStore.Configuration()
        configuration.linesPerSecond = 10
        configuration.burst = 10
        let store = try LogStore(configuration)
        for index in 0..<25 { store.append(record("x\(index)", at: start)) }
        store.flush(now: start + 5 * second)
        XCTAssertEqual(store.records(server: "vfs", last: 1).first?.text.hasPrefix("15 lines dropped"), true)
        store.flush(now: start + 6 * second)  // nothing new to report
        XCTAssertEqual(store.records(server: "vfs").count, 11)
    }

    func testFilesRotateBySizeAndKeepK() throws {
        let directory = try TemporaryDirectory()
        var configuration = LogStore.Configuration(directory: directory.path)
        configuration.rotateAt = 4096
        configuration.keepRotated = 2
        let store = try LogStore(configuration)
        let line = String(repeating: "z", count: 100)
        for index in 0..<400 { store.append(record("\(index) \(line)", at: start + Int64(index) * second)) }
        store.append(record("usb says hi", at: start, server: "usb"))
        XCTAssertEqual(directory.files(), ["usb.log", "vfs.log", "vfs.log.1", "vfs.log.2"])
        for name in ["vfs.log", "vfs.log.1", "vfs.log.2"] {
            var info = stat()
            XCTAssertEqual(stat(directory.path + "/" + name, &info), 0)
            XCTAssertLessThanOrEqual(Int(info.st_size), 4096, name)
            XCTAssertGreaterThan(Int(info.st_size), 0, name)
        }
        // The files hold the newest lines, in order, ending with the last one.
        let fromFiles = store.fileRecords(server: "vfs")
        XCTAssertEqual(fromFiles.last?.text, "399 \(line)")
        XCTAssertEqual(fromFiles.map(\.timestamp), fromFiles.map(\.timestamp).sorted())
        XCTAssertLessThan(fromFiles.count, 400)
        XCTAssertEqual(store.fileErrors.count, 0)
    }

    func testALogDirectoryThatIsAFileIsRefused() throws {
        let directory = try TemporaryDirectory()
        let path = directory.path + "/plain"
        close(open(path, O_WRONLY | O_CREAT, 0o600))
        XCTAssertThrowsError(try LogStore(LogStore.Configuration(directory: path))) { error in
            XCTAssertTrue("\(error)".contains("not a directory"), "\(error)")
        }
        // A missing directory is created.
        _ = try LogStore(LogStore.Configuration(directory: directory.path + "/logs"))
        XCTAssertTrue(directory.files().contains("logs"))
        rmdir(directory.path + "/logs")
    }
}
