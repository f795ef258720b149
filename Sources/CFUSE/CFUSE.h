// libfuse3's high-level API as Swift sees it. fuse.h insists on FUSE_USE_VERSION before it is
// included; 31 is the 3.1 API (getattr/chmod/... take a fuse_file_info, rename takes flags),
// which every libfuse3 since 3.1 provides.
#define FUSE_USE_VERSION 31
#include <fuse.h>
