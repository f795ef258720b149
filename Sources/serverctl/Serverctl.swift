import ArgumentParser
import DeviceCatalog
import Platform

@main
struct Serverctl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serverctl",
        abstract: "Inspect and control Limitless servers and the devices they drive.",
        discussion: "Server control (list, status, start, stop, restart, logs) arrives with the supervisor.",
        subcommands: [Devices.self])
}

struct Devices: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List every PCI function, its binding, IOMMU group and the server that would drive it.")

    @Flag(name: .long, help: "Print JSON for scripts.")
    var json = false

    @Flag(name: .long, help: "Only functions a Limitless server supports.")
    var supported = false

    @Option(name: .long, help: ArgumentHelp("Read sysfs from this directory instead of /sys.", visibility: .hidden))
    var sysfsRoot = "/sys"

    func run() throws {
        let sysfs = Sysfs(root: sysfsRoot)
        let catalog = DeviceCatalog()
        var functions = try PCIEnumerator(sysfs: sysfs).functions()
        if supported { functions = functions.filter { catalog.entry(for: $0) != nil } }
        let rows = functions.map { DeviceRow(function: $0, entry: catalog.entry(for: $0)) }
        print(json ? DeviceRow.json(rows) : DeviceRow.table(rows, iommuEnabled: sysfs.iommuEnabled))
    }
}
