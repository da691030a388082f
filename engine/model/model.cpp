#include "model/model.h"

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

Tensor& Block::norm(const std::string& name) {
  if (name == "attn_norm" || name == "rms_att") return attn_norm;
  if (name == "ffn_norm" || name == "rms_ffn") return ffn_norm;
  fail("unknown norm '", name, "' (expected attn_norm or ffn_norm)");
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
    const Block& b = block(i);
    Block nb;
    nb.attn_norm = b.attn_norm.clone();
    nb.ffn_norm = b.ffn_norm.clone();
    for (const Linear& l : b.linears) {
      Linear nl = l;
      nl.weight = l.weight.clone();
      if (l.bias.defined()) nl.bias = l.bias.clone();
      nb.linears.push_back(std::move(nl));
    }
    m.blocks.push_back(std::move(nb));
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
    n += b.attn_norm.numel() + b.ffn_norm.numel();
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
  if (c.dim % c.n_heads) bad("n_heads", c.n_heads, "must divide dim");
  if (c.n_kv_heads <= 0 || c.n_kv_heads > c.n_heads) bad("n_kv_heads", c.n_kv_heads, "expected 1..n_heads");
  if (c.n_heads % c.n_kv_heads) bad("n_kv_heads", c.n_kv_heads, "must divide n_heads");
  if (c.vocab_size <= 0 || c.vocab_size > (1 << 22)) bad("vocab_size", c.vocab_size, "expected 1..4194304");
  if (c.seq_len <= 0 || c.seq_len > (1 << 24)) bad("seq_len", c.seq_len, "expected 1..16777216");
  if (c.rope_interleaved && c.head_dim() % 2) bad("head_dim", c.head_dim(), "RoPE needs an even head dimension");
}

}  // namespace qf
