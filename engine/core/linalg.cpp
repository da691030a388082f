#include "core/linalg.h"
