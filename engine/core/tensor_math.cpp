#include "core/tensor_math.h"
