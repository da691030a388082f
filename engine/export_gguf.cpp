// Placeholder until the GGUF work lands.
#include "export.h"

namespace qf {
void save_gguf(const Model&, const Tokenizer*, const std::string& path, const std::string&) { fail("save '", path, "': format gguf is not built yet"); }
}  // namespace qf
