// qforge — a checkpoint opened but not yet converted: config + where each tensor lives.
//
// Every format loader (llama2.c, HF safetensors, GGUF) parses its header into a ModelSource:
// the ModelConfig, the tokenizer it carries, and one TensorSource per weight under a
// canonical name. assemble_model() turns that into a Model, converting each tensor to f32
// straight from the file mapping — eagerly, or block by block when loading lazily.
//
// Canonical tensor names:
//   tok_emb [vocab, dim]          final_norm [dim]          classifier [vocab, dim] (absent: tied)
//   blocks.<i>.attn_norm [dim]    blocks.<i>.ffn_norm [dim]
//   blocks.<i>.<q|k|v|o|gate|up|down>.weight [out, in]      blocks.<i>.<linear>.bias [out] (optional)
// q/k rows are stored in the layout named by cfg.rope_interleaved (true: RoPE pairs (2i, 2i+1),
// llama2.c/Meta/GGUF-file order; false: HF rotate-half order).
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/mapped_file.h"
#include "model/model.h"
#include "tokenizer/tokenizer_spec.h"

namespace qf {

// One tensor inside a mapped file.
struct TensorSource {
  std::string name;                   // its name in the file (errors name it)
  std::shared_ptr<MappedFile> file;
  uint64_t offset = 0;                // absolute byte offset in the file
  uint64_t nbytes = 0;                // bytes it occupies (checked against dtype × shape)
  std::string dtype;                  // a readable row of formats/dtypes.h: F32 F16 BF16 Q4_0 … Q6_K IQ4_NL IQ4_XS
  Shape shape;                        // logical row-major shape ([out, in] for a linear)
  int unpermute_heads = 0;            // > 0: rows are in llama.cpp's converter order over this
                                      // many heads; converted back to HF order on load
};

// Bytes a tensor of `dtype` with `numel` elements occupies; fails for unknown dtypes or when
// numel is not a whole number of quant blocks. `what` names the tensor/file in errors.
uint64_t dtype_nbytes(const std::string& dtype, int64_t numel, const std::string& what);
// Converts the whole tensor to f32 into dst[numel] (bounds checked against the file).
void tensor_source_to_f32(const TensorSource& ts, float* dst);
Tensor tensor_source_load(const TensorSource& ts);  // new f32 tensor of ts.shape

struct ModelSource {
  std::string format;                 // "llama2c" | "hf" | "gguf"
  std::string path;                   // file or directory it was opened from
  ModelConfig cfg;
  std::map<std::string, TensorSource> tensors;  // canonical names (above)
  TokenizerSpec tokenizer;            // tokenizer.model == "" when the format carries none
  std::vector<std::string> files;     // every file read (for run fingerprints)
  float norm_shift = 0.f;             // added to every RMSNorm gain on load (HF Gemma: 1, arch.h)
};

// Builds the Model. Checks that every required tensor exists with the shape the config
// implies (error names the file, the tensor and both shapes). lazy: blocks stay
// unconverted until Model::block() first touches them.
Model assemble_model(std::shared_ptr<const ModelSource> src, bool lazy = false);
// Converts block i of src into f32 tensors (used by assemble_model and lazy loading).
Block load_block(const ModelSource& src, int i);

// llama.cpp's converter reorders q/k rows from HF rotate-half order to RoPE-pair order:
// within each head of size hd, row (h, j) of the result = HF row (h, perm(j)) where
// perm(2i) = i and perm(2i+1) = hd/2 + i. This is the one statement of that permutation:
// rope_pair_rows(rows, heads)[r] is the HF-order row that RoPE-pair row r holds, rope_half_rows
// its inverse (the RoPE-pair row that HF row r holds). Errors: rows not a multiple of the heads,
// odd head dimension.
std::vector<int64_t> rope_pair_rows(int64_t rows, int n_heads);
std::vector<int64_t> rope_half_rows(int64_t rows, int n_heads);
// out row r = w row order[r], for a [rows, cols] matrix or a [rows] vector.
Tensor gather_rows(const Tensor& w, const std::vector<int64_t>& order);
// The permutation applied to the rows of a [n_heads*hd, cols] matrix (or a [n_heads*hd] bias).
Tensor rope_pairs_from_halves(const Tensor& w, int n_heads);  // HF order -> GGUF/llama2.c order
Tensor rope_halves_from_pairs(const Tensor& w, int n_heads);  // GGUF/llama2.c order -> HF order

}  // namespace qf
