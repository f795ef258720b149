import CLimitless
#if canImport(Glibc)
import Glibc
#endif

/// The floor: two processes on two cores ping-pong one 8-byte word in one cache line of shared
/// memory, spinning, no system calls. A round trip is two cache-line transfers between the cores;
/// no message-passing scheme between processes can beat it, and the ring should come close.
///
/// Plain volatile loads and stores suffice on x86 (TSO: stores are seen in order); the word is
/// the only shared datum. Measured in rounds alternating with the ring's (`RoundTripRounds`).
enum CacheLineFloor {
    static let peerRole = "floor-echo"
    static let wordOffset = 0
    static let readyOffset = 256  // another line pair: the handshake must not share the measured line
    static let stop = UInt64.max

    /// The peer started and ready; round trips timed one at a time (`RoundTripRounds`).
    struct Session: ~Copyable {
        let page: SharedPage
        let peer: PeerProcess
        var ping: UInt64 = 1

        init(peerCPU: Int?) throws(BenchError) {
            let page = try SharedPage()
            let peer = try PeerProcess.spawn(role: peerRole, descriptor: page.descriptor, cpu: peerCPU)
            let base = page.base
            do throws(BenchError) {
                try waitUntil(seconds: 5, role: peerRole) { CL_dma_read64(base + readyOffset) == 1 }
            } catch {
                peer.kill()
                throw error
            }
            self.page = page
            self.peer = peer
        }

        /// One round trip, in TSC cycles.
        mutating func roundTrip() throws(BenchError) -> UInt64 {
            let ping = self.ping
            self.ping &+= 2
            let start = CL_cycles()
            CL_mmio_write64(page.base, wordOffset, ping)
            var spins: UInt32 = 0
            while CL_dma_read64(page.base + wordOffset) != ping &+ 1 {
                CL_cpu_relax()
                spins &+= 1
                if spins == 0 { throw .peerTimedOut(role: peerRole, seconds: 60) }
            }
            return CL_cycles_ordered() &- start
        }

        consuming func finish() throws(BenchError) {
            CL_mmio_write64(page.base, wordOffset, stop)
            try peer.wait()
        }

        func abandon() { peer.kill() }
    }

    /// Peer: answer every odd value v with v + 1 until `stop`.
    static func peer(descriptor: Int32) throws(BenchError) {
        let page = try SharedPage(mapping: descriptor)
        var last: UInt64 = 0
        CL_mmio_write64(page.base, readyOffset, 1)
        while true {
            var value = CL_dma_read64(page.base + wordOffset)
            var spins: UInt32 = 0
            while value == last || value & 1 == 0 {
                CL_cpu_relax()
                value = CL_dma_read64(page.base + wordOffset)
                spins &+= 1
                // Idle for a while (the other path's round is being measured): nap between looks
                // so this process does not take the CPU from the ring's peer on the same core.
                // Each round starts with unrecorded warm-up round trips that wake it.
                if spins >= 1 << 16, spins & 0xFF == 0 {
                    usleep(20)
                    if spins & 0xFF_FFFF == 0, getppid() == 1 { return }  // orphaned: the benchmark died
                }
            }
            if value == stop { return }
            CL_mmio_write64(page.base, wordOffset, value &+ 1)
            last = value &+ 1
        }
    }
}

/// Spins (then naps) until `condition` holds; throws after `seconds`.
func waitUntil(seconds: Double, role: String, _ condition: () -> Bool) throws(BenchError) {
    let deadline = CL_monotonic_ns() &+ UInt64(seconds * 1e9)
    while !condition() {
        if CL_monotonic_ns() > deadline { throw .peerTimedOut(role: role, seconds: seconds) }
        CL_cpu_relax()
    }
}
