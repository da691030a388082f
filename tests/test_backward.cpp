// Backward pass: every op's gradient against central finite differences of a scalar loss
// L = Σ r ⊙ out (r random), computed in f64 with a plain-loop reference forward written
// here; the reference forward is first checked against qforge's f32 forward. Then the whole
// block, the head with cross-entropy, the whole model, the real stories260K model, causal
// masking, and bit-identical gradients for 1 and 2 threads.
//
// Errors are reported as max_i |analytic_i − numeric_i| / max(|numeric_i|, 1e-3·max_j |numeric_j|):
// relative per entry, with a floor so entries that are ~0 compare on the scale of the rest.
#include <doctest/doctest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <functional>

#include "model/backward.h"
#include "model/forward.h"
#include "formats/loader_llama2c.h"
#include "core/rng.h"
#include "ref_llama.h"
#include "tiny_model.h"

using namespace qf;

static const std::string kShared = QF_SHARED_DIR;
using qf::test::Vec;
using qf::test::ref_attention;
using qf::test::ref_linear;
using qf::test::ref_rmsnorm;
using qf::test::ref_rope;
using qf::test::ref_swiglu;
using qf::test::to_vec;

// ---------------------------------------------------------------- helpers

static Tensor to_tensor(const Vec& v, const Shape& s) { return Tensor::from_data(s, std::vector<float>(v.begin(), v.end())); }
static Vec randn(Rng& rng, size_t n, double sd = 1.0, double mean = 0.0) {
  Vec v(n);
  for (auto& e : v) e = mean + sd * rng.normal();
  return v;
}
// Round to f32 so a Vec and its Tensor copy hold exactly the same numbers.
static Vec randn32(Rng& rng, size_t n, double sd = 1.0, double mean = 0.0) {
  Vec v = randn(rng, n, sd, mean);
  for (auto& e : v) e = (double)(float)e;
  return v;
}
static double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}
// max |a − b| / max |b|
static double max_rel_diff(const Vec& a, const Vec& b) {
  double d = 0, s = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    d = std::max(d, std::abs(a[i] - b[i]));
    s = std::max(s, std::abs(b[i]));
  }
  return d / std::max(s, 1e-300);
}

struct GradErr {
  std::vector<double> a, n;
  void add(double analytic, double numeric) {
    a.push_back(analytic);
    n.push_back(numeric);
  }
  double rel() const {
    double scale = 0, worst = 0;
    for (double v : n) scale = std::max(scale, std::abs(v));
    for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - n[i]) / std::max(std::abs(n[i]), 1e-3 * scale));
    return worst;
  }
};

// Central difference of loss() w.r.t. p[i] for every i (or `count` random i), against analytic[i].
static GradErr fd_check(Vec& p, const std::vector<float>& analytic, const std::function<double()>& loss,
                        Rng* pick = nullptr, int count = 0) {
  REQUIRE(analytic.size() == p.size());
  GradErr e;
  const int n = pick ? count : (int)p.size();
  for (int c = 0; c < n; ++c) {
    const size_t i = pick ? (size_t)pick->randint(0, (int64_t)p.size() - 1) : (size_t)c;
    const double p0 = p[i], h = 1e-5 * std::max(1.0, std::abs(p0));
    p[i] = p0 + h;
    const double lp = loss();
    p[i] = p0 - h;
    const double lm = loss();
    p[i] = p0;
    e.add(analytic[i], (lp - lm) / (2 * h));
  }
  return e;
}
static void report(const std::string& what, const GradErr& e, double tol = 1e-3) {
  MESSAGE(what << ": max rel error " << e.rel() << " over " << e.a.size() << " entries");
  CHECK(e.rel() < tol);
}

// ---------------------------------------------------------------- f64 reference forward

struct RefCfg {
  int dim, hidden, H, KVH, hd;
  double eps;
  Vec freq;  // RoPE frequency per pair
  bool inter;
};
// θ^(−2i/hd) in f64
static Vec ref_freqs(int hd, double theta) {
  Vec f(hd / 2);
  for (int i = 0; i < hd / 2; ++i) f[i] = std::pow(theta, -2.0 * i / hd);
  return f;
}
static RefCfg ref_cfg(const ModelConfig& c) {
  // With RoPE scaling, take the engine's scaled frequencies (the scaling formula is the
  // forward's to test); unscaled ones are recomputed here in f64.
  const std::vector<float> scaled = rope_inv_freq(c, c.head_dim());
  const Vec freq = c.rope_scaling.empty() ? ref_freqs(c.head_dim(), c.rope_theta) : Vec(scaled.begin(), scaled.end());
  return {c.dim, c.hidden_dim, c.n_heads, c.n_kv_heads, c.head_dim(), (double)c.norm_eps, freq, c.rope_interleaved};
}




struct RefLin {
  int out = 0, in = 0;
  Vec w, b;
};
static RefLin ref_lin(const Linear& l) {
  RefLin r{(int)l.out_features(), (int)l.in_features(), to_vec(l.weight), {}};
  if (l.bias.defined()) r.b = to_vec(l.bias);
  return r;
}
static Vec ref_linear(const Vec& x, const RefLin& l) { return ref_linear(x, l.w, l.b, l.out, l.in); }

struct RefBlock {
  Vec g1, g2;
  RefLin lin[7];  // kLlama.linears order: q k v o gate up down
};
static RefBlock ref_block_of(const Block& b) {
  RefBlock r{to_vec(b.attn_norm), to_vec(b.ffn_norm), {}};
  for (int i = 0; i < 7; ++i) r.lin[i] = ref_lin(b.linear(kLlama.linears[i].name));
  return r;
}
static Vec ref_block_forward(const RefCfg& c, const RefBlock& rb, const Vec& x, int B, int T) {
  const Vec xn = ref_rmsnorm(x, rb.g1, c.eps);
  const Vec q = ref_rope(ref_linear(xn, rb.lin[0]), c.H, c.hd, T, c.freq, c.inter);
  const Vec k = ref_rope(ref_linear(xn, rb.lin[1]), c.KVH, c.hd, T, c.freq, c.inter);
  const Vec v = ref_linear(xn, rb.lin[2]);
  const Vec o = ref_linear(ref_attention(q, k, v, B, T, c.H, c.KVH, c.hd), rb.lin[3]);
  Vec h = x;
  for (size_t i = 0; i < h.size(); ++i) h[i] += o[i];
  const Vec xn2 = ref_rmsnorm(h, rb.g2, c.eps);
  const Vec d = ref_linear(ref_swiglu(ref_linear(xn2, rb.lin[4]), ref_linear(xn2, rb.lin[5])), rb.lin[6]);
  for (size_t i = 0; i < h.size(); ++i) h[i] += d[i];
  return h;
}

struct RefModel {
  RefCfg c;
  int V;
  Vec emb, fnorm, cls;  // cls empty when tied (the classifier is emb)
  std::vector<RefBlock> blocks;
};
static RefModel ref_model_of(const Model& m) {
  RefModel r{ref_cfg(m.cfg), m.cfg.vocab_size, to_vec(m.tok_emb), to_vec(m.final_norm), {}, {}};
  if (!m.cfg.tied_classifier) r.cls = to_vec(m.classifier);
  for (int l = 0; l < m.n_blocks(); ++l) r.blocks.push_back(ref_block_of(m.block(l)));
  return r;
}
// final normalized hidden states [N, dim]
static Vec ref_hidden(const RefModel& rm, const std::vector<int32_t>& tok, int B, int T) {
  const int D = rm.c.dim;
  Vec x(tok.size() * D);
  for (size_t i = 0; i < tok.size(); ++i)
    for (int j = 0; j < D; ++j) x[i * D + j] = rm.emb[(size_t)tok[i] * D + j];
  for (const RefBlock& b : rm.blocks) x = ref_block_forward(rm.c, b, x, B, T);
  return ref_rmsnorm(x, rm.fnorm, rm.c.eps);
}
// mean cross-entropy of rows with target >= 0, from normalized hidden states
static double ref_ce(const RefModel& rm, const Vec& hn, const std::vector<int32_t>& targets) {
  const int D = rm.c.dim;
  const Vec& W = rm.cls.empty() ? rm.emb : rm.cls;
  double loss = 0;
  int count = 0;
  for (size_t i = 0; i < targets.size(); ++i) {
    if (targets[i] < 0) continue;
    Vec l(rm.V);
    double mx = -1e300, se = 0;
    for (int v = 0; v < rm.V; ++v) {
      double s = 0;
      for (int j = 0; j < D; ++j) s += hn[i * D + j] * W[(size_t)v * D + j];
      mx = std::max(mx, l[v] = s);
    }
    for (int v = 0; v < rm.V; ++v) se += std::exp(l[v] - mx);
    loss += std::log(se) + mx - l[targets[i]];
    ++count;
  }
  return loss / count;
}
static std::vector<int32_t> next_targets(const std::vector<int32_t>& tok, int B, int T) {
  std::vector<int32_t> t(tok.size(), -1);
  for (int b = 0; b < B; ++b)
    for (int i = 0; i + 1 < T; ++i) t[(size_t)b * T + i] = tok[(size_t)b * T + i + 1];
  return t;
}

// ---------------------------------------------------------------- the tiny random model

using qf::test::tiny_model;  // tests/tiny_model.h

static const Model& stories() {
  static Model m = load_llama2c(kShared + "/models/stories260K/stories260K.bin");
  return m;
}

// ---------------------------------------------------------------- op tests

TEST_CASE("rmsnorm backward: dx and dg against f64 finite differences") {
  Rng rng(1);
  const int N = 5, D = 16;
  Vec x = randn32(rng, N * D, 1.5), g = randn32(rng, D, 0.3, 1.0);
  const Vec r = randn32(rng, N * D);
  Tensor out;
  rmsnorm(to_tensor(x, {N, D}), to_tensor(g, {D}), 1e-5f, out);
  CHECK(max_rel_diff(to_vec(out), ref_rmsnorm(x, g, 1e-5)) < 1e-6);
  RmsnormGrads gr = rmsnorm_backward(to_tensor(x, {N, D}), to_tensor(g, {D}), 1e-5f, to_tensor(r, {N, D}));
  auto L = [&] { return dot(r, ref_rmsnorm(x, g, 1e-5)); };
  report("rmsnorm dx", fd_check(x, gr.dx.to_vector(), L));
  report("rmsnorm dg", fd_check(g, gr.dg.to_vector(), L));
  CHECK(!rmsnorm_backward(to_tensor(x, {N, D}), to_tensor(g, {D}), 1e-5f, to_tensor(r, {N, D}), false).dg.defined());
  CHECK_THROWS_WITH_AS(rmsnorm_backward(to_tensor(x, {N, D}), to_tensor(g, {D}), 1e-5f, Tensor::empty({N, D + 1})),
                       doctest::Contains("rmsnorm_backward gradient"), Error);
}

TEST_CASE("rope backward is the inverse rotation, both layouts") {
  Rng rng(2);
  const int B = 2, T = 8, H = 3, hd = 6;
  for (bool inter : {true, false})
    for (float theta : {10000.f, 50.f}) {
      Vec x = randn32(rng, B * T * H * hd);
      const Vec r = randn32(rng, B * T * H * hd);
      Tensor xt = to_tensor(x, {B * T, H * hd});
      rope(xt, H, hd, T, theta, inter);
      CHECK(max_rel_diff(to_vec(xt), ref_rope(x, H, hd, T, ref_freqs(hd, theta), inter)) < 1e-5);
      rope_backward(xt, H, hd, T, theta, inter);  // Rᵀ R x = x
      CHECK(max_rel_diff(to_vec(xt), x) < 1e-6);
      Tensor dx = to_tensor(r, {B * T, H * hd});
      rope_backward(dx, H, hd, T, theta, inter);
      report(inter ? "rope (interleaved) dx" : "rope (halves) dx",
             fd_check(x, dx.to_vector(), [&] { return dot(r, ref_rope(x, H, hd, T, ref_freqs(hd, theta), inter)); }));
    }
  // the frequency-table form (scaled frequencies) is the same inverse rotation
  const std::vector<float> f = {0.7f, 0.05f, 0.001f};
  Vec x = randn32(rng, B * T * H * hd);
  Tensor xt = to_tensor(x, {B * T, H * hd});
  rope(xt, H, hd, T, f, false);
  CHECK(max_rel_diff(to_vec(xt), ref_rope(x, H, hd, T, Vec(f.begin(), f.end()), false)) < 1e-5);
  rope_backward(xt, H, hd, T, f, false);
  CHECK(max_rel_diff(to_vec(xt), x) < 1e-6);
  CHECK_THROWS_WITH_AS(rope_backward(xt, H, hd, T, std::vector<float>{1.f}, false), doctest::Contains("1 frequencies for head dimension 6"), Error);
}

static void check_attention(int B, int T, int H, int KVH, int hd, uint64_t seed, int sample) {
  Rng rng(seed), pick(seed + 100);
  const int QW = H * hd, KW = KVH * hd, N = B * T;
  Vec q = randn32(rng, N * QW), k = randn32(rng, N * KW), v = randn32(rng, N * KW);
  const Vec r = randn32(rng, N * QW);
  Tensor out;
  attention(to_tensor(q, {N, QW}), to_tensor(k, {N, KW}), to_tensor(v, {N, KW}), B, T, H, KVH, hd, out);
  CHECK(max_rel_diff(to_vec(out), ref_attention(q, k, v, B, T, H, KVH, hd)) < 1e-5);
  AttentionGrads g = attention_backward(to_tensor(q, {N, QW}), to_tensor(k, {N, KW}), to_tensor(v, {N, KW}), B, T, H,
                                        KVH, hd, to_tensor(r, {N, QW}));
  auto L = [&] { return dot(r, ref_attention(q, k, v, B, T, H, KVH, hd)); };
  Rng* p = sample ? &pick : nullptr;
  const std::string tag = "attention T=" + std::to_string(T) + " ";
  report(tag + "dq", fd_check(q, g.dq.to_vector(), L, p, sample));
  report(tag + "dk", fd_check(k, g.dk.to_vector(), L, p, sample));
  report(tag + "dv", fd_check(v, g.dv.to_vector(), L, p, sample));
}

TEST_CASE("attention backward: causal GQA against f64 finite differences") {
  check_attention(2, 8, 4, 2, 4, 3, 0);    // every entry
  check_attention(1, 300, 2, 1, 3, 4, 40);  // three query blocks of the blocked kernel, sampled entries
}

TEST_CASE("attention backward: no gradient flows from future positions") {
  Rng rng(5);
  const int B = 2, T = 150, H = 4, KVH = 2, hd = 4, QW = H * hd, KW = KVH * hd, N = B * T, t = 140;
  Vec q = randn32(rng, N * QW), k = randn32(rng, N * KW), v = randn32(rng, N * KW), dy = randn32(rng, N * QW);
  auto run = [&] {
    return attention_backward(to_tensor(q, {N, QW}), to_tensor(k, {N, KW}), to_tensor(v, {N, KW}), B, T, H, KVH, hd,
                              to_tensor(dy, {N, QW}));
  };
  const AttentionGrads a = run();
  // change everything at positions > t: dq of tokens <= t must not move by a bit
  for (int b = 0; b < B; ++b)
    for (int i = t + 1; i < T; ++i) {
      for (int c = 0; c < QW; ++c) q[(size_t)(b * T + i) * QW + c] += 1.0, dy[(size_t)(b * T + i) * QW + c] -= 0.5;
      for (int c = 0; c < KW; ++c) k[(size_t)(b * T + i) * KW + c] *= -2.0, v[(size_t)(b * T + i) * KW + c] += 3.0;
    }
  const AttentionGrads c = run();
  for (int b = 0; b < B; ++b)
    CHECK(std::memcmp(a.dq.f32() + (size_t)b * T * QW, c.dq.f32() + (size_t)b * T * QW, (size_t)(t + 1) * QW * 4) == 0);
  // a gradient only at output row t reaches no q, k or v row after t
  std::fill(dy.begin(), dy.end(), 0.0);
  for (int col = 0; col < QW; ++col) dy[(size_t)t * QW + col] = 1.0;
  const AttentionGrads d = run();
  double future = 0;
  for (int i = t + 1; i < N; ++i) {
    for (int col = 0; col < QW; ++col) future += std::abs(d.dq.get({i, col}));
    for (int col = 0; col < KW; ++col) future += std::abs(d.dk.get({i, col})) + std::abs(d.dv.get({i, col}));
  }
  CHECK(future == 0.0);
  CHECK(std::abs(d.dk.get({0, 0})) > 0);
}

TEST_CASE("linear backward with bias: dx, dW, db") {
  Rng rng(6);
  const int N = 7, in = 5, out = 3;
  Vec x = randn32(rng, N * in), w = randn32(rng, out * in), b = randn32(rng, out);
  const Vec r = randn32(rng, N * out);
  Linear lin;
  lin.name = "probe";
  lin.weight = to_tensor(w, {out, in});
  lin.bias = to_tensor(b, {out});
  const LinearGrads g = linear_backward(to_tensor(x, {N, in}), lin, to_tensor(r, {N, out}));
  RefLin rl{out, in, w, b};
  auto L = [&] {
    rl.w = w;
    rl.b = b;
    return dot(r, ref_linear(x, rl));
  };
  CHECK(max_rel_diff(to_vec(linear_forward(to_tensor(x, {N, in}), lin)), ref_linear(x, rl)) < 1e-6);
  report("linear dx", fd_check(x, g.dx.to_vector(), L));
  report("linear dW", fd_check(w, g.dW.to_vector(), L));
  report("linear db", fd_check(b, g.db.to_vector(), L));
  const LinearGrads only_dx = linear_backward(to_tensor(x, {N, in}), lin, to_tensor(r, {N, out}), true, false);
  CHECK((!only_dx.dW.defined() && !only_dx.db.defined()));
  CHECK_THROWS_WITH_AS(linear_backward(to_tensor(x, {N, in}), lin, Tensor::empty({N, out + 1})),
                       doctest::Contains("linear_backward 'probe': gradient [7, 4]"), Error);
}

TEST_CASE("swiglu backward against f64 finite differences") {
  Rng rng(7);
  const int N = 6, F = 5;
  Vec a = randn32(rng, N * F, 2.5), u = randn32(rng, N * F);
  const Vec r = randn32(rng, N * F);
  CHECK(max_rel_diff(to_vec(swiglu(to_tensor(a, {N, F}), to_tensor(u, {N, F}))), ref_swiglu(a, u)) < 1e-6);
  const SwigluGrads g = swiglu_backward(to_tensor(a, {N, F}), to_tensor(u, {N, F}), to_tensor(r, {N, F}));
  auto L = [&] { return dot(r, ref_swiglu(a, u)); };
  report("swiglu d gate", fd_check(a, g.da.to_vector(), L));
  report("swiglu d up", fd_check(u, g.du.to_vector(), L));
}

TEST_CASE("embedding backward scatter-adds rows, repeated ids included") {
  const std::vector<int32_t> tok = {3, 1, 3, 0, 3};
  Tensor dx = Tensor::empty({5, 2});
  for (int i = 0; i < 5; ++i) dx.set({i, 0}, (float)(i + 1)), dx.set({i, 1}, -(float)i);
  Tensor dE = Tensor::full({4, 2}, 1.f);
  embed_backward(tok, dx, dE);
  CHECK(dE.to_vector() == std::vector<float>{1 + 4, 1 - 3, 1 + 2, 1 - 1, 1, 1, 1 + 1 + 3 + 5, 1 - 0 - 2 - 4});
  CHECK_THROWS_WITH_AS(embed_backward({3, 1, 3, 9, 3}, dx, dE), doctest::Contains("token id 9 at position 4"), Error);
}

// ---------------------------------------------------------------- block

static void check_block(const Model& m, int layer, int B, int T, uint64_t seed, int sample, double x_sd = 1.0,
                        const Tensor& x_in = Tensor()) {
  Rng rng(seed), pick(seed + 1);
  const int D = m.cfg.dim, N = B * T;
  Vec x = x_in.defined() ? to_vec(x_in) : randn32(rng, (size_t)N * D, x_sd);
  const Vec r = randn32(rng, (size_t)N * D);
  const RefCfg c = ref_cfg(m.cfg);
  RefBlock rb = ref_block_of(m.block(layer));
  // (a) the f64 reference forward agrees with the engine's f32 forward
  const Tensor y = block_forward(m, layer, to_tensor(x, {N, D}), B, T);
  const double fwd = max_rel_diff(to_vec(y), ref_block_forward(c, rb, x, B, T));
  MESSAGE("block " << layer << " forward: f32 vs f64 reference max rel diff " << fwd);
  CHECK(fwd < 1e-5);
  // (b) analytic gradients against f64 central differences
  BlockGrads g;
  const Tensor dx = block_backward(m, layer, to_tensor(x, {N, D}), B, T, to_tensor(r, {N, D}), &g, BlockGradRequest::all());
  auto L = [&] { return dot(r, ref_block_forward(c, rb, x, B, T)); };
  Rng* p = sample ? &pick : nullptr;
  const std::string tag = "block " + std::to_string(layer) + " ";
  report(tag + "dx", fd_check(x, dx.to_vector(), L, p, sample));
  for (int i = 0; i < 7; ++i) {
    const std::string name = kLlama.linears[i].name;
    report(tag + "dW " + name, fd_check(rb.lin[i].w, g.weight(name).to_vector(), L, p, sample));
    if (!rb.lin[i].b.empty()) {
      REQUIRE(g.db[i].defined());
      report(tag + "db " + name, fd_check(rb.lin[i].b, g.db[i].to_vector(), L, p, sample));
    }
  }
  report(tag + "d attn_norm", fd_check(rb.g1, g.d_attn_norm.to_vector(), L, p, sample ? 4 : 0));
  report(tag + "d ffn_norm", fd_check(rb.g2, g.d_ffn_norm.to_vector(), L, p, sample ? 4 : 0));
}

TEST_CASE("block backward: dx, every dW and both norm gains (tiny model, interleaved RoPE)") {
  const Model m = tiny_model(11);
  check_block(m, 0, 2, 8, 21, 0);
  check_block(m, 1, 2, 8, 22, 0);
}

TEST_CASE("block backward: rotate-half RoPE and q/k/v biases") {
  const Model m = tiny_model(12, false, true);
  check_block(m, 1, 2, 8, 23, 0);
}

TEST_CASE("block backward: RoPE frequency scaling (linear, llama3) follows the forward") {
  Model m = tiny_model(17);
  m.cfg.rope_scaling = "linear";
  m.cfg.rope_factor = 4.f;
  check_block(m, 0, 2, 8, 24, 0);
  // θ = 100, head_dim 4: wavelengths 2π and 20π; with original context 64 and factors 1/4 the
  // second sits between the llama3 bands (interpolated), the first is kept
  m.cfg.rope_scaling = "llama3";
  m.cfg.rope_theta = 100.f;
  m.cfg.rope_factor = 8.f;
  m.cfg.rope_orig_ctx = 64;
  m.cfg.rope_low_freq_factor = 1.f;
  m.cfg.rope_high_freq_factor = 4.f;
  ModelConfig plain = m.cfg;
  plain.rope_scaling.clear();
  const std::vector<float> fs = rope_inv_freq(m.cfg, 4), fp = rope_inv_freq(plain, 4);
  CHECK(fs[0] == fp[0]);
  CHECK((fs[1] < fp[1] && fs[1] > fp[1] / 8));
  check_block(m, 1, 2, 8, 25, 0);
}

TEST_CASE("block backward: a partial request gives the same bits; bad requests name the culprit") {
  const Model m = tiny_model(13, true, true);
  Rng rng(31);
  const int B = 2, T = 8, N = B * T, D = 16;
  const Tensor x = to_tensor(randn32(rng, N * D), {N, D}), dy = to_tensor(randn32(rng, N * D), {N, D});
  BlockGrads all, some;
  const Tensor dx_all = block_backward(m, 0, x, B, T, dy, &all, BlockGradRequest::all());
  BlockGradRequest req;
  req.linears = {"wq", "down", "v"};  // aliases resolve
  const Tensor dx_some = block_backward(m, 0, x, B, T, dy, &some, req);
  const Tensor dx_none = block_backward(m, 0, x, B, T, dy, nullptr, BlockGradRequest::none());
  CHECK(std::memcmp(dx_all.f32(), dx_some.f32(), N * D * 4) == 0);
  CHECK(std::memcmp(dx_all.f32(), dx_none.f32(), N * D * 4) == 0);
  for (const char* name : {"q", "down", "v"}) {
    const Tensor& a = all.weight(name);
    CHECK(std::memcmp(a.f32(), some.weight(name).f32(), a.numel() * 4) == 0);
  }
  CHECK(some.db[0].defined());
  CHECK(!some.db[1].defined());
  CHECK(!some.d_attn_norm.defined());
  CHECK_THROWS_WITH_AS(some.weight("k"), doctest::Contains("'k' was not requested"), Error);
  BlockGradRequest bad;
  bad.linears = {"w9"};
  CHECK_THROWS_WITH_AS(block_backward(m, 0, x, B, T, dy, &some, bad), doctest::Contains("unknown linear 'w9'"), Error);
  CHECK_THROWS_WITH_AS(block_backward(m, 0, x, B, T, dy, nullptr, req), doctest::Contains("no BlockGrads"), Error);
  CHECK_THROWS_WITH_AS(block_backward(m, 2, x, B, T, dy, nullptr, {}), doctest::Contains("block 3 out of range"), Error);
  CHECK_THROWS_WITH_AS(block_backward(m, 0, x, B, T, dy.rows(0, N - 1), nullptr, {}),
                       doctest::Contains("output gradient has 15 rows, expected 16"), Error);
}

// ---------------------------------------------------------------- head and model

TEST_CASE("head backward: final norm + classifier + mean cross-entropy") {
  const Model m = tiny_model(14, true, false, false);  // untied classifier
  RefModel rm = ref_model_of(m);
  Rng rng(41), pick(42);
  const int N = 300, D = 16;  // > 256 rows: two logit super-chunks
  Vec x = randn32(rng, N * D, 2.0);
  std::vector<int32_t> targets(N);
  for (int i = 0; i < N; ++i) targets[i] = i % 7 == 3 ? -1 : (int32_t)rng.randint(0, 10);
  const HeadGrads hg = head_backward(m, to_tensor(x, {N, D}), targets, true);
  auto L = [&] { return ref_ce(rm, ref_rmsnorm(x, rm.fnorm, rm.c.eps), targets); };
  const double ref = L();
  MESSAGE("head loss " << hg.loss << " vs f64 reference " << ref);
  CHECK(std::abs(hg.loss - ref) < 1e-5 * ref);
  CHECK(hg.scored == N - (N + 3) / 7);
  report("head dx", fd_check(x, hg.dx.to_vector(), L, &pick, 300));
  report("head d final_norm", fd_check(rm.fnorm, hg.d_final_norm.to_vector(), L));
  report("head d classifier", fd_check(rm.cls, hg.d_classifier.to_vector(), L));
  targets[5] = 11;
  CHECK_THROWS_WITH_AS(head_backward(m, to_tensor(x, {N, D}), targets), doctest::Contains("target 11 of row 6"), Error);
}

TEST_CASE("model_loss_backward: full model against f64 finite differences") {
  const Model m = tiny_model(15);  // tied: the embedding is also the classifier
  RefModel rm = ref_model_of(m);
  Rng rng(51);
  const int B = 2, T = 8;
  std::vector<int32_t> tok(B * T);
  for (auto& t : tok) t = (int32_t)rng.randint(0, 10);
  const std::vector<int32_t> targets = next_targets(tok, B, T);
  std::vector<int> order;
  BlockGrads g0;
  const ModelGrads mg = model_loss_backward(
      m, tok, B, T, [](int l) { return l == 0 ? BlockGradRequest::all() : BlockGradRequest::none(); },
      [&](int l, BlockGrads& g) {
        order.push_back(l);
        if (l == 0) g0 = g;
      },
      true);
  CHECK(order == std::vector<int>{1, 0});
  auto L = [&] { return ref_ce(rm, ref_hidden(rm, tok, B, T), targets); };
  MESSAGE("model loss " << mg.loss << " vs f64 reference " << L());
  CHECK(std::abs(mg.loss - L()) < 1e-5 * L());
  for (int i = 0; i < 7; ++i)
    report("model d block0." + std::string(kLlama.linears[i].name),
           fd_check(rm.blocks[0].lin[i].w, g0.weight(kLlama.linears[i].name).to_vector(), L));
  report("model d block0.attn_norm", fd_check(rm.blocks[0].g1, g0.d_attn_norm.to_vector(), L));
  report("model d final_norm", fd_check(rm.fnorm, mg.d_final_norm.to_vector(), L));
  report("model d tok_emb (tied classifier)", fd_check(rm.emb, mg.d_tok_emb.to_vector(), L));
  CHECK(!mg.d_classifier.defined());
}

TEST_CASE("model_backward_from_hidden: gradient given after the final norm") {
  const Model m = tiny_model(16, false, true, false);
  RefModel rm = ref_model_of(m);
  Rng rng(61);
  const int B = 2, T = 8, N = B * T, D = 16;
  std::vector<int32_t> tok(N);
  for (auto& t : tok) t = (int32_t)rng.randint(0, 10);
  const Vec r = randn32(rng, N * D);
  std::vector<BlockGrads> grads(2);
  Tensor seen;
  const ModelGrads mg = model_backward_from_hidden(
      m, tok, B, T,
      [&](const Tensor& hn) {
        seen = hn.clone();
        return to_tensor(r, {N, D});
      },
      [](int) {
        BlockGradRequest q;
        q.linears = {"k", "gate"};
        q.norms = true;
        return q;
      },
      [&](int l, BlockGrads& g) { grads[l] = std::move(g); }, true);
  CHECK(max_rel_diff(to_vec(seen), ref_hidden(rm, tok, B, T)) < 1e-5);
  auto L = [&] { return dot(r, ref_hidden(rm, tok, B, T)); };
  for (int l : {0, 1}) {
    report("block " + std::to_string(l) + " hidden-grad d k", fd_check(rm.blocks[l].lin[1].w, grads[l].weight("k").to_vector(), L));
    report("block " + std::to_string(l) + " hidden-grad d k bias", fd_check(rm.blocks[l].lin[1].b, grads[l].db[1].to_vector(), L));
    report("block " + std::to_string(l) + " hidden-grad d gate", fd_check(rm.blocks[l].lin[4].w, grads[l].weight("gate").to_vector(), L));
    report("block " + std::to_string(l) + " hidden-grad d ffn_norm", fd_check(rm.blocks[l].g2, grads[l].d_ffn_norm.to_vector(), L));
  }
  report("hidden-grad d final_norm", fd_check(rm.fnorm, mg.d_final_norm.to_vector(), L));
  report("hidden-grad d tok_emb", fd_check(rm.emb, mg.d_tok_emb.to_vector(), L));
  CHECK_THROWS_WITH_AS(model_backward_from_hidden(m, tok, B, T, [](const Tensor&) { return Tensor::empty({3, 3}); }, nullptr, nullptr),
                       doctest::Contains("hidden-state gradient must be f32 [16, 16], got [3, 3]"), Error);
}

// ---------------------------------------------------------------- the real model

TEST_CASE("stories260K: block_backward against f64 finite differences on random weight entries") {
  const Model& m = stories();
  const int B = 2, T = 48, N = B * T;
  std::vector<int32_t> tok(N);
  Rng rng(71);
  for (auto& t : tok) t = (int32_t)rng.randint(0, m.cfg.vocab_size - 1);
  Tensor x = embed(m, tok);
  for (int l = 0; l < 2; ++l) x = block_forward(m, l, x, B, T);  // block 2 sees real activations
  check_block(m, 2, B, T, 72, 6, 1.0, x);
}

TEST_CASE("gradients are bit-identical for 1 and 2 threads") {
  const Model& m = stories();
  const int B = 2, T = 160, N = B * T;  // two query blocks per window
  std::vector<int32_t> tok(N);
  Rng rng(81);
  for (auto& t : tok) t = (int32_t)rng.randint(0, m.cfg.vocab_size - 1);
  const Tensor x = embed(m, tok), dy = to_tensor(randn32(rng, (size_t)N * m.cfg.dim), {N, m.cfg.dim});
  const int nt = omp_get_max_threads();
  struct Run {
    Tensor dx;
    BlockGrads g;
    ModelGrads mg;
    std::vector<Tensor> dws;
  };
  auto run = [&](int threads) {
    omp_set_num_threads(threads);
    Run r;
    r.dx = block_backward(m, 1, x, B, T, dy, &r.g, BlockGradRequest::all());
    r.mg = model_loss_backward(m, tok, B, T, [](int) { return BlockGradRequest::all(); },
                               [&](int, BlockGrads& g) { r.dws.insert(r.dws.end(), g.dW.begin(), g.dW.end()); }, true);
    return r;
  };
  const Run a = run(1), b = run(std::max(nt, 2));
  omp_set_num_threads(nt);
  auto same = [](const Tensor& p, const Tensor& q) {
    return p.shape() == q.shape() && std::memcmp(p.f32(), q.f32(), p.numel() * 4) == 0;
  };
  CHECK(same(a.dx, b.dx));
  for (size_t i = 0; i < a.g.dW.size(); ++i) CHECK(same(a.g.dW[i], b.g.dW[i]));
  CHECK(same(a.g.d_attn_norm, b.g.d_attn_norm));
  CHECK(same(a.g.d_ffn_norm, b.g.d_ffn_norm));
  CHECK(a.mg.loss == b.mg.loss);
  CHECK(same(a.mg.d_embed, b.mg.d_embed));
  CHECK(same(a.mg.d_tok_emb, b.mg.d_tok_emb));
  CHECK(same(a.mg.d_final_norm, b.mg.d_final_norm));
  REQUIRE(a.dws.size() == b.dws.size());
  for (size_t i = 0; i < a.dws.size(); ++i) CHECK(same(a.dws[i], b.dws[i]));
}
