#include "limitless_ipc.h"
