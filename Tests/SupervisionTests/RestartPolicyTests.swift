import XCTest
@testable import Supervision

final class RestartPolicyTests: XCTestCase {
    let policy = RestartPolicy(
        mode: .onFailure, initialBackoff: .milliseconds(100), maximumBackoff: .seconds(1),
        intensity: .init(restarts: 5, period: .seconds(60)))

    func testBackoffDoublesUpToTheCap() {
        XCTAssertEqual((0..<7).map { policy.backoff(recentRestarts: $0) },
                       [.milliseconds(100), .milliseconds(200), .milliseconds(400), .milliseconds(800), .seconds(1), .seconds(1), .seconds(1)])
        XCTAssertEqual(policy.backoff(recentRestarts: 10_000), .seconds(1))
    }

    func testModesDecideWhichExitsRestart() {
        let clock = ManualClock()
        let now = clock.now
        func decide(_ mode: RestartPolicy.Mode, _ exit: ServerExit) -> RestartDecision {
            RestartPolicy(mode: mode).decide(after: exit, restarts: [ManualClock.Instant](), now: now)
        }
        XCTAssertEqual(decide(.onFailure, .exited(status: 1)), .restart(after: .milliseconds(100)))
        XCTAssertEqual(decide(.onFailure, .killed(signal: 11)), .restart(after: .milliseconds(100)))
        XCTAssertEqual(decide(.onFailure, .watchdogExpired), .restart(after: .milliseconds(100)))
        guard case .stay = decide(.onFailure, .exited(status: 0)) else { return XCTFail("clean exit restarted") }
        XCTAssertEqual(decide(.always, .exited(status: 0)), .restart(after: .milliseconds(100)))
        guard case .stay = decide(.always, .stopRequested) else { return XCTFail("requested stop restarted") }
        guard case .stay = decide(.never, .killed(signal: 9)) else { return XCTFail("never restarted") }
    }

    func testTooManyRestartsInThePeriodMarksTheServerFailed() {
        let clock = ManualClock()
        var tracker = RestartTracker(policy: policy, clock: clock)
        var pauses: [Duration] = []
        for _ in 0..<5 {
            guard case .restart(let pause) = tracker.serverExited(.exited(status: 1)) else { return XCTFail("gave up too early") }
            pauses.append(pause)
            clock.advance(by: .seconds(2))
        }
        XCTAssertEqual(pauses, [.milliseconds(100), .milliseconds(200), .milliseconds(400), .milliseconds(800), .seconds(1)])
        let decision = tracker.serverExited(.exited(status: 1))
        XCTAssertEqual(decision, .failed(restarts: 5, period: .seconds(60)))
        XCTAssertTrue(decision.description.hasPrefix("failed: 5 restarts in 1m"), decision.description)
    }

    func testRestartsOlderThanThePeriodAreForgotten() {
        let clock = ManualClock()
        var tracker = RestartTracker(policy: policy, clock: clock)
        for _ in 0..<5 { _ = tracker.serverExited(.killed(signal: 6)) }
        clock.advance(by: .seconds(60))
        // All five are exactly one period old: outside the window, so the backoff starts over.
        XCTAssertEqual(tracker.serverExited(.killed(signal: 6)), .restart(after: .milliseconds(100)))
        XCTAssertEqual(tracker.restarts.count, 1)
    }

    func testDecisionIsAPureFunctionOfItsInputs() {
        let clock = ManualClock()
        let now = clock.now
        let history = [now.advanced(by: .seconds(-70)), now.advanced(by: .seconds(-30)), now.advanced(by: .seconds(-1)),
                       now.advanced(by: .seconds(5))]  // a future time (clock skew) is not counted
        XCTAssertEqual(policy.decide(after: .exited(status: 2), restarts: history, now: now), .restart(after: .milliseconds(400)))
        XCTAssertEqual(policy.decide(after: .exited(status: 2), restarts: history, now: now),
                       policy.decide(after: .exited(status: 2), restarts: history.reversed(), now: now))
    }

    func testAnInstanceThatRanHealthyRestartsWithoutAPause() {
        let clock = ManualClock()
        let now = clock.now
        var healthy = policy
        healthy.healthyRun = .seconds(10)
        let history = [now.advanced(by: .seconds(-30)), now.advanced(by: .seconds(-20))]
        // Ran long enough: at once, whatever the recent restarts.
        XCTAssertEqual(healthy.decide(after: .killed(signal: 9), restarts: history, now: now, ranFor: .seconds(10)), .restart(after: .zero))
        XCTAssertEqual(healthy.decide(after: .watchdogExpired, restarts: history, now: now, ranFor: .seconds(11)), .restart(after: .zero))
        // Not long enough, or unknown (a failed start): the backoff.
        XCTAssertEqual(healthy.decide(after: .killed(signal: 9), restarts: history, now: now, ranFor: .milliseconds(9_999)),
                       .restart(after: .milliseconds(400)))
        XCTAssertEqual(healthy.decide(after: .killed(signal: 9), restarts: history, now: now), .restart(after: .milliseconds(400)))
        // healthy=never: always the backoff.
        healthy.healthyRun = nil
        XCTAssertEqual(healthy.decide(after: .killed(signal: 9), restarts: history, now: now, ranFor: .seconds(3600)),
                       .restart(after: .milliseconds(400)))
        // A clean exit under on-failure stays put however long it ran.
        healthy.healthyRun = .seconds(10)
        guard case .stay = healthy.decide(after: .exited(status: 0), restarts: history, now: now, ranFor: .seconds(60)) else {
            return XCTFail("clean exit restarted")
        }
    }

    func testTheIntensityLimitStillCountsImmediateRestarts() {
        let clock = ManualClock()
        var healthy = policy
        healthy.healthyRun = .seconds(1)
        var tracker = RestartTracker(policy: healthy, clock: clock)
        for _ in 0..<5 {
            XCTAssertEqual(tracker.serverExited(.killed(signal: 9), ranFor: .seconds(2)), .restart(after: .zero))
            clock.advance(by: .seconds(2))
        }
        XCTAssertEqual(tracker.serverExited(.killed(signal: 9), ranFor: .seconds(2)), .failed(restarts: 5, period: .seconds(60)))
    }

    func testDependentsOfAFailedServerStopInStopOrder() throws {
        let graph = try DependencyGraph([
            ("storage", []), ("vfs", ["storage"]), ("usb", []), ("shell", ["vfs", "usb"]), ("power", ["usb"]),
        ])
        XCTAssertEqual(graph.dependents(of: "storage"), ["shell", "vfs"])
        XCTAssertEqual(graph.dependents(of: "usb"), graph.stopOrder.filter { ["shell", "power"].contains($0) })
        XCTAssertEqual(graph.dependents(of: "shell"), [])
        for name in graph.names {
            let stops = graph.dependents(of: name)
            // Each dependent stops before anything it depends on.
            for (index, server) in stops.enumerated() {
                for dependency in graph.dependencies[server]! where stops.contains(dependency) {
                    XCTAssertLessThan(index, stops.firstIndex(of: dependency)!)
                }
            }
        }
    }

    func testALongChainDoesNotExhaustTheStack() throws {
        let count = 20_000
        let servers = (0..<count).map { ("s\($0)", $0 == 0 ? [String]() : ["s\($0 - 1)"]) }
        let graph = try DependencyGraph(servers)
        XCTAssertEqual(graph.startOrder.first, "s0")
        XCTAssertEqual(graph.startOrder.last, "s\(count - 1)")
        var cyclic = servers
        cyclic[0].1 = ["s\(count - 1)"]
        XCTAssertThrowsError(try DependencyGraph(cyclic)) { error in
            guard case .cycle(let names)? = (error as? DependencyGraph.Problems)?.problems.first else { return XCTFail("\(error)") }
            XCTAssertEqual(names.count, count)
        }
    }
}
