// qforge — qforge's own exact checkpoint format: one safetensors file.
//
// __metadata__ = {"qforge_format": "1", "qforge": <JSON header>}; the header holds
//   qforge_format 1, config {every ModelConfig field}, source {path, format},
//   linears {"blocks.<i>.<name>": {bits, group, sym, mse, maxshrink, grid_points, norm, kind
//            ("uniform" | "compand"), compand_mult, compand_bias, compand_search, row_groups (0:
//            none), mixed_bits, rows, cols, ngroups, outliers, weight: "codes" | "f32"}} for every
//            linear that carries codes, and tokenizer {model, pre, bos_id, ...} when one was saved.
// Tensors (canonical names): tok_emb, final_norm, classifier (untied only), blocks.<i>.attn_norm,
// blocks.<i>.ffn_norm, blocks.<i>.<linear>.bias — all F32; a linear without codes stores
// .weight F32; with codes: .codes U8 [rows, cols], .scales and .zeros F32 [row groups (= rows
// without row groups), ngroups], .g_idx I32 [cols], .row_group I32 [rows] (row groups only),
// .group_bits U8 [row groups, ngroups] (mixed bits only), when it has outliers
// .outlier_rows/.outlier_cols I32 [nnz] and
// .outlier_vals F32 [nnz]; transforms (methods.md#transforms) as <side>_transform = perm | diag |
// hadamard | dense | butterfly with .<side>_perm I32 / .<side>_diag F32 / .<side>_dense F32, or for
// the seeded kinds <side>_seed (decimal string), <side>_size and optionally <side>_diag; .weight F32 as well only when the weight no longer equals the
// dequantized codes (weight "f32"). Tokenizer: tokenizer.tokens U8 (concatenated) +
// tokenizer.token_offsets I32 [n+1], tokenizer.scores F32, tokenizer.token_type I32,
// tokenizer.merges U8 + tokenizer.merge_offsets I32 (those present).
// q/k rows stay in the model's own RoPE layout (config.rope_interleaved says which).
// A block checkpoint (save_qforge_blocks) has header field blocks {first, count} (0-based) and
// only those blocks' tensors (no tok_emb, final_norm, classifier, tokenizer): load_qforge refuses
// it, load_qforge_blocks restores it into a model of the same config.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <utility>

#include "model/model.h"

namespace qf {

// Version 1; version 2 adds butterfly transforms and a diagonal on a seeded transform
// (<side>_diag: true, tensor .<side>_diag F32 [n]; docs/methods.md#quip). Files are written as 1
// unless they hold something only 2 has; both are read.
constexpr int kQforgeFormat = 1;
constexpr int kQforgeFormatSeededDiag = 2;

// True when `path` is a safetensors file whose metadata has qforge_format (never throws).
bool is_qforge_file(const std::string& path);
// Loads the model with every Linear::quant reconstructed (identical codes, bit-exact weights).
// Always eager. The tokenizer, when saved, is in model.src->tokenizer.
Model load_qforge(const std::string& path);

// Replaces blocks first .. first+count−1 of m with a block checkpoint's (codes, grids, transforms
// and norms exactly as saved). The file's config must equal m's; returns {first, count}.
std::pair<int, int> load_qforge_blocks(const std::string& path, Model& m);

// The config as the header stores it, and back (errors name `what` and the field).
nlohmann::ordered_json qforge_config_json(const ModelConfig& c);
ModelConfig qforge_config_from_json(const nlohmann::json& j, const std::string& what);

}  // namespace qf
