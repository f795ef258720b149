// swift-tools-version:6.0
// Limitless: kernel-bypass drivers and system services for Linux, written in Swift.
// Layers (arrows point down only): executables -> servers -> runtime -> platform -> C shim.
import PackageDescription

let package = Package(
    name: "Limitless",
    platforms: [.macOS(.v13)],
    products: [
        .library(name: "Platform", targets: ["Platform"]),
        .executable(name: "serverctl", targets: ["serverctl"]),
        .executable(name: "limitless-hil", targets: ["limitless-hil"]),
        .executable(name: "limitless-bench", targets: ["limitless-bench"]),
        .executable(name: "limitless-supervisor", targets: ["limitless-supervisor"]),
        .executable(name: "limitless-fuzz", targets: ["limitless-fuzz"]),
        .executable(name: "limitless-testserver", targets: ["limitless-testserver"]),
        .executable(name: "storage_server", targets: ["storage_server"]),
        .executable(name: "limitless-storage", targets: ["limitless-storage"]),
        .executable(name: "vfs_server", targets: ["vfs_server"]),
        .executable(name: "limitless-fs", targets: ["limitless-fs"]),
        .executable(name: "limitless-fuse", targets: ["limitless-fuse"]),
        // The seed's C calls (ipc_send_receive, ipc_send, ipc_receive, create_shared_memory_cap).
        .library(name: "limitless_ipc", targets: ["limitless_ipc"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-atomics", from: "1.2.0"),
    ],
    targets: [
        // C shim: volatile MMIO, ioctl request numbers, eventfd/memfd, static asserts.
        .target(name: "CLimitless"),
        // Debian's libpci-dev and libnuma-dev, as system libraries.
        .systemLibrary(name: "CPCI", pkgConfig: "libpci", providers: [.apt(["libpci-dev"])]),
        .systemLibrary(name: "CNUMA", providers: [.apt(["libnuma-dev"])]),
        // Debian's libfuse3-dev (the high-level, path-based API, FUSE_USE_VERSION 31).
        .systemLibrary(name: "CFUSE", pkgConfig: "fuse3", providers: [.apt(["libfuse3-dev"])]),

        // Platform: PCI enumeration and config space, VFIO, UIO, DMA memory, interrupts.
        .target(
            name: "Platform",
            dependencies: [
                "CLimitless", "CPCI", "CNUMA",
                .product(name: "SystemPackage", package: "swift-system"),
            ]),

        // Runtime: IPC (wire format, sockets, shared memory, rings) and supervision (config,
        // restart policy, checkpoints, logs).
        .target(
            name: "IPC",
            dependencies: [
                "CLimitless",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Atomics", package: "swift-atomics"),
            ]),
        .target(
            name: "Supervision",
            dependencies: [
                "Platform", "CLimitless", "IPC",
                .product(name: "SystemPackage", package: "swift-system"),
            ]),

        // What every server links: capabilities, logging, watchdog, checkpoints, orderly stop.
        .target(name: "ServerKit", dependencies: ["IPC", "Supervision", "CLimitless"]),

        // Drivers (server layer libraries), smoke-level for now.
        .target(name: "NVMe", dependencies: ["Platform"]),
        .target(name: "XHCI", dependencies: ["Platform"]),
        .target(name: "E1000E", dependencies: ["Platform"]),

        // The storage server's block protocol and logic.
        .target(name: "Storage", dependencies: ["NVMe", "Platform", "IPC", "ServerKit"]),

        // File systems: the contract between the VFS and a format (VFSCore), ext2, the VFS server logic.
        .target(name: "VFSCore", dependencies: [.product(name: "SystemPackage", package: "swift-system")]),
        .target(name: "Ext2", dependencies: ["VFSCore", .product(name: "SystemPackage", package: "swift-system")]),
        .target(
            name: "VFS",
            dependencies: [
                "VFSCore", "Ext2", "IPC", "ServerKit", "Storage",
                .product(name: "SystemPackage", package: "swift-system"),
            ]),

        // The FUSE bridge's logic: FUSE operations mapped to VFSClient calls and errno.
        .target(name: "FUSEBridge", dependencies: ["VFS", "VFSCore", "IPC", "CFUSE"]),

        // Which server drives which device.
        .target(name: "DeviceCatalog", dependencies: ["Platform"]),

        // Hardware-in-the-loop suites (run in the rig or against a real device).
        .target(name: "HILSuites", dependencies: ["Platform", "NVMe", "XHCI", "E1000E", "Storage"]),

        // The C client library: plain C speaking the same wire format, for C programs.
        .target(name: "limitless_ipc"),

        // Fakes shared by test targets: a sysfs tree in a temporary directory.
        .target(name: "PlatformTestSupport", dependencies: ["Platform"]),

        // Benchmarks that print figures (never timed assertions).
        .target(name: "Bench", dependencies: ["IPC", "CLimitless", "Supervision", "VFS"]),

        // Thin executables.
        .executableTarget(
            name: "serverctl",
            dependencies: [
                "Platform", "DeviceCatalog", "Supervision",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        .executableTarget(
            name: "limitless-hil",
            dependencies: [
                "HILSuites", "Platform",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),

        .executableTarget(
            name: "limitless-bench",
            dependencies: ["Bench", .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .executableTarget(
            name: "limitless-testserver",
            dependencies: ["ServerKit", .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .executableTarget(
            name: "storage_server",
            dependencies: ["Storage", "ServerKit", "Platform", .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .executableTarget(
            name: "limitless-storage",
            dependencies: ["Storage", "IPC", .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .executableTarget(
            name: "vfs_server",
            dependencies: ["VFS", "ServerKit", .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .executableTarget(
            name: "limitless-fs",
            dependencies: ["VFS", "IPC", .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .executableTarget(
            name: "limitless-fuse",
            dependencies: ["FUSEBridge", "VFS", "IPC", "CFUSE", .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .executableTarget(
            name: "limitless-fuzz",
            dependencies: ["IPC", "Ext2", "VFSCore", "PlatformTestSupport", .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .executableTarget(
            name: "limitless-supervisor",
            dependencies: ["Supervision", .product(name: "ArgumentParser", package: "swift-argument-parser")]),

        .testTarget(name: "IPCTests", dependencies: ["IPC", "CLimitless", "PlatformTestSupport"]),
        .testTarget(name: "SupervisionTests", dependencies: ["Supervision", "IPC", "PlatformTestSupport"]),
        .testTarget(name: "ServerKitTests", dependencies: ["ServerKit", "IPC", "Supervision", "CLimitless"]),
        .testTarget(name: "PlatformTests", dependencies: ["Platform", "CLimitless", "PlatformTestSupport"]),
        .testTarget(name: "DriverTests", dependencies: ["Platform", "NVMe", "XHCI", "E1000E"]),
        .testTarget(name: "StorageTests", dependencies: ["Storage", "IPC", "NVMe", "Platform", "ServerKit", "CLimitless", "PlatformTestSupport"]),
        .testTarget(name: "DeviceCatalogTests", dependencies: ["DeviceCatalog", "Platform"]),
        .testTarget(name: "Ext2Tests", dependencies: ["Ext2", "VFSCore", "PlatformTestSupport"]),
        .testTarget(name: "VFSTests", dependencies: ["VFS", "VFSCore", "Ext2", "IPC", "Storage", "PlatformTestSupport"]),
        .testTarget(name: "FUSETests", dependencies: ["FUSEBridge", "VFS", "VFSCore", "IPC", "PlatformTestSupport"]),
        .testTarget(name: "BenchTests", dependencies: ["Bench", "PlatformTestSupport"]),
    ]
)
