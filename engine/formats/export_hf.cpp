// HF directory export: config.json + model.safetensors of the f32 weights (fake-quantized
// when a solver replaced them) in F32 | F16 | BF16, q/k rows in HF rotate-half order, the
// tokenizer carried over. Also the helpers export_gptq.cpp shares.
#include "formats/export_hf.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "formats/export.h"
#include "core/io.h"
#include "formats/loader_hf.h"
#include "formats/model_source.h"
#include "formats/safetensors.h"

namespace qf {

double json_float(float v) {
  char buf[64];
  for (int p = 6; p <= 9; ++p) {
    std::snprintf(buf, sizeof buf, "%.*g", p, (double)v);
    if (std::strtof(buf, nullptr) == v) break;
  }
  return std::strtod(buf, nullptr);
}

bool hf_has_bias(const Model& m, int b, const std::string& linear) { return m.has_bias(b, linear); }

std::vector<int64_t> hf_row_order(const Model& m, const std::string& linear, int64_t rows) {
  const int heads = rope_heads(m.cfg, arch_of(m.cfg).linear(linear));
  if (!m.cfg.rope_interleaved || heads == 0) {
    std::vector<int64_t> order(rows);
    for (int64_t i = 0; i < rows; ++i) order[i] = i;
    return order;
  }
  return rope_half_rows(rows, heads);  // the rows rope_halves_from_pairs gathers
}

Tensor hf_rows(const Model& m, const std::string& linear, const Tensor& w) {
  const int heads = rope_heads(m.cfg, arch_of(m.cfg).linear(linear));
  if (!m.cfg.rope_interleaved || heads == 0) return w;
  return rope_halves_from_pairs(w, heads);
}

nlohmann::ordered_json hf_config_json(const Model& m, const Tokenizer* tok, const std::string& torch_dtype, const std::string& what) {
  const ModelConfig& c = m.cfg;
  // Which linears carry biases decides the architecture; the pattern must hold in every block.
  std::string pattern;
  const std::vector<BlockLinear> lins = block_linears(c);
  for (int b = 0; b < m.n_blocks(); ++b) {
    std::string p;
    for (const BlockLinear& s : lins)
      if (hf_has_bias(m, b, s.name)) p += std::string(p.empty() ? "" : ",") + s.name;
    if (b == 0) pattern = p;
    else if (p != pattern)
      fail(what, ": block ", b + 1, " has biases on {", p, "} but block 1 on {", pattern, "}; HF configs state one pattern for all layers");
  }
  const bool qwen2 = pattern == "q,k,v";
  const bool attn_bias = pattern == "q,k,v,o" || pattern == "q,k,v,o,gate,up,down";
  const bool mlp_bias = pattern == "gate,up,down" || pattern == "q,k,v,o,gate,up,down";
  if (!pattern.empty() && !qwen2 && !attn_bias && !mlp_bias)
    fail(what, ": biases on {", pattern, "} fit no HF architecture (Qwen2: q,k,v; Llama: q,k,v,o and/or gate,up,down)");

  // A fused layout (kHfLayouts) the model was read from is written back; its architectures
  // carry no biases.
  const HfLayout* fused = c.hf_layout.empty() ? nullptr : hf_layout(c.hf_layout);
  if (!c.hf_layout.empty() && !fused) fail(what, ": HF layout '", c.hf_layout, "' is unknown (known: ", hf_layout_names(), ")");
  if (fused && !pattern.empty())
    fail(what, ": biases on {", pattern, "} do not fit the ", fused->architecture, " layout, which has none");
  const ArchSpec& spec = arch_of(c);
  const bool llama_kind = &spec == &kLlama;
  // Qwen2-MoE's attention always has q/k/v biases (transformers makes them); the others none.
  const std::string want_bias = &spec == &kQwen2Moe ? "q,k,v" : "";
  if (!llama_kind && pattern != want_bias)
    fail(what, ": biases on {", pattern, "} do not fit ", spec.name, ", whose HF architecture has ",
         want_bias.empty() ? "none" : "exactly {" + want_bias + "}");
  bool all_swa = !c.swa_layers.empty();
  for (uint8_t v : c.swa_layers) all_swa = all_swa && v;
  // A Llama-kind model whose every layer slides is Mistral's architecture; Qwen2's slides from
  // max_window_layers on (layer_types says exactly which).
  const bool mistral = llama_kind && !fused && !qwen2 && all_swa;
  if (llama_kind && !fused && !qwen2 && !c.swa_layers.empty() && !all_swa)
    fail(what, ": sliding layers on only some layers fit no Llama-kind HF architecture (Mistral slides on all)");
  const char* architecture = fused ? fused->architecture
                             : !llama_kind ? nullptr
                             : qwen2       ? "Qwen2ForCausalLM"
                             : mistral     ? "MistralForCausalLM"
                                           : "LlamaForCausalLM";
  const HfLayout* row = nullptr;
  for (const HfLayout& l : kHfLayouts)
    if (architecture ? std::string(l.architecture) == architecture : std::string(l.arch) == spec.name) row = &l;
  if (!row) fail(what, ": architecture '", spec.name, "' has no HF layout");
  nlohmann::ordered_json j;
  j["architectures"] = {row->architecture};
  j["model_type"] = row->model_type;
  j["hidden_size"] = c.dim;
  j["intermediate_size"] = c.hidden_dim;
  j["num_hidden_layers"] = c.n_layers;
  j["num_attention_heads"] = c.n_heads;
  j["num_key_value_heads"] = c.n_kv_heads;
  j["head_dim"] = c.head_dim();
  j["vocab_size"] = c.vocab_size;
  j["max_position_embeddings"] = c.seq_len;
  j["rms_norm_eps"] = json_float(c.norm_eps);
  j["rope_theta"] = json_float(c.rope_theta);
  if (c.rope_scaling.empty()) {
    j["rope_scaling"] = nullptr;
  } else if (c.rope_scaling == "linear") {
    j["rope_scaling"] = {{"rope_type", "linear"}, {"type", "linear"}, {"factor", json_float(c.rope_factor)}};
  } else if (c.rope_scaling == "llama3") {
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", json_float(c.rope_factor)},
                         {"low_freq_factor", json_float(c.rope_low_freq_factor)},
                         {"high_freq_factor", json_float(c.rope_high_freq_factor)},
                         {"original_max_position_embeddings", c.rope_orig_ctx}};
  } else {
    fail(what, ": RoPE scaling '", c.rope_scaling, "' has no HF config form");
  }
  j["tie_word_embeddings"] = c.tied_classifier;
  j[spec.hf_norm_shift != 0.f ? "hidden_activation" : "hidden_act"] = spec.act == GluAct::Silu ? "silu" : "gelu_pytorch_tanh";
  // Sliding layers: the window, and layer_types, which transformers reads before any rule.
  j["sliding_window"] = c.sliding_window > 0 ? nlohmann::ordered_json(c.sliding_window) : nlohmann::ordered_json(nullptr);
  if (!c.swa_layers.empty()) {
    nlohmann::ordered_json lt = nlohmann::ordered_json::array();
    for (uint8_t v : c.swa_layers) lt.push_back(v ? "sliding_attention" : "full_attention");
    j["layer_types"] = lt;
  }
  const std::string rule = row->swa_rule;
  if (rule == "from_max_window_layers") {
    // transformers keeps sliding_window only with use_sliding_window; layer_types (above) says
    // which layers slide, max_window_layers is what older readers derive them from.
    int first = c.n_layers;  // the first layer of the trailing run of sliding layers
    for (int l = c.n_layers - 1; l >= 0 && c.is_swa(l); --l) first = l;
    j["use_sliding_window"] = !c.swa_layers.empty();
    j["max_window_layers"] = first;
  } else if (rule == "qwen2_moe" || rule == "all_if_used") {  // layer_types (above) says which layers slide
    j["use_sliding_window"] = !c.swa_layers.empty();
    if (rule == "qwen2_moe") j["max_window_layers"] = c.n_layers;
  }
  if (spec.hf_norm_shift != 0.f) {  // Gemma
    if (c.attn_softcap > 0.f && spec.has_norm("q_norm"))
      fail(what, ": transformers' Gemma 3 ignores attn_logit_softcapping; the model's attention soft cap cannot be written");
    // transformers scales by query_pre_attn_scalar^−½ (f64, then f32): an integer when one gives
    // our scale exactly (real checkpoints: the head size), else the f64 that does.
    const double qpas = c.attn_scale > 0.f ? 1.0 / ((double)c.attn_scale * c.attn_scale) : (double)c.head_dim();
    const double qi = std::round(qpas);
    const float want = c.attn_scale > 0.f ? c.attn_scale : (float)(1.0 / std::sqrt((double)c.head_dim()));
    if (qi >= 1 && (float)(1.0 / std::sqrt(qi)) == want) j["query_pre_attn_scalar"] = (int64_t)qi;
    else if ((float)(1.0 / std::sqrt(qpas)) == want) j["query_pre_attn_scalar"] = qpas;
    else fail(what, ": the score scale ", want, " has no query_pre_attn_scalar that transformers turns back into it");
    j["attn_logit_softcapping"] = c.attn_softcap > 0.f ? nlohmann::ordered_json(json_float(c.attn_softcap)) : nlohmann::ordered_json(nullptr);
    j["final_logit_softcapping"] = c.final_softcap > 0.f ? nlohmann::ordered_json(json_float(c.final_softcap)) : nlohmann::ordered_json(nullptr);
    if (spec.has_norm("q_norm"))  // Gemma 3: RoPE per layer type
      j["rope_parameters"] = {{"full_attention", {{"rope_type", "default"}, {"rope_theta", json_float(c.rope_theta)}}},
                              {"sliding_attention",
                               {{"rope_type", "default"}, {"rope_theta", json_float(c.rope_theta_swa > 0.f ? c.rope_theta_swa : c.rope_theta)}}}};
    if (!c.rope_scaling.empty()) fail(what, ": RoPE scaling on a Gemma model has no HF config form here");
  } else if (c.attn_scale > 0.f || c.attn_softcap > 0.f || c.final_softcap > 0.f || c.rope_theta_swa > 0.f) {
    fail(what, ": score scale, soft caps or a sliding-layer RoPE base fit no ", row->architecture, " config");
  }
  if (!fused && llama_kind && !qwen2 && !mistral) {
    j["attention_bias"] = attn_bias;
    j["mlp_bias"] = mlp_bias;
  }
  if (&spec == &kQwen3 || &spec == &kQwen3Moe) j["attention_bias"] = false;
  if (spec.kind == BlockKind::LlamaMoe) {  // docs/architecture.md#mixture-of-experts; read back by loader_hf's read_moe
    if (&spec == &kMixtral) {
      if (!c.moe_norm_topk) fail(what, ": Mixtral always renormalizes the top-k routing weights; this model does not");
      j["num_local_experts"] = c.n_experts;
      j["intermediate_size"] = c.expert_hidden;
    } else {
      j["num_experts"] = c.n_experts;
      j["moe_intermediate_size"] = c.expert_hidden;
      j["norm_topk_prob"] = c.moe_norm_topk;
      j["decoder_sparse_step"] = 1;
      j["mlp_only_layers"] = nlohmann::ordered_json::array();
      if (c.shared_hidden > 0) j["shared_expert_intermediate_size"] = c.shared_hidden;
    }
    j["num_experts_per_tok"] = c.n_experts_used;
  }
  if (tok) {
    j["bos_token_id"] = tok->bos_id();
    j["eos_token_id"] = tok->eos_id();
  }
  // Stated, never left to a config class's default: Phi3Config's 32000 lies outside a smaller
  // vocabulary and transformers then refuses the model.
  const int32_t pad = tok ? tok->spec().pad_id : m.src ? m.src->tokenizer.pad_id : -1;
  j["pad_token_id"] = pad >= 0 && pad < c.vocab_size ? nlohmann::ordered_json(pad) : nlohmann::ordered_json(nullptr);
  j["torch_dtype"] = torch_dtype;
  return j;
}

static bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

void hf_write_tokenizer(const Model& m, const Tokenizer* tok, const std::string& dir) {
  if (m.src && m.src->format == "hf") {
    bool any = false;
    for (const char* n : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                          "generation_config.json", "tokenizer.bin"}) {
      const std::string from = m.src->path + "/" + n;
      if (!path_exists(from)) continue;
      write_file_atomic(dir + "/" + n, read_file(from));
      any = true;
    }
    if (any || !tok) return;
  }
  if (!tok) return;
  // A llama2.c tokenizer also travels as its own file (the loader's hf branch uses
  // tokenizer.bin when there is no tokenizer.json).
  if (!tok->path().empty() && ends_with(tok->path(), ".bin") && path_exists(tok->path()))
    write_file_atomic(dir + "/tokenizer.bin", read_file(tok->path()));
  // What HF tools read: tokenizer.json, and a tokenizer_config.json naming the specials.
  const TokenizerSpec spec = tok->spec();
  write_file_atomic(dir + "/tokenizer.json", tokenizer_json(spec));
  auto token = [&](int32_t id) -> nlohmann::ordered_json {
    if (id < 0 || id >= (int32_t)spec.tokens.size()) return nullptr;
    return spec.tokens[id];
  };
  nlohmann::ordered_json tc = {{"tokenizer_class", "PreTrainedTokenizerFast"},
                               {"bos_token", token(spec.bos_id)},
                               {"eos_token", token(spec.eos_id)},
                               {"unk_token", token(spec.unk_id)},
                               {"pad_token", token(spec.pad_id)},
                               {"add_bos_token", spec.add_bos},
                               {"add_eos_token", spec.add_eos},
                               {"model_max_length", m.cfg.seq_len}};
  write_file_atomic(dir + "/tokenizer_config.json", tc.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n");
}

Tensor hf_norm(const Model& m, const Tensor& g) {
  const float shift = arch_of(m.cfg).hf_norm_shift;
  if (shift == 0.f) return g;
  Tensor w = g.contiguous().clone();
  float* p = w.f32();
  for (int64_t j = 0; j < w.numel(); ++j) p[j] -= shift;
  return w;
}

// One f32 tensor of the model by canonical name, rows in HF order.
static Tensor model_tensor(const Model& m, const std::string& canonical) {
  if (canonical == "tok_emb") return m.tok_emb;
  if (canonical == "final_norm") return hf_norm(m, m.final_norm);
  if (canonical == "classifier") return m.classifier;
  const size_t a = canonical.find('.', 7), z = canonical.rfind('.');
  const int b = std::atoi(canonical.c_str() + 7);
  const std::string rest = canonical.substr(a + 1);
  const Block& blk = m.block(b);
  const ArchSpec& spec = arch_of(m.cfg);
  if (spec.has_norm(rest)) return hf_norm(m, blk.norm(rest));
  const std::string lin = canonical.substr(a + 1, z - a - 1);
  const Linear& l = blk.linear(lin);
  return hf_rows(m, lin, ends_with(canonical, ".bias") ? l.bias : l.weight);
}

// config.json's torch_dtype of a dtype the hf exporter takes (its row in export.cpp).
static const char* torch_dtype_of(const std::string& dtype, const std::string& what) {
  const ExportFormat& f = *export_format("hf");
  const char* t = !f.takes(dtype) ? nullptr : dtype == "F32" ? "float32" : dtype == "F16" ? "float16" : dtype == "BF16" ? "bfloat16" : nullptr;
  if (!t) {
    std::string list;
    for (size_t i = 0; i < f.dtypes.size(); ++i) list += std::string(i == 0 ? "" : i + 1 == f.dtypes.size() ? " or " : ", ") + f.dtypes[i];
    fail(what, ": dtype '", dtype, "' is not supported (", list, ")");
  }
  return t;
}

void check_hf(const Model& m, const Tokenizer* tok, const std::string& dir, const std::string& dtype) {
  const std::string what = "save hf '" + dir + "'";
  const char* torch_dtype = torch_dtype_of(dtype, what);
  validate_config(m.cfg, what);
  hf_config_json(m, tok, torch_dtype, what);
}

void save_hf(const Model& m, const Tokenizer* tok, const std::string& dir, const std::string& dtype) {
  const std::string what = "save hf '" + dir + "'";
  const char* torch_dtype = torch_dtype_of(dtype, what);
  validate_config(m.cfg, what);
  const nlohmann::ordered_json cfg = hf_config_json(m, tok, torch_dtype, what);

  // Tensors are produced one at a time as the writer reaches them; a lazily loaded block is
  // converted for its tensors and released after its last one.
  std::vector<SafetensorsEntry> entries;
  auto add = [&](const std::string& canonical, const Shape& shape, int release_block) {
    SafetensorsEntry e;
    e.name = hf_tensor_name(canonical, arch_of(m.cfg));
    e.dtype = dtype;
    e.shape = shape;
    e.produce = [&m, canonical, dtype, release_block, name = e.name, what] {
      std::string bytes = tensor_bytes(model_tensor(m, canonical), dtype, what + ": tensor '" + name + "'");
      if (release_block >= 0) m.release_block(release_block);
      return bytes;
    };
    entries.push_back(std::move(e));
  };
  // A fused tensor: its parts' rows stacked in the layout's order (each part in HF row order).
  auto add_fused = [&](const std::string& pre, const HfFused& f, int b, int release_block) {
    SafetensorsEntry e;
    e.name = "model.layers." + std::to_string(b) + "." + f.hf + ".weight";
    e.dtype = dtype;
    int64_t rows = 0;
    for (const char* p : f.parts) rows += m.weight_shape(b, p)[0];
    e.shape = {rows, m.weight_shape(b, f.parts[0])[1]};
    e.produce = [&m, pre, &f, dtype, release_block, name = e.name, what] {
      std::string bytes;
      for (const char* p : f.parts) bytes += tensor_bytes(model_tensor(m, pre + p + ".weight"), dtype, what + ": tensor '" + name + "'");
      if (release_block >= 0) m.release_block(release_block);
      return bytes;
    };
    entries.push_back(std::move(e));
  };
  const ModelConfig& c = m.cfg;
  add("tok_emb", {c.vocab_size, c.dim}, -1);
  for (int b = 0; b < m.n_blocks(); ++b) {
    const std::string pre = "blocks." + std::to_string(b) + ".";
    const ArchSpec& spec = arch_of(c);
    for (const NormSpec& n : spec.norms) add(pre + n.name, {norm_size(c, n)}, -1);
    const HfLayout* layout = c.hf_layout.empty() ? nullptr : hf_layout(c.hf_layout);
    const std::vector<BlockLinear> lins = block_linears(c);
    for (const BlockLinear& s : lins) {
      const Shape w = m.weight_shape(b, s.name);
      const int release = s.name == lins.back().name ? b : -1;
      if (const HfFused* f = layout ? layout->fused_of(s.name) : nullptr) {
        if (s.name != std::string(f->parts[0])) continue;  // written once, with its first part
        add_fused(pre, *f, b, release);
        continue;
      }
      if (hf_has_bias(m, b, s.name)) add(pre + s.name + ".bias", {w[0]}, -1);
      add(pre + s.name + ".weight", w, release);
    }
  }
  add("final_norm", {c.dim}, -1);
  if (!c.tied_classifier) add("classifier", {c.vocab_size, c.dim}, -1);

  AtomicDir out(dir);
  safetensors_write(out.tmp() + "/model.safetensors", entries, {{"format", "pt"}});
  write_file_atomic(out.tmp() + "/config.json", cfg.dump(2) + "\n");
  hf_write_tokenizer(m, tok, out.tmp());
  out.commit();
}

void pack_bits(const std::vector<uint32_t>& vals, int bits, uint32_t* words) {
  for (size_t k = 0; k < vals.size(); ++k) {
    const uint64_t pos = (uint64_t)k * bits;
    const uint64_t w = pos / 32, off = pos % 32;
    words[w] |= vals[k] << off;
    if (off + bits > 32) words[w + 1] |= vals[k] >> (32 - off);
  }
}

}  // namespace qf
