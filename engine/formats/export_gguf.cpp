// Model → GGUF v3, architecture llama, as llama.cpp reads it.
//
// Tensor types: norms and biases F32; token embedding and an untied classifier F32 when
// dtype is F32, else F16 (qforge does not quantize them, so they keep what was evaluated up
// to fp16 rounding, as llama-quantize's --token-embedding-type/--output-tensor-type f16);
// linears in dtype: F32 / F16 from the weights, or Q8_0 / Q4_0 / Q4_1 encoded exactly from
// Linear::quant (quant_blocks.h: a grid that does not map is an error, never re-rounded).
// A linear whose input width is not a multiple of 32 cannot be stored in 32-element blocks
// by any GGUF type; it is written F32 (exact), as llama-quantize also falls back for such
// tensors. q/k rows go out in RoPE-pair order (the converter's permutation).
#include <algorithm>
#include <cctype>

#include "formats/export.h"
#include "formats/gguf.h"
#include "core/half.h"
#include "formats/model_source.h"
#include "formats/quant_blocks.h"

namespace qf {

static const char* gguf_linear_name(const std::string& n) { return kLlama.linear(n).gguf; }

// Source row of each output row: identity, or RoPE-pair order from HF halves order
// (out row (h, 2i + w) = in row (h, w·hd/2 + i)), matching rope_pairs_from_halves.
static std::vector<int64_t> row_order(int64_t rows, int heads) {
  std::vector<int64_t> o(rows);
  for (int64_t r = 0; r < rows; ++r) o[r] = r;
  if (heads <= 0) return o;
  const int64_t hd = rows / heads;
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < hd / 2; ++i)
      for (int64_t w = 0; w < 2; ++w) o[h * hd + 2 * i + w] = h * hd + w * (hd / 2) + i;
  return o;
}

// Rows of a 2-d (or 1-d: rows of one element) f32 tensor in `order` (empty: natural order),
// as F32 (type 0) or F16 (type 1).
static void write_rows(const Tensor& t, std::vector<int64_t> order, uint32_t type, const GGUFWriter::Sink& out) {
  const Tensor c = t.contiguous();
  const int64_t cols = c.dim() == 2 ? c.size(1) : 1;
  const float* p = c.f32();
  if (order.empty()) order = row_order(c.size(0), 0);
  if (type == 0) {
    for (int64_t r : order) out(p + r * cols, (size_t)cols * 4);
    return;
  }
  std::vector<uint16_t> h((size_t)cols);
  for (int64_t r : order) {
    for (int64_t j = 0; j < cols; ++j) h[j] = f32_to_f16(p[r * cols + j]);
    out(h.data(), h.size() * 2);
  }
}

static void add_tokenizer(GGUFWriter& w, const TokenizerSpec& t, int vocab, const std::string& path) {
  if ((int64_t)t.tokens.size() != vocab)
    fail("save gguf '", path, "': the tokenizer has ", t.tokens.size(), " tokens, the model's vocabulary is ", vocab,
         " (llama.cpp needs them equal)");
  w.add_kv("tokenizer.ggml.model", GGUFValue::make_str(t.model));
  if (!t.pre.empty()) w.add_kv("tokenizer.ggml.pre", GGUFValue::make_str(t.pre));
  w.add_kv("tokenizer.ggml.tokens", GGUFValue::make_str_array(t.tokens));
  if (!t.scores.empty()) w.add_kv("tokenizer.ggml.scores", GGUFValue::make_f32_array(t.scores));
  if (!t.token_type.empty()) w.add_kv("tokenizer.ggml.token_type", GGUFValue::make_i32_array(t.token_type));
  if (!t.merges.empty()) w.add_kv("tokenizer.ggml.merges", GGUFValue::make_str_array(t.merges));
  auto id = [&](const char* key, int32_t v) {
    if (v >= 0) w.add_kv(key, GGUFValue::make_u32((uint32_t)v));
  };
  id("tokenizer.ggml.bos_token_id", t.bos_id);
  id("tokenizer.ggml.eos_token_id", t.eos_id);
  id("tokenizer.ggml.unknown_token_id", t.unk_id);
  id("tokenizer.ggml.padding_token_id", t.pad_id);
  w.add_kv("tokenizer.ggml.add_bos_token", GGUFValue::make_bool(t.add_bos));
  w.add_kv("tokenizer.ggml.add_eos_token", GGUFValue::make_bool(t.add_eos));
  w.add_kv("tokenizer.ggml.add_space_prefix", GGUFValue::make_bool(t.add_space_prefix));
}

void save_gguf(const Model& m, const Tokenizer* tok, const std::string& path, const std::string& dtype_arg) {
  std::string dtype = dtype_arg;
  std::transform(dtype.begin(), dtype.end(), dtype.begin(), [](unsigned char ch) { return (char)std::toupper(ch); });
  uint32_t ftype = 0;
  if (dtype == "F32") ftype = 0;
  else if (dtype == "F16") ftype = 1;
  else if (dtype == "Q4_0") ftype = 2;
  else if (dtype == "Q4_1") ftype = 3;
  else if (dtype == "Q8_0") ftype = 7;
  else fail("save gguf '", path, "': dtype '", dtype_arg, "' is not supported (F32, F16, Q8_0, Q4_0, Q4_1)");
  const bool quant = ftype >= 2;
  const uint32_t lin_type = ggml_type_by_name(dtype)->id;
  const uint32_t emb_type = dtype == "F32" ? 0 : 1;
  const ModelConfig& c = m.cfg;
  validate_config(c, "save gguf '" + path + "'");
  if (c.arch != "llama") fail("save gguf '", path, "': architecture '", c.arch, "' (only llama)");
  if (c.rope_scaling == "llama3")
    fail("save gguf '", path, "': llama3 RoPE scaling is stored by llama.cpp as a rope_freqs.weight tensor, which qforge does not write yet");
  if (!c.rope_scaling.empty() && c.rope_scaling != "linear")
    fail("save gguf '", path, "': RoPE scaling '", c.rope_scaling, "' cannot be written (none or linear)");

  // Tokenizer: the one given, else the one the checkpoint carried.
  TokenizerSpec spec;
  if (tok) spec = tok->spec();
  else if (m.src) spec = m.src->tokenizer;

  // Quantized exports: check every linear before writing anything.
  auto what = [&](int b, const Linear& l) {
    return "save gguf '" + path + "': block " + std::to_string(b + 1) + " linear '" + l.name + "' (blk." + std::to_string(b) + "." +
           gguf_linear_name(l.name) + ".weight)";
  };
  if (quant)
    for (int b = 0; b < m.n_blocks(); ++b) {
      if (m.is_lazy() && m.resident[b] == 0)
        fail("save gguf '", path, "': block ", b + 1, " is not quantized (lazily loaded and never edited); quantize it or export gguf F16");
      for (const Linear& l : m.block(b).linears) {
        if (!l.quant) fail(what(b, l), ": not quantized (no codes; set it with m:set_linear(b, name, q)); export gguf F16 for float weights");
        if (l.in_features() % 32 == 0) check_grid_encodable(*l.quant, dtype, what(b, l));
      }
    }

  GGUFWriter w;
  w.add_kv("general.architecture", GGUFValue::make_str("llama"));
  std::string name = m.source.substr(m.source.find_last_of('/') + 1);
  name = name.substr(0, name.find('.'));
  w.add_kv("general.name", GGUFValue::make_str(name.empty() ? "qforge" : name));
  w.set_alignment(32);
  w.add_kv("general.file_type", GGUFValue::make_u32(ftype));
  if (quant) {
    w.add_kv("general.quantization_version", GGUFValue::make_u32(2));
    w.add_kv("general.quantized_by", GGUFValue::make_str("qforge"));
  }
  w.add_kv("llama.vocab_size", GGUFValue::make_u32((uint32_t)c.vocab_size));
  w.add_kv("llama.context_length", GGUFValue::make_u32((uint32_t)c.seq_len));
  w.add_kv("llama.embedding_length", GGUFValue::make_u32((uint32_t)c.dim));
  w.add_kv("llama.block_count", GGUFValue::make_u32((uint32_t)c.n_layers));
  w.add_kv("llama.feed_forward_length", GGUFValue::make_u32((uint32_t)c.hidden_dim));
  w.add_kv("llama.rope.dimension_count", GGUFValue::make_u32((uint32_t)c.head_dim()));
  w.add_kv("llama.attention.head_count", GGUFValue::make_u32((uint32_t)c.n_heads));
  w.add_kv("llama.attention.head_count_kv", GGUFValue::make_u32((uint32_t)c.n_kv_heads));
  w.add_kv("llama.attention.layer_norm_rms_epsilon", GGUFValue::make_f32(c.norm_eps));
  w.add_kv("llama.rope.freq_base", GGUFValue::make_f32(c.rope_theta));
  if (c.rope_scaling == "linear") {
    w.add_kv("llama.rope.scaling.type", GGUFValue::make_str("linear"));
    w.add_kv("llama.rope.scaling.factor", GGUFValue::make_f32(c.rope_factor));
  }
  if (!spec.model.empty()) add_tokenizer(w, spec, c.vocab_size, path);

  const uint64_t V = c.vocab_size, D = c.dim;
  w.add_tensor("token_embd.weight", {D, V}, emb_type, [&](const GGUFWriter::Sink& out) { write_rows(m.tok_emb, {}, emb_type, out); });
  for (int b = 0; b < m.n_blocks(); ++b) {
    const std::string pre = "blk." + std::to_string(b) + ".";
    const bool was_resident = !m.is_lazy() || m.resident[b] != 0;
    w.add_tensor(pre + kLlama.norm("attn_norm").gguf + ".weight", {D}, 0, [&m, b](const GGUFWriter::Sink& out) { write_rows(m.block(b).attn_norm, {}, 0, out); });
    for (const LinearSpec& ls : kLlama.linears) {
      const std::string lname = ls.name;
      const int heads = c.rope_interleaved || ls.rope == Rope::None ? 0 : ls.rope == Rope::Heads ? c.n_heads : c.n_kv_heads;
      const Shape shp = linear_shape(c, lname);
      const int64_t out_f = shp[0], in_f = shp[1];
      const uint32_t type = quant && in_f % 32 ? 0 : lin_type;
      w.add_tensor(pre + gguf_linear_name(lname) + ".weight", {(uint64_t)in_f, (uint64_t)out_f}, type,
                   [&m, &dtype, &what, b, lname, heads, type](const GGUFWriter::Sink& out) {
                     const Linear& l = m.block(b).linear(lname);
                     const std::vector<int64_t> order = row_order(l.out_features(), heads);
                     if (type <= 1) return write_rows(l.weight, order, type, out);
                     // Exact block encoding: the weight must still be what the codes give.
                     const Tensor dq = l.quant->dequantize(), W = l.weight.contiguous();
                     const float *a = dq.f32(), *x = W.f32();
                     for (int64_t k = 0; k < dq.numel(); ++k)
                       if (!(a[k] == x[k]))
                         fail(what(b, l), ": the weight no longer equals its codes' dequantization (element [", k / l.in_features() + 1, ", ",
                              k % l.in_features() + 1, "] is ", x[k], ", the codes give ", a[k], "); re-quantize or export gguf F16");
                     int64_t be = 0, bb = 0;
                     quant_block_info(dtype, &be, &bb);
                     std::vector<uint8_t> row((size_t)(l.in_features() / be * bb));
                     for (int64_t r : order) {
                       encode_grid_row(*l.quant, r, dtype, row.data(), what(b, l));
                       out(row.data(), row.size());
                     }
                   });
      if (m.has_bias(b, lname))  // without converting a lazy block
        w.add_tensor(pre + gguf_linear_name(lname) + ".bias", {(uint64_t)out_f}, 0, [&m, b, lname, heads](const GGUFWriter::Sink& out) {
          const Tensor& bias = m.block(b).linear(lname).bias;
          write_rows(bias, row_order(bias.size(0), heads), 0, out);
        });
    }
    w.add_tensor(pre + kLlama.norm("ffn_norm").gguf + ".weight", {D}, 0, [&m, b, was_resident](const GGUFWriter::Sink& out) {
      write_rows(m.block(b).ffn_norm, {}, 0, out);
      if (!was_resident) m.release_block(b);  // lazy: keep one block converted at a time
    });
  }
  w.add_tensor("output_norm.weight", {D}, 0, [&m](const GGUFWriter::Sink& out) { write_rows(m.final_norm, {}, 0, out); });
  if (!c.tied_classifier)
    w.add_tensor("output.weight", {D, V}, emb_type, [&](const GGUFWriter::Sink& out) { write_rows(m.classifier, {}, emb_type, out); });
  w.write(path);
}

}  // namespace qf
