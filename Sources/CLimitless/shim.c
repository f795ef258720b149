#include "CLimitless.h"
