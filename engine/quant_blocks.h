// qforge — llama.cpp/GGML quantized block formats (formats.md): sizes, dequantize, quantize.
//
// Block layouts (little endian, fp16 = IEEE half):
//   Q8_0 32 weights: fp16 d, int8 qs[32]                       x = d·q
//   Q4_0 32 weights: fp16 d, u8 qs[16] (low nibbles 0..15, high 16..31)   x = d·(q − 8)
//   Q4_1 32 weights: fp16 d, fp16 m, u8 qs[16]                  x = d·q + m
//   Q4_K 256 weights: super-block with 6-bit packed sub-scales/mins (formats.md)
//   Q6_K 256 weights: ql[128], qh[64], int8 scales[16], fp16 d (formats.md)
#pragma once
#include <cstdint>
#include <string>

namespace qf {

// Elements per block and bytes per block of a GGML type name; false if `dtype` is not a
// block-quantized type.
bool quant_block_info(const std::string& dtype, int64_t* block_elems, int64_t* block_bytes);
// Dequantizes n elements (n a multiple of the block size) from src into dst.
void dequantize_blocks(const std::string& dtype, const uint8_t* src, int64_t n, float* dst);

}  // namespace qf
