import VFSCore

/// The ext2 file system (revision 1). Entry point the VFS calls to mount an image.
public enum Ext2 {
    /// Reads and checks the superblock and group descriptors on `store` and returns the mounted
    /// file system. Unsupported features are refused with a message naming them (or the mount
    /// is forced read-only where reading is safe). `log` receives notes worth a line in the
    /// server's log (forced read-only, errors found in the image).
    public static func mount(store: BlockStore, readOnly: Bool, log: @escaping (String) -> Void) throws(FSError) -> FileSystem {
        try Ext2FileSystem(store: store, readOnly: readOnly, log: log)
    }
}
