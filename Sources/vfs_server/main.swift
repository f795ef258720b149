print("vfs_server: not built yet")
