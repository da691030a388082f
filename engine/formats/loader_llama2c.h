// qforge — llama2.c checkpoint loader (legacy format: 7 int32 header fields + f32 tensors).
#pragma once
#include <string>

#include "model/model.h"

namespace qf {

// Loads `path` (a .bin checkpoint). Rejects empty, truncated, oversized or inconsistent
// files with a message naming the file and the field; never allocates from an unchecked header.
Model load_llama2c(const std::string& path);

}  // namespace qf
