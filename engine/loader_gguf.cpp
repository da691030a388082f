// Placeholder until the GGUF work lands.
#include "loader_gguf.h"

namespace qf {
ModelSource open_gguf(const std::string& path) { fail("GGUF file '", path, "': GGUF loading is not built yet"); }
}  // namespace qf
