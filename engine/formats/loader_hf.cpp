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

std::string hf_tensor_name(const std::string& canonical) {
  for (const ModelTensorSpec& e : kLlama.tensors)
    if (canonical == e.name) return e.hf;
  long layer;
  std::string rest;
  if (split_layer(canonical, "blocks.", &layer, &rest)) {
    const std::string pre = "model.layers." + std::to_string(layer) + ".";
    for (const NormSpec& e : kLlama.norms)
      if (rest == e.name) return pre + e.hf + ".weight";
    for (const LinearSpec& e : kLlama.linears) {
      if (rest == std::string(e.name) + ".weight") return pre + e.hf + ".weight";
      if (rest == std::string(e.name) + ".bias") return pre + e.hf + ".bias";
    }
  }
  fail("tensor '", canonical, "' has no Hugging Face name");
}

std::string hf_canonical_name(const std::string& hf) {
  for (const ModelTensorSpec& e : kLlama.tensors)
    if (hf == e.hf) return e.name;
  long layer;
  std::string rest;
  if (split_layer(hf, "model.layers.", &layer, &rest)) {
    const std::string pre = "blocks." + std::to_string(layer) + ".";
    for (const NormSpec& e : kLlama.norms)
      if (rest == std::string(e.hf) + ".weight") return pre + e.name;
    for (const LinearSpec& e : kLlama.linears) {
      if (rest == std::string(e.hf) + ".weight") return pre + e.name + ".weight";
      if (rest == std::string(e.hf) + ".bias") return pre + e.name + ".bias";
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
  if (const json* act = r.find("hidden_act"))
    if (!act->is_string() || act->get<std::string>() != "silu") fail(what, ": field 'hidden_act' = ", json_brief(*act), " (only silu)");
  if (r.boolean("use_sliding_window", false))
    fail(what, ": field 'use_sliding_window' is true; sliding-window attention is not implemented");

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
  if (c.dim % c.n_heads)
    fail(what, ": field 'num_attention_heads' = ", c.n_heads, " does not divide field 'hidden_size' = ", c.dim);
  if (c.n_kv_heads > c.n_heads || c.n_heads % c.n_kv_heads)
    fail(what, ": field 'num_key_value_heads' = ", c.n_kv_heads, " does not divide field 'num_attention_heads' = ", c.n_heads);
  const int64_t hd = c.dim / c.n_heads;
  if (r.find("head_dim") && r.integer("head_dim", 1, 1 << 16) != hd)
    fail(what, ": field 'head_dim' = ", r.integer("head_dim", 1, 1 << 16), " differs from hidden_size / num_attention_heads = ", hd,
         " (decoupled head dimensions are not supported)");
  if (hd % 2) fail(what, ": head dimension hidden_size / num_attention_heads = ", hd, " is odd (RoPE needs pairs)");
  if (const json* rs = r.find("rope_scaling")) read_rope_scaling(r, *rs, "rope_scaling", c);
  // Newer transformers state RoPE as rope_parameters {rope_type, rope_theta, ...}.
  if (const json* rp = r.find("rope_parameters")) {
    if (!rp->is_object()) fail(what, ": field 'rope_parameters' is not an object");
    if (rp->contains("rope_theta")) c.rope_theta = (float)r.number(*rp, "rope_theta", 10000.0, true, "rope_parameters.");
    if (!r.find("rope_scaling")) read_rope_scaling(r, *rp, "rope_parameters", c);
  }
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

static void add_tensors(ModelSource& src, const SafetensorsFile& st, const std::set<std::string>* only, const HfLayout& layout) {
  const ModelConfig& c = src.cfg;
  for (const TensorSource& ts : st.tensors) {
    if (only && !only->count(ts.name)) continue;
    long layer;
    std::string rest;
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
    const std::string canon = hf_canonical_name(ts.name);
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
