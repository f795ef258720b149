// The ext2 file system (revision 1): on-disk structures and operations. (Being written.)
