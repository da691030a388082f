// GGUF (arch llama) → ModelSource. Tensors stay in the mapping; q/k rows, stored by
// llama.cpp's converter in RoPE-pair order, are returned to HF rotate-half order on load
// (TensorSource::unpermute_heads) and the config says rope_interleaved = false.
#include "formats/loader_gguf.h"

#include <cmath>
#include <cstring>

#include "formats/gguf.h"

namespace qf {

// Canonical name of a llama.cpp tensor name; "" if it is not one qforge knows.
static std::string canonical_name(const std::string& n, int n_layers) {
  for (const ModelTensorSpec& e : kLlama.tensors)
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
  for (const NormSpec& e : kLlama.norms)
    if (rest == std::string(e.gguf) + ".weight") return pre + e.name;
  for (const LinearSpec& e : kLlama.linears) {
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

ModelSource open_gguf(const std::string& path) {
  GGUFFile g = gguf_read(path);
  ModelSource src;
  src.format = "gguf";
  src.path = path;
  src.files = {path};

  const std::string& arch = g.get_str("general.architecture");
  if (arch != "llama")
    fail("file '", path, "': metadata 'general.architecture' = '", arch, "' is not supported (qforge reads GGUF architecture 'llama')");

  ModelConfig& c = src.cfg;
  c.arch = "llama";
  c.dim = get_dim(g, "llama.embedding_length", 1, 1 << 16);
  c.hidden_dim = get_dim(g, "llama.feed_forward_length", 1, 1 << 18);
  c.n_layers = get_dim(g, "llama.block_count", 1, 1024);
  c.n_heads = get_dim(g, "llama.attention.head_count", 1, c.dim);
  if (c.dim % c.n_heads) fail("file '", path, "': metadata 'llama.attention.head_count' = ", c.n_heads, " does not divide llama.embedding_length ", c.dim);
  c.n_kv_heads = g.find("llama.attention.head_count_kv") ? get_dim(g, "llama.attention.head_count_kv", 1, c.n_heads) : c.n_heads;
  if (c.n_heads % c.n_kv_heads)
    fail("file '", path, "': metadata 'llama.attention.head_count_kv' = ", c.n_kv_heads, " does not divide head_count ", c.n_heads);
  c.seq_len = get_dim(g, "llama.context_length", 1, 1 << 24);
  c.norm_eps = (float)g.get_float("llama.attention.layer_norm_rms_epsilon");
  if (!(c.norm_eps > 0.f && c.norm_eps < 1.f)) fail("file '", path, "': metadata 'llama.attention.layer_norm_rms_epsilon' = ", c.norm_eps, " (expected in (0, 1))");
  c.rope_theta = g.find("llama.rope.freq_base") ? (float)g.get_float("llama.rope.freq_base") : 10000.f;
  if (!(c.rope_theta > 1.f && std::isfinite(c.rope_theta))) fail("file '", path, "': metadata 'llama.rope.freq_base' = ", c.rope_theta, " (expected > 1)");
  if (g.find("llama.rope.dimension_count")) {
    const int64_t rd = g.get_int("llama.rope.dimension_count", 0, 1 << 16);
    if (rd != c.head_dim())
      fail("file '", path, "': metadata 'llama.rope.dimension_count' = ", rd, " differs from the head dimension ", c.head_dim(),
           " (partial rotary embeddings are not supported)");
  }
  // RoPE scaling: only linear (positions / factor) is carried by metadata for llama; Llama 3.1
  // style scaling comes as a rope_freqs.weight tensor, refused below.
  std::string scaling = g.find("llama.rope.scaling.type") ? g.get_str("llama.rope.scaling.type") : "";
  if (scaling.empty() && g.find("llama.rope.scale_linear") && g.get_float("llama.rope.scale_linear") != 1.0) {
    c.rope_scaling = "linear";
    c.rope_factor = (float)g.get_float("llama.rope.scale_linear");
  } else if (scaling == "linear") {
    c.rope_scaling = "linear";
    c.rope_factor = (float)g.get_float("llama.rope.scaling.factor");
  } else if (!scaling.empty() && scaling != "none") {
    fail("file '", path, "': metadata 'llama.rope.scaling.type' = '", scaling, "' is not supported (none or linear)");
  }
  if (c.rope_scaling == "linear" && !(c.rope_factor > 0.f && std::isfinite(c.rope_factor)))
    fail("file '", path, "': metadata 'llama.rope.scaling.factor' = ", c.rope_factor, " (expected > 0)");
  if (g.find("llama.rope.scaling.original_context_length"))
    c.rope_orig_ctx = get_dim(g, "llama.rope.scaling.original_context_length", 1, 1 << 24);
  c.rope_interleaved = false;  // q/k are unpermuted to HF order on load

  src.tokenizer = read_tokenizer(g);
  const int64_t n_tok = (int64_t)src.tokenizer.tokens.size();
  if (g.find("llama.vocab_size")) c.vocab_size = get_dim(g, "llama.vocab_size", 1, 1 << 22);
  else if (n_tok > 0) c.vocab_size = (int)std::min<int64_t>(n_tok, (int64_t)1 << 30);
  else {
    for (auto& t : g.tensors)
      if (t.name == kLlama.tensor("tok_emb").gguf && t.ne.size() == 2) c.vocab_size = (int)std::min<uint64_t>(t.ne[1], (uint64_t)1 << 30);
  }
  if (n_tok > 0 && n_tok != c.vocab_size)
    fail("file '", path, "': metadata 'tokenizer.ggml.tokens' has ", n_tok, " tokens but the model's vocabulary is ", c.vocab_size);

  bool has_output = false;
  for (const GGUFTensorInfo& t : g.tensors) {
    if (t.name == "rope_freqs.weight")
      fail("file '", path, "': tensor 'rope_freqs.weight' (per-frequency RoPE factors, Llama 3.1 scaling) is not supported");
    const std::string canon = canonical_name(t.name, c.n_layers);
    if (canon.empty()) fail("file '", path, "': tensor '", t.name, "' is not part of the llama architecture qforge reads");
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
    if (const LinearSpec* ls = linear_of_tensor(kLlama, canon)) ts.unpermute_heads = rope_heads(c, *ls);
    if (canon == "classifier") has_output = true;
    src.tensors[canon] = std::move(ts);
  }
  c.tied_classifier = !has_output;
  validate_config(c, "file '" + path + "'");
  return src;
}

}  // namespace qf
