// The Llama forward pass (llama2.c semantics: RMSNorm eps 1e-5, interleaved-pair RoPE,
// grouped-query causal attention, SwiGLU MLP), full sequence, f32, OpenMP-parallel.
#include "model/forward.h"

#include "backend/backend.h"
#include "core/parallel.h"
#include "model/arch.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numbers>

namespace qf {

static void check_2d(const Tensor& t, int64_t cols, const char* what) {
  if (t.dim() != 2 || t.size(1) != cols || t.dtype() != DType::F32)
    fail(what, ": expected an f32 [N, ", cols, "] tensor, got ", dtype_name(t.dtype()), " ", shape_str(t.shape()));
}

void rmsnorm(const Tensor& x_, const Tensor& g_, float eps, Tensor& out) {
  const int64_t D = g_.numel();
  check_2d(x_, D, "rmsnorm input");
  const Tensor x = x_.contiguous(), g = g_.contiguous();
  const int64_t N = x.size(0);
  if (!out.defined() || out.shape() != x.shape()) out = Tensor::empty({N, D});
  backend().rmsnorm(x.f32(), N, D, g.f32(), eps, out.f32());
}

std::vector<float> rope_inv_freq(const ModelConfig& c, int head_dim) {
  const int half = head_dim / 2;
  std::vector<float> f(half);
  // Unscaled: llama2.c's f32 formula (bit-identical logits for llama2.c checkpoints).
  for (int i = 0; i < half; ++i) f[i] = 1.0f / std::pow(c.rope_theta, (float)(2 * i) / (float)head_dim);
  if (c.rope_scaling.empty()) return f;
  if (!(c.rope_factor > 0.f)) fail("rope: scaling '", c.rope_scaling, "' needs a positive factor, got ", c.rope_factor);
  if (c.rope_scaling == "linear") {  // positions / factor == frequencies / factor
    for (float& v : f) v /= c.rope_factor;
    return f;
  }
  if (c.rope_scaling == "llama3") {
    // Long wavelengths (> orig_ctx / low_freq_factor) are slowed by `factor`, short ones
    // (< orig_ctx / high_freq_factor) kept, the band between interpolated smoothly.
    const float lo = c.rope_low_freq_factor, hi = c.rope_high_freq_factor, ctx = (float)c.rope_orig_ctx;
    if (!(hi > lo) || !(lo > 0.f) || c.rope_orig_ctx <= 0)
      fail("rope: llama3 scaling needs 0 < low_freq_factor < high_freq_factor and a positive original context");
    const float lo_wl = ctx / lo, hi_wl = ctx / hi;
    for (float& v : f) {
      const float wl = 2.0f * std::numbers::pi_v<float> / v;
      if (wl < hi_wl) continue;
      if (wl > lo_wl) {
        v /= c.rope_factor;
        continue;
      }
      const float s = (ctx / wl - lo) / (hi - lo);
      v = (1.0f - s) * v / c.rope_factor + s * v;
    }
    return f;
  }
  fail("rope: unknown scaling '", c.rope_scaling, "' (expected linear or llama3)");
}

void rope(Tensor& x, int n_heads, int head_dim, int T, float theta, bool interleaved) {
  ModelConfig c;
  c.rope_theta = theta;
  rope(x, n_heads, head_dim, T, rope_inv_freq(c, head_dim), interleaved);
}

void rope(Tensor& x, int n_heads, int head_dim, int T, const std::vector<float>& inv_freq, bool interleaved) {
  rope_rotate(x, n_heads, head_dim, T, inv_freq, interleaved, false);
}

// Rotates (transpose = false) or applies the inverse rotation Rᵀ (the backward, transpose = true:
// the angle's sine negated, which is exact, so Rᵀ is bit-for-bit the rotation by −angle).
void rope_rotate(Tensor& x, int n_heads, int head_dim, int T, const std::vector<float>& inv_freq, bool interleaved,
                 bool transpose) {
  check_2d(x, (int64_t)n_heads * head_dim, "rope input");
  if (!x.is_contiguous()) fail("rope: input must be contiguous");
  if (head_dim % 2) fail("rope: head dimension ", head_dim, " is odd");
  const int64_t N = x.size(0);
  if (T <= 0 || N % T) fail("rope: ", N, " rows is not a whole number of ", T, "-token windows");
  const int half = head_dim / 2;
  if ((int)inv_freq.size() != half) fail("rope: ", inv_freq.size(), " frequencies for head dimension ", head_dim);
  backend().rope_rotate(x.f32(), N, n_heads, head_dim, T, inv_freq.data(), interleaved, transpose);
}

// Shapes checked against sh, then the backend's attention (both public forms).
static void attention_checked(const Tensor& q_, const Tensor& k_, const Tensor& v_, const AttentionShape& sh, Tensor& out) {
  const int64_t N = (int64_t)sh.B * sh.T, QW = (int64_t)sh.n_heads * sh.head_dim, KW = (int64_t)sh.n_kv_heads * sh.head_dim;
  check_2d(q_, QW, "attention q");
  check_2d(k_, KW, "attention k");
  check_2d(v_, KW, "attention v");
  if (q_.size(0) != N || k_.size(0) != N || v_.size(0) != N)
    fail("attention: q/k/v rows (", q_.size(0), ", ", k_.size(0), ", ", v_.size(0), ") != B·T = ", N);
  if (sh.n_kv_heads <= 0 || sh.n_heads % sh.n_kv_heads)
    fail("attention: n_heads ", sh.n_heads, " is not a multiple of n_kv_heads ", sh.n_kv_heads);
  const Tensor q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  if (!out.defined() || out.shape() != Shape{N, QW}) out = Tensor::empty({N, QW});
  backend().attention(q.f32(), k.f32(), v.f32(), sh, out.f32());
}

void attention(const Tensor& q, const Tensor& k, const Tensor& v, int B, int T, int n_heads, int n_kv_heads, int head_dim,
               Tensor& out) {
  attention_checked(q, k, v, AttentionShape{B, T, n_heads, n_kv_heads, head_dim}, out);
}

std::vector<float> layer_inv_freq(const ModelConfig& c, int layer) {
  if (!c.is_swa(layer) || c.rope_theta_swa <= 0.f) return rope_inv_freq(c, c.head_dim());
  ModelConfig local;
  local.rope_theta = c.rope_theta_swa;
  return rope_inv_freq(local, c.head_dim());
}

AttentionShape attention_shape(const ModelConfig& c, int layer, int B, int T) {
  AttentionShape s{B, T, c.n_heads, c.n_kv_heads, c.head_dim()};
  s.window = c.window(layer);
  s.scale = c.attn_scale;
  s.softcap = c.attn_softcap;
  return s;
}

void attention(const Tensor& q, const Tensor& k, const Tensor& v, const ModelConfig& c, int layer, int B, int T, Tensor& out) {
  attention_checked(q, k, v, attention_shape(c, layer, B, T), out);
}

Tensor head_rmsnorm(const Tensor& x, const Tensor& g, float eps) {
  const int64_t hd = g.numel();
  if (x.dim() != 2 || hd <= 0 || x.size(1) % hd) fail("head norm: input ", shape_str(x.shape()), " is not a whole number of heads of ", hd);
  Tensor out;
  rmsnorm(x.contiguous().view({x.size(0) * (x.size(1) / hd), hd}), g, eps, out);
  return out.view(x.shape());
}

void glu_forward(const ModelConfig& c, Tensor& g, const Tensor& u) {
  switch (arch_of(c).act) {
    case GluAct::Silu: backend().swiglu(g.f32(), u.f32(), g.numel(), g.f32()); return;
    case GluAct::GeluTanh: backend().geglu(g.f32(), u.f32(), g.numel(), g.f32()); return;
  }
}

void softcap_inplace(Tensor& x, float cap) {
  float* p = x.f32();
  const int64_t n = x.numel();
  const float inv = 1.0f / cap;
#pragma omp parallel for schedule(static) if (worth_parallel_stream(n * 8))
  for (int64_t i = 0; i < n; ++i) p[i] = cap * std::tanh(p[i] * inv);
}

Tensor linear_forward(const Tensor& x, const Linear& lin) { return std::move(linear_forward(x, {&lin})[0]); }

std::vector<Tensor> linear_forward(const Tensor& x_, const std::vector<const Linear*>& lins) {
  std::vector<Tensor> W(lins.size()), y(lins.size());
  std::vector<GemmRowsJob> jobs(lins.size());
  const Tensor x = x_.contiguous();
  for (size_t i = 0; i < lins.size(); ++i) {
    const Linear& lin = *lins[i];
    W[i] = lin.weight.contiguous();
    if (W[i].dim() != 2 || W[i].dtype() != DType::F32)
      fail("linear '", lin.name, "': weight must be an f32 matrix, got ", shape_str(W[i].shape()));
    const int64_t in = W[i].size(1), outf = W[i].size(0);
    if (x.dim() != 2 || x.size(1) != in)
      fail("linear '", lin.name, "': input ", shape_str(x.shape()), " does not match weight ", shape_str(W[i].shape()));
    if (lin.bias.defined() && lin.bias.numel() != outf)
      fail("linear '", lin.name, "': bias has ", lin.bias.numel(), " elements, expected ", outf);
    y[i] = Tensor::empty({x.size(0), outf});
    jobs[i] = GemmRowsJob{x.f32(), W[i].f32(), outf, in, /*w_transposed=*/true, y[i].f32(), /*accumulate=*/false};
  }
  const int64_t N = x.size(0);
  // Fixed 64-row chunks: the same bits for 1 or N threads.
  backend().gemm_rows_batch(N, jobs.data(), (int)jobs.size());
  for (size_t i = 0; i < lins.size(); ++i) {
    if (!lins[i]->bias.defined()) continue;
    const int64_t outf = W[i].size(0);
    const std::vector<float> b = lins[i]->bias.to_vector();
    float* yp = y[i].f32();
#pragma omp parallel for schedule(static) if (worth_parallel_stream(N * outf))
    for (int64_t r = 0; r < N; ++r)
      for (int64_t j = 0; j < outf; ++j) yp[r * outf + j] += b[j];
  }
  return y;
}

// Gemma: × √dim as an f32 constant, as transformers and llama.cpp compute it.
float embed_scale(const ModelConfig& c) { return arch_of(c).embed_scaled ? (float)std::sqrt((double)c.dim) : 1.f; }

Tensor embed(const Model& m, const std::vector<int32_t>& tokens) {
  const int64_t D = m.cfg.dim, V = m.tok_emb.size(0);
  Tensor x = Tensor::empty({(int64_t)tokens.size(), D});
  const Tensor E = m.tok_emb.contiguous();
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= V) fail("token id ", tokens[i], " at position ", i + 1, " is outside the vocabulary [0, ", V, ")");
    std::memcpy(x.f32() + i * D, E.f32() + (int64_t)tokens[i] * D, D * sizeof(float));
  }
  if (const float s = embed_scale(m.cfg); s != 1.f) {
    float* p = x.f32();
    for (int64_t i = 0; i < x.numel(); ++i) p[i] *= s;
  }
  return x;
}

static void add_inplace(Tensor& a, const Tensor& b) { backend().add_inplace(a.f32(), b.f32(), a.numel()); }

// ---- Mixture of experts (docs/architecture.md#mixture-of-experts) ----

MoeRouting moe_route(const ModelConfig& c, const Tensor& logits_) {
  const int E = c.n_experts, K = c.n_experts_used;
  if (logits_.dim() != 2 || logits_.size(1) != E) fail("moe_route: router logits ", shape_str(logits_.shape()), " are not [N, ", E, "]");
  const Tensor logits = logits_.contiguous();
  const int64_t N = logits.size(0);
  MoeRouting r;
  r.k = K;
  r.expert.resize(N * K);
  r.weight.resize(N * K);
  const float* L = logits.f32();
#pragma omp parallel for schedule(static) if (worth_parallel_stream(N * E * 8))
  for (int64_t t = 0; t < N; ++t) {
    // Softmax over every expert in f32 (its sum in f64), then the k largest probabilities,
    // ties to the lower expert; moe_norm_topk: the k weights divided by their sum.
    const float* l = L + t * E;
    float mx = l[0];
    for (int e = 1; e < E; ++e) mx = std::max(mx, l[e]);
    std::vector<float> p(E);
    double sum = 0;
    for (int e = 0; e < E; ++e) sum += (p[e] = std::exp(l[e] - mx));
    for (int e = 0; e < E; ++e) p[e] = (float)(p[e] / sum);
    std::vector<int> order(E);
    for (int e = 0; e < E; ++e) order[e] = e;
    std::partial_sort(order.begin(), order.begin() + K, order.end(),
                      [&](int a, int b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
    float ks = 0;
    for (int j = 0; j < K; ++j) ks += p[order[j]];
    for (int j = 0; j < K; ++j) {
      r.expert[t * K + j] = order[j];
      r.weight[t * K + j] = c.moe_norm_topk ? p[order[j]] / ks : p[order[j]];
    }
  }
  return r;
}

ExpertRows expert_rows(const MoeRouting& r, int n_experts) {
  ExpertRows er;
  er.rows.resize(n_experts);
  er.slot.resize(n_experts);
  const int64_t N = r.k ? (int64_t)r.expert.size() / r.k : 0;
  for (int64_t t = 0; t < N; ++t)
    for (int j = 0; j < r.k; ++j) {
      er.rows[r.expert[t * r.k + j]].push_back(t);
      er.slot[r.expert[t * r.k + j]].push_back(j);
    }
  return er;
}

Tensor take_rows(const Tensor& x, const std::vector<int64_t>& idx) {
  const int64_t n = (int64_t)idx.size(), c = x.size(1);
  Tensor out = Tensor::empty({n, c});
#pragma omp parallel for schedule(static) if (worth_parallel_stream(n * c))
  for (int64_t i = 0; i < n; ++i) std::memcpy(out.f32() + i * c, x.f32() + idx[i] * c, sizeof(float) * c);
  return out;
}

Tensor moe_ffn_forward(const ModelConfig& c, const Block& blk, const Tensor& xn_, const SiteObserver& obs, bool all_experts) {
  const Tensor xn = xn_.contiguous();
  const int64_t N = xn.size(0), D = c.dim;
  const MoeRouting r = moe_route(c, linear_forward(xn, blk.linear("router")));
  Tensor out = Tensor::empty({N, D});
  float* o = out.f32();
  // Experts in ascending order, each on the rows routed to it (ascending token order); a token's
  // k contributions are added to its row in expert order, the same for any thread count.
  const ExpertRows er = expert_rows(r, c.n_experts);
  for (int e = 0; e < c.n_experts; ++e) {
    const std::vector<int64_t>& idx = er.rows[e];
    if (idx.empty() && !(all_experts && obs)) continue;
    const int64_t n = (int64_t)idx.size();
    const std::string pre = "experts." + std::to_string(e) + ".";
    const Linear &gate = blk.linear(pre + "gate"), &up = blk.linear(pre + "up"), &down = blk.linear(pre + "down");
    Tensor ye;               // the expert's output on its routed rows, in idx order
    if (all_experts && obs) {  // every token through the expert for its statistics; the routed rows kept
      std::vector<Tensor> gu = linear_forward(xn, {&gate, &up});
      obs(SiteKey(Site::ExpertIn, e), xn);
      glu_forward(c, gu[0], gu[1]);
      obs(SiteKey(Site::ExpertMid, e), gu[0]);
      ye = take_rows(linear_forward(gu[0], down), idx);
    } else {
      const Tensor xe = take_rows(xn, idx);
      std::vector<Tensor> gu = linear_forward(xe, {&gate, &up});
      if (obs) obs(SiteKey(Site::ExpertIn, e), xe);
      glu_forward(c, gu[0], gu[1]);
      if (obs) obs(SiteKey(Site::ExpertMid, e), gu[0]);
      ye = linear_forward(gu[0], down);
    }
    const float* y = ye.f32();
#pragma omp parallel for schedule(static) if (worth_parallel_stream(n * D))
    for (int64_t i = 0; i < n; ++i) {
      const float w = r.weight[idx[i] * r.k + er.slot[e][i]];
      float* dst = o + idx[i] * D;
      for (int64_t d = 0; d < D; ++d) dst[d] += w * y[i * D + d];
    }
  }
  if (c.shared_hidden > 0) {  // Qwen2-MoE: every token through the shared expert, scaled by sigmoid(shared_gate·x)
    std::vector<Tensor> gu = linear_forward(xn, {&blk.linear("shared.gate"), &blk.linear("shared.up")});
    glu_forward(c, gu[0], gu[1]);
    if (obs) obs(SiteKey(Site::SharedMid), gu[0]);
    Tensor s = linear_forward(gu[0], blk.linear("shared.down"));
    const Tensor g = linear_forward(xn, blk.linear("shared_gate"));  // [N, 1]
    const float* gp = g.f32();
    float* sp = s.f32();
#pragma omp parallel for schedule(static) if (worth_parallel_stream(N * D))
    for (int64_t t = 0; t < N; ++t) {
      const float sg = 1.0f / (1.0f + std::exp(-gp[t]));
      for (int64_t d = 0; d < D; ++d) o[t * D + d] += sg * sp[t * D + d];
    }
  }
  return out;
}

Tensor block_forward(const Model& m, int layer, const Tensor& x, int B, int T, const SiteObserver& obs, bool moe_all_experts) {
  const ModelConfig& c = m.cfg;
  if (layer < 0 || layer >= (int)m.blocks.size()) fail("block ", layer + 1, " out of range (model has ", m.blocks.size(), " blocks, numbered from 1)");
  check_2d(x, c.dim, "block input");
  if (x.size(0) != (int64_t)B * T) fail("block input has ", x.size(0), " rows, expected B·T = ", (int64_t)B * T);
  const Block& blk = m.block(layer);
  const int hd = c.head_dim();

  Tensor xn;
  rmsnorm(x, blk.attn_norm, c.norm_eps, xn);
  if (obs) obs(Site::AttnIn, xn);
  std::vector<Tensor> qkv = linear_forward(xn, {&blk.linear("q"), &blk.linear("k"), &blk.linear("v")});
  Tensor q = std::move(qkv[0]), k = std::move(qkv[1]), v = std::move(qkv[2]);
  if (blk.q_norm.defined()) q = head_rmsnorm(q, blk.q_norm, c.norm_eps);
  if (blk.k_norm.defined()) k = head_rmsnorm(k, blk.k_norm, c.norm_eps);
  const std::vector<float> inv_freq = layer_inv_freq(c, layer);
  rope(q, c.n_heads, hd, T, inv_freq, c.rope_interleaved);
  rope(k, c.n_kv_heads, hd, T, inv_freq, c.rope_interleaved);
  Tensor att;
  attention(q, k, v, c, layer, B, T, att);
  if (obs) obs(Site::AttnOut, att);
  Tensor h = x.clone();
  Tensor a = linear_forward(att, blk.linear("o"));
  if (blk.post_attn_norm.defined()) rmsnorm(Tensor(a), blk.post_attn_norm, c.norm_eps, a);
  add_inplace(h, a);

  rmsnorm(h, blk.ffn_norm, c.norm_eps, xn);
  if (obs) obs(Site::FfnIn, xn);
  if (arch_of(c).kind == BlockKind::LlamaMoe) {
    Tensor f = moe_ffn_forward(c, blk, xn, obs, moe_all_experts);
    if (blk.post_ffn_norm.defined()) rmsnorm(Tensor(f), blk.post_ffn_norm, c.norm_eps, f);
    add_inplace(h, f);
    return h;
  }
  std::vector<Tensor> gu = linear_forward(xn, {&blk.linear("gate"), &blk.linear("up")});
  Tensor g = std::move(gu[0]);
  const Tensor u = std::move(gu[1]);
  glu_forward(c, g, u);  // act(gate)·up, in place
  if (obs) obs(Site::FfnMid, g);
  Tensor f = linear_forward(g, blk.linear("down"));
  if (blk.post_ffn_norm.defined()) rmsnorm(Tensor(f), blk.post_ffn_norm, c.norm_eps, f);
  add_inplace(h, f);
  return h;
}

Tensor head_forward(const Model& m, const Tensor& x) {
  Tensor xn;
  rmsnorm(x, m.final_norm, m.cfg.norm_eps, xn);
  Linear cls;
  cls.name = "classifier";
  cls.weight = m.classifier;
  Tensor logits = linear_forward(xn, cls);
  if (m.cfg.final_softcap > 0.f) softcap_inplace(logits, m.cfg.final_softcap);
  return logits;
}

Tensor forward(const Model& m, const std::vector<int32_t>& tokens, int B, int T) {
  if (B <= 0 || T <= 0 || (int64_t)tokens.size() != (int64_t)B * T)
    fail("forward: ", tokens.size(), " tokens is not B·T = ", B, "·", T);
  Tensor x = embed(m, tokens);
  for (int l = 0; l < m.n_blocks(); ++l) {
    x = block_forward(m, l, x, B, T);
    m.release_block(l);  // lazy models stream: one converted block at a time
  }
  return head_forward(m, x);
}

}  // namespace qf
