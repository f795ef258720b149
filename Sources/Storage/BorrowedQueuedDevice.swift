import IPC

/// The server's `QueuedBlockDevice` reached on the per-request paths without reference
/// counting. Calls on the `any QueuedBlockDevice` property retained the device around each one
/// (binding the optional copied it), a few times per request in the release build; here the
/// device's type is opened once, at start-up, and each call borrows it through `Unmanaged` (a
/// plain word) with `_withUnsafeGuaranteedRef`, its type known to the callee.
class BorrowedQueuedDevice {
    /// `BlockServer.pollCompletions` with the device.
    func pollCompletions(_ server: BlockServer) {
        preconditionFailure("BorrowedQueuedDevice is abstract")
    }

    /// `BlockServer.submitDeferred` with the device.
    func submitDeferred(_ server: BlockServer, _ request: BlockRequest, _ message: Message, _ payload: IPCPayload,
                        client: UInt64, blockSize: Int) -> IPCReply? {
        preconditionFailure("BorrowedQueuedDevice is abstract")
    }

    /// The device's `commandsInFlight`.
    var commandsInFlight: Int { preconditionFailure("BorrowedQueuedDevice is abstract") }

    /// The device's `consumeCompletionSignal()`.
    func consumeCompletionSignal() {
        preconditionFailure("BorrowedQueuedDevice is abstract")
    }

    /// `BlockServer.pollRings` with the device.
    func pollRings(_ server: BlockServer) -> Int {
        preconditionFailure("BorrowedQueuedDevice is abstract")
    }

    /// Keeps `device` alive for as long as the result exists.
    static func opening(_ device: some QueuedBlockDevice) -> BorrowedQueuedDevice {
        TypedBorrowedQueuedDevice(device)
    }
}

private final class TypedBorrowedQueuedDevice<Device: QueuedBlockDevice>: BorrowedQueuedDevice {
    private let device: Device
    private let borrowed: Unmanaged<Device>

    init(_ device: Device) {
        self.device = device
        borrowed = Unmanaged.passUnretained(device)
    }

    override func pollCompletions(_ server: BlockServer) {
        borrowed._withUnsafeGuaranteedRef { server.pollCompletions($0) }
    }

    override var commandsInFlight: Int { borrowed._withUnsafeGuaranteedRef { $0.commandsInFlight } }

    override func consumeCompletionSignal() {
        borrowed._withUnsafeGuaranteedRef { $0.consumeCompletionSignal() }
    }

    override func pollRings(_ server: BlockServer) -> Int {
        borrowed._withUnsafeGuaranteedRef { server.pollRings($0) }
    }

    override func submitDeferred(_ server: BlockServer, _ request: BlockRequest, _ message: Message, _ payload: IPCPayload,
                                 client: UInt64, blockSize: Int) -> IPCReply? {
        borrowed._withUnsafeGuaranteedRef {
            server.submitDeferred(request, message, payload, client: client, blockSize: blockSize, device: $0)
        }
    }
}
