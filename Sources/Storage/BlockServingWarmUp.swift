import IPC
import NVMe
import Platform
import ServerKit
#if canImport(Glibc)
import Glibc
#endif

/// What a standby storage_server runs before it reports ready (servers.conf `standby yes`), so
/// that after its activation the serving path runs on warm code: a `BlockServer` with its IPC
/// endpoint and `BlockServingLoop`, on a RAM device and a socket in a directory of its own under
/// /tmp, answers one client's geometry request, a write and a read, and is taken down again.
///
/// Under the emulated CPU of the HIL rig a first pass over code costs page faults, Swift's
/// one-time metadata and the emulator's translation, about a millisecond per step; measured in
/// the rig (RestartTimeline), the steps from the I/O queues being ready to the first answer
/// (server and endpoint built, serving thread started, the waiting client accepted and
/// answered) were 10 to 13 ms of the restart before this, all of it code no earlier step runs.
/// ServerKit's own warm-up (`StandbyWarmUp`) covers only a plain `IPCServer`.
///
/// Leaves no descriptor open: a standby holds only its channel until it is activated.
public enum BlockServingWarmUp {
    /// True when the server answered all three requests (false: some step could not be set up;
    /// the standby then just runs colder).
    @discardableResult
    public static func run() -> Bool {
        instantiateDeviceTypes()
        guard let directory = StandbyWarmUp.privateDirectory("limitless-standby-block") else { return false }
        defer { _ = rmdir(directory) }
        let device = MemoryBlockDevice(namespaces: [1: BlockGeometry(blockSize: 512, blockCount: 64)])
        let server = BlockServer(device: device) { _ in }
        server.info = { _ in }
        server.defersAnswers = true
        guard let endpoint = try? server.makeIPCServer(name: "warm-up", directory: directory) else { return false }
        let loop = BlockServingLoop(server: server, endpoint: endpoint)
        // Short, so that `stop` (which waits for the thread's next wakeup) returns at once.
        loop.wakeInterval = .milliseconds(5)
        loop.start()
        var answered = 0
        if let client = try? BlockClient.connect(name: "warm-up", directory: directory) {
            client.timeout = .seconds(2)
            if case .success = try? client.geometry(1) { answered += 1 }
            let block = [UInt8](repeating: 0x5A, count: 512)
            if block.withUnsafeBytes({ try? client.write(1, lba: 0, blocks: 1, data: $0) }) == .ok { answered += 1 }
            if case .success(let read) = try? client.read(1, lba: 0, blocks: 1), read == block { answered += 1 }
        }
        loop.stop()
        return answered == 3
    }

    /// Swift instantiates generic metadata (`NVMeController<MMIORegion>` and the rest) and looks
    /// up protocol conformances (`BlockServer`'s casts of its device to `DirectBlockDevice` and
    /// `QueuedBlockDevice`: a scan of the binary's conformance records per new type) the first
    /// time they are needed; the bring-up after an activation would do it with the clock running.
    static func instantiateDeviceTypes() {
        StandbyWarmUp.instantiate([NVMeController<MMIORegion>.self, NVMeIOQueue<MMIORegion>.self, NVMeBlockDevice<MMIORegion>.self,
                                   StorageBringUp.Result.self, VFIODevice.self, VFIOContainer.self, DMAAllocator.self,
                                   BlockServer.self, BlockServingLoop.self],
                                  conformanceChecks: [{ $0 is any BlockDevice.Type }, { $0 is any DirectBlockDevice.Type },
                                                      { $0 is any QueuedBlockDevice.Type }])
    }
}
