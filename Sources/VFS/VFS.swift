// The VFS server logic: mount table, paths, permissions, descriptors, caches. (Being written.)
