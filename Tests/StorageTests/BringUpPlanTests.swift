import XCTest
@testable import Storage

/// How storage_server's bring-up divides MSI-X vectors between the admin queue and the I/O
/// queues (the controller's part, the CQs created with IEN 0, is in DriverTests).
final class BringUpPlanTests: XCTestCase {
    func testPolledIOQueuesTakeOnlyTheAdminVector() {
        XCTAssertEqual(StorageBringUp.msixVectorsWanted(queues: 1, pollIOQueues: true, available: 8), 1)
        XCTAssertEqual(StorageBringUp.msixVectorsWanted(queues: 4, pollIOQueues: true, available: 8), 1)
    }

    func testInterruptDrivenQueuesTakeOneVectorEachBesideTheAdminQueue() {
        XCTAssertEqual(StorageBringUp.msixVectorsWanted(queues: 1, pollIOQueues: false, available: 8), 2)
        XCTAssertEqual(StorageBringUp.msixVectorsWanted(queues: 3, pollIOQueues: false, available: 8), 4)
    }

    func testNeverMoreVectorsThanTheDeviceOffers() {
        XCTAssertEqual(StorageBringUp.msixVectorsWanted(queues: 4, pollIOQueues: false, available: 2), 2)
        XCTAssertEqual(StorageBringUp.msixVectorsWanted(queues: 1, pollIOQueues: false, available: 0), 0)
        XCTAssertEqual(StorageBringUp.msixVectorsWanted(queues: 1, pollIOQueues: true, available: 0), 0)
        XCTAssertEqual(StorageBringUp.msixVectorsWanted(queues: 1, pollIOQueues: false, available: -1), 0)
    }
}
