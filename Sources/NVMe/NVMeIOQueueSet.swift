import Platform

/// How many I/O queue pairs a controller was asked for, how many it got, and what capped them.
public struct NVMeQueueGrant: Sendable, Equatable, CustomStringConvertible {
    public var requested: Int
    /// What Set Features Number of Queues allocated (the smaller of submission and completion
    /// queues, NVMe 2.0 section 5.27.1.5: the controller may grant fewer than asked).
    public var controllerGranted: Int
    /// MSI-X vectors for I/O completion queues (nil: the queues poll, vectors do not limit).
    public var interruptVectors: Int?
    /// Queue pairs created: the smallest of the three.
    public var created: Int

    public init(requested: Int, controllerGranted: Int, interruptVectors: Int?, created: Int) {
        self.requested = requested
        self.controllerGranted = controllerGranted
        self.interruptVectors = interruptVectors
        self.created = created
    }

    public var description: String {
        var text = "\(created) I/O queue pair\(created == 1 ? "" : "s")"
        guard created < requested else { return text }
        text += " of \(requested) asked for (the controller granted \(controllerGranted)"
        if let interruptVectors { text += ", \(interruptVectors) MSI-X vector\(interruptVectors == 1 ? "" : "s") for I/O" }
        return text + ")"
    }
}

extension NVMeController {
    /// Asks for `requested` I/O queue pairs (Set Features Number of Queues), then creates pairs
    /// 1...count, count capped by the grant and, with `interrupts` given, by the lines there are:
    /// queue k completes on `interrupts[k - 1]` (its own MSI-X vector; vector 0 stays the admin
    /// queue's, section 3.1.3.8), so each queue's owner sleeps on its own eventfd. `interrupts`
    /// empty: every queue polls. On failure the pairs created so far are deleted again.
    public func createIOQueues(requested: Int, depth: Int, interrupts: [InterruptLine],
                               timeoutNanoseconds: UInt64? = nil) throws(NVMeError) -> (queues: [NVMeIOQueue<R>], grant: NVMeQueueGrant) {
        let asked = max(1, min(requested, 65535))
        let allocated = try setNumberOfQueues(submission: asked, completion: asked)
        var grant = NVMeQueueGrant(requested: asked, controllerGranted: min(allocated.submission, allocated.completion),
                                   interruptVectors: interrupts.isEmpty ? nil : interrupts.count, created: 0)
        grant.created = min(asked, grant.controllerGranted, grant.interruptVectors ?? Int.max)
        var queues: [NVMeIOQueue<R>] = []
        queues.reserveCapacity(grant.created)
        do {
            for index in 0..<grant.created {
                let line = interrupts.isEmpty ? nil : interrupts[index]
                let queue = try createIOQueue(id: UInt16(index + 1), depth: depth, interrupt: line, vector: line.map { UInt16($0.vector) })
                if let timeoutNanoseconds { queue.timeoutNanoseconds = timeoutNanoseconds }
                queues.append(queue)
            }
        } catch {
            for queue in queues.reversed() { try? deleteIOQueue(queue) }
            throw error
        }
        return (queues, grant)
    }
}
