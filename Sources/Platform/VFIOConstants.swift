import CLimitless

/// Numbers from <linux/vfio.h>, named. Request numbers come from the C shim (they are _IO
/// macros); these are the plain flag and index values.
public enum VFIO {
    public static let apiVersion: Int32 = 0
    public static let type1IOMMU: UInt = 1
    public static let type1v2IOMMU: UInt = 3

    public static let groupFlagViable: UInt32 = 1 << 0
    public static let deviceFlagReset: UInt32 = 1 << 0
    public static let deviceFlagPCI: UInt32 = 1 << 1

    public static let regionFlagRead: UInt32 = 1 << 0
    public static let regionFlagWrite: UInt32 = 1 << 1
    public static let regionFlagMmap: UInt32 = 1 << 2

    /// Region indexes of a vfio-pci device: BAR0...BAR5, the ROM, config space, VGA.
    public static let configRegionIndex: UInt32 = 7
    public static let romRegionIndex: UInt32 = 6

    public static let irqIndexINTx: UInt32 = 0
    public static let irqIndexMSI: UInt32 = 1
    public static let irqIndexMSIX: UInt32 = 2

    public static let irqInfoEventfd: UInt32 = 1 << 0
    public static let irqInfoMaskable: UInt32 = 1 << 1
    public static let irqInfoAutomasked: UInt32 = 1 << 2

    public static let irqSetDataNone: UInt32 = 1 << 0
    public static let irqSetDataBool: UInt32 = 1 << 1
    public static let irqSetDataEventfd: UInt32 = 1 << 2
    public static let irqSetActionMask: UInt32 = 1 << 3
    public static let irqSetActionUnmask: UInt32 = 1 << 4
    public static let irqSetActionTrigger: UInt32 = 1 << 5

    public static let iommuInfoCaps: UInt32 = 1 << 1
    public static let iommuCapIOVARange: UInt16 = 1

    public static let dmaMapRead: UInt32 = 1 << 0
    public static let dmaMapWrite: UInt32 = 1 << 1

    /// ioctl request numbers.
    public enum Request {
        public static let getAPIVersion = CL_VFIO_GET_API_VERSION
        public static let checkExtension = CL_VFIO_CHECK_EXTENSION
        public static let setIOMMU = CL_VFIO_SET_IOMMU
        public static let groupGetStatus = CL_VFIO_GROUP_GET_STATUS
        public static let groupSetContainer = CL_VFIO_GROUP_SET_CONTAINER
        public static let groupUnsetContainer = CL_VFIO_GROUP_UNSET_CONTAINER
        public static let groupGetDeviceFD = CL_VFIO_GROUP_GET_DEVICE_FD
        public static let deviceGetInfo = CL_VFIO_DEVICE_GET_INFO
        public static let deviceGetRegionInfo = CL_VFIO_DEVICE_GET_REGION_INFO
        public static let deviceGetIRQInfo = CL_VFIO_DEVICE_GET_IRQ_INFO
        public static let deviceSetIRQs = CL_VFIO_DEVICE_SET_IRQS
        public static let deviceReset = CL_VFIO_DEVICE_RESET
        public static let iommuGetInfo = CL_VFIO_IOMMU_GET_INFO
        public static let iommuMapDMA = CL_VFIO_IOMMU_MAP_DMA
        public static let iommuUnmapDMA = CL_VFIO_IOMMU_UNMAP_DMA
    }
}
