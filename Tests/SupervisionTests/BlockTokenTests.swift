import Glibc
import IPC
import XCTest

@testable import Supervision

/// CAP_BLOCK_READ / CAP_BLOCK_WRITE as tokens, with the real supervisor and real
/// limitless-testservers: the holder gets a token descriptor, its block provider (a dependency
/// granted the same capability) gets the same file with its rights, again after the provider
/// restarts; a server without the capability, or one that is no provider, gets nothing; a
/// revoke tells the provider to forget the token.
extension SupervisorIntegrationTests {
    /// "token: CAP_BLOCK_READ inode N" lines of `name`, by capability.
    func tokenInodes(_ name: String) -> [String: String] {
        var result: [String: String] = [:]
        for line in lines(name, .stdout) where line.hasPrefix("token: ") {
            let words = line.split(separator: " ")
            if words.count == 4 { result[String(words[1])] = String(words[3]) }
        }
        return result
    }

    func blockTokenLines(_ name: String) -> [String] {
        lines(name, .stdout).filter { $0.hasPrefix("block token: ") }
    }

    func testBlockTokensReachTheHolderAndItsProviderAgainAfterTheProviderRestarts() throws {
        var store = server("store", [])
        store.capabilities = [.blockRead, .blockWrite]
        var client = server("client", [], depends: ["store"])
        client.capabilities = [.blockRead]
        var writer = server("writer", [], depends: ["store"])
        writer.capabilities = [.blockRead, .blockWrite]
        // Depends on the store but holds no block capability: no token anywhere.
        let bystander = server("bystander", [], depends: ["store"])
        // Holds CAP_BLOCK_READ but depends on nothing: its token goes to no provider.
        var loner = server("loner", [])
        loner.capabilities = [.blockRead]
        try run([store, client, writer, bystander, loner])
        for name in ["store", "client", "writer", "bystander", "loner"] { waitFor("\(name) running") { isRunning(name) } }

        waitFor("the holders' token lines") {
            tokenInodes("client").count == 1 && tokenInodes("writer").count == 2 && tokenInodes("loner").count == 1
        }
        let clientRead = try XCTUnwrap(tokenInodes("client")["CAP_BLOCK_READ"])
        let writerRead = try XCTUnwrap(tokenInodes("writer")["CAP_BLOCK_READ"])
        let writerWrite = try XCTUnwrap(tokenInodes("writer")["CAP_BLOCK_WRITE"])
        let lonerRead = try XCTUnwrap(tokenInodes("loner")["CAP_BLOCK_READ"])
        XCTAssertEqual(Set([clientRead, writerRead, writerWrite, lonerRead]).count, 4, "every grant is its own token")
        XCTAssertTrue(tokenInodes("bystander").isEmpty)

        let expected: Set<String> = ["block token: client rights 1 inode \(clientRead)",
                                     "block token: writer rights 1 inode \(writerRead)",
                                     "block token: writer rights 2 inode \(writerWrite)"]
        waitFor("the provider's token lines") { Set(blockTokenLines("store")).isSuperset(of: expected) }
        XCTAssertEqual(blockTokenLines("store").count, 3, blockTokenLines("store").joined(separator: "\n"))
        for name in ["client", "writer", "bystander", "loner"] { XCTAssertEqual(blockTokenLines(name), [], name) }

        // The provider crashes: its next instance finds the same tokens waiting on its channel.
        let pid = state("store").pid
        XCTAssertEqual(kill(pid, SIGKILL), 0)
        waitFor("store instance 2") { isRunning("store", instance: 2) }
        waitFor("the tokens again") { blockTokenLines("store").count == 6 }
        XCTAssertEqual(Set(blockTokenLines("store").suffix(3)), expected)
        // The holders kept running, with the same tokens.
        XCTAssertEqual(state("client").instance, 1)

        // Revoking the client's CAP_BLOCK_READ tells the provider to forget that token (rights 0).
        try supervisor!.revoke(["CAP_BLOCK_READ"], from: "client")
        waitFor("the withdrawal") { blockTokenLines("store").contains("block token: client rights 0 inode \(clientRead)") }
        // A new grant is a new token.
        try supervisor!.grant(["CAP_BLOCK_READ"], to: "client")
        waitFor("the new token") { blockTokenLines("store").count == 8 }
        let fresh = try XCTUnwrap(blockTokenLines("store").last)
        XCTAssertTrue(fresh.hasPrefix("block token: client rights 1 inode "), fresh)
        XCTAssertEqual(state("client").instance, 1)
        XCTAssertTrue(state("client").capabilities.contains { $0.hasPrefix("CAP_BLOCK_READ=") && !$0.hasSuffix("=-1") },
                      "\(state("client").capabilities)")
    }
}
