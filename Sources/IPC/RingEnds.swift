/// The client's half of a ring pair: requests out, responses in.
public struct RingClientEnd: ~Copyable, @unchecked Sendable {
    public var requests: RingProducer
    public var responses: RingConsumer

    /// Bytes of message one slot carries.
    public var payloadSize: Int { requests.payloadSize }

    /// Sends `request` and waits for the next response, copying it into `response`. Returns false
    /// if no response came within `timeoutNanoseconds` (the request stays sent).
    @inlinable
    public mutating func sendReceive(_ request: UnsafeRawBufferPointer, into response: UnsafeMutableRawBufferPointer,
                                     policy: RingWaitPolicy = .adaptive, timeoutNanoseconds: UInt64 = .max) throws(RingError) -> Bool {
        guard try requests.send(request, timeoutNanoseconds: timeoutNanoseconds) else { return false }
        return try responses.receive(into: response, policy: policy, timeoutNanoseconds: timeoutNanoseconds)
    }
}

/// The server's half of a ring pair: requests in, responses out.
public struct RingServerEnd: ~Copyable, @unchecked Sendable {
    public var requests: RingConsumer
    public var responses: RingProducer

    /// Bytes of message one slot carries.
    public var payloadSize: Int { requests.payloadSize }
}
