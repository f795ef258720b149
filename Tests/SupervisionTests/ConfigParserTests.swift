import PlatformTestSupport
import Glibc
import Platform
import XCTest
@testable import Supervision

final class ConfigParserTests: XCTestCase {
    /// Parses text that must be valid.
    func parse(_ text: String, file: StaticString = #filePath, line: UInt = #line) throws -> SupervisorConfiguration {
        do {
            return try ConfigParser.parse(text, file: "test.conf")
        } catch {
            XCTFail("unexpected errors:\n\(error)", file: file, line: line)
            throw error
        }
    }

    /// Parses text that must be invalid and returns its diagnostics.
    func errors(_ text: String, file: StaticString = #filePath, line: UInt = #line) -> [ConfigDiagnostic] {
        errors(Array(text.utf8), file: file, line: line)
    }

    func errors(_ bytes: [UInt8], file: StaticString = #filePath, line: UInt = #line) -> [ConfigDiagnostic] {
        do {
            let configuration = try ConfigParser.parse(bytes, file: "test.conf")
            XCTFail("accepted an invalid configuration: \(configuration.startOrder)", file: file, line: line)
            return []
        } catch {
            XCTAssertFalse(error.diagnostics.isEmpty, file: file, line: line)
            return error.diagnostics
        }
    }

    func assertError(_ text: String, line: Int, contains fragment: String, file: StaticString = #filePath, sourceLine: UInt = #line) {
        let diagnostics = errors(text, file: file, line: sourceLine)
        XCTAssertTrue(
            diagnostics.contains { $0.location.line == line && $0.message.contains(fragment) },
            "no error at line \(line) containing \"\(fragment)\"; got:\n" + diagnostics.map(\.description).joined(separator: "\n"),
            file: file, line: sourceLine)
    }

    // MARK: valid files

    func testTheExampleServersConfIsValid() throws {
        let path = #filePath.split(separator: "/").dropLast(3).joined(separator: "/")
        let configuration = try ConfigParser.load(path: "/" + path + "/servers.conf")
        XCTAssertEqual(configuration.startOrder.first, "storage_server")
        XCTAssertEqual(configuration.stopOrder.last, "storage_server")
        let storage = try XCTUnwrap(configuration["storage_server"])
        XCTAssertTrue(storage.capabilities.contains(.mmio(device: "NVME0")))
        XCTAssertEqual(storage.devices.first?.selector, .address(PCIAddress("0000:00:03.0")!))
    }

    func testAFullServerBlock() throws {
        let configuration = try parse("""
            # comment
            start_server disk /srv/disk --name "two words" 'single \\ quoted' mixed"quoted part"  # trailing comment

                device NVME0 0000:00:03.0
            \tdevice NIC0 8086:10d3
                device NVME1 class=010802
                capabilities CAP_PCI_CONFIG CAP_MMIO_NVME0 CAP_IRQ_NVME1
                capabilities CAP_DMA_ALLOC
                restart always backoff=250ms max-backoff=2m limit=3/10s
                user 1000
                group disk
                checkpoint 5s
                watchdog 100ms
            """)
        let disk = try XCTUnwrap(configuration["disk"])
        XCTAssertEqual(disk.path, "/srv/disk")
        XCTAssertEqual(disk.arguments, ["--name", "two words", "single \\ quoted", "mixedquoted part"])
        XCTAssertEqual(disk.devices.map(\.label), ["NVME0", "NIC0", "NVME1"])
        XCTAssertEqual(disk.devices[1].selector, .ids(vendor: 0x8086, device: 0x10D3))
        XCTAssertEqual(disk.devices[2].selector, .classCode(0x010802))
        XCTAssertEqual(disk.capabilities, [.pciConfig, .mmio(device: "NVME0"), .irq(device: "NVME1"), .dmaAlloc])
        XCTAssertEqual(disk.restart, RestartPolicy(
            mode: .always, initialBackoff: .milliseconds(250), maximumBackoff: .seconds(120),
            intensity: .init(restarts: 3, period: .seconds(10))))
        XCTAssertEqual(disk.user, "1000")
        XCTAssertEqual(disk.group, "disk")
        XCTAssertEqual(disk.checkpointInterval, .seconds(5))
        XCTAssertEqual(disk.watchdogInterval, .milliseconds(100))
        XCTAssertEqual(disk.location.line, 2)
    }

    func testRestartHealthyOption() throws {
        let configuration = try parse("start_server a /bin/a\n    restart on-failure healthy=1s\nstart_server b /bin/b\n    restart on-failure healthy=never\n")
        XCTAssertEqual(configuration["a"]?.restart.healthyRun, .seconds(1))
        XCTAssertEqual(configuration["b"]?.restart.healthyRun, nil)
        XCTAssertEqual(configuration["b"]?.restart.description, "on-failure backoff=100ms max-backoff=30s limit=5/1m healthy=never")
        assertError("start_server a /a\n    restart on-failure healthy=soon\n", line: 2, contains: "soon")
    }

    func testStandbySetting() throws {
        let configuration = try parse("start_server a /bin/a\n    standby yes\nstart_server b /bin/b\n    standby no\nstart_server c /bin/c\n")
        XCTAssertEqual(configuration["a"]?.standby, true)
        XCTAssertEqual(configuration["b"]?.standby, false)
        XCTAssertEqual(configuration["c"]?.standby, false)
        XCTAssertTrue(ConfigurationSummary(configuration).text.contains("  standby       yes"), ConfigurationSummary(configuration).text)
        assertError("start_server a /a\n    standby maybe\n", line: 2, contains: "`standby` takes yes or no")
        assertError("start_server a /a\n    standby\n", line: 2, contains: "`standby` takes yes or no")
        assertError("start_server a /a\n    standby yes\n    standby no\n", line: 3, contains: "already set for a at line 2")
        assertError("start_server a /a\n    standbye yes\n", line: 2, contains: "did you mean standby")
    }

    func testListenSetting() throws {
        let configuration = try parse("start_server a /bin/a\n    listen no\nstart_server b /bin/b\n    listen yes\nstart_server c /bin/c\n")
        XCTAssertEqual(configuration["a"]?.listens, false)
        XCTAssertEqual(configuration["b"]?.listens, true)
        XCTAssertEqual(configuration["c"]?.listens, true, "the supervisor holds the socket by default")
        XCTAssertTrue(ConfigurationSummary(configuration).text.contains("  listen        no"), ConfigurationSummary(configuration).text)
        assertError("start_server a /a\n    listen later\n", line: 2, contains: "`listen` takes yes or no")
        assertError("start_server a /a\n    listen no\n    listen yes\n", line: 3, contains: "already set for a at line 2")
    }

    func testPageCacheLogSetting() throws {
        let configuration = try parse("""
            start_server a /bin/a
                capabilities CAP_PAGE_CACHE
                page_cache_log 512K
            start_server b /bin/b
                capabilities CAP_PAGE_CACHE
            """)
        XCTAssertEqual(configuration["a"]?.pageCacheLogSize, 512 << 10)
        XCTAssertEqual(configuration["b"]?.pageCacheLogSize, 16 << 20, "the default")
        let summary = ConfigurationSummary(configuration).text
        XCTAssertTrue(summary.contains("  page_cache_log 512K") && summary.contains("  page_cache_log 16M"), summary)
        XCTAssertEqual(try parse("start_server a /a\n    capabilities CAP_PAGE_CACHE\n    page_cache_log 1g\n")["a"]?.pageCacheLogSize, 1 << 30)
        let granted = "start_server a /a\n    capabilities CAP_PAGE_CACHE\n"
        assertError(granted + "    page_cache_log\n", line: 3, contains: "`page_cache_log` takes one size")
        assertError(granted + "    page_cache_log lots\n", line: 3, contains: "\"lots\" is not a size")
        assertError(granted + "    page_cache_log 16X\n", line: 3, contains: "is not a size")
        assertError(granted + "    page_cache_log 64K\n", line: 3, contains: "must be a multiple of 4K from 256K to 1G")
        assertError(granted + "    page_cache_log 2G\n", line: 3, contains: "from 256K to 1G")
        assertError(granted + "    page_cache_log 300001\n", line: 3, contains: "multiple of 4K")
        assertError(granted + "    page_cache_log 1M\n    page_cache_log 2M\n", line: 4, contains: "already set for a at line 3")
        assertError("start_server a /a\n    capabilities CAP_BLOCK_READ\n    page_cache_log 1M\n", line: 3,
                    contains: "a is not granted CAP_PAGE_CACHE")
        let diagnostics = errors("start_server a /a\n    page_cache_log 1M\n")
        XCTAssertEqual(diagnostics.first?.location.description, "test.conf:2", diagnostics.description)
    }

    func testDefaultsWhenOnlyTheSeedLineIsGiven() throws {
        let configuration = try parse("start_server a /bin/a\nstart_server b /bin/b x y\n")
        XCTAssertEqual(configuration.startOrder, ["a", "b"])
        XCTAssertEqual(configuration["b"]?.arguments, ["x", "y"])
        XCTAssertEqual(configuration["a"]?.restart, RestartPolicy())
        XCTAssertNil(configuration["a"]?.watchdogInterval)
    }

    func testStartOrderPutsDependenciesFirstAndStopOrderIsTheReverse() throws {
        let configuration = try parse("""
            start_server power /p
                depends vfs usb
            start_server vfs /v
                depends storage
            start_server usb /u
            start_server storage /s
            """)
        let order = configuration.startOrder
        XCTAssertEqual(Set(order), ["power", "vfs", "usb", "storage"])
        for (server, dependencies) in [("power", ["vfs", "usb"]), ("vfs", ["storage"])] {
            for dependency in dependencies {
                XCTAssertLessThan(order.firstIndex(of: dependency)!, order.firstIndex(of: server)!)
            }
        }
        XCTAssertEqual(configuration.stopOrder, order.reversed())
    }

    func testCRLFLineEndingsAreAccepted() throws {
        let configuration = try parse("start_server a /bin/a\r\n    watchdog 1s\r\n")
        XCTAssertEqual(configuration["a"]?.watchdogInterval, .seconds(1))
    }

    // MARK: errors, one kind at a time

    func testUnknownKeywordsAreNamedWithASuggestion() {
        assertError("start_srever a /bin/a\n", line: 1, contains: "did you mean start_server?")
        assertError("start_server a /bin/a\n    capabilites CAP_DMA_ALLOC\n", line: 2, contains: "did you mean capabilities?")
        assertError("start_server a /bin/a\nwatchdog 1s\n", line: 2, contains: "indent it")
        assertError("    watchdog 1s\nstart_server a /bin/a\n", line: 1, contains: "no start_server line comes before it")
    }

    func testMissingNameOrPath() {
        assertError("start_server\n", line: 1, contains: "needs a NAME and a PATH")
        assertError("start_server lonely\n", line: 1, contains: "has no PATH")
        assertError("start_server a bin/a\n", line: 1, contains: "not absolute")
        assertError("start_server ../a /bin/a\n", line: 1, contains: "may only contain")
        assertError("start_server -a /bin/a\n", line: 1, contains: "must not start with")
        assertError("start_server \(String(repeating: "n", count: 65)) /bin/a\n", line: 1, contains: "limit is 64")
    }

    func testDuplicateNames() {
        assertError("start_server a /bin/a\nstart_server b /b\nstart_server a /bin/a2\n", line: 3, contains: "already declared at line 1")
    }

    func testBadDurations() {
        assertError("start_server a /a\n    watchdog 5\n", line: 2, contains: "has no unit")
        assertError("start_server a /a\n    watchdog 5sec\n", line: 2, contains: "unknown unit")
        assertError("start_server a /a\n    checkpoint fast\n", line: 2, contains: "is not a duration")
        assertError("start_server a /a\n    checkpoint -5s\n", line: 2, contains: "is not a duration")
        assertError("start_server a /a\n    checkpoint 99999999999999h\n", line: 2, contains: "longer than 7 days")
        assertError("start_server a /a\n    watchdog 1ms\n", line: 2, contains: "below 10ms")
        assertError("start_server a /a\n    restart on-failure backoff=10x\n", line: 2, contains: "unknown unit")
        assertError("start_server a /a\n    restart on-failure limit=5/60\n", line: 2, contains: "has no unit")
    }

    func testDurationColumnsPointAtTheValue() {
        let diagnostics = errors("start_server a /a\n    restart on-failure backoff=10x\n")
        XCTAssertEqual(diagnostics.first?.location.column, 32)
    }

    func testUnknownCapabilitiesSuggestTheNearestName() {
        let diagnostics = errors("start_server a /a\n    capabilities CAP_DMA_ALLOC CAP_BLOK_READ\n")
        XCTAssertEqual(diagnostics.count, 1)
        XCTAssertEqual(diagnostics.first?.description,
                       "test.conf:2:32: unknown capability CAP_BLOK_READ; did you mean CAP_BLOCK_READ?")
        assertError("start_server a /a\n    capabilities FLY\n", line: 2, contains: "known capabilities: CAP_ACPI_EXECUTE")
        assertError("start_server a /a\n    capabilities CAP_MMIO_nvme\n", line: 2, contains: "CAP_MMIO_<LABEL>")
        assertError("start_server a /a\n    capabilities CAP_DMA_ALLOC CAP_DMA_ALLOC\n", line: 2, contains: "already granted")
    }

    func testDeviceCapabilitiesMustNameADeclaredDevice() {
        assertError("start_server a /a\n    capabilities CAP_MMIO_NVME0\n", line: 2, contains: "declares no devices")
        assertError("start_server a /a\n    device NVME0 00:03.0\n    capabilities CAP_IRQ_NVME1\n",
                    line: 3, contains: "did you mean NVME0?")
    }

    func testBadDevices() {
        assertError("start_server a /a\n    device NVME0 0000:00:20.0\n", line: 2, contains: "is not a PCI device")
        assertError("start_server a /a\n    device NVME0 zz:00.0\n", line: 2, contains: "is not a PCI device")
        assertError("start_server a /a\n    device NVME0 class=0108\n", line: 2, contains: "is not a PCI device")
        assertError("start_server a /a\n    device 0000:00:03.0\n", line: 2, contains: "takes a label and a selector")
        assertError("start_server a /a\n    device nvme0 0000:00:03.0\n", line: 2, contains: "upper-case")
        assertError("start_server a /a\n    device N 00:03.0\n    device N 00:04.0\n", line: 3, contains: "already declared")
    }

    func testBadRestartPolicies() {
        assertError("start_server a /a\n    restart sometimes\n", line: 2, contains: "unknown restart policy")
        assertError("start_server a /a\n    restart on-failure retries=3\n", line: 2, contains: "unknown restart option")
        assertError("start_server a /a\n    restart on-failure limit=0/1s\n", line: 2, contains: "must be N/T")
        assertError("start_server a /a\n    restart on-failure limit=x\n", line: 2, contains: "must be N/T")
        assertError("start_server a /a\n    restart on-failure backoff=1m max-backoff=1s\n", line: 2, contains: "cannot exceed the cap")
        assertError("start_server a /a\n    restart never limit=1/1s\n", line: 2, contains: "takes no options")
        assertError("start_server a /a\n    restart always\n    restart never\n", line: 3, contains: "already set for a at line 2")
        assertError("start_server a /a\n    restart on-failure backoff=1s backoff=2s\n", line: 2, contains: "given twice")
    }

    func testBadUsersAndGroups() {
        assertError("start_server a /a\n    user\n", line: 2, contains: "takes one user")
        assertError("start_server a /a\n    group a b\n", line: 2, contains: "takes one group")
        assertError("start_server a /a\n    user 'root; rm'\n", line: 2, contains: "not a valid user name")
    }

    func testUnknownDependenciesAndCycles() {
        assertError("start_server a /a\n    depends storag\nstart_server storage /s\n", line: 2, contains: "did you mean storage?")
        assertError("start_server a /a\n    depends a\n", line: 2, contains: "depends on itself")
        let diagnostics = errors("""
            start_server a /a
                depends b
            start_server b /b
                depends c
            start_server c /c
                depends a
            start_server d /d
                depends d
            """)
        XCTAssertEqual(diagnostics.map(\.message).filter { $0.contains("cycle") },
                       ["dependency cycle: a -> b -> c -> a; no start order exists, remove one of these dependencies"])
        XCTAssertTrue(diagnostics.contains { $0.location.line == 8 && $0.message.contains("d depends on itself") })
    }

    func testQuotingErrors() {
        assertError("start_server a /a \"open\n", line: 1, contains: "unterminated \"")
        assertError("start_server a /a 'open\n", line: 1, contains: "unterminated '")
        assertError("start_server a /a \"C:\\dir\"\n", line: 1, contains: "unknown escape \\d")
    }

    func testNulBytesAndControlCharacters() {
        let diagnostics = errors(Array("start_server a /a\n".utf8) + [0x20, 0x20, 0x00, 0x41, 0x0A])
        XCTAssertEqual(diagnostics.first?.location, SourceLocation(file: "test.conf", line: 2, column: 3))
        XCTAssertTrue(diagnostics.first?.message.contains("NUL byte") ?? false)
        assertError("start_server a /a\u{1B}[31m\n", line: 1, contains: "control character 0x1b")
        XCTAssertTrue(errors([0x73, 0xFF, 0xFE, 0x0A]).first?.message.contains("UTF-8") ?? false)
    }

    func testVeryLongLines() {
        let long = "start_server a /a " + String(repeating: "x", count: 5000) + "\n"
        assertError(long, line: 1, contains: "limit is 4096")
        // The block below a refused start_server line still gets its settings checked.
        assertError(long + "    watchdog 5\n", line: 2, contains: "no start_server line comes before it")
    }

    func testEmptyAndCommentOnlyFiles() {
        assertError("", line: 1, contains: "the file is empty")
        assertError("# nothing\n\n   \n", line: 1, contains: "only comments and blank lines")
    }

    func testADirectoryOrAMissingFileIsRefused() throws {
        let directory = try TemporaryDirectory()
        XCTAssertThrowsError(try ConfigParser.load(path: directory.path)) { error in
            let diagnostics = (error as! ConfigurationErrors).diagnostics
            XCTAssertEqual(diagnostics.count, 1)
            XCTAssertTrue(diagnostics[0].message.contains("is a directory"), diagnostics[0].description)
            XCTAssertEqual(diagnostics[0].description.prefix(directory.path.count + 1), directory.path + ":")
        }
        XCTAssertThrowsError(try ConfigParser.load(path: directory.path + "/absent.conf")) { error in
            XCTAssertTrue((error as! ConfigurationErrors).diagnostics[0].message.contains("no such file"))
        }
        XCTAssertThrowsError(try ConfigParser.load(path: "/dev/null")) { error in
            XCTAssertTrue((error as! ConfigurationErrors).diagnostics[0].message.contains("not a regular file"))
        }
    }

    func testEveryErrorOfAFileIsReportedInLineOrder() {
        let diagnostics = errors("""
            start_server a /a
                capabilities CAP_BLOK_READ
                watchdog 5
            bogus
            start_server a /a
                depends nothing
            """)
        XCTAssertEqual(diagnostics.map(\.location.line), [2, 3, 4, 5, 6])
    }

    // MARK: random input

    func testRandomLinesNeverCrashTheParser() {
        var random = SplitMix(state: 4)
        let pieces = ["start_server", "  ", "\t", " ", "a", "b", "/bin/x", "device", "NVME0", "0000:00:03.0", "8086:10d3",
                      "class=010802", "capabilities", "CAP_MMIO_NVME0", "CAP_BLOCK_READ", "CAP_X", "restart", "on-failure",
                      "always", "never", "backoff=", "limit=5/60s", "1s", "5", "ms", "user", "group", "depends", "checkpoint",
                      "watchdog", "\"", "'", "\\", "#", "\0", "\u{1}", "é", "=", "/", "\r"]
        let plausible = ["start_server b /bin/b x", "    depends a", "    depends b", "    device NVME0 0000:00:03.0",
                         "    capabilities CAP_MMIO_NVME0", "    capabilities CAP_DMA_ALLOC", "    restart always",
                         "    watchdog 1s", "    checkpoint 5s", "    user x", "# comment", "", "start_server c /c 'q q'"]
        var accepted = 0
        for _ in 0..<3000 {
            var text = Bool.random(using: &random) ? "start_server a /bin/a\n" : ""
            for _ in 0..<Int.random(in: 0...8, using: &random) {
                if Int.random(in: 0..<3, using: &random) > 0 {
                    text += plausible.randomElement(using: &random)! + "\n"
                    continue
                }
                for _ in 0..<Int.random(in: 0...8, using: &random) {
                    text += pieces.randomElement(using: &random)!
                    if Bool.random(using: &random) { text += " " }
                }
                text += "\n"
            }
            do {
                let configuration = try ConfigParser.parse(text, file: "random.conf")
                accepted += 1
                XCTAssertFalse(configuration.servers.isEmpty)
                XCTAssertEqual(Set(configuration.startOrder), Set(configuration.servers.map(\.name)))
            } catch {
                XCTAssertFalse(error.diagnostics.isEmpty)
                for diagnostic in error.diagnostics { XCTAssertGreaterThan(diagnostic.location.line, 0) }
            }
        }
        // Random bytes as well, not only plausible words.
        for _ in 0..<2000 {
            let bytes = (0..<Int.random(in: 0...300, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
            _ = try? ConfigParser.parse(bytes, file: "random.conf")
        }
        XCTAssertGreaterThan(accepted, 0, "the generator never produced a valid file; it tests too little")
    }
}
