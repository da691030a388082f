#include "formats/dtypes.h"

#include <cstring>

#include "core/half.h"
#include "formats/quant_blocks.h"
#include "formats/kquant_blocks.h"

namespace qf {

static void f32_to_f32_row(const uint8_t* src, float* dst, int64_t n) { std::memcpy(dst, src, (size_t)n * 4); }
static void f32_from_f32_row(const float* src, uint8_t* dst, int64_t n) { std::memcpy(dst, src, (size_t)n * 4); }
// 16-bit float rows (f16, bf16) through their scalar conversion (core/half.h).
template <float (*to_f32)(uint16_t)>
static void half_to_f32_row(const uint8_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    dst[i] = to_f32(h);
  }
}
template <uint16_t (*from_f32)(float)>
static void half_from_f32_row(const float* src, uint8_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t h = from_f32(src[i]);
    std::memcpy(dst + 2 * i, &h, 2);
  }
}

int GridFit::max_bits(bool sym) const {
  if (cols == 0) return 0;
  int best = 0;
  for (int b = 1; b <= 16; ++b) {
    const int maxq = (1 << b) - 1;
    // Stored integers over all codes 0..maxq and every zero the grid may have.
    const int lo_v = stores_min ? 0 : sym ? -(1 << (b - 1)) : -maxq;
    const int hi_v = stores_min ? maxq : sym ? (1 << (b - 1)) - 1 : maxq;
    if (lo_v >= lo && hi_v <= hi) best = b;
  }
  return best;
}

// ggml's type ids and block sizes (ggml.h / ggml.c type_traits); llama_ftype is llama.cpp's
// LLAMA_FTYPE_ALL_F32 / MOSTLY_F16 / MOSTLY_Q4_0 / MOSTLY_Q4_1 / MOSTLY_Q8_0 / MOSTLY_Q5_0 /
// MOSTLY_Q5_1 / MOSTLY_BF16 where a GGUF with all linears of the type is that file type; a K type
// gives the mix whose linears are all of it (MOSTLY_Q2_K, Q3_K_S, Q4_K_S, Q5_K_S, Q6_K); IQ4_NL and
// IQ4_XS (read only) their MOSTLY_IQ4_NL / MOSTLY_IQ4_XS. Other ids (the IQ1/IQ2/IQ3 types, TQ*,
// MXFP4) have no row: the GGUF reader refuses them naming the tensor and the id.
static const std::vector<DTypeTraits> kDTypes = {
    {"F32", 0, 1, 4, f32_to_f32_row, f32_from_f32_row, 0, {}},
    {"F16", 1, 1, 2, half_to_f32_row<f16_to_f32>, half_from_f32_row<f32_to_f16>, 1, {}},
    {"Q4_0", 2, 32, 18, dequantize_row_q4_0, quantize_row_q4_0_ref, 2, {32, -8, 7, false, pack_block_q4_0}},
    {"Q4_1", 3, 32, 20, dequantize_row_q4_1, quantize_row_q4_1_ref, 3, {32, 0, 15, true, pack_block_q4_1}},
    {"Q5_0", 6, 32, 22, dequantize_row_q5_0, quantize_row_q5_0_ref, 8, {32, -16, 15, false, pack_block_q5_0}},
    {"Q5_1", 7, 32, 24, dequantize_row_q5_1, quantize_row_q5_1_ref, 9, {32, 0, 31, true, pack_block_q5_1}},
    {"Q8_0", 8, 32, 34, dequantize_row_q8_0, quantize_row_q8_0_ref, 7, {32, -128, 127, false, pack_block_q8_0}},
    {"Q8_1", 9, 32, 36, nullptr, nullptr, -1, {}},
    {"Q2_K", 10, 256, 84, dequantize_row_q2_k, quantize_row_q2_k_ref, 10, {}},
    {"Q3_K", 11, 256, 110, dequantize_row_q3_k, quantize_row_q3_k_ref, 11, {}},
    {"Q4_K", 12, 256, 144, dequantize_row_q4_k, quantize_row_q4_k_ref, 14, {}},
    {"Q5_K", 13, 256, 176, dequantize_row_q5_k, quantize_row_q5_k_ref, 16, {}},
    {"Q6_K", 14, 256, 210, dequantize_row_q6_k, quantize_row_q6_k_ref, 18, {}},
    {"Q8_K", 15, 256, 292, nullptr, nullptr, -1, {}},
    {"IQ4_NL", 20, 32, 18, dequantize_row_iq4_nl, nullptr, 25, {}},
    {"IQ4_XS", 23, 256, 136, dequantize_row_iq4_xs, nullptr, 30, {}},
    {"I8", 24, 1, 1, nullptr, nullptr, -1, {}},
    {"I16", 25, 1, 2, nullptr, nullptr, -1, {}},
    {"I32", 26, 1, 4, nullptr, nullptr, -1, {}},
    {"I64", 27, 1, 8, nullptr, nullptr, -1, {}},
    {"F64", 28, 1, 8, nullptr, nullptr, -1, {}},
    {"BF16", 30, 1, 2, half_to_f32_row<bf16_to_f32>, half_from_f32_row<f32_to_bf16>, 32, {}},
};

const std::vector<DTypeTraits>& dtype_table() { return kDTypes; }

const DTypeTraits* dtype_by_name(const std::string& name) {
  for (const DTypeTraits& t : kDTypes)
    if (name == t.name) return &t;
  return nullptr;
}

const DTypeTraits* dtype_by_id(uint32_t id) {
  for (const DTypeTraits& t : kDTypes)
    if (t.id == id) return &t;
  return nullptr;
}

std::string dtype_names(bool (*keep)(const DTypeTraits&), const char* sep, const char* last_sep) {
  std::vector<const char*> names;
  for (const DTypeTraits& t : kDTypes)
    if (keep(t)) names.push_back(t.name);
  std::string s;
  for (size_t i = 0; i < names.size(); ++i) s += std::string(i == 0 ? "" : i + 1 == names.size() ? last_sep : sep) + names[i];
  return s;
}

}  // namespace qf
