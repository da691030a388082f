// Model → GGUF v3 as llama.cpp reads it: architecture llama, qwen3, gemma2, gemma3, and the mixtures of
// experts (Mixtral as llama with experts, qwen2moe, qwen3moe: merged expert tensors) (arch.h kGgufArchs).
//
// Tensor types: norms and biases F32; token embedding and an untied classifier F32 when
// dtype is F32, else F16 (qforge does not quantize them, so they keep what was evaluated up
// to fp16 rounding, as llama-quantize's --token-embedding-type/--output-tensor-type f16);
// linears in dtype: F32 / F16 from the weights, or Q8_0 / Q4_0 / Q4_1 / Q5_0 / Q5_1 encoded
// exactly from Linear::quant (quant_blocks.h: a grid that does not map is an error, never
// re-rounded).
// A linear whose input width is not a multiple of 32 cannot be stored in 32-element blocks
// by any GGUF type; it is written F32 (exact), as llama-quantize also falls back for such
// tensors. A linear left in full precision (no codes: an override's skip:) is written F32 too. q/k rows go out in RoPE-pair order (the converter's permutation).
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>

#include "formats/dtypes.h"
#include "formats/export.h"
#include "formats/gguf.h"
#include "core/half.h"
#include "formats/model_source.h"
#include "formats/quant_blocks.h"
#include "formats/kquant_blocks.h"

namespace qf {

// Source row of each output row: identity (heads 0), or RoPE-pair order from HF halves order
// (rope_pair_rows, the order rope_pairs_from_halves gathers).
static std::vector<int64_t> row_order(int64_t rows, int heads) {
  if (heads > 0) return rope_pair_rows(rows, heads);
  std::vector<int64_t> o(rows);
  for (int64_t r = 0; r < rows; ++r) o[r] = r;
  return o;
}

// Rows of a 2-d (or 1-d: rows of one element) f32 tensor in `order` (empty: natural order), in
// a scalar type of the table (F32, F16).
static void write_rows(const Tensor& t, std::vector<int64_t> order, const DTypeTraits& type, const GGUFWriter::Sink& out) {
  const Tensor c = t.contiguous();
  const int64_t cols = c.dim() == 2 ? c.size(1) : 1;
  const float* p = c.f32();
  if (order.empty()) order = row_order(c.size(0), 0);
  std::vector<uint8_t> row((size_t)(cols * type.block_bytes));
  for (int64_t r : order) {
    type.from_f32(p + r * cols, row.data(), cols);
    out(row.data(), row.size());
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

// The linear type of an export dtype: a row of the table the gguf exporter takes (export.cpp).
static const DTypeTraits& linear_type(const std::string& dtype_arg, const std::string& path, std::string* dtype) {
  *dtype = dtype_arg;
  std::transform(dtype->begin(), dtype->end(), dtype->begin(), [](unsigned char ch) { return (char)std::toupper(ch); });
  const ExportFormat& f = *export_format("gguf");
  const DTypeTraits* t = f.takes(*dtype) ? dtype_by_name(*dtype) : nullptr;
  if (!t) {
    std::string list;
    for (const char* d : f.dtypes) list += std::string(list.empty() ? "" : ", ") + d;
    fail("save gguf '", path, "': dtype '", dtype_arg, "' is not supported (", list, ")");
  }
  return *t;
}

static std::string linear_what(const Model& m, const std::string& path, int b, const Linear& l) {
  const LinearSpec* s = arch_of(m.cfg).find(l.name);
  return "save gguf '" + path + "': block " + std::to_string(b + 1) + " linear '" + l.name + "' (blk." + std::to_string(b) + "." +
         (s ? s->gguf : "?") + ".weight)";
}

static bool is_kquant(const DTypeTraits& t) {
  KQuantType k;
  return kquant_from_name(t.name, &k);
}

// The type a linear is written in. A K-quant file (dtype Q2_K..Q6_K) writes a K-quant grid in its
// own type and any other grid in the first 32-block type that stores it exactly (Q4_0, Q4_1, Q5_0,
// Q5_1, Q8_0: llama-quantize's fallback for widths that are not a multiple of 256); every other
// dtype is the type of every linear. Fails (naming the linear) when nothing stores the grid.
static const DTypeTraits& linear_dtype(const DTypeTraits& file, const Linear& l, const std::string& what) {
  if (!l.quant) return *dtype_by_name("F32");  // left in full precision (a skip: rule): exact F32
  if (!is_kquant(file)) return file;
  const Grid& g = l.quant->grid;
  if (g.spec.kind == GridKind::KQuant) return *dtype_by_name(kquant_layout(g.spec.ktype).name);
  if (l.in_features() % 32) return *dtype_by_name("F32");  // no block type fits: exact F32, as for any dtype
  std::string why;
  for (const char* n : {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"}) {
    try {
      check_grid_encodable(*l.quant, n, what);
      return *dtype_by_name(n);
    } catch (const Error& e) {
      if (why.empty()) why = e.what();
    }
  }
  fail(what, ": grid ", g.spec.str(), " is neither a K-quant grid nor storable in a 32-block type (", why, ")");
}

void check_gguf(const Model& m, const std::string& path, const std::string& dtype_arg) {
  std::string dtype;
  const DTypeTraits& lin = linear_type(dtype_arg, path, &dtype);
  const bool quant = lin.grid.cols > 0 || is_kquant(lin);
  const ModelConfig& c = m.cfg;
  validate_config(c, "save gguf '" + path + "'");
  const GgufArch& ga = gguf_arch_of(c.arch);
  if (c.rope_interleaved && !ga.permuted_qk)
    fail("save gguf '", path, "': the model's q/k rows are in RoPE-pair order, which llama.cpp's '", ga.gguf, "' does not use");
  if (ga.swa_pattern == 0 && c.sliding_window > 0)
    fail("save gguf '", path, "': llama.cpp's '", ga.gguf, "' has no sliding-window layers (the model slides on some); it would attend beyond the window");
  if (ga.swa_pattern > 0 && c.sliding_window == 0 && ga.swa_window > 0)
    fail("save gguf '", path, "': llama.cpp's '", ga.gguf, "' always slides (window ", ga.swa_window, " when unset); the model has no sliding layers");
  if (c.attn_scale > 0.f || ga.big_model_layers > 0) {  // llama.cpp derives the score scale; it must be ours
    const float theirs = ga.big_model_layers == 0              ? 1.0f / std::sqrt((float)c.head_dim())
                         : c.n_layers == ga.big_model_layers ? 1.0f / std::sqrt((float)(c.dim / c.n_heads))
                                                             : 1.0f / std::sqrt((float)c.head_dim());
    const float ours = c.attn_scale > 0.f ? c.attn_scale : 1.0f / std::sqrt((float)c.head_dim());
    if (std::abs(ours - theirs) > 1e-6f * theirs)
      fail("save gguf '", path, "': the attention score scale ", ours, " differs from the ", theirs, " llama.cpp's '", ga.gguf, "' uses");
  }
  if ((c.attn_softcap > 0.f || c.final_softcap > 0.f) && ga.attn_softcap == 0.f && c.arch != "gemma3")
    fail("save gguf '", path, "': llama.cpp's '", ga.gguf, "' has no soft caps");
  if (c.attn_softcap > 0.f && c.arch == "gemma3") fail("save gguf '", path, "': llama.cpp's gemma3 has no attention soft cap");
  if (ga.attn_softcap > 0.f && !(c.attn_softcap > 0.f && c.final_softcap > 0.f))
    fail("save gguf '", path, "': llama.cpp's '", ga.gguf, "' always soft-caps (", ga.attn_softcap, ", ", ga.final_softcap, " when unset)");
  if (ga.moe_norm_topk >= 0) {  // docs/architecture.md#mixture-of-experts: what llama.cpp hard-codes must be the model's
    if (c.moe_norm_topk != (ga.moe_norm_topk == 1))
      fail("save gguf '", path, "': llama.cpp's '", ga.gguf, "' ", ga.moe_norm_topk ? "always renormalizes" : "never renormalizes",
           " the top-k routing weights; this model ", c.moe_norm_topk ? "does" : "does not");
    if (c.arch == "qwen2_moe" && c.q_dim() != c.dim)
      fail("save gguf '", path, "': llama.cpp's qwen2moe needs n_heads·head_dim = dim (", c.q_dim(), " ≠ ", c.dim, ")");
    for (int b = 0; b < m.n_blocks(); ++b)
      for (const BlockLinear& bl : block_linears(c))
        if (bl.expert >= 0 && m.has_bias(b, bl.name))
          fail("save gguf '", path, "': block ", b + 1, " linear '", bl.name, "' has a bias; llama.cpp's experts have none");
  }
  if (c.rope_scaling == "llama3")
    fail("save gguf '", path, "': llama3 RoPE scaling is stored by llama.cpp as a rope_freqs.weight tensor, which qforge does not write yet");
  if (!c.rope_scaling.empty() && c.rope_scaling != "linear")
    fail("save gguf '", path, "': RoPE scaling '", c.rope_scaling, "' cannot be written (none or linear)");

  // Quantized exports: check every linear before writing anything. A linear left in full
  // precision is written F32, but a model with no quantized linear at all is refused (a quantized
  // type asked of a float model: "export gguf F16").
  if (quant) {
    bool any = false;
    for (int b = 0; b < m.n_blocks() && !any; ++b) {
      if (m.is_lazy() && m.resident[b] == 0) continue;
      for (const Linear& l : m.block(b).linears) any = any || (bool)l.quant;
    }
    if (!any) fail("save gguf '", path, "': no linear is quantized (no codes; set them with m:set_linear(b, name, q)); export gguf F16 for float weights");
  }
  if (quant)
    for (int b = 0; b < m.n_blocks(); ++b) {
      if (m.is_lazy() && m.resident[b] == 0)
        fail("save gguf '", path, "': block ", b + 1, " is not quantized (lazily loaded and never edited); quantize it or export gguf F16");
      for (const Linear& l : m.block(b).linears) {
        if (!l.quant) continue;  // full precision (a skip: rule): written F32
        const DTypeTraits& t = linear_dtype(lin, l, linear_what(m, path, b, l));
        if (l.in_features() % t.block_elems || (t.grid.cols == 0 && !is_kquant(t))) continue;  // written F32
        if (is_kquant(t)) check_kquant_encodable(*l.quant, t.name, linear_what(m, path, b, l));
        else check_grid_encodable(*l.quant, t.name, linear_what(m, path, b, l));
      }
    }
}

// The experts of one per-expert row of block b as llama.cpp's merged tensor: ggml {in, out,
// n_experts}, expert 0's rows first, every expert in one type (the file's, or for K-quant files each
// linear's own: they must agree).
static void add_experts(GGUFWriter& w, const Model& m, int b, const LinearSpec& ls, const DTypeTraits& lin, bool quant,
                        const std::string& path) {
  const ModelConfig& c = m.cfg;
  const int64_t E = c.n_experts, out_f = extent(c, ls.out), in_f = extent(c, ls.in);
  const DTypeTraits& f32 = *dtype_by_name("F32");
  const DTypeTraits* tp = &lin;
  if (quant) {
    for (int64_t e = 0; e < E; ++e) {
      const Linear& l = m.block(b).linear(expert_name(ls.name, (int)e));
      const DTypeTraits* t = &linear_dtype(lin, l, linear_what(m, path, b, l));
      if (in_f % t->block_elems) t = &f32;
      if (e == 0) tp = t;
      else if (t != tp)
        fail(linear_what(m, path, b, l), ": its type ", t->name, " differs from expert 0's ", tp->name,
             " (llama.cpp stores a block's experts in one tensor of one type)");
    }
  }
  const std::string pattern = ls.name;
  w.add_tensor("blk." + std::to_string(b) + "." + ls.gguf + ".weight", {(uint64_t)in_f, (uint64_t)out_f, (uint64_t)E}, tp->id,
               [&m, b, pattern, E, tp, path](const GGUFWriter::Sink& out) {
                 const DTypeTraits& type = *tp;
                 for (int64_t e = 0; e < E; ++e) {
                   const Linear& l = m.block(b).linear(expert_name(pattern.c_str(), (int)e));
                   const std::vector<int64_t> order = row_order(l.out_features(), 0);
                   if (type.grid.cols == 0 && !is_kquant(type)) {
                     write_rows(l.weight, order, type, out);
                     continue;
                   }
                   const Tensor dq = l.quant->dequantize(), W = l.weight.contiguous();
                   if (std::memcmp(dq.f32(), W.f32(), sizeof(float) * dq.numel()) != 0)
                     fail(linear_what(m, path, b, l), ": the weight no longer equals its codes' dequantization; re-quantize or export gguf F16");
                   std::vector<uint8_t> row((size_t)(l.in_features() / type.block_elems * type.block_bytes));
                   for (int64_t r : order) {
                     if (is_kquant(type)) encode_kquant_row(*l.quant, r, type.name, row.data(), linear_what(m, path, b, l));
                     else encode_grid_row(*l.quant, r, type.name, row.data(), linear_what(m, path, b, l));
                     out(row.data(), row.size());
                   }
                 }
               });
}

void save_gguf(const Model& m, const Tokenizer* tok, const std::string& path, const std::string& dtype_arg) {
  check_gguf(m, path, dtype_arg);
  std::string dtype;
  const DTypeTraits& lin = linear_type(dtype_arg, path, &dtype);
  const bool quant = lin.grid.cols > 0 || is_kquant(lin);
  const uint32_t ftype = (uint32_t)lin.llama_ftype;
  // Token embedding and classifier: F32 when the linears are, else F16 (not quantized).
  const DTypeTraits& emb = *dtype_by_name(dtype == "F32" ? "F32" : "F16");
  const DTypeTraits& f32 = *dtype_by_name("F32");
  const uint32_t emb_type = emb.id;
  const ModelConfig& c = m.cfg;
  auto what = [&](int b, const Linear& l) { return linear_what(m, path, b, l); };

  // Tokenizer: the one given, else the one the checkpoint carried.
  TokenizerSpec spec;
  if (tok) spec = tok->spec();
  else if (m.src) spec = m.src->tokenizer;

  const GgufArch& ga = gguf_arch_of(c.arch);
  const ArchSpec& arch = arch_of(c);
  const std::string A = std::string(ga.gguf) + ".";
  GGUFWriter w;
  w.add_kv("general.architecture", GGUFValue::make_str(ga.gguf));
  std::string name = m.source.substr(m.source.find_last_of('/') + 1);
  name = name.substr(0, name.find('.'));
  w.add_kv("general.name", GGUFValue::make_str(name.empty() ? "qforge" : name));
  w.set_alignment(32);
  w.add_kv("general.file_type", GGUFValue::make_u32(ftype));
  if (quant) {
    w.add_kv("general.quantization_version", GGUFValue::make_u32(2));
    w.add_kv("general.quantized_by", GGUFValue::make_str("qforge"));
  }
  w.add_kv(A + "vocab_size", GGUFValue::make_u32((uint32_t)c.vocab_size));
  w.add_kv(A + "context_length", GGUFValue::make_u32((uint32_t)c.seq_len));
  w.add_kv(A + "embedding_length", GGUFValue::make_u32((uint32_t)c.dim));
  w.add_kv(A + "block_count", GGUFValue::make_u32((uint32_t)c.n_layers));
  // Mixtral's experts are feed_forward_length wide (llama.cpp's llama); Qwen-MoE's have their own key.
  w.add_kv(A + "feed_forward_length", GGUFValue::make_u32((uint32_t)(c.arch == "mixtral" ? c.expert_hidden : c.hidden_dim)));
  if (c.n_experts > 0) {
    w.add_kv(A + "expert_count", GGUFValue::make_u32((uint32_t)c.n_experts));
    w.add_kv(A + "expert_used_count", GGUFValue::make_u32((uint32_t)c.n_experts_used));
    if (c.arch != "mixtral") w.add_kv(A + "expert_feed_forward_length", GGUFValue::make_u32((uint32_t)c.expert_hidden));
    if (c.shared_hidden > 0) w.add_kv(A + "expert_shared_feed_forward_length", GGUFValue::make_u32((uint32_t)c.shared_hidden));
  }
  w.add_kv(A + "rope.dimension_count", GGUFValue::make_u32((uint32_t)c.head_dim()));
  w.add_kv(A + "attention.head_count", GGUFValue::make_u32((uint32_t)c.n_heads));
  w.add_kv(A + "attention.head_count_kv", GGUFValue::make_u32((uint32_t)c.n_kv_heads));
  if (c.head_size > 0 || arch.has_norm("q_norm")) {
    w.add_kv(A + "attention.key_length", GGUFValue::make_u32((uint32_t)c.head_dim()));
    w.add_kv(A + "attention.value_length", GGUFValue::make_u32((uint32_t)c.head_dim()));
  }
  w.add_kv(A + "attention.layer_norm_rms_epsilon", GGUFValue::make_f32(c.norm_eps));
  w.add_kv(A + "rope.freq_base", GGUFValue::make_f32(c.rope_theta));
  if (c.rope_scaling == "linear") {
    w.add_kv(A + "rope.scaling.type", GGUFValue::make_str("linear"));
    w.add_kv(A + "rope.scaling.factor", GGUFValue::make_f32(c.rope_factor));
  }
  if (c.sliding_window > 0) {
    w.add_kv(A + "attention.sliding_window", GGUFValue::make_u32((uint32_t)c.sliding_window));
    // The default pattern as an integer when it reproduces the layers, else one flag per layer.
    bool fits = true;
    for (int l = 0; l < c.n_layers; ++l) fits = fits && c.is_swa(l) == (l % ga.swa_pattern < ga.swa_pattern - 1);
    if (fits) {
      w.add_kv(A + "attention.sliding_window_pattern", GGUFValue::make_u32((uint32_t)ga.swa_pattern));
    } else {
      std::vector<uint8_t> flags(c.n_layers);
      for (int l = 0; l < c.n_layers; ++l) flags[l] = c.is_swa(l);
      w.add_kv(A + "attention.sliding_window_pattern", GGUFValue::make_bool_array(flags));
    }
    const float theta_swa = c.rope_theta_swa > 0.f ? c.rope_theta_swa : c.rope_theta;
    w.add_kv(A + "rope.freq_base_swa", GGUFValue::make_f32(theta_swa));
  }
  if (c.attn_softcap > 0.f) w.add_kv(A + "attn_logit_softcapping", GGUFValue::make_f32(c.attn_softcap));
  if (c.final_softcap > 0.f) w.add_kv(A + "final_logit_softcapping", GGUFValue::make_f32(c.final_softcap));
  if (!spec.model.empty()) add_tokenizer(w, spec, c.vocab_size, path);

  const uint64_t V = c.vocab_size, D = c.dim;
  w.add_tensor(arch.tensor("tok_emb").gguf, {D, V}, emb_type, [&](const GGUFWriter::Sink& out) { write_rows(m.tok_emb, {}, emb, out); });
  for (int b = 0; b < m.n_blocks(); ++b) {
    const std::string pre = "blk." + std::to_string(b) + ".";
    const bool was_resident = !m.is_lazy() || m.resident[b] != 0;
    w.add_tensor(pre + arch.norm("attn_norm").gguf + ".weight", {D}, f32.id,
                 [&m, &f32, b](const GGUFWriter::Sink& out) { write_rows(m.block(b).attn_norm, {}, f32, out); });
    for (const LinearSpec& ls : arch.linears) {
      if (std::string(ls.name).find("{e}") != std::string::npos) {  // one merged tensor {in, out, n_experts}
        add_experts(w, m, b, ls, lin, quant, path);
        continue;
      }
      const std::string lname = ls.name;
      // llama's converter permutes q/k rows to RoPE-pair order; the NEOX architectures keep HF's.
      const int heads = c.rope_interleaved || !ga.permuted_qk || ls.rope == Rope::None ? 0 : ls.rope == Rope::Heads ? c.n_heads : c.n_kv_heads;
      const Shape shp = linear_shape(c, lname);
      const int64_t out_f = shp[0], in_f = shp[1];
      // A width no block of the type fits is written F32 (exact).
      const DTypeTraits* tp = &lin;
      if (quant) {
        const Linear& l0 = m.block(b).linear(lname);  // resident: check_gguf refused lazy blocks
        tp = &linear_dtype(lin, l0, what(b, l0));
        if (in_f % tp->block_elems) tp = &f32;
      }
      // Qwen2-MoE's shared-expert gate is one row: llama.cpp declares it {n_embd}.
      const std::vector<uint64_t> dims = out_f == 1 && std::string(ls.name) == "shared_gate" ? std::vector<uint64_t>{(uint64_t)in_f}
                                                                                              : std::vector<uint64_t>{(uint64_t)in_f, (uint64_t)out_f};
      w.add_tensor(pre + ls.gguf + ".weight", dims, tp->id,
                   [&m, &dtype, &what, b, lname, heads, tp](const GGUFWriter::Sink& out) {
                     const DTypeTraits& type = *tp;
                     const Linear& l = m.block(b).linear(lname);
                     const std::vector<int64_t> order = row_order(l.out_features(), heads);
                     if (type.grid.cols == 0 && !is_kquant(type)) return write_rows(l.weight, order, type, out);
                     // Exact block encoding: the weight must still be what the codes give.
                     const Tensor dq = l.quant->dequantize(), W = l.weight.contiguous();
                     const float *a = dq.f32(), *x = W.f32();
                     for (int64_t k = 0; k < dq.numel(); ++k)
                       if (!(a[k] == x[k]))
                         fail(what(b, l), ": the weight no longer equals its codes' dequantization (element [", k / l.in_features() + 1, ", ",
                              k % l.in_features() + 1, "] is ", x[k], ", the codes give ", a[k], "); re-quantize or export gguf F16");
                     std::vector<uint8_t> row((size_t)(l.in_features() / type.block_elems * type.block_bytes));
                     for (int64_t r : order) {
                       if (is_kquant(type)) encode_kquant_row(*l.quant, r, type.name, row.data(), what(b, l));
                       else encode_grid_row(*l.quant, r, type.name, row.data(), what(b, l));
                       out(row.data(), row.size());
                     }
                   });
      if (m.has_bias(b, lname))  // without converting a lazy block
        w.add_tensor(pre + ls.gguf + ".bias", {(uint64_t)out_f}, f32.id, [&m, &f32, b, lname, heads](const GGUFWriter::Sink& out) {
          const Tensor& bias = m.block(b).linear(lname).bias;
          write_rows(bias, row_order(bias.size(0), heads), f32, out);
        });
    }
    // The other norms after the linears; the last one releases a lazy block.
    for (size_t k = 0; k < arch.norms.size(); ++k) {
      const NormSpec& ns = arch.norms[k];
      if (std::string(ns.name) == "attn_norm") continue;
      const bool last = k + 1 == arch.norms.size() || (k + 2 == arch.norms.size() && std::string(arch.norms.back().name) == "attn_norm");
      const std::string nname = ns.name;
      w.add_tensor(pre + ns.gguf + ".weight", {(uint64_t)norm_size(c, ns)}, f32.id,
                   [&m, &f32, b, was_resident, nname, last](const GGUFWriter::Sink& out) {
                     write_rows(m.block(b).norm(nname), {}, f32, out);
                     if (last && !was_resident) m.release_block(b);  // lazy: keep one block converted at a time
                   });
    }
  }
  w.add_tensor(arch.tensor("final_norm").gguf, {D}, f32.id, [&m, &f32](const GGUFWriter::Sink& out) { write_rows(m.final_norm, {}, f32, out); });
  // llama.cpp's qwen2moe needs output.weight even when tied (it has no fallback to token_embd).
  if (!c.tied_classifier || c.arch == "qwen2_moe")
    w.add_tensor(arch.tensor("classifier").gguf, {D, V}, emb_type, [&](const GGUFWriter::Sink& out) { write_rows(m.classifier, {}, emb, out); });
  w.write(path);
}

}  // namespace qf
