// Placeholder until the safetensors work lands.
#include "export.h"

namespace qf {
void save_hf(const Model&, const Tokenizer*, const std::string& dir, const std::string&) { fail("save '", dir, "': format hf is not built yet"); }
void save_gptq(const Model&, const Tokenizer*, const std::string& dir) { fail("save '", dir, "': format gptq is not built yet"); }
void save_qforge(const Model&, const Tokenizer*, const std::string& path) { fail("save '", path, "': format qforge is not built yet"); }
}  // namespace qf
