// Placeholder until the GGUF work lands: no block formats known yet.
#include "quant_blocks.h"

#include "error.h"

namespace qf {

bool quant_block_info(const std::string&, int64_t*, int64_t*) { return false; }
void dequantize_blocks(const std::string& dtype, const uint8_t*, int64_t, float*) {
  fail("quantized block type '", dtype, "' is not supported");
}

}  // namespace qf
