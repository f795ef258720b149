import IPC
import Platform
import XCTest
@testable import Storage

/// The request decoder and access policy as pure functions.
final class BlockRequestTests: XCTestCase {
    static let namespaces: [UInt32: BlockGeometry] = [
        1: BlockGeometry(blockSize: 512, blockCount: 131_072),
        2: BlockGeometry(blockSize: 4096, blockCount: 16_384),
    ]

    func decode(_ type: MessageType, _ p1: UInt64, _ p2: UInt64 = 0, _ p3: UInt64 = 0, data: BlockDataPlace = .none,
                writable: Bool = true) -> Result<BlockRequest, IPCStatus> {
        BlockRequestDecoder.decode(type: type, param1: p1, param2: p2, param3: p3, data: data, sharedWritable: writable) {
            Self.namespaces[$0]
        }
    }

    func testNamespaceChecks() {
        XCTAssertEqual(decode(.blockOpenNamespace, 1), .success(.openNamespace(nsid: 1)))
        XCTAssertEqual(decode(.blockGeometry, 2), .success(.geometry(nsid: 2)))
        XCTAssertEqual(decode(.blockOpenNamespace, 3), .failure(.ENOENT))
        XCTAssertEqual(decode(.blockGeometry, 0), .failure(.ENOENT))
        XCTAssertEqual(decode(.blockRead, 1 << 40, 0, 1), .failure(.ENOENT))  // nsid beyond 32 bits never truncates to 0
        XCTAssertEqual(decode(.blockFlush, 7), .failure(.ENOENT))
        XCTAssertEqual(decode(.vfsOpen, 1), .failure(.ENOSYS))
    }

    func testRanges() {
        XCTAssertEqual(decode(.blockRead, 1, 0, 1), .success(.read(nsid: 1, lba: 0, blocks: 1, toShared: false)))
        XCTAssertEqual(decode(.blockRead, 1, 131_071, 1), .success(.read(nsid: 1, lba: 131_071, blocks: 1, toShared: false)))
        XCTAssertEqual(decode(.blockRead, 1, 131_072, 1), .failure(.ERANGE))
        XCTAssertEqual(decode(.blockRead, 1, 131_071, 2), .failure(.ERANGE))
        XCTAssertEqual(decode(.blockRead, 2, .max, 1), .failure(.ERANGE))
        XCTAssertEqual(decode(.blockRead, 2, 1, .max), .failure(.ERANGE))  // no overflow in lba + count
        XCTAssertEqual(decode(.blockTrim, 2, 16_000, 385), .failure(.ERANGE))
        XCTAssertEqual(decode(.blockTrim, 2, 16_000, 384), .success(.trim(nsid: 2, lba: 16_000, blocks: 384)))
    }

    func testZeroCount() {
        XCTAssertEqual(decode(.blockRead, 1, 0, 0), .failure(.EINVAL))
        XCTAssertEqual(decode(.blockWrite, 1, 0, 0, data: .inline(count: 0)), .failure(.EINVAL))
        XCTAssertEqual(decode(.blockTrim, 2, 5, 0), .failure(.EINVAL))
    }

    func testInlineLimit() {
        XCTAssertEqual(decode(.blockRead, 1, 0, 128), .success(.read(nsid: 1, lba: 0, blocks: 128, toShared: false)))  // 64 KiB
        XCTAssertEqual(decode(.blockRead, 1, 0, 129), .failure(.EMSGSIZE))
        XCTAssertEqual(decode(.blockRead, 2, 0, 17), .failure(.EMSGSIZE))
        // Through shared memory the limit is the region (and maxSharedBytes).
        XCTAssertEqual(decode(.blockRead, 2, 0, 17, data: .shared(count: 17 * 4096)), .success(.read(nsid: 2, lba: 0, blocks: 17, toShared: true)))
        XCTAssertEqual(decode(.blockRead, 2, 0, 17, data: .shared(count: 16 * 4096)), .failure(.EINVAL))
        XCTAssertEqual(decode(.blockRead, 2, 0, 1, data: .shared(count: 4096), writable: false), .failure(.EINVAL))
        XCTAssertEqual(decode(.blockRead, 2, 0, 4096, data: .shared(count: 4096 * 4096)), .failure(.EMSGSIZE))
    }

    func testWriteSizes() {
        XCTAssertEqual(decode(.blockWrite, 2, 3, 2, data: .inline(count: 8192)), .success(.write(nsid: 2, lba: 3, blocks: 2)))
        XCTAssertEqual(decode(.blockWrite, 2, 3, 2, data: .inline(count: 8191)), .failure(.EINVAL))
        XCTAssertEqual(decode(.blockWrite, 2, 3, 2, data: .none), .failure(.EINVAL))
        XCTAssertEqual(decode(.blockWrite, 2, 3, 2, data: .shared(count: 8192)), .success(.write(nsid: 2, lba: 3, blocks: 2)))
        XCTAssertEqual(decode(.blockWrite, 1, 131_070, 4, data: .inline(count: 2048)), .failure(.ERANGE))
    }

    func testAccessPolicy() {
        let policy = BlockAccessPolicy(readers: .uids([0, 1000]), writers: .uids([0]))
        XCTAssertTrue(policy.allows(.read(nsid: 1, lba: 0, blocks: 1, toShared: false), uid: 1000))
        XCTAssertFalse(policy.allows(.write(nsid: 1, lba: 0, blocks: 1), uid: 1000))
        XCTAssertFalse(policy.allows(.flush(nsid: 1), uid: 1000))
        XCTAssertFalse(policy.allows(.geometry(nsid: 1), uid: 5))
        XCTAssertTrue(policy.allows(.trim(nsid: 1, lba: 0, blocks: 1), uid: 0))
        XCTAssertTrue(BlockAccessPolicy.acceptAll.allows(.write(nsid: 1, lba: 0, blocks: 1), uid: 12345))
    }

    func testDeviceSourceChoice() {
        let bdf = PCIAddress("0000:00:03.0")!
        XCTAssertEqual(StorageDeviceSource.choose(capabilities: [:], device: bdf), .success(.open(bdf)))
        XCTAssertEqual(StorageDeviceSource.choose(capabilities: ["CAP_BLOCK_READ": -1], device: nil), .failure(.noDevice))
        XCTAssertEqual(StorageDeviceSource.choose(capabilities: ["CAP_MMIO_NVME0": 5, "CAP_DMA_ALLOC": 6], device: nil),
                       .success(.adopt(label: "NVME0", deviceFD: 5, containerFD: 6, address: nil)))
        XCTAssertEqual(StorageDeviceSource.choose(capabilities: ["CAP_MMIO_NVME0": 5, "CAP_DMA_ALLOC": 6], device: bdf),
                       .success(.adopt(label: "NVME0", deviceFD: 5, containerFD: 6, address: bdf)))
        XCTAssertEqual(StorageDeviceSource.choose(capabilities: ["CAP_MMIO_NVME0": 5], device: bdf), .failure(.mmioWithoutDMA("CAP_MMIO_NVME0")))
        XCTAssertEqual(StorageDeviceSource.choose(capabilities: ["CAP_MMIO_NVME0": -1, "CAP_DMA_ALLOC": 6], device: nil),
                       .failure(.descriptorMissing("CAP_MMIO_NVME0")))
        let two = ["CAP_MMIO_NVME0": Int32(5), "CAP_MMIO_NVME1": 7, "CAP_DMA_ALLOC": 6]
        XCTAssertEqual(StorageDeviceSource.choose(capabilities: two, device: nil), .failure(.severalDevices(["CAP_MMIO_NVME0", "CAP_MMIO_NVME1"])))
        XCTAssertEqual(StorageDeviceSource.choose(capabilities: two, device: nil, label: "NVME1"),
                       .success(.adopt(label: "NVME1", deviceFD: 7, containerFD: 6, address: nil)))
    }

    func testAdoptingANonVFIODescriptorFailsCleanly() throws {
        // An adopted descriptor that is not a VFIO device is refused with a message, not a crash.
        let deviceFD = open("/dev/null", O_RDWR)
        let containerFD = open("/dev/null", O_RDWR)
        XCTAssertGreaterThanOrEqual(deviceFD, 0)
        XCTAssertThrowsError(try StorageBringUp.open(.adopt(label: "NVME0", deviceFD: deviceFD, containerFD: containerFD, address: nil))) {
            XCTAssertTrue("\($0)".contains("CAP_MMIO_NVME0"), "\($0)")
        }
    }
}
