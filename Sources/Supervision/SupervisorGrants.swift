import CLimitless
import Glibc
import IPC

/// Granting and revoking capabilities while a server runs (serverctl grant / revoke).
///
/// A grant opens what the capability stands for (`Options.capabilityDescriptors`, and the device
/// provider for CAP_MMIO/CAP_IRQ/CAP_PCI_CONFIG/CAP_DMA_ALLOC) and passes the descriptor to the
/// running instance with MSG_SUPERVISOR_CAPABILITY_GRANT (SCM_RIGHTS); the server confirms with a
/// reply carrying the descriptor's number on its side.
///
/// A revoke sends MSG_SUPERVISOR_CAPABILITY_REVOKE; the server closes the descriptor and confirms.
/// A process cannot be forced to close a descriptor, so one that has not confirmed within
/// `Options.revokeTimeout` is restarted, and the new instance starts without the capability.
/// Both changes are remembered across instances (until the supervisor itself restarts, which
/// goes back to servers.conf).
extension Supervisor {
    /// Parses capability names for `server`: each must be a known capability, and a device's
    /// must name one of the server's device lines.
    func parseCapabilities(_ names: [String], for server: ServerProcess) throws(ControlFailure) -> [Capability] {
        guard !names.isEmpty else { throw .invalidCapability("name at least one capability (\(Capability.knownNames.joined(separator: ", ")))") }
        var result: [Capability] = []
        for name in names {
            guard let capability = Capability(name) else {
                let suggestion = Suggestion.closest(to: name, among: Capability.knownNames)
                throw .invalidCapability("\(name) is not a capability" + (suggestion.map { "; did you mean \($0)?" } ?? "")
                    + " (known: \(Capability.knownNames.joined(separator: ", ")))")
            }
            if let label = capability.device, !server.configuration.devices.contains(where: { $0.label == label }) {
                throw .invalidCapability("\(name) names device \(label), but \(server.name) has no `device \(label) ...` line in servers.conf")
            }
            result.append(capability)
        }
        return result
    }

    /// Grants `names` to `name` now and for every later instance; waits up to `timeout` for the
    /// running instance to confirm (nothing to wait for when it is not running).
    public func grant(_ names: [String], to name: String, timeout: Duration? = nil) throws(ControlFailure) {
        let server = try lookup(name)
        let capabilities = try parseCapabilities(names, for: server)
        let sent: [String] = lock.locked {
            for capability in capabilities {
                server.revokedAtRuntime.remove(capability)
                if !server.configuration.capabilities.contains(capability) { server.grantedAtRuntime.insert(capability) }
                server.pendingRevokes[capability.description] = nil
            }
            announceBlockTokens(holder: server, capabilities: capabilities, granted: true)
            guard server.isAlive, server.channel >= 0 else {
                note(server, .notice, "granted \(names.joined(separator: ", ")) from its next start (not running now)")
                return []
            }
            let effective = server.effectiveConfiguration
            var provided = options.capabilityDescriptors(effective)
            provided.merge(blockTokenDescriptors(for: effective)) { _, token in token }
            do throws(LaunchError) {
                provided.merge(try pageCacheLogDescriptors(server, effective)) { _, log in log }
            } catch {
                note(server, .warning, "\(error); CAP_PAGE_CACHE granted without its descriptor")
            }
            if let provider = options.capabilityProvider {
                do {
                    provided.merge(try provider.descriptors(for: effective)) { _, device in device }
                } catch {
                    note(server, .warning, "cannot open devices for the grant: \(error); granted without their descriptors")
                }
            }
            var sent: [String] = []
            for capability in capabilities {
                let key = capability.description
                let fd = provided[key] ?? -1
                var message = Message(type: .supervisorCapabilityGrant, param1: 1)
                message.setInlineData(count: UInt32(key.utf8.count))
                if send(message, payload: Array(key.utf8), descriptor: fd, to: server) {
                    // Confirmed (with the server's descriptor number) by its reply.
                    server.capabilities.removeAll { $0.name == key }
                    sent.append(key)
                    note(server, .notice, "granted \(key)" + (fd >= 0 ? " (descriptor passed)" : " (no descriptor)"))
                } else {
                    note(server, .warning, "could not pass \(key): its supervisor channel is closed or full; it gets it at its next start")
                }
            }
            return sent
        }
        wake()
        guard !sent.isEmpty else { return }
        let limit = timeout ?? options.revokeTimeout + .seconds(2)
        let confirmed = waitUntil(limit) {
            !server.isAlive || sent.allSatisfy { key in server.capabilities.contains { $0.name == key } }
        }
        if !confirmed { throw .timedOut("\(name) has not confirmed the grant yet; it is granted from its next start in any case") }
    }

    /// Revokes `names` from `name` for this and every later instance. The running instance is
    /// asked to close the descriptors; one that has not confirmed within `Options.revokeTimeout`
    /// is restarted without them. Waits up to `timeout` for either outcome.
    public func revoke(_ names: [String], from name: String, timeout: Duration? = nil) throws(ControlFailure) {
        let server = try lookup(name)
        let capabilities = try parseCapabilities(names, for: server)
        let keys = capabilities.map(\.description)
        let missing: Capability? = lock.locked {
            let granted = server.effectiveConfiguration.capabilities
            if let missing = capabilities.first(where: { !granted.contains($0) }) { return missing }
            for capability in capabilities {
                server.grantedAtRuntime.remove(capability)
                if server.configuration.capabilities.contains(capability) { server.revokedAtRuntime.insert(capability) }
            }
            // The providers forget the token first: its next request is refused even before it closes it.
            announceBlockTokens(holder: server, capabilities: capabilities, granted: false)
            guard server.isAlive, server.channel >= 0 else {
                server.capabilities.removeAll { keys.contains($0.name) }
                note(server, .notice, "revoked \(keys.joined(separator: ", ")) (not running now)")
                return nil
            }
            let deadline = ContinuousClock.now + options.revokeTimeout
            for key in keys {
                var message = Message(type: .supervisorCapabilityRevoke)
                message.setInlineData(count: UInt32(key.utf8.count))
                // Unsent (channel full) counts as unconfirmed: the deadline restarts it.
                _ = send(message, payload: Array(key.utf8), to: server)
                server.pendingRevokes[key] = deadline
                note(server, .notice, "revoking \(key): waiting up to \(DurationText.format(options.revokeTimeout)) for it to close the descriptor")
            }
            return nil
        }
        if let missing { throw .invalidCapability("\(name) is not granted \(missing); nothing to revoke") }
        wake()
        let limit = timeout ?? options.revokeTimeout + options.stopGracePeriod + options.startTimeout + .seconds(2)
        let settled = waitUntil(limit) {
            keys.allSatisfy { server.pendingRevokes[$0] == nil } && !server.restartRequested
                && server.state != .stopping && server.state != .starting
        }
        if !settled { throw .timedOut("\(name) has not confirmed the revoke yet and is being restarted without it (see serverctl status \(name))") }
    }

    /// A server's confirmation of a grant (param2: its descriptor number, -1 for none) or revoke.
    /// Under the lock, from the loop.
    func capabilityConfirmed(_ server: ServerProcess, _ message: Message, payload: UnsafeRawBufferPointer) {
        guard case .inline(let offset, let count) = message.data, offset + count <= payload.count else { return }
        let key = String(decoding: UnsafeRawBufferPointer(rebasing: payload[offset..<(offset + count)]), as: UTF8.self)
        if message.type == .supervisorCapabilityRevoke || message.param1 == 0 {
            server.capabilities.removeAll { $0.name == key }
            if server.pendingRevokes.removeValue(forKey: key) != nil { note(server, .info, "confirmed: \(key) revoked") }
            return
        }
        // A grant the operator has revoked again meanwhile is not shown as held.
        guard let capability = Capability(key), server.effectiveConfiguration.capabilities.contains(capability) else { return }
        let fd = Int32(truncatingIfNeeded: Int64(bitPattern: message.param2))
        server.capabilities.removeAll { $0.name == key }
        server.capabilities.append((key, max(-1, fd)))
        server.capabilities.sort { $0.name < $1.name }
        note(server, .info, "confirmed: \(key) granted" + (fd >= 0 ? " (fd \(fd) in the server)" : ""))
    }

    /// Restarts a running server that let a revoke deadline pass. Under the lock, from the loop.
    func checkRevokeDeadlines(now: ContinuousClock.Instant) {
        for server in servers where server.isAlive && !server.pendingRevokes.isEmpty && !server.restartRequested {
            let late = server.pendingRevokes.filter { now >= $0.value }.keys.sorted()
            guard !late.isEmpty, server.state != .stopping else { continue }
            note(server, .warning, "did not confirm revoking \(late.joined(separator: ", ")) within "
                + "\(DurationText.format(options.revokeTimeout)); restarting it without (a process cannot be made to close a descriptor)")
            server.restartRequested = true
        }
    }
}
