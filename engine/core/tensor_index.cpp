#include "core/tensor_index.h"
