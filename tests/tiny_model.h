// qforge tests — a tiny random Llama model (dim 16, hidden 24, 4 heads / 2 kv heads, head_dim
// 4, 2 layers by default, vocab 11, context 8) for finite-difference and brute-force checks.
#pragma once
#include <cmath>

#include "model/model.h"
#include "core/rng.h"

namespace qf::test {

inline Tensor randn_tensor(Rng& rng, const Shape& s, double sd = 1.0, double mean = 0.0) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  std::vector<float> v((size_t)n);
  for (auto& e : v) e = (float)(mean + sd * rng.normal());
  return Tensor::from_data(s, v);
}

inline Model tiny_model(uint64_t seed, bool interleaved = true, bool qkv_bias = false, bool tied = true,
                        int n_layers = 2, int dim = 16, int hidden_dim = 24) {
  Model m;
  ModelConfig& c = m.cfg;
  c.dim = dim;
  c.hidden_dim = hidden_dim;
  c.n_layers = n_layers;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.vocab_size = 11;
  c.seq_len = 8;
  c.rope_interleaved = interleaved;
  c.tied_classifier = tied;
  validate_config(c, "tiny model");
  Rng rng(seed);
  auto mk = [&](Shape s, double sd, double mean = 0.0) { return randn_tensor(rng, s, sd, mean); };
  const int64_t D = c.dim, F = c.hidden_dim, QW = c.n_heads * c.head_dim(), KW = c.kv_dim();
  m.tok_emb = mk({c.vocab_size, D}, 1.0);
  for (int l = 0; l < c.n_layers; ++l) {
    Block b;
    b.attn_norm = mk({D}, 0.2, 1.0);
    b.ffn_norm = mk({D}, 0.2, 1.0);
    const int64_t shapes[7][2] = {{QW, D}, {KW, D}, {KW, D}, {D, QW}, {F, D}, {F, D}, {D, F}};
    for (int i = 0; i < 7; ++i) {
      Linear lin;
      lin.name = kLlama.linears[i].name;
      lin.input = kLlama.linears[i].input;
      lin.weight = mk({shapes[i][0], shapes[i][1]}, 1.0 / std::sqrt((double)shapes[i][1]));
      if (qkv_bias && i < 3) lin.bias = mk({shapes[i][0]}, 0.3);
      b.linears.push_back(std::move(lin));
    }
    m.blocks.push_back(std::move(b));
  }
  m.final_norm = mk({D}, 0.2, 1.0);
  m.classifier = tied ? m.tok_emb : mk({c.vocab_size, D}, 0.5);
  return m;
}

}  // namespace qf::test
