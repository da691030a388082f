// GGUF (architectures of kGgufArchs: llama (and Mixtral: llama with experts), qwen2, qwen3, gemma2,
// gemma3, phi3, qwen2moe, qwen3moe) → ModelSource. Tensors
// stay in the mapping; llama's q/k rows, stored by llama.cpp's converter in RoPE-pair order, are
// returned to HF rotate-half order on load (TensorSource::unpermute_heads), the others are stored
// that way already; the config says rope_interleaved = false.
#include "formats/loader_gguf.h"

#include <cmath>
#include <cstring>

#include "formats/gguf.h"

namespace qf {

// Canonical name of a llama.cpp tensor name; "" if it is not one qforge knows.
static std::string canonical_name(const ArchSpec& a, const std::string& n, int n_layers) {
  for (const ModelTensorSpec& e : a.tensors)
    if (n == e.gguf) return e.name;
  if (n.rfind("blk.", 0) != 0) return "";
  const size_t dot = n.find('.', 4);
  if (dot == std::string::npos || dot == 4 || dot - 4 > 4) return "";
  int layer = 0;
  for (size_t k = 4; k < dot; ++k) {
    if (n[k] < '0' || n[k] > '9') return "";
    layer = layer * 10 + (n[k] - '0');
  }
  if (layer >= n_layers || (dot > 5 && n[4] == '0')) return "";
  const std::string rest = n.substr(dot + 1);
  // llama.cpp block tensor names (after "blk.N.") from the architecture table.
  const std::string pre = "blocks." + std::to_string(layer) + ".";
  for (const NormSpec& e : a.norms)
    if (rest == std::string(e.gguf) + ".weight") return pre + e.name;
  for (const LinearSpec& e : a.linears) {
    if (rest == std::string(e.gguf) + ".weight") return pre + e.name + ".weight";
    if (rest == std::string(e.gguf) + ".bias") return pre + e.name + ".bias";
  }
  return "";
}

static int get_dim(const GGUFFile& g, const std::string& key, int64_t lo, int64_t hi) { return (int)g.get_int(key, lo, hi); }

static TokenizerSpec read_tokenizer(const GGUFFile& g) {
  TokenizerSpec t;
  const std::string& path = g.file->path;
  t.source = path;
  if (!g.find("tokenizer.ggml.model")) return t;
  t.model = g.get_str("tokenizer.ggml.model");
  if (t.model == "none" || t.model == "no_vocab") {
    t.model.clear();
    return t;
  }
  const GGUFValue& toks = g.get_array("tokenizer.ggml.tokens");
  if (toks.elem_type != GGUFType::STRING) fail("file '", path, "': metadata 'tokenizer.ggml.tokens' is not an array of strings");
  t.tokens = toks.strs;
  const uint64_t n = t.tokens.size();
  if (const GGUFValue* s = g.find("tokenizer.ggml.scores")) {
    if (s->type != GGUFType::ARRAY || s->elem_type != GGUFType::F32 || s->count != n)
      fail("file '", path, "': metadata 'tokenizer.ggml.scores' must be an array of ", n, " f32 (one per token)");
    t.scores.resize(n);
    std::memcpy(t.scores.data(), s->raw.data(), n * 4);
  }
  if (const GGUFValue* s = g.find("tokenizer.ggml.token_type")) {
    if (s->type != GGUFType::ARRAY || s->elem_type != GGUFType::I32 || s->count != n)
      fail("file '", path, "': metadata 'tokenizer.ggml.token_type' must be an array of ", n, " i32 (one per token)");
    t.token_type.resize(n);
    std::memcpy(t.token_type.data(), s->raw.data(), n * 4);
  }
  if (const GGUFValue* s = g.find("tokenizer.ggml.merges")) {
    if (s->type != GGUFType::ARRAY || s->elem_type != GGUFType::STRING)
      fail("file '", path, "': metadata 'tokenizer.ggml.merges' is not an array of strings");
    t.merges = s->strs;
  }
  auto id = [&](const char* key, int32_t* out) {
    if (g.find(key)) *out = (int32_t)g.get_int(key, 0, (int64_t)n - 1);
  };
  id("tokenizer.ggml.bos_token_id", &t.bos_id);
  id("tokenizer.ggml.eos_token_id", &t.eos_id);
  id("tokenizer.ggml.unknown_token_id", &t.unk_id);
  id("tokenizer.ggml.padding_token_id", &t.pad_id);
  // Defaults as llama.cpp applies them: SentencePiece adds BOS and a dummy-prefix space,
  // byte-level BPE adds neither unless the file says so.
  const bool spm = t.model == "llama";
  t.add_bos = g.find("tokenizer.ggml.add_bos_token") ? g.get_bool("tokenizer.ggml.add_bos_token") : spm;
  t.add_eos = g.find("tokenizer.ggml.add_eos_token") ? g.get_bool("tokenizer.ggml.add_eos_token") : false;
  t.add_space_prefix = g.find("tokenizer.ggml.add_space_prefix") ? g.get_bool("tokenizer.ggml.add_space_prefix") : spm;
  if (g.find("tokenizer.ggml.pre")) t.pre = g.get_str("tokenizer.ggml.pre");
  return t;
}

// A fused tensor of the architecture (GgufArch::fused: Phi-3's attn_qkv, ffn_up) as one
// TensorSource per part over its own rows of the file (rows are whole blocks of any type);
// false when t is not one.
static bool split_fused(ModelSource& src, const GGUFFile& g, const GgufArch& ga, const GGUFTensorInfo& t, const ModelConfig& c) {
  const std::string& path = g.file->path;
  for (const HfFused& f : ga.fused) {
    const size_t dot = t.name.find('.', 4);
    if (t.name.rfind("blk.", 0) != 0 || dot == std::string::npos || t.name.substr(dot + 1) != std::string(f.hf) + ".weight") continue;
    const std::string num = t.name.substr(4, dot - 4);
    if (num.empty() || num.size() > 4 || num.find_first_not_of("0123456789") != std::string::npos) return false;
    const int layer = std::stoi(num);
    if (layer >= c.n_layers) fail("file '", path, "': tensor '", t.name, "' is for layer ", layer, " but the model has ", c.n_layers);
    int64_t rows = 0;
    for (const char* p : f.parts) rows += linear_shape(c, p)[0];
    const int64_t cols = linear_shape(c, f.parts[0])[1];
    if (t.ne.size() != 2 || (int64_t)t.ne[0] != cols || (int64_t)t.ne[1] != rows)
      fail("file '", path, "': tensor '", t.name, "' is not [", rows, " rows, ", cols, " columns] (", f.hf, " stacks its parts by rows)");
    const DTypeTraits* dt = ggml_type_info(t.type);
    if (!dt || !dt->to_f32) fail("file '", path, "': tensor '", t.name, "' has type ", t.type_name(), ", which qforge cannot read");
    const uint64_t row_bytes = t.nbytes / (uint64_t)rows;
    int64_t r0 = 0;
    for (const char* p : f.parts) {
      const int64_t n = linear_shape(c, p)[0];
      TensorSource ts;
      ts.name = t.name;
      ts.file = g.file;
      ts.offset = t.abs_offset + (uint64_t)r0 * row_bytes;
      ts.nbytes = (uint64_t)n * row_bytes;
      ts.dtype = t.type_name();
      ts.shape = {n, cols};
      const std::string canon = "blocks." + std::to_string(layer) + "." + p + ".weight";
      if (src.tensors.count(canon)) fail("file '", path, "': tensor '", t.name, "' holds ", p, ", which another tensor holds too");
      src.tensors[canon] = std::move(ts);
      r0 += n;
    }
    return true;
  }
  return false;
}

// A merged expert tensor (llama.cpp's ffn_gate_exps, ffn_up_exps, ffn_down_exps: ggml {in, out,
// n_experts}) as one TensorSource per expert over its own rows (each expert's rows are whole
// blocks of any type); false when t is not one.
static bool split_experts(ModelSource& src, const GGUFFile& g, const GGUFTensorInfo& t, const ModelConfig& c) {
  if (c.n_experts <= 0 || t.name.rfind("blk.", 0) != 0) return false;
  const std::string& path = g.file->path;
  const size_t dot = t.name.find('.', 4);
  if (dot == std::string::npos) return false;
  const std::string num = t.name.substr(4, dot - 4), rest = t.name.substr(dot + 1);
  for (const LinearSpec& ls : arch_of(c).linears) {
    if (std::string(ls.name).find("{e}") == std::string::npos || rest != std::string(ls.gguf) + ".weight") continue;
    if (num.empty() || num.size() > 4 || num.find_first_not_of("0123456789") != std::string::npos) return false;
    const int layer = std::stoi(num);
    if (layer >= c.n_layers) fail("file '", path, "': tensor '", t.name, "' is for layer ", layer, " but the model has ", c.n_layers);
    const int64_t out = extent(c, ls.out), in = extent(c, ls.in), E = c.n_experts;
    if (t.ne.size() != 3 || (int64_t)t.ne[0] != in || (int64_t)t.ne[1] != out || (int64_t)t.ne[2] != E)
      fail("file '", path, "': tensor '", t.name, "' is not {", in, ", ", out, ", ", E, "} (ggml order: columns, rows, experts)");
    const DTypeTraits* dt = ggml_type_info(t.type);
    if (!dt || !dt->to_f32) fail("file '", path, "': tensor '", t.name, "' has type ", t.type_name(), ", which qforge cannot read");
    const uint64_t per = t.nbytes / (uint64_t)E;
    for (int64_t e = 0; e < E; ++e) {
      TensorSource ts;
      ts.name = t.name;
      ts.file = g.file;
      ts.offset = t.abs_offset + (uint64_t)e * per;
      ts.nbytes = per;
      ts.dtype = t.type_name();
      ts.shape = {out, in};
      const std::string canon = "blocks." + std::to_string(layer) + "." + expert_name(ls.name, (int)e) + ".weight";
      if (src.tensors.count(canon)) fail("file '", path, "': tensor '", t.name, "' holds ", canon, ", which another tensor holds too");
      src.tensors[canon] = std::move(ts);
    }
    return true;
  }
  return false;
}

ModelSource open_gguf(const std::string& path) {
  GGUFFile g = gguf_read(path);
  ModelSource src;
  src.format = "gguf";
  src.path = path;
  src.files = {path};

  const std::string& garch = g.get_str("general.architecture");
  const GgufArch* ga = gguf_arch(garch);
  if (!ga) {
    std::string known;
    for (const GgufArch& a : kGgufArchs) known += (known.empty() ? "" : ", ") + std::string(a.gguf);
    fail("file '", path, "': metadata 'general.architecture' = '", garch, "' is not supported (qforge reads ", known, ")");
  }
  const std::string A = garch + ".";  // every hyperparameter key is "<arch>.<name>"
  if (ga->moe_norm_topk < 0 && g.find(A + "expert_count") && g.get_int(A + "expert_count", 0, 4096) > 0) {
    const GgufArch* moe = nullptr;  // Mixtral: "llama" with experts
    for (const GgufArch& a : kGgufArchs)
      if (garch == a.gguf && a.moe_norm_topk >= 0) moe = &a;
    if (!moe) fail("file '", path, "': metadata '", A, "expert_count' is set, but qforge reads no mixture of experts as '", garch, "'");
    ga = moe;
  }

  ModelConfig& c = src.cfg;
  c.arch = ga->arch;
  c.dim = get_dim(g, A + "embedding_length", 1, 1 << 16);
  c.hidden_dim = get_dim(g, A + "feed_forward_length", 1, 1 << 18);
  if (ga->moe_norm_topk >= 0) {  // docs/architecture.md#mixture-of-experts; the defaults are llama.cpp's
    c.n_experts = get_dim(g, A + "expert_count", 1, 4096);
    c.n_experts_used = get_dim(g, A + "expert_used_count", 1, c.n_experts);
    c.moe_norm_topk = ga->moe_norm_topk == 1;
    if (std::string(ga->arch) == "mixtral") c.expert_hidden = c.hidden_dim;
    else c.expert_hidden = g.find(A + "expert_feed_forward_length") ? get_dim(g, A + "expert_feed_forward_length", 1, 1 << 18)
                                                                     : c.hidden_dim / c.n_experts_used;
    if (arch_spec(ga->arch).find("shared.gate"))
      c.shared_hidden = g.find(A + "expert_shared_feed_forward_length") ? get_dim(g, A + "expert_shared_feed_forward_length", 1, 1 << 18)
                                                                        : c.hidden_dim;
  }
  c.n_layers = get_dim(g, A + "block_count", 1, 1024);
  c.n_heads = get_dim(g, A + "attention.head_count", 1, c.dim);
  c.n_kv_heads = g.find(A + "attention.head_count_kv") ? get_dim(g, A + "attention.head_count_kv", 1, c.n_heads) : c.n_heads;
  if (c.n_heads % c.n_kv_heads)
    fail("file '", path, "': metadata '", A, "attention.head_count_kv' = ", c.n_kv_heads, " does not divide head_count ", c.n_heads);
  if (g.find(A + "attention.key_length")) {
    const int kl = get_dim(g, A + "attention.key_length", 2, 1 << 14);
    if (g.find(A + "attention.value_length") && get_dim(g, A + "attention.value_length", 1, 1 << 14) != kl)
      fail("file '", path, "': metadata '", A, "attention.value_length' differs from key_length ", kl, " (not supported)");
    if (c.dim % c.n_heads || kl != c.dim / c.n_heads) c.head_size = kl;
  } else if (c.dim % c.n_heads) {
    fail("file '", path, "': metadata '", A, "attention.head_count' = ", c.n_heads, " does not divide ", A, "embedding_length ", c.dim,
         " and '", A, "attention.key_length' is absent");
  }
  c.seq_len = get_dim(g, A + "context_length", 1, 1 << 24);
  c.norm_eps = (float)g.get_float(A + "attention.layer_norm_rms_epsilon");
  if (!(c.norm_eps > 0.f && c.norm_eps < 1.f)) fail("file '", path, "': metadata '", A, "attention.layer_norm_rms_epsilon' = ", c.norm_eps, " (expected in (0, 1))");
  c.rope_theta = g.find(A + "rope.freq_base") ? (float)g.get_float(A + "rope.freq_base") : 10000.f;
  if (!(c.rope_theta > 1.f && std::isfinite(c.rope_theta))) fail("file '", path, "': metadata '", A, "rope.freq_base' = ", c.rope_theta, " (expected > 1)");
  if (g.find(A + "rope.dimension_count")) {
    const int64_t rd = g.get_int(A + "rope.dimension_count", 0, 1 << 16);
    if (rd != c.head_dim())
      fail("file '", path, "': metadata '", A, "rope.dimension_count' = ", rd, " differs from the head dimension ", c.head_dim(),
           " (partial rotary embeddings are not supported)");
  }
  // RoPE scaling: only linear (positions / factor) is carried by metadata; Llama 3.1 style
  // scaling comes as a rope_freqs.weight tensor, refused below.
  std::string scaling = g.find(A + "rope.scaling.type") ? g.get_str(A + "rope.scaling.type") : "";
  if (scaling.empty() && g.find(A + "rope.scale_linear") && g.get_float(A + "rope.scale_linear") != 1.0) {
    c.rope_scaling = "linear";
    c.rope_factor = (float)g.get_float(A + "rope.scale_linear");
  } else if (scaling == "linear") {
    c.rope_scaling = "linear";
    c.rope_factor = (float)g.get_float(A + "rope.scaling.factor");
  } else if (!scaling.empty() && scaling != "none") {
    fail("file '", path, "': metadata '", A, "rope.scaling.type' = '", scaling, "' is not supported (none or linear)");
  }
  if (c.rope_scaling == "linear" && !(c.rope_factor > 0.f && std::isfinite(c.rope_factor)))
    fail("file '", path, "': metadata '", A, "rope.scaling.factor' = ", c.rope_factor, " (expected > 0)");
  if (g.find(A + "rope.scaling.original_context_length"))
    c.rope_orig_ctx = get_dim(g, A + "rope.scaling.original_context_length", 1, 1 << 24);
  // Sliding layers (docs/architecture.md#architectures): window and pattern as llama.cpp reads them.
  if (ga->swa_pattern > 0) {
    c.sliding_window = g.find(A + "attention.sliding_window") ? get_dim(g, A + "attention.sliding_window", 0, 1 << 24) : ga->swa_window;
    if (c.sliding_window > 0) {
      c.swa_layers.assign(c.n_layers, 0);
      if (const GGUFValue* v = g.find(A + "attention.sliding_window_pattern"); v && v->type == GGUFType::ARRAY) {
        if (v->elem_type != GGUFType::BOOL || v->count != (uint64_t)c.n_layers)
          fail("file '", path, "': metadata '", A, "attention.sliding_window_pattern' must be ", c.n_layers, " booleans (one per layer)");
        for (int l = 0; l < c.n_layers; ++l) c.swa_layers[l] = v->raw[l] != 0;
      } else {
        const int n = v ? (int)g.get_int(A + "attention.sliding_window_pattern", 0, 1 << 16) : ga->swa_pattern;
        for (int l = 0; l < c.n_layers; ++l) c.swa_layers[l] = n == 0 || l % n < n - 1;
      }
      c.rope_theta_swa = g.find(A + "rope.freq_base_swa") ? (float)g.get_float(A + "rope.freq_base_swa") : ga->swa_theta;
      if (c.rope_theta_swa == c.rope_theta) c.rope_theta_swa = 0.f;  // 0: the global base (one way to say it)
    }
  } else if (!ga->ignores_window && g.find(A + "attention.sliding_window") && g.get_int(A + "attention.sliding_window", 0, 1 << 24) > 0) {
    fail("file '", path, "': metadata '", A, "attention.sliding_window' is set, but llama.cpp's '", garch,
         "' has no sliding layers; qforge will not guess them");
  }
  c.attn_softcap = g.find(A + "attn_logit_softcapping") ? (float)g.get_float(A + "attn_logit_softcapping") : ga->attn_softcap;
  c.final_softcap = g.find(A + "final_logit_softcapping") ? (float)g.get_float(A + "final_logit_softcapping") : ga->final_softcap;
  if (g.find(A + "attention.scale")) c.attn_scale = (float)g.get_float(A + "attention.scale");
  else if (ga->big_model_layers > 0)
    c.attn_scale = c.n_layers == ga->big_model_layers ? 1.0f / std::sqrt((float)(c.dim / c.n_heads)) : 1.0f / std::sqrt((float)c.head_dim());
  c.rope_interleaved = false;  // HF order: llama's q/k rows are unpermuted on load, the others are stored so

  src.tokenizer = read_tokenizer(g);
  const int64_t n_tok = (int64_t)src.tokenizer.tokens.size();
  if (g.find(A + "vocab_size")) c.vocab_size = get_dim(g, A + "vocab_size", 1, 1 << 22);
  else if (n_tok > 0) c.vocab_size = (int)std::min<int64_t>(n_tok, (int64_t)1 << 30);
  else {
    for (auto& t : g.tensors)
      if (t.name == arch_of(c).tensor("tok_emb").gguf && t.ne.size() == 2) c.vocab_size = (int)std::min<uint64_t>(t.ne[1], (uint64_t)1 << 30);
  }
  if (n_tok > 0 && n_tok != c.vocab_size)
    fail("file '", path, "': metadata 'tokenizer.ggml.tokens' has ", n_tok, " tokens but the model's vocabulary is ", c.vocab_size);

  bool has_output = false;
  for (const GGUFTensorInfo& t : g.tensors) {
    if (t.name == "rope_freqs.weight")
      fail("file '", path, "': tensor 'rope_freqs.weight' (per-frequency RoPE factors, Llama 3.1 scaling) is not supported");
    if (split_fused(src, g, *ga, t, c)) continue;
    if (split_experts(src, g, t, c)) continue;
    const std::string canon = canonical_name(arch_of(c), t.name, c.n_layers);
    if (canon.empty()) fail("file '", path, "': tensor '", t.name, "' is not part of the ", garch, " architecture qforge reads");
    const std::string type = t.type_name();
    const DTypeTraits* dt = ggml_type_info(t.type);
    if (!dt || !dt->to_f32)
      fail("file '", path, "': tensor '", t.name, "' has type ", type, ", which qforge cannot read (",
           dtype_names([](const DTypeTraits& d) { return d.to_f32 != nullptr; }, " ", " "), ")");
    TensorSource ts;
    ts.name = t.name;
    ts.file = g.file;
    ts.offset = t.abs_offset;
    ts.nbytes = t.nbytes;
    ts.dtype = type;
    for (size_t d = t.ne.size(); d-- > 0;) ts.shape.push_back((int64_t)t.ne[d]);  // ggml dims are innermost first
    // Qwen2-MoE's shared-expert gate: llama.cpp declares it {n_embd}; our linear is [1, dim].
    if (ts.shape.size() == 1 && canon.size() > 19 && canon.compare(canon.size() - 19, 19, ".shared_gate.weight") == 0)
      ts.shape = {1, ts.shape[0]};
    if (const LinearSpec* ls = linear_of_tensor(arch_of(c), canon); ls && ga->permuted_qk) ts.unpermute_heads = rope_heads(c, *ls);
    if (canon == "classifier") has_output = true;
    src.tensors[canon] = std::move(ts);
  }
  c.tied_classifier = !has_output;
  validate_config(c, "file '" + path + "'");
  return src;
}

}  // namespace qf
