// qforge — storage types as data, as ggml's type_traits: one row per type a tensor can be stored
// in (ggml's type ids, so the GGUF reader and writer use the same rows), with its block size, its
// to-f32 and from-f32 row functions where qforge has them, and which qforge grids it stores
// exactly from their codes. Everything that used to switch on a dtype string or a ggml type id
// (dtype_nbytes, tensor_source_to_f32, quant_block_info, dequantize_blocks, quantize_blocks_ref,
// the exact grid encoders, the GGUF reader's type names and sizes, export_gguf's tensor types and
// file type) looks the type up here.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace qf {

// n elements (a multiple of block_elems) of a row: stored bytes -> f32, f32 -> stored bytes.
using RowToF32 = void (*)(const uint8_t* src, float* dst, int64_t n);
using RowFromF32 = void (*)(const float* src, uint8_t* dst, int64_t n);
// One block from its integers v[cols] (code − zero, or the code itself when the type stores a
// min), its scale d and min m (stored as fp16).
using BlockFromInts = void (*)(const int* v, float d, float m, uint8_t* blk);

// Which uniform grids a block type stores exactly (quant_blocks.h, check_grid_encodable): every
// `cols` consecutive columns share one scale (and min); per (row, group) the stored integer —
// code − zero, or the code itself when the type stores a min m = −scale·zero — must lie in
// [lo, hi], and the scale (and min) must be exact in fp16.
struct GridFit {
  int cols = 0;             // 0: no exact encoding from a grid
  int lo = 0, hi = 0;
  bool stores_min = false;  // x = d·q + m (Q4_1); else x = d·(q − zero) with an integer zero
  BlockFromInts pack = nullptr;
  // The widest grid whose every code fits, for a symmetric grid (zero 2^(bits−1)) or an
  // asymmetric one (any integer zero in 0..2^bits − 1).
  int max_bits(bool sym) const;
};

struct DTypeTraits {
  const char* name;          // "Q4_0": ggml's and safetensors' spelling
  uint32_t id;               // ggml type id (GGUF tensor type)
  int64_t block_elems;       // elements per block (1: a scalar type)
  int64_t block_bytes;       // bytes per block
  RowToF32 to_f32;           // nullptr: qforge cannot read the type
  RowFromF32 from_f32;       // F32/F16/BF16 conversion (round to nearest even), the block types'
                             // llama.cpp reference quantizer; nullptr: none here
  int llama_ftype;           // general.file_type of a GGUF whose linears have this type; -1: none
  GridFit grid;
  bool is_block() const { return block_elems > 1; }
};

const std::vector<DTypeTraits>& dtype_table();  // by ggml type id
const DTypeTraits* dtype_by_name(const std::string& name);  // nullptr when unknown (case-sensitive)
const DTypeTraits* dtype_by_id(uint32_t ggml_id);           // nullptr when unknown
// Names of the rows passing `keep`, joined: "Q8_0, Q4_0 or Q4_1" (last_sep " or ") or
// "Q8_0 Q4_0 Q4_1" (sep " ", last_sep " ").
std::string dtype_names(bool (*keep)(const DTypeTraits&), const char* sep = ", ", const char* last_sep = " or ");

}  // namespace qf
