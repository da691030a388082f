// HF checkpoint directory -> ModelSource. The model map is declarative: a checkpoint layout is a
// row of kHfLayouts (model/arch.h), a block tensor's HF name comes from the architecture table,
// the three model-level tensors from ArchSpec::tensors (shared with GGUF).
#include "formats/loader_hf.h"

#include <cmath>
#include <cstring>
#include <set>
#include <nlohmann/json.hpp>

#include "core/io.h"
#include "core/json_util.h"
#include "formats/safetensors.h"

namespace qf {

using json = nlohmann::json;


const char* hf_model_type(const std::string& architecture) {
  const HfLayout* l = hf_layout(architecture);
  return l ? l->model_type : nullptr;
}

// "<prefix><i>.<rest>" -> (i, rest); false when it does not parse.
static bool split_layer(const std::string& name, const char* prefix, long* layer, std::string* rest) {
  const size_t n = std::strlen(prefix);
  if (name.compare(0, n, prefix) != 0) return false;
  size_t i = n, v = 0;
  while (i < name.size() && name[i] >= '0' && name[i] <= '9' && i - n < 7) v = v * 10 + (name[i++] - '0');
  if (i == n || i >= name.size() || name[i] != '.') return false;
  *layer = (long)v;
  *rest = name.substr(i + 1);
  return true;
}

std::string hf_tensor_name(const std::string& canonical, const ArchSpec& a) {
  for (const ModelTensorSpec& e : a.tensors)
    if (canonical == e.name) return e.hf;
  long layer;
  std::string rest;
  if (split_layer(canonical, "blocks.", &layer, &rest)) {
    const std::string pre = "model.layers." + std::to_string(layer) + ".";
    for (const NormSpec& e : a.norms)
      if (rest == e.name) return pre + e.hf + ".weight";
    for (const LinearSpec& e : a.linears) {
      if (rest == std::string(e.name) + ".weight") return pre + e.hf + ".weight";
      if (rest == std::string(e.name) + ".bias") return pre + e.hf + ".bias";
      int x = -1;
      for (const char* kind : {".weight", ".bias"})
        if (match_expert((std::string(e.name) + kind).c_str(), rest, &x)) return pre + expert_name(e.hf, x) + kind;
    }
  }
  fail("tensor '", canonical, "' has no Hugging Face name");
}

std::string hf_canonical_name(const std::string& hf, const ArchSpec& a) {
  for (const ModelTensorSpec& e : a.tensors)
    if (hf == e.hf) return e.name;
  long layer;
  std::string rest;
  if (split_layer(hf, "model.layers.", &layer, &rest)) {
    const std::string pre = "blocks." + std::to_string(layer) + ".";
    for (const NormSpec& e : a.norms)
      if (rest == std::string(e.hf) + ".weight") return pre + e.name;
    for (const LinearSpec& e : a.linears) {
      if (rest == std::string(e.hf) + ".weight") return pre + e.name + ".weight";
      if (rest == std::string(e.hf) + ".bias") return pre + e.name + ".bias";
      int x = -1;
      for (const char* kind : {".weight", ".bias"})
        if (match_expert((std::string(e.hf) + kind).c_str(), rest, &x)) return pre + expert_name(e.name, x) + kind;
    }
  }
  return "";
}

// ---- config.json ----------------------------------------------------------------------------

struct ConfigReader {
  const json& j;
  std::string what;  // "config.json '<path>'"

  const json* find(const char* field) const {
    auto it = j.find(field);
    return it == j.end() || it->is_null() ? nullptr : &*it;
  }
  int64_t integer(const char* field, int64_t lo, int64_t hi, const int64_t* dflt = nullptr) const {
    const json* v = find(field);
    if (!v) {
      if (dflt) return *dflt;
      fail(what, ": field '", field, "' is missing");
    }
    if (!v->is_number_integer()) fail(what, ": field '", field, "' = ", json_brief(*v), " is not an integer");
    const int64_t x = v->get<int64_t>();
    if (x < lo || x > hi) fail(what, ": field '", field, "' = ", x, " is out of range (", lo, "..", hi, ")");
    return x;
  }
  double number(const json& obj, const std::string& field, double dflt, bool required, const std::string& where) const {
    auto it = obj.find(field);
    if (it == obj.end() || it->is_null()) {
      if (required) fail(what, ": field '", where, field, "' is missing");
      return dflt;
    }
    if (!it->is_number()) fail(what, ": field '", where, field, "' = ", json_brief(*it), " is not a number");
    const double x = it->get<double>();
    if (!std::isfinite(x) || x <= 0) fail(what, ": field '", where, field, "' = ", x, " must be positive");
    return x;
  }
  double number(const char* field, double dflt) const { return number(j, field, dflt, false, ""); }
  bool boolean(const char* field, bool dflt) const {
    const json* v = find(field);
    if (!v) return dflt;
    if (!v->is_boolean()) fail(what, ": field '", field, "' = ", json_brief(*v), " is not true/false");
    return v->get<bool>();
  }
};

static const HfLayout& read_architecture(const ConfigReader& r) {
  const json* a = r.find("architectures");
  if (!a) fail(r.what, ": field 'architectures' is missing");
  if (!a->is_array() || a->size() != 1 || !(*a)[0].is_string())
    fail(r.what, ": field 'architectures' = ", json_brief(*a), " is not a list of one name");
  const std::string arch = (*a)[0].get<std::string>();
  const HfLayout* layout = hf_layout(arch);
  if (!layout) fail(r.what, ": field 'architectures' names '", arch, "', which qforge does not load (known: ", hf_layout_names(), ")");
  return *layout;
}

// rope_scaling: null | {"type"|"rope_type": "linear", factor} | {"rope_type": "llama3", factor,
// low_freq_factor, high_freq_factor, original_max_position_embeddings}.
static void read_rope_scaling(const ConfigReader& r, const json& rs, const char* field, ModelConfig& c) {
  if (!rs.is_object()) fail(r.what, ": field '", field, "' = ", json_brief(rs), " is not an object or null");
  std::string type;
  for (const char* k : {"rope_type", "type"}) {
    auto it = rs.find(k);
    if (it != rs.end() && it->is_string()) {
      type = it->get<std::string>();
      break;
    }
  }
  const std::string where = std::string(field) + ".";
  if (type == "default" || (type.empty() && !rs.contains("factor"))) return;
  if (type == "linear") {
    c.rope_scaling = "linear";
    c.rope_factor = (float)r.number(rs, "factor", 1, true, where);
    return;
  }
  if (type == "llama3") {
    c.rope_scaling = "llama3";
    c.rope_factor = (float)r.number(rs, "factor", 1, true, where);
    c.rope_low_freq_factor = (float)r.number(rs, "low_freq_factor", 1, true, where);
    c.rope_high_freq_factor = (float)r.number(rs, "high_freq_factor", 4, true, where);
    const double ctx = r.number(rs, "original_max_position_embeddings", 8192, true, where);
    if (ctx != std::floor(ctx) || ctx > (1 << 24)) fail(r.what, ": field '", where, "original_max_position_embeddings' = ", ctx, " is not a context length");
    c.rope_orig_ctx = (int)ctx;
    if (!(c.rope_high_freq_factor > c.rope_low_freq_factor))
      fail(r.what, ": field '", where, "high_freq_factor' must exceed low_freq_factor");
    return;
  }
  fail(r.what, ": field '", field, "' has type '", type, "', which qforge does not implement (null, linear or llama3)");
}

// Which layers slide: config.json's layer_types when present (transformers ≥ 4.53 writes it),
// else the layout's rule (arch.h HfLayout::swa_rule), as transformers derives layer_types.
static void read_sliding_layers(const ConfigReader& r, const HfLayout& layout, ModelConfig& c) {
  const std::string rule = layout.swa_rule;
  int64_t window = 0;
  if (const json* w = r.find("sliding_window")) {
    if (!w->is_number_integer()) fail(r.what, ": field 'sliding_window' = ", json_brief(*w), " is not an integer or null");
    window = r.integer("sliding_window", 0, 1 << 24);
  }
  if (rule == "from_max_window_layers" && !r.boolean("use_sliding_window", false)) window = 0;  // transformers ignores it then
  if (const json* lt = r.find("layer_types")) {
    if (!lt->is_array() || (int64_t)lt->size() != c.n_layers)
      fail(r.what, ": field 'layer_types' must list ", c.n_layers, " layer types (num_hidden_layers)");
    std::vector<uint8_t> swa(c.n_layers, 0);
    bool any = false;
    for (int l = 0; l < c.n_layers; ++l) {
      const json& t = (*lt)[l];
      if (!t.is_string() || (t != "sliding_attention" && t != "full_attention"))
        fail(r.what, ": field 'layer_types' entry ", l + 1, " = ", json_brief(t), " (expected sliding_attention or full_attention)");
      swa[l] = t == "sliding_attention";
      any = any || swa[l];
    }
    if (any && window <= 0) fail(r.what, ": field 'layer_types' has sliding layers but 'sliding_window' is not set");
    if (any) c.swa_layers = std::move(swa), c.sliding_window = (int)window;
    return;
  }
  if (window <= 0 || rule.empty()) {
    if (window > 0 && rule.empty())
      fail(r.what, ": field 'sliding_window' is set, but ", layout.architecture, " has no sliding layers in transformers");
    return;
  }
  c.sliding_window = (int)window;
  c.swa_layers.assign(c.n_layers, 0);
  if (rule == "all") {
    c.swa_layers.assign(c.n_layers, 1);
  } else if (rule == "from_max_window_layers") {
    const int64_t dflt = 28;  // Qwen2Config's default
    const int64_t m = r.integer("max_window_layers", 0, 1 << 16, &dflt);
    for (int l = 0; l < c.n_layers; ++l) c.swa_layers[l] = l >= m;
  } else if (rule == "qwen2_moe") {  // transformers' Qwen2-MoE: even layers below max_window_layers
    if (!r.boolean("use_sliding_window", false)) c.swa_layers.clear(), c.sliding_window = 0;
    const int64_t dflt = 28;
    const int64_t m = r.integer("max_window_layers", 0, 1 << 16, &dflt);
    for (int l = 0; l < (int)c.swa_layers.size(); ++l) c.swa_layers[l] = l % 2 == 0 && l < m;
  } else if (rule == "all_if_used") {  // Qwen3-MoE: every layer, when use_sliding_window
    if (r.boolean("use_sliding_window", false)) c.swa_layers.assign(c.n_layers, 1);
  } else if (rule == "even") {
    for (int l = 0; l < c.n_layers; ++l) c.swa_layers[l] = l % 2 == 0;
  } else if (rule == "pattern") {
    const int64_t dflt = 6;
    const int64_t n = r.integer("sliding_window_pattern", 1, 1 << 16, &dflt);
    for (int l = 0; l < c.n_layers; ++l) c.swa_layers[l] = (l + 1) % n != 0;
  } else {
    fail(r.what, ": internal: unknown sliding rule '", rule, "'");
  }
  bool any = false;
  for (uint8_t v : c.swa_layers) any = any || v;
  if (!any) c.swa_layers.clear(), c.sliding_window = 0;
}

// Mixture of experts (docs/architecture.md#mixture-of-experts). Mixtral: num_local_experts experts
// of width intermediate_size, the top-k weights always renormalized. Qwen2-MoE / Qwen3-MoE:
// num_experts of width moe_intermediate_size, norm_topk_prob (default false), Qwen2-MoE's
// shared expert of width shared_expert_intermediate_size. Layers with a dense MLP instead
// (decoder_sparse_step > 1, mlp_only_layers) are refused: every block here is one kind.
static void read_moe(const ConfigReader& r, const HfLayout& layout, ModelConfig& c) {
  const bool mixtral = std::string(layout.arch) == "mixtral";
  // Qwen3-MoE: hub configs say num_experts, transformers 5 writes num_local_experts.
  const char* ne = mixtral || (std::string(layout.arch) == "qwen3_moe" && !r.find("num_experts")) ? "num_local_experts" : "num_experts";
  c.n_experts = (int)r.integer(ne, 1, 4096);
  c.n_experts_used = (int)r.integer("num_experts_per_tok", 1, c.n_experts);
  if (mixtral) {
    c.expert_hidden = c.hidden_dim;
    c.moe_norm_topk = true;
    return;
  }
  c.expert_hidden = (int)r.integer("moe_intermediate_size", 1, 1 << 18);
  c.moe_norm_topk = r.boolean("norm_topk_prob", false);  // both Qwen configs' default (real Qwen3-MoE files set true)
  if (arch_spec(layout.arch).find("shared.gate")) c.shared_hidden = (int)r.integer("shared_expert_intermediate_size", 1, 1 << 18);
  const int64_t one = 1;
  if (const int64_t step = r.integer("decoder_sparse_step", 0, 1 << 16, &one); step != 1)
    fail(r.what, ": field 'decoder_sparse_step' = ", step, " (layers with a dense MLP between MoE layers are not implemented: 1 expected)");
  if (const json* mo = r.find("mlp_only_layers"))
    if (!mo->is_array() || !mo->empty())
      fail(r.what, ": field 'mlp_only_layers' = ", json_brief(*mo), " (layers with a dense MLP between MoE layers are not implemented: [] expected)");
}

static ModelConfig read_config(const std::string& path, const HfLayout** layout_out) {
  const std::string text = read_file(path);
  const std::string what = "config.json '" + path + "'";
  const json j = parse_json_bounded(text, what);
  if (!j.is_object()) fail(what, ": not a JSON object");
  const ConfigReader r{j, what};
  if (r.find("quantization_config"))
    fail(what, ": field 'quantization_config' is set: quantized HF checkpoints (GPTQ, AWQ, ...) are not loaded; load the float model");
  const HfLayout& layout = read_architecture(r);
  *layout_out = &layout;
  const ArchSpec& spec = arch_spec(layout.arch);
  // The FFN activation must be the architecture's (transformers' names for it).
  for (const char* field : {"hidden_act", "hidden_activation"})
    if (const json* act = r.find(field)) {
      const std::string want = spec.act == GluAct::Silu ? "silu" : "gelu_pytorch_tanh";
      const bool ok = act->is_string() && (act->get<std::string>() == want ||
                                           (spec.act == GluAct::GeluTanh && act->get<std::string>() == "gelu_tanh"));
      if (!ok) fail(what, ": field '", field, "' = ", json_brief(*act), " (", layout.architecture, " in qforge: ", want, ")");
    }
  if (const json* prf = r.find("partial_rotary_factor"))
    if (!prf->is_number() || prf->get<double>() != 1.0)
      fail(what, ": field 'partial_rotary_factor' = ", json_brief(*prf), " (RoPE on part of each head is not implemented)");
  ModelConfig c;
  c.arch = layout.arch;
  c.hf_layout = layout.fused.empty() ? "" : layout.architecture;  // plain layouts are chosen again on export
  c.dim = (int)r.integer("hidden_size", 1, 1 << 16);
  c.hidden_dim = (int)r.integer("intermediate_size", 1, 1 << 18);
  c.n_layers = (int)r.integer("num_hidden_layers", 1, 1024);
  c.n_heads = (int)r.integer("num_attention_heads", 1, 1 << 16);
  const int64_t heads = c.n_heads;
  c.n_kv_heads = (int)r.integer("num_key_value_heads", 1, 1 << 16, &heads);
  c.vocab_size = (int)r.integer("vocab_size", 1, 1 << 22);
  const int64_t ctx_default = 2048;  // LlamaConfig's default
  c.seq_len = (int)r.integer("max_position_embeddings", 1, 1 << 24, &ctx_default);
  c.norm_eps = (float)r.number("rms_norm_eps", 1e-6);
  c.rope_theta = (float)r.number("rope_theta", 10000.0);
  c.tied_classifier = r.boolean("tie_word_embeddings", false);
  c.rope_interleaved = false;  // HF stores q/k in rotate-half order
  if (c.n_kv_heads > c.n_heads || c.n_heads % c.n_kv_heads)
    fail(what, ": field 'num_key_value_heads' = ", c.n_kv_heads, " does not divide field 'num_attention_heads' = ", c.n_heads);
  if (r.find("head_dim")) {  // decoupled head size (Qwen3, Gemma): kept only when it differs
    const int64_t hd = r.integer("head_dim", 2, 1 << 14);
    if (c.dim % c.n_heads || hd != c.dim / c.n_heads) c.head_size = (int)hd;
  } else if (c.dim % c.n_heads) {
    fail(what, ": field 'num_attention_heads' = ", c.n_heads, " does not divide field 'hidden_size' = ", c.dim, " and 'head_dim' is absent");
  }
  if (c.head_dim() % 2) fail(what, ": head dimension ", c.head_dim(), " is odd (RoPE needs pairs)");
  if (const json* rs = r.find("rope_scaling")) read_rope_scaling(r, *rs, "rope_scaling", c);
  // Newer transformers state RoPE as rope_parameters {rope_type, rope_theta, ...}, or per layer
  // type {full_attention: {...}, sliding_attention: {...}} (Gemma 3).
  if (const json* rp = r.find("rope_parameters")) {
    if (!rp->is_object()) fail(what, ": field 'rope_parameters' is not an object");
    const json* full = rp;
    if (rp->contains("full_attention")) {
      full = &(*rp)["full_attention"];
      if (!full->is_object()) fail(what, ": field 'rope_parameters.full_attention' is not an object");
    }
    const std::string where = full == rp ? "rope_parameters." : "rope_parameters.full_attention.";
    if (full->contains("rope_theta")) c.rope_theta = (float)r.number(*full, "rope_theta", 10000.0, true, where);
    if (!r.find("rope_scaling")) read_rope_scaling(r, *full, full == rp ? "rope_parameters" : "rope_parameters.full_attention", c);
    if (rp->contains("sliding_attention")) {
      const json& sl = (*rp)["sliding_attention"];
      if (!sl.is_object()) fail(what, ": field 'rope_parameters.sliding_attention' is not an object");
      ModelConfig local;
      read_rope_scaling(r, sl, "rope_parameters.sliding_attention", local);
      if (!local.rope_scaling.empty())
        fail(what, ": field 'rope_parameters.sliding_attention' scales RoPE on sliding layers, which is not implemented");
      c.rope_theta_swa = (float)r.number(sl, "rope_theta", 10000.0, true, "rope_parameters.sliding_attention.");
    }
  }
  if (r.find("rope_local_base_freq")) c.rope_theta_swa = (float)r.number("rope_local_base_freq", 10000.0);  // older Gemma 3 configs
  read_sliding_layers(r, layout, c);
  if (c.rope_theta_swa == c.rope_theta || c.swa_layers.empty()) c.rope_theta_swa = 0.f;  // 0: the global base
  if (r.find("query_pre_attn_scalar"))  // transformers: scaling = query_pre_attn_scalar ** -0.5 in f64
    c.attn_scale = (float)(1.0 / std::sqrt(r.number("query_pre_attn_scalar", 1.0)));
  if (r.find("attn_logit_softcapping")) {
    // transformers' Gemma 3 stores it but its attention never applies it (nor does llama.cpp's):
    // refused rather than computed differently from both.
    if (spec.has_norm("q_norm") && spec.hf_norm_shift != 0.f)
      fail(what, ": field 'attn_logit_softcapping' is set for ", layout.architecture, ", whose attention in transformers ignores it; qforge will not guess");
    c.attn_softcap = (float)r.number("attn_logit_softcapping", 0.0);
  }
  if (r.find("final_logit_softcapping")) c.final_softcap = (float)r.number("final_logit_softcapping", 0.0);
  if (spec.hf_norm_shift == 0.f && (c.attn_scale > 0.f || c.attn_softcap > 0.f || c.final_softcap > 0.f))
    fail(what, ": query_pre_attn_scalar or soft-capping is set for ", layout.architecture, ", which does not use them");
  if (spec.kind == BlockKind::LlamaMoe) read_moe(r, layout, c);
  validate_config(c, what);
  return c;
}

// ---- tensors --------------------------------------------------------------------------------

// A fused tensor ("model.layers.N.<fused.hf>.weight|bias") split by rows into its parts: each
// part is a TensorSource over its own rows of the file (rows are contiguous; nothing is copied).
static void add_fused(ModelSource& src, const SafetensorsFile& st, const TensorSource& ts, const HfFused& f, long layer,
                      const std::string& kind) {
  const ModelConfig& c = src.cfg;
  const std::string what = "safetensors file '" + st.file->path + "': tensor '" + ts.name + "'";
  int64_t rows = 0;
  for (const char* p : f.parts) rows += linear_shape(c, p)[0];
  const bool weight = kind == "weight";
  const Shape want = weight ? Shape{rows, (int64_t)linear_shape(c, f.parts[0])[1]} : Shape{rows};
  if (ts.shape != want)
    fail(what, " has shape ", shape_str(ts.shape), ", the config implies ", shape_str(want), " (", f.hf, " stacks ",
         [&] {
           std::string n;
           for (const char* p : f.parts) n += (n.empty() ? "" : ", ") + std::string(p);
           return n;
         }(),
         ")");
  const uint64_t row_bytes = ts.nbytes / (uint64_t)rows;
  int64_t r0 = 0;
  for (const char* p : f.parts) {
    const int64_t n = linear_shape(c, p)[0];
    TensorSource part = ts;
    part.offset = ts.offset + (uint64_t)r0 * row_bytes;
    part.nbytes = (uint64_t)n * row_bytes;
    part.shape = weight ? Shape{n, want[1]} : Shape{n};
    const std::string canon = "blocks." + std::to_string(layer) + "." + p + "." + kind;
    if (src.tensors.count(canon)) fail(what, " holds ", p, ", which another tensor of layer ", layer, " holds too");
    src.tensors[canon] = part;
    r0 += n;
  }
}

// transformers 5's fused expert tensors (docs/architecture.md#mixture-of-experts; its in-memory
// layout, written by save_pretrained(save_original_format=False)): "mlp.experts.gate_up_proj"
// [E, 2·ff, dim] holds each expert's gate rows then its up rows, "mlp.experts.down_proj"
// [E, dim, ff] its down; each expert's part becomes a TensorSource over its own rows of the file.
// Mixtral's router is then "mlp.gate" (block_sparse_moe.gate in the per-expert files).
static bool add_moe_fused(ModelSource& src, const SafetensorsFile& st, const TensorSource& ts, long layer, const std::string& rest) {
  const ModelConfig& c = src.cfg;
  if (arch_of(c).kind != BlockKind::LlamaMoe) return false;
  const std::string what = "safetensors file '" + st.file->path + "': tensor '" + ts.name + "'";
  const std::string pre = "blocks." + std::to_string(layer) + ".";
  auto put = [&](const std::string& canon, const TensorSource& part) {
    if (src.tensors.count(canon)) fail(what, " holds ", canon.substr(pre.size()), ", which another tensor of layer ", layer, " holds too");
    src.tensors[canon] = part;
  };
  if (rest == "mlp.gate.weight" && std::string(c.arch) == "mixtral") {
    put(pre + "router.weight", ts);
    return true;
  }
  const bool gu = rest == "mlp.experts.gate_up_proj", dn = rest == "mlp.experts.down_proj";
  if (!gu && !dn) return false;
  if (layer >= c.n_layers) fail(what, " is for layer ", layer, " but config.json has num_hidden_layers = ", c.n_layers);
  if (ts.dtype != "F32" && ts.dtype != "F16" && ts.dtype != "BF16") fail(what, " has dtype ", ts.dtype, " (weights must be F32, F16 or BF16)");
  const int64_t E = c.n_experts, ff = c.expert_hidden, D = c.dim;
  const Shape want = gu ? Shape{E, 2 * ff, D} : Shape{E, D, ff};
  if (ts.shape != want)
    fail(what, " has shape ", shape_str(ts.shape), ", the config implies ", shape_str(want), gu ? " (experts × gate and up rows × dim)" : " (experts × dim × ff)");
  const uint64_t row_bytes = ts.nbytes / (uint64_t)(want[0] * want[1]);
  for (int64_t e = 0; e < E; ++e) {
    const uint64_t base = ts.offset + (uint64_t)(e * want[1]) * row_bytes;
    auto slice = [&](int64_t r0, int64_t n) {
      TensorSource part = ts;
      part.offset = base + (uint64_t)r0 * row_bytes;
      part.nbytes = (uint64_t)n * row_bytes;
      part.shape = {n, want[2]};
      return part;
    };
    const std::string ep = pre + "experts." + std::to_string(e) + ".";
    if (gu) {
      put(ep + "gate.weight", slice(0, ff));
      put(ep + "up.weight", slice(ff, ff));
    } else {
      put(ep + "down.weight", slice(0, D));
    }
  }
  return true;
}

static void add_tensors(ModelSource& src, const SafetensorsFile& st, const std::set<std::string>* only, const HfLayout& layout) {
  const ModelConfig& c = src.cfg;
  for (const TensorSource& ts : st.tensors) {
    if (only && !only->count(ts.name)) continue;
    long layer;
    std::string rest;
    if (split_layer(ts.name, "model.layers.", &layer, &rest) && add_moe_fused(src, st, ts, layer, rest)) continue;
    if (!layout.fused.empty() && split_layer(ts.name, "model.layers.", &layer, &rest)) {
      const HfFused* fused = nullptr;
      std::string kind;
      for (const HfFused& f : layout.fused)
        for (const char* k : {"weight", "bias"})
          if (rest == std::string(f.hf) + "." + k) fused = &f, kind = k;
      if (fused) {
        if (layer >= c.n_layers)
          fail("safetensors file '", st.file->path, "': tensor '", ts.name, "' is for layer ", layer,
               " but config.json has num_hidden_layers = ", c.n_layers);
        if (ts.dtype != "F32" && ts.dtype != "F16" && ts.dtype != "BF16")
          fail("safetensors file '", st.file->path, "': tensor '", ts.name, "' has dtype ", ts.dtype, " (weights must be F32, F16 or BF16)");
        add_fused(src, st, ts, *fused, layer, kind);
        continue;
      }
    }
    const std::string canon = hf_canonical_name(ts.name, arch_of(c));
    if (canon.empty()) continue;  // rotary_emb.inv_freq and other buffers the forward recomputes
    if (split_layer(canon, "blocks.", &layer, &rest) && layer >= c.n_layers)
      fail("safetensors file '", st.file->path, "': tensor '", ts.name, "' is for layer ", layer, " but config.json has num_hidden_layers = ",
           c.n_layers);
    if (const LinearSpec* ls = linear_of_tensor(arch_of(c), canon); ls && layout.fused_of(ls->name))
      fail("safetensors file '", st.file->path, "': tensor '", ts.name, "' is stored unfused, but ", layout.architecture, " stores ", ls->name,
           " in ", layout.fused_of(ls->name)->hf);
    if (canon == "classifier" && c.tied_classifier) continue;  // HF ignores a saved lm_head when tied
    if (ts.dtype != "F32" && ts.dtype != "F16" && ts.dtype != "BF16")
      fail("safetensors file '", st.file->path, "': tensor '", ts.name, "' has dtype ", ts.dtype, " (weights must be F32, F16 or BF16)");
    if (src.tensors.count(canon)) fail("safetensors file '", st.file->path, "': tensor '", ts.name, "' appears twice");
    src.tensors[canon] = ts;
  }
}

static bool plain_file_name(const std::string& n) {
  return !n.empty() && n != "." && n != ".." && n.find('/') == std::string::npos;
}

ModelSource open_hf(const std::string& dir_in) {
  std::string dir = dir_in;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  ModelSource src;
  src.format = "hf";
  src.path = dir;
  const std::string cfg_path = dir + "/config.json";
  if (!path_exists(cfg_path)) fail("HF directory '", dir, "': config.json is missing");
  const HfLayout* layout = nullptr;
  src.cfg = read_config(cfg_path, &layout);
  src.norm_shift = arch_of(src.cfg).hf_norm_shift;
  src.files.push_back(cfg_path);

  const std::string single = dir + "/model.safetensors", index = dir + "/model.safetensors.index.json";
  if (path_exists(single)) {
    SafetensorsFile st = safetensors_open(single);
    src.files.push_back(single);
    add_tensors(src, st, nullptr, *layout);
  } else if (path_exists(index)) {
    const std::string what = "index '" + index + "'";
    const json j = parse_json_bounded(read_file(index), what);
    if (!j.is_object()) fail(what, ": not a JSON object");
    auto wm = j.find("weight_map");
    if (wm == j.end() || !wm->is_object() || wm->empty()) fail(what, ": field 'weight_map' is missing or not a non-empty object");
    src.files.push_back(index);
    std::map<std::string, std::set<std::string>> by_shard;  // every shard mapped once
    for (auto& [tensor, shard] : wm->items()) {
      if (!shard.is_string() || !plain_file_name(shard.get<std::string>()))
        fail(what, ": field 'weight_map.", tensor, "' = ", json_brief(shard), " is not a file name in the directory");
      by_shard[shard.get<std::string>()].insert(tensor);
    }
    for (auto& [shard, names] : by_shard) {
      const std::string p = dir + "/" + shard;
      if (!path_exists(p)) fail(what, ": shard '", shard, "' named in field 'weight_map' does not exist");
      SafetensorsFile st = safetensors_open(p);
      for (const std::string& n : names)
        if (!st.find(n)) fail(what, ": field 'weight_map' puts tensor '", n, "' in shard '", shard, "', which does not hold it");
      src.files.push_back(p);
      add_tensors(src, st, &names, *layout);
    }
  } else {
    fail("HF directory '", dir, "': neither model.safetensors nor model.safetensors.index.json is present");
  }
  return src;
}

}  // namespace qf
