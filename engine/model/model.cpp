#include "model/model.h"

#include <cmath>
#include <cstring>
#include <sstream>

#include "core/io.h"


namespace qf {

static std::string known_linears(const Block& b) {
  std::string s;
  for (auto& l : b.linears) s += (s.empty() ? "" : ", ") + l.name;
  return s;
}

const Linear& Block::linear(const std::string& name) const {
  for (size_t i = 0; i < linears.size(); ++i) {
    if (linears[i].name == name) return linears[i];
  }
  for (auto& spec : kLlama.linears) {
    if (name == spec.alias)
      for (auto& l : linears)
        if (l.name == spec.name) return l;
  }
  fail("unknown linear '", name, "' (this block has: ", known_linears(*this), "; llama2.c aliases wq wk wv wo w1 w2 w3)");
}

Linear& Block::linear(const std::string& name) {
  return const_cast<Linear&>(static_cast<const Block*>(this)->linear(name));
}

// The block's norm fields by canonical name; aliases as the architecture tables give them.
static constexpr struct {
  const char* name;
  const char* alias;
  Tensor Block::*field;
} kBlockNorms[] = {
    {"attn_norm", "rms_att", &Block::attn_norm},     {"ffn_norm", "rms_ffn", &Block::ffn_norm},
    {"q_norm", nullptr, &Block::q_norm},             {"k_norm", nullptr, &Block::k_norm},
    {"post_attn_norm", nullptr, &Block::post_attn_norm}, {"post_ffn_norm", nullptr, &Block::post_ffn_norm},
};

const Tensor& Block::norm(const std::string& name) const {
  for (const auto& e : kBlockNorms)
    if (name == e.name || (e.alias && name == e.alias)) return this->*e.field;
  fail("unknown norm '", name, "' (known: attn_norm, ffn_norm, q_norm, k_norm, post_attn_norm, post_ffn_norm)");
}

Tensor& Block::norm(const std::string& name) { return const_cast<Tensor&>(static_cast<const Block*>(this)->norm(name)); }

Block Block::clone(bool drop_quant) const {
  Block nb;
  for (const auto& e : kBlockNorms)
    if ((this->*e.field).defined()) nb.*e.field = (this->*e.field).clone();
  for (const Linear& l : linears) {
    Linear nl = l;
    nl.weight = l.weight.clone();
    if (l.bias.defined()) nl.bias = l.bias.clone();
    if (drop_quant) nl.quant = nullptr;
    nb.linears.push_back(std::move(nl));
  }
  return nb;
}

const Block& Model::block(int i) const {
  if (i < 0 || i >= (int)blocks.size()) fail("block ", i + 1, " out of range (the model has ", blocks.size(), " blocks, numbered from 1)");
  if (!resident.empty() && resident[i] == 0) {
    if (!lazy_blocks) fail("block ", i + 1, " of a lazy model has no loader");
    blocks[i] = lazy_blocks->load(i);
    resident[i] = 1;
  }
  return blocks[i];
}

Block& Model::block_mut(int i) {
  block(i);
  if (!resident.empty()) resident[i] = 2;
  return blocks[i];
}

void Model::release_block(int i) const {
  if (resident.empty() || i < 0 || i >= (int)blocks.size() || resident[i] != 1) return;
  blocks[i] = Block{};
  resident[i] = 0;
}

Shape Model::weight_shape(int b, const std::string& name) const {
  if (!resident.empty() && b >= 0 && b < (int)blocks.size() && resident[b] == 0) return lazy_blocks->weight_shape(b, name);
  return block(b).linear(name).weight.shape();
}

bool Model::has_bias(int b, const std::string& name) const {
  if (!resident.empty() && b >= 0 && b < (int)blocks.size() && resident[b] == 0) return lazy_blocks->has_bias(b, name);
  return block(b).linear(name).bias.defined();
}

Model Model::clone() const {
  Model m;
  m.cfg = cfg;
  m.source = source;
  m.format = format;
  m.src = src;
  m.lazy_blocks = lazy_blocks;
  m.tok_emb = tok_emb.clone();
  m.final_norm = final_norm.clone();
  m.classifier = cfg.tied_classifier ? m.tok_emb : classifier.clone();
  m.blocks.reserve(blocks.size());
  for (int i = 0; i < (int)blocks.size(); ++i) {
    m.blocks.push_back(block(i).clone());
  }
  return m;
}

int64_t Model::n_params() const {
  int64_t n = tok_emb.numel() + final_norm.numel();
  if (!cfg.tied_classifier) n += classifier.numel();
  for (int i = 0; i < (int)blocks.size(); ++i) {
    if (!resident.empty() && resident[i] == 0) {  // count from the file without converting
      n += lazy_blocks->n_params(i);
      continue;
    }
    const Block& b = blocks[i];
    for (const auto& e : kBlockNorms)
      if ((b.*e.field).defined()) n += (b.*e.field).numel();
    for (const Linear& l : b.linears) n += l.weight.numel() + (l.bias.defined() ? l.bias.numel() : 0);
  }
  return n;
}

std::string Model::fingerprint() const {
  std::ostringstream h0;
  h0 << cfg.arch << ' ' << cfg.dim << ' ' << cfg.hidden_dim << ' ' << cfg.n_layers << ' ' << cfg.n_heads << ' ' << cfg.n_kv_heads
     << ' ' << cfg.vocab_size << ' ' << cfg.seq_len << ' ' << cfg.norm_eps << ' ' << cfg.rope_theta << ' ' << cfg.rope_scaling << ' '
     << cfg.rope_factor << ' ' << cfg.rope_low_freq_factor << ' ' << cfg.rope_high_freq_factor << ' ' << cfg.rope_orig_ctx << ' '
     << cfg.rope_interleaved << ' ' << cfg.tied_classifier;
  // Fields added later are hashed only when set, so the fingerprints of older models stay.
  if (cfg.head_size > 0) h0 << " hs" << cfg.head_size;
  if (cfg.sliding_window > 0) {
    h0 << " swa" << cfg.sliding_window << ':' << cfg.rope_theta_swa << ':';
    for (uint8_t v : cfg.swa_layers) h0 << (int)v;
  }
  if (cfg.attn_scale > 0) h0 << " as" << cfg.attn_scale;
  if (cfg.attn_softcap > 0) h0 << " ac" << cfg.attn_softcap;
  if (cfg.final_softcap > 0) h0 << " fc" << cfg.final_softcap;
  const std::string head = h0.str();
  uint64_t h = fnv1a64(head.data(), head.size());
  auto add = [&](const Tensor& t) {
    const uint64_t n = t.defined() ? (uint64_t)t.numel() : 0;
    h = fnv1a64(&n, sizeof n, h);  // the length first: [a][bc] and [ab][c] differ
    if (n) {
      const Tensor c = t.dtype() == DType::F32 ? t.contiguous() : t.to(DType::F32);
      h = fnv1a64(c.f32(), n * sizeof(float), h);
    }
  };
  add(tok_emb);
  for (int i = 0; i < (int)blocks.size(); ++i) {
    const bool was_resident = resident.empty() || resident[i] != 0;
    const Block& b = block(i);
    add(b.attn_norm);
    add(b.ffn_norm);
    for (const auto& e : kBlockNorms)  // the optional ones, by name
      if ((b.*e.field).defined() && e.field != &Block::attn_norm && e.field != &Block::ffn_norm) {
        h = fnv1a64(e.name, std::strlen(e.name), h);
        add(b.*e.field);
      }
    for (const Linear& l : b.linears) {
      h = fnv1a64(l.name.data(), l.name.size(), h);
      add(l.weight);
      add(l.bias);
    }
    if (!was_resident) release_block(i);
  }
  add(final_norm);
  if (!cfg.tied_classifier) add(classifier);
  return fingerprint_text(h);
}

void validate_config(const ModelConfig& c, const std::string& what) {
  auto bad = [&](const char* field, int64_t v, const char* why) {
    fail(what, ": invalid config field '", field, "' = ", v, " (", why, ")");
  };
  // Generous upper bounds: reject lying headers before any allocation.
  if (c.dim <= 0 || c.dim > (1 << 16)) bad("dim", c.dim, "expected 1..65536");
  if (c.hidden_dim <= 0 || c.hidden_dim > (1 << 18)) bad("hidden_dim", c.hidden_dim, "expected 1..262144");
  if (c.n_layers <= 0 || c.n_layers > 1024) bad("n_layers", c.n_layers, "expected 1..1024");
  if (c.n_heads <= 0 || c.n_heads > c.dim) bad("n_heads", c.n_heads, "expected 1..dim");
  if (c.head_size < 0 || c.head_size > (1 << 14)) bad("head_dim", c.head_size, "expected 0 (dim / n_heads) or 1..16384");
  if (c.head_size == 0 && c.dim % c.n_heads) bad("n_heads", c.n_heads, "must divide dim");
  if ((int64_t)c.head_dim() * c.n_heads > (1 << 18)) bad("head_dim", c.head_dim(), "n_heads·head_dim exceeds 262144");
  if (c.n_kv_heads <= 0 || c.n_kv_heads > c.n_heads) bad("n_kv_heads", c.n_kv_heads, "expected 1..n_heads");
  if (c.n_heads % c.n_kv_heads) bad("n_kv_heads", c.n_kv_heads, "must divide n_heads");
  if (c.vocab_size <= 0 || c.vocab_size > (1 << 22)) bad("vocab_size", c.vocab_size, "expected 1..4194304");
  if (c.seq_len <= 0 || c.seq_len > (1 << 24)) bad("seq_len", c.seq_len, "expected 1..16777216");
  if (c.head_dim() % 2) bad("head_dim", c.head_dim(), "RoPE needs an even head dimension");
  if (c.sliding_window < 0 || c.sliding_window > (1 << 24)) bad("sliding_window", c.sliding_window, "expected 0..16777216");
  if (!c.swa_layers.empty() && (int)c.swa_layers.size() != c.n_layers)
    bad("swa_layers", (int64_t)c.swa_layers.size(), "one entry per layer expected");
  if (!c.swa_layers.empty() && c.sliding_window <= 0) bad("sliding_window", c.sliding_window, "sliding layers need a window > 0");
  auto nonneg = [&](const char* field, float v) {
    if (!(v >= 0.f) || !std::isfinite(v)) fail(what, ": invalid config field '", field, "' = ", v, " (expected a finite value >= 0)");
  };
  nonneg("rope_theta_swa", c.rope_theta_swa);
  nonneg("attn_scale", c.attn_scale);
  nonneg("attn_softcap", c.attn_softcap);
  nonneg("final_softcap", c.final_softcap);
  const ArchSpec& a = arch_spec(c.arch);  // a known architecture
  if (a.kind == BlockKind::LlamaMoe) {
    if (c.n_experts < 1 || c.n_experts > 4096) bad("n_experts", c.n_experts, "expected 1..4096");
    if (c.n_experts_used < 1 || c.n_experts_used > c.n_experts) bad("n_experts_used", c.n_experts_used, "expected 1..n_experts");
    if (c.expert_hidden <= 0 || c.expert_hidden > (1 << 18)) bad("expert_hidden", c.expert_hidden, "expected 1..262144");
    if (c.shared_hidden < 0 || c.shared_hidden > (1 << 18)) bad("shared_hidden", c.shared_hidden, "expected 0..262144");
    if (a.find("shared.gate") && c.shared_hidden == 0) bad("shared_hidden", 0, "this architecture has a shared expert");
    // Mixtral has no dense FFN: its configs (HF intermediate_size, GGUF feed_forward_length) state the experts' width.
    if (c.arch == "mixtral" && c.hidden_dim != c.expert_hidden) bad("hidden_dim", c.hidden_dim, "Mixtral's FFN width is its experts' (expert_hidden)");
  } else if (c.n_experts != 0) {
    bad("n_experts", c.n_experts, "a dense architecture has none");
  }
}

}  // namespace qf
