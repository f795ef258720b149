// libnuma (Debian: libnuma-dev): place DMA memory and threads on a device's node.
#pragma once
#include <numa.h>
