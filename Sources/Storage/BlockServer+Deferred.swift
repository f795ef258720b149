import IPC
import Platform

/// The message path on a `QueuedBlockDevice`: read, write, flush and trim submitted without
/// waiting and answered at completion (see `BlockServer`). Runs on the serving thread only.
extension BlockServer {
    /// Submits a read, write, flush or trim and returns `.deferred` (answered by
    /// `finishDeferred`), or an error; nil when it cannot go as one command through a bounce
    /// slot or a registered buffer (the blocking path serves it).
    func submitDeferred(_ request: BlockRequest, _ message: Message, _ payload: IPCPayload, client: UInt64,
                                blockSize: Int, device: some QueuedBlockDevice) -> IPCReply? {
        var entry = DeferredBlockRequests.Entry(token: payload.replyToken, reply: .ok, slot: -1, copyOut: nil,
                                                replyBytes: 0, inlineReply: false)
        // The command; `dma` nil: through a bounce slot of `bytes`.
        var transfer: (write: Bool, nsid: UInt32, lba: UInt64, blocks: Int, bytes: Int, dma: DMABuffer?)
        switch request {
        case .flush(let nsid):
            // A Flush covers the writes completed before it: let every one sent before it complete.
            drainDevice()
            guard waitForRoom(bounce: false, device: device) else { return .error(.EBUSY) }
            return submit(entry) { tag throws(BlockDeviceError) in try device.submitFlush(nsid: nsid, tag: tag); return true }
        case .trim(let nsid, let lba, let blocks):
            guard waitForRoom(bounce: false, device: device) else { return .error(.EBUSY) }
            return submit(entry) { tag throws(BlockDeviceError) in
                try device.submitTrim(nsid: nsid, lba: lba, blocks: blocks, tag: tag)
            }
        case .read(let nsid, let lba, let blocks, let toShared):
            let bytes = blocks * blockSize
            guard bytes <= device.maximumCommandBytes else { return nil }
            entry.reply = IPCReply(param1: UInt64(bytes))
            if toShared, registered.count > 0,
               let dma = registered.find(client: client, pointer: payload.writableData!.baseAddress!, bytes: bytes) {
                entry.reply.param2 = 1
                transfer = (false, nsid, lba, blocks, bytes, dma)
            } else {
                guard bytes <= DeferredBlockRequests.slotBytes else { return nil }
                entry.copyOut = toShared ? payload.writableData!.baseAddress! : nil
                entry.replyBytes = bytes
                entry.inlineReply = !toShared
                transfer = (false, nsid, lba, blocks, bytes, nil)
            }
        case .write(let nsid, let lba, let blocks):
            let bytes = payload.data.count
            guard bytes <= device.maximumCommandBytes else { return nil }
            entry.reply = IPCReply(param1: UInt64(bytes))
            if case .shared = message.data, registered.count > 0, let base = payload.data.baseAddress,
               let dma = registered.find(client: client, pointer: base, bytes: bytes) {
                entry.reply.param2 = 1
                transfer = (true, nsid, lba, blocks, bytes, dma)
            } else {
                guard bytes <= DeferredBlockRequests.slotBytes else { return nil }
                transfer = (true, nsid, lba, blocks, bytes, nil)
            }
        default:
            return nil
        }
        guard waitForRoom(bounce: transfer.dma == nil, device: device) else { return .error(.EBUSY) }
        let dma: DMABuffer
        if let direct = transfer.dma {
            dma = direct
            zeroCopyTransfers &+= 1
        } else {
            let slot = deferred!.takeSlot()!
            entry.slot = slot
            dma = deferred!.slotBuffer(slot, bytes: transfer.bytes)
            // A write's data is the client's only until the handler returns: copy it now.
            if transfer.write { dma.address.copyMemory(from: payload.data.baseAddress!, byteCount: transfer.bytes) }
        }
        let command = transfer
        return submit(entry) { tag throws(BlockDeviceError) in
            try device.submit(write: command.write, nsid: command.nsid, lba: command.lba, blocks: command.blocks, dma: dma, tag: tag)
            return true
        }
    }

    /// Files `entry` and runs `body` with its tag: `.deferred`, the error (entry freed), or nil
    /// when `body` submitted nothing (false: the blocking path must serve the request).
    @inline(__always)
    private func submit(_ entry: DeferredBlockRequests.Entry, _ body: (UInt64) throws(BlockDeviceError) -> Bool) -> IPCReply? {
        let tag = deferred!.add(entry)
        do throws(BlockDeviceError) {
            guard try body(tag) else {
                deferred!.release(tag: tag)
                return nil
            }
        } catch {
            deferred!.release(tag: tag)
            deviceErrors &+= 1
            log("\(entry.token.type) not submitted: \(error.detail) -> \(error.status)")
            return .error(error.status)
        }
        return .deferred
    }

    /// Whether a command slot, a table entry and (if `bounce`) a bounce slot are free, waiting
    /// for completions (as a disk queue's submitter waits for a free tag) up to
    /// `roomWaitNanoseconds`.
    private func waitForRoom(bounce: Bool, device: some QueuedBlockDevice) -> Bool {
        func roomy() -> Bool { device.freeCommandSlots > 0 && deferred!.hasRoom && (!bounce || deferred!.freeBounceSlots > 0) }
        if roomy() { return true }
        let clock = MonotonicClock()
        let deadline = clock.now() + roomWaitNanoseconds
        while !roomy() {
            if reapDevice() == 0, clock.now() > deadline { return false }
        }
        return true
    }

    /// Answers the deferred request of a completed command: a read's data copied out of its
    /// bounce slot (into the client's shared region, or the reply), then the slot freed.
    func finishDeferred(tag: UInt64, status: IPCStatus) {
        guard let entry = deferred!.entry(tag: tag) else { return }
        var reply = entry.reply
        var data = UnsafeRawBufferPointer(start: nil, count: 0)
        if status.isOK {
            if entry.slot >= 0, entry.replyBytes > 0 {
                let source = deferred!.slotBuffer(entry.slot, bytes: entry.replyBytes)
                if let target = entry.copyOut {
                    target.copyMemory(from: source.address, byteCount: entry.replyBytes)
                } else if entry.inlineReply {
                    data = UnsafeRawBufferPointer(start: source.address, count: entry.replyBytes)
                }
            }
        } else {
            deviceErrors &+= 1
            log("\(entry.token.type) failed on the device -> \(status)")
            reply = .error(status)
        }
        _ = replies?._withUnsafeGuaranteedRef { $0.complete(entry.token, reply, payload: data) }
        deferred!.release(tag: tag)
        deferredRequests &+= 1
    }
}
