import CLimitless
import IPC
import Supervision
#if canImport(Glibc)
import Glibc
#endif

/// What a standby instance does before it reports ready, so that the work after its activation
/// (the restart's clock) runs on warm code. Under an emulated CPU (the HIL rig) a process's
/// first pass over code costs far more than the code itself: a page fault per code page the
/// process has not touched yet, a dynamic-linker lookup per library function called for the
/// first time (the supervisor starts standbys with LD_BIND_NOW=1 for that), Swift's one-time
/// type metadata and global initialisers. None of that depends on the activation's
/// descriptors, so a standby pays it while it waits.
///
/// Nothing here keeps a descriptor open: a standby holds only its channel until activated.
enum StandbyWarmUp {
    /// Linux 5.14 `MADV_POPULATE_READ` (include/uapi/asm-generic/mman-common.h): fault a range in
    /// readable, as reading every page would, without reading it. Older kernels answer EINVAL.
    static let populateRead: Int32 = 22

    static func run() {
        prefaultMappedFiles()
        exerciseStartPath()
        exerciseIPCServer()
        exerciseThreadStart()
    }

    /// Maps every page of every file this process has mapped readable (the binary's and the
    /// libraries' code and constants) into its page tables. The pages are the page cache's,
    /// shared with every other process running them: this costs page-table entries, not memory.
    static func prefaultMappedFiles() {
        for range in fileMappings() {
            _ = madvise(UnsafeMutableRawPointer(bitPattern: range.lowerBound), range.count, populateRead)
        }
    }

    /// The readable file-backed mappings of /proc/self/maps (`start-end perms offset dev inode
    /// path`), as address ranges.
    static func fileMappings() -> [Range<Int>] {
        let fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return [] }
        defer { _ = close(fd) }
        var text: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16384)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 && CL_errno() == EINTR { continue }
            guard count > 0 else { break }
            text += chunk[..<count]
        }
        var ranges: [Range<Int>] = []
        for line in text.split(separator: UInt8(ascii: "\n")) {
            let fields = line.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: true)
            guard fields.count >= 6, fields[1].first == UInt8(ascii: "r"), fields[4] != [UInt8(ascii: "0")],
                  fields[5].first == UInt8(ascii: "/") else { continue }
            let bounds = fields[0].split(separator: UInt8(ascii: "-"))
            guard bounds.count == 2, let start = Int(String(decoding: bounds[0], as: UTF8.self), radix: 16),
                  let end = Int(String(decoding: bounds[1], as: UTF8.self), radix: 16), end > start else { continue }
            ranges.append(start..<end)
        }
        return ranges
    }

    /// Runs, on made-up values, the steps every activation runs: reading the environment, a
    /// checkpoint store's load, the channel's message encoding, the seccomp program's builder.
    static func exerciseStartPath() {
        let variables = [
            SupervisorChannel.serverNameVariable: "standby", SupervisorChannel.runtimeDirectoryVariable: "/run/limitless",
            SupervisorChannel.capabilitiesVariable: "CAP_DMA_ALLOC=5,CAP_MMIO_WARM=6,CAP_PCI_CONFIG=-1",
            SupervisorChannel.instanceVariable: "2", SupervisorChannel.watchdogVariable: "2000", SupervisorChannel.listenVariable: "7",
        ]
        if let environment = try? ServerEnvironment.parse(variables, standaloneName: "standby", isOpen: { _ in true }) {
            var table: [String: Int32] = [:]
            for capability in environment.capabilities { table[capability.name] = capability.fd }
            _ = table.keys.sorted()
        }
        if let store = try? CheckpointStore(name: "standby-warm-up", capacity: 4096) {
            _ = try? store.save(Array("warm".utf8), stateVersion: 1)
            _ = try? store.load()
        }
        var message = Message(type: .supervisorLog, param1: 2)
        message.setInlineData(count: 4)
        withUnsafeTemporaryAllocation(byteCount: Message.maxDatagramSize, alignment: 16) { buffer in
            message.encode(into: buffer)
            _ = try? Message.decode(UnsafeRawBufferPointer(rebasing: buffer[..<(Message.headerSize + 4)]))
        }
        _ = try? SeccompPolicy(capabilities: ["CAP_DMA_ALLOC", "CAP_MMIO_WARM", "CAP_IRQ_WARM", "CAP_PCI_CONFIG"]).program()
    }

    /// Sets up an IPC server on a socket in a directory of its own under /tmp, has it answer
    /// one request from a client of its own, then takes both down again: after activation the
    /// server's endpoint runs the same set-up (tables, buffer pool, epoll, its thread) and its
    /// first answer the same accept and request path (the clients that waited through the
    /// restart are answered first), and the allocator has grown to those sizes.
    static func exerciseIPCServer() {
        var template = Array("/tmp/limitless-standby-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else { return }
        let directory = String(cString: made)
        defer { _ = rmdir(directory) }
        guard let server = try? IPCServer(name: "warm-up", directory: directory, handler: { _, _, _ in .error(.ENOSYS) }) else { return }
        server.start()
        if let client = try? IPCClient.connect(name: "warm-up", directory: directory) {
            _ = try? client.sendReceive(Message(type: warmUpRequest), timeout: .seconds(2))
        }
        server.stop()
    }

    /// A request type no server serves (answered ENOSYS by the warm-up's own server).
    static let warmUpRequest = MessageType(rawValue: 0x7F7F)

    /// Starts a thread and joins it: its stack stays in the C library's cache for the server's
    /// first thread after activation (a serving loop), and the thread start-up code has run.
    static func exerciseThreadStart() {
        var handle = pthread_t()
        guard pthread_create(&handle, nil, { _ in nil }, nil) == 0 else { return }
        pthread_join(handle, nil)
    }
}
