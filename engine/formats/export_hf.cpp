// HF directory export: config.json + model.safetensors of the f32 weights (fake-quantized
// when a solver replaced them) in F32 | F16 | BF16, q/k rows in HF rotate-half order, the
// tokenizer carried over. Also the helpers export_gptq.cpp shares.
#include "formats/export_hf.h"

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
  for (int b = 0; b < m.n_blocks(); ++b) {
    std::string p;
    for (const LinearSpec& s : kLlama.linears)
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
  nlohmann::ordered_json j;
  j["architectures"] = {fused ? fused->architecture : qwen2 ? "Qwen2ForCausalLM" : "LlamaForCausalLM"};
  j["model_type"] = fused ? fused->model_type : qwen2 ? "qwen2" : "llama";
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
  j["hidden_act"] = "silu";
  if (fused) {
  } else if (qwen2) {
    j["use_sliding_window"] = false;
  } else {
    j["attention_bias"] = attn_bias;
    j["mlp_bias"] = mlp_bias;
  }
  if (tok) {
    j["bos_token_id"] = tok->bos_id();
    j["eos_token_id"] = tok->eos_id();
  }
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

// One f32 tensor of the model by canonical name, rows in HF order.
static Tensor model_tensor(const Model& m, const std::string& canonical) {
  if (canonical == "tok_emb") return m.tok_emb;
  if (canonical == "final_norm") return m.final_norm;
  if (canonical == "classifier") return m.classifier;
  const size_t a = canonical.find('.', 7), z = canonical.rfind('.');
  const int b = std::atoi(canonical.c_str() + 7);
  const std::string rest = canonical.substr(a + 1);
  const Block& blk = m.block(b);
  if (rest == "attn_norm") return blk.attn_norm;
  if (rest == "ffn_norm") return blk.ffn_norm;
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
    e.name = hf_tensor_name(canonical);
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
    add(pre + "attn_norm", {c.dim}, -1);
    add(pre + "ffn_norm", {c.dim}, -1);
    const HfLayout* layout = c.hf_layout.empty() ? nullptr : hf_layout(c.hf_layout);
    for (const LinearSpec& s : kLlama.linears) {
      const Shape w = m.weight_shape(b, s.name);
      const int release = s.name == kLlama.linears.back().name ? b : -1;
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
