// qforge — exact GGUF K-quant encoding of a K-quant grid (quant/kquant.h, docs/formats.md "gguf"):
// the solver's codes and the grid's stored integers (d, dmin, sc, mn) go into the super-blocks
// as they are, and every block is decoded again and compared with the grid's values.
#pragma once
#include <string>

#include "quant/grid.h"

namespace qf {

// The grid-level conditions, before anything is written: a K-quant grid of type `dtype`
// ("Q2_K".."Q6_K"), no outliers, columns in natural order, codes matching the grid.
void check_kquant_encodable(const QuantizedLinear& q, const std::string& dtype, const std::string& what);
// Row `row` of q as cols/256 super-blocks at dst; fails unless they decode exactly to q's values.
void encode_kquant_row(const QuantizedLinear& q, int64_t row, const std::string& dtype, uint8_t* dst, const std::string& what);

// llama.cpp's reference K quantizers (quantize_row_q*_K_ref, no imatrix): kquant_fit_superblock
// without importances, codes by the grid's rounding, packed. n a multiple of 256. Where a
// sub-block's d·sc is 0 llama.cpp leaves the search's codes in the block and qforge writes code
// 0 (Q3_K/Q6_K: the zero); both decode to the same values.
void quantize_row_q2_k_ref(const float* src, uint8_t* dst, int64_t n);
void quantize_row_q3_k_ref(const float* src, uint8_t* dst, int64_t n);
void quantize_row_q4_k_ref(const float* src, uint8_t* dst, int64_t n);
void quantize_row_q5_k_ref(const float* src, uint8_t* dst, int64_t n);
void quantize_row_q6_k_ref(const float* src, uint8_t* dst, int64_t n);

}  // namespace qf
