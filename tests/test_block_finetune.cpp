// Block-wise finetuning (decoupleQ's step 4, docs/methods.md#block-finetune): Adam itself, the
// chain rule from dL/dW to grid scales/zeros (uniform, companded, row groups, mixed bits with
// pruned groups, outliers), norm gains and biases against central finite differences of an f64
// reference of the block loss; then the finetuning loop: lr = 0 is a bit-exact no-op, codes never
// move, the loss goes down, options are checked, and results are bit-identical for 1 and 2 threads.
#include <doctest/doctest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <functional>

#include "solvers/adam.h"
#include "solvers/block_finetune.h"
#include "model/forward.h"
#include "formats/loader_llama2c.h"
#include "core/rng.h"
#include "solvers/rtn.h"
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

using qf::test::randn_tensor;
static bool same_bits(const Tensor& a, const Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  const Tensor ac = a.contiguous(), bc = b.contiguous();
  const size_t esz = a.dtype() == DType::U8 ? 1 : 4;
  return std::memcmp(ac.raw(), bc.raw(), (size_t)a.numel() * esz) == 0;
}
static bool same_grid(const Grid& a, const Grid& b) {
  return a.scale.size() == b.scale.size() && a.zero.size() == b.zero.size() &&
         std::memcmp(a.scale.data(), b.scale.data(), a.scale.size() * 4) == 0 &&
         std::memcmp(a.zero.data(), b.zero.data(), a.zero.size() * 4) == 0 && a.spec.str() == b.spec.str() &&
         a.spec.float_zero == b.spec.float_zero && a.spec.f16_scales == b.spec.f16_scales;
}
// Every weight, bias, norm, grid and code of block l of a and b are the same bits.
static bool same_block(const Model& a, const Model& b, int l) {
  const Block &x = a.block(l), &y = b.block(l);
  bool ok = same_bits(x.attn_norm, y.attn_norm) && same_bits(x.ffn_norm, y.ffn_norm);
  for (size_t i = 0; i < x.linears.size(); ++i) {
    const Linear &p = x.linears[i], &q = y.linears[i];
    ok = ok && same_bits(p.weight, q.weight) && same_bits(p.bias, q.bias) && (bool)p.quant == (bool)q.quant;
    if (p.quant && q.quant) ok = ok && same_grid(p.quant->grid, q.quant->grid) && same_bits(p.quant->codes, q.quant->codes);
  }
  return ok;
}

// ---------------------------------------------------------------- a tiny random model

// tests/tiny_model.h with one block (interleaved RoPE, tied classifier), optional q/k/v biases.
static Model tiny_model(uint64_t seed, bool qkv_bias = false) {
  return qf::test::tiny_model(seed, true, qkv_bias, true, 1);
}

static const Model& stories() {
  static Model m = load_llama2c(kShared + "/models/stories260K/stories260K.bin");
  return m;
}

// Quantizes every linear of block l with RTN on the grid spec_for(linear) returns.
static void quantize_block(Model& m, int l, const std::function<GridSpec(const Linear&)>& spec_for) {
  for (Linear& lin : m.block_mut(l).linears) {
    auto q = std::make_shared<QuantizedLinear>(rtn(lin.weight, spec_for(lin)));
    lin.weight.copy_(q->dequantize());
    lin.quant = q;
  }
}

// Row groups r % nrg and a bit allocation cycling through `bits` (0 = pruned) for a linear.
static GridSpec alloc_spec(const Linear& lin, GridKind kind, int64_t group, int nrg, std::vector<int> bits) {
  GridSpec s;
  s.kind = kind;
  s.bits = 3;
  s.group = group;
  const int64_t rows = lin.out_features(), cols = lin.in_features();
  const int64_t ng = (cols + group - 1) / group;
  for (int64_t r = 0; r < rows; ++r) s.row_group.push_back((int32_t)(r % nrg));
  s.nrowgroups = nrg;
  for (int64_t k = 0; k < nrg * ng; ++k) s.group_bits.push_back((uint8_t)bits[(size_t)k % bits.size()]);
  return s;
}

// ---------------------------------------------------------------- f64 reference of the block loss

// The block's float parameters in f64 (grid scales/zeros of quantized linears, biases, gains),
// so finite differences can perturb them one at a time.
struct RefParams {
  std::vector<Vec> scale, zero, bias;
  Vec g1, g2;
};
static RefParams ref_params(const Block& b) {
  RefParams p;
  for (const Linear& l : b.linears) {
    p.scale.push_back(l.quant ? Vec(l.quant->grid.scale.begin(), l.quant->grid.scale.end()) : Vec());
    p.zero.push_back(l.quant ? Vec(l.quant->grid.zero.begin(), l.quant->grid.zero.end()) : Vec());
    p.bias.push_back(l.bias.defined() ? to_vec(l.bias) : Vec());
  }
  p.g1 = to_vec(b.attn_norm);
  p.g2 = to_vec(b.ffn_norm);
  return p;
}

// W of a linear from f64 grid parameters: the value formulas of grid.h written independently.
static Vec ref_weight(const Linear& l, const Vec& sc, const Vec& ze) {
  if (!l.quant) return to_vec(l.weight);
  const QuantizedLinear& q = *l.quant;
  const Grid& g = q.grid;
  const std::vector<float> codes = q.codes.to_vector();
  Vec w((size_t)(g.rows * g.cols));
  for (int64_t r = 0; r < g.rows; ++r)
    for (int64_t j = 0; j < g.cols; ++j) {
      const size_t p = g.pidx(r, g.g_idx[(size_t)j]);
      const int bits = g.bits_at(r, g.g_idx[(size_t)j]), c = (int)codes[(size_t)(r * g.cols + j)];
      double v;
      if (bits == 0) {
        v = ze[p];
      } else if (g.spec.kind == GridKind::Compand) {
        const double u = (c + 0.5) / std::ldexp(1.0, bits);  // Laplace(μ, b) quantile
        v = sc[p] > 0 ? (u < 0.5 ? ze[p] + sc[p] * std::log(2 * u) : ze[p] - sc[p] * std::log(2 * (1 - u))) : ze[p];
      } else {
        v = sc[p] * (c - ze[p]);
      }
      w[(size_t)(r * g.cols + j)] = v;
    }
  for (int64_t k = 0; k < q.outliers.nnz(); ++k) w[(size_t)(q.outliers.row[k] * g.cols + q.outliers.col[k])] += q.outliers.val[k];
  return w;
}

// Mean squared error of the block output (f64 everywhere) against target.
static double ref_loss(const Model& m, const RefParams& p, const Vec& x, const Vec& target, int B, int T) {
  const ModelConfig& c = m.cfg;
  const Block& blk = m.block(0);
  const int hd = c.head_dim();
  auto lin = [&](int i, const Vec& in) {
    const Linear& l = blk.linears[(size_t)i];
    return ref_linear(in, ref_weight(l, p.scale[(size_t)i], p.zero[(size_t)i]), p.bias[(size_t)i], (int)l.out_features(),
                      (int)l.in_features());
  };
  const std::vector<float> f32freq = rope_inv_freq(c, hd);
  const Vec freq(f32freq.begin(), f32freq.end());
  const Vec xn = ref_rmsnorm(x, p.g1, c.norm_eps);
  const Vec q = ref_rope(lin(0, xn), c.n_heads, hd, T, freq, c.rope_interleaved),
            k = ref_rope(lin(1, xn), c.n_kv_heads, hd, T, freq, c.rope_interleaved);
  const Vec o = lin(3, ref_attention(q, k, lin(2, xn), B, T, c.n_heads, c.n_kv_heads, hd));
  Vec h = x;
  for (size_t i = 0; i < h.size(); ++i) h[i] += o[i];
  const Vec xn2 = ref_rmsnorm(h, p.g2, c.norm_eps);
  const Vec d = lin(6, ref_swiglu(lin(4, xn2), lin(5, xn2)));
  double s = 0;
  for (size_t i = 0; i < h.size(); ++i) {
    const double e = h[i] + d[i] - target[i];
    s += e * e;
  }
  return s / (double)h.size();
}

// max_i |analytic_i − numeric_i| / max(|numeric_i|, 1e-3·max_j |numeric_j|)
struct GradErr {
  Vec a, n;
  double rel() const {
    double scale = 0, worst = 0;
    for (double v : n) scale = std::max(scale, std::abs(v));
    for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - n[i]) / std::max(std::abs(n[i]), 1e-3 * scale));
    return worst;
  }
  double max_abs() const {
    double s = 0;
    for (double v : n) s = std::max(s, std::abs(v));
    return s;
  }
};

// Central differences of the f64 loss w.r.t. every entry of v (skipping those `skip` names).
static void fd(GradErr& e, Vec& v, const Vec& analytic, const std::function<double()>& loss,
               const std::function<bool(size_t)>& skip = nullptr) {
  REQUIRE(analytic.size() == v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    if (skip && skip(i)) continue;
    const double p0 = v[i], h = 1e-6 * std::max(1.0, std::abs(p0));
    v[i] = p0 + h;
    const double lp = loss();
    v[i] = p0 - h;
    const double lm = loss();
    v[i] = p0;
    e.a.push_back(analytic[i]);
    e.n.push_back((lp - lm) / (2 * h));
  }
}

// Checks every gradient block_param_grads returns against the f64 reference.
static void check_grads(const Model& m, int B, int T, uint64_t seed, const char* what) {
  const int64_t N = (int64_t)B * T, D = m.cfg.dim;
  Rng rng(seed);
  const Tensor x = randn_tensor(rng, {N, D});
  // target: the same block before quantization is unknown here; a perturbed output is as good
  Tensor y = block_forward(m, 0, x, B, T);
  const Tensor target = y.clone();
  {
    float* t = target.f32();
    for (int64_t i = 0; i < target.numel(); ++i) t[i] += (float)(0.1 * rng.normal());
  }
  const BlockParamGrads g = block_param_grads(m, 0, x, target, B, T);
  const Vec xv = to_vec(x), tv = to_vec(target);
  RefParams p = ref_params(m.block(0));
  auto loss = [&] { return ref_loss(m, p, xv, tv, B, T); };
  // the f64 reference agrees with the engine's f32 loss
  CHECK(std::abs(loss() - g.loss) <= 1e-4 * g.loss);
  CHECK(std::abs(block_mse(m, 0, x, target, B, T) - g.loss) <= 1e-12 * g.loss);
  GradErr es, ez, eb, en;
  const Block& blk = m.block(0);
  for (size_t i = 0; i < blk.linears.size(); ++i) {
    const Linear& l = blk.linears[i];
    if (l.quant) {
      REQUIRE(g.dscale[i].size() == l.quant->grid.scale.size());
      REQUIRE(g.dzero[i].size() == l.quant->grid.zero.size());
      const Grid& gr = l.quant->grid;
      // 0-bit scales and b of constant companded groups are unused: their gradient is exactly 0
      for (size_t k = 0; k < gr.scale.size(); ++k) {
        const int bits = gr.spec.group_bits.empty() ? gr.spec.bits : gr.spec.group_bits[k];
        if (bits == 0 || (gr.spec.kind == GridKind::Compand && !(gr.scale[k] > 0))) CHECK(g.dscale[i][k] == 0.0);
      }
      // (b = 0 is a kink of a companded level — all levels collapse to μ — so no finite difference there)
      fd(es, p.scale[i], g.dscale[i], loss,
         [&](size_t k) { return gr.spec.kind == GridKind::Compand && !(gr.scale[k] > 0); });
      fd(ez, p.zero[i], g.dzero[i], loss);
    } else {
      CHECK(g.dscale[i].empty());
    }
    if (l.bias.defined()) fd(eb, p.bias[i], g.dbias[i], loss);
  }
  fd(en, p.g1, g.d_attn_norm, loss);
  fd(en, p.g2, g.d_ffn_norm, loss);
  MESSAGE(std::string(what) << ": max rel error scales " << es.rel() << " (" << es.a.size() << "), zeros " << ez.rel() << " ("
               << ez.a.size() << "), biases " << eb.rel() << " (" << eb.a.size() << "), norms " << en.rel() << " ("
               << en.a.size() << ")");
  CHECK(es.a.size() > 0);
  CHECK(es.max_abs() > 0);
  CHECK(es.rel() < 3e-3);
  CHECK(ez.rel() < 3e-3);
  CHECK(en.rel() < 3e-3);
  if (!eb.a.empty()) CHECK(eb.rel() < 3e-3);
}

// ---------------------------------------------------------------- Adam

TEST_CASE("adam: first step moves each parameter by lr against its gradient's sign; lr = 0 and g = 0 move nothing") {
  AdamOptions o;
  o.lr = 0.1;
  Adam a(3, o);
  std::vector<float> p = {1.f, -2.f, 0.5f};
  a.step(p, {3.0, -1e-3, 0.0});
  // m̂ = g, v̂ = g² at t = 1: the step is lr·g/(|g| + eps)
  CHECK(p[0] == (float)(1.0 - 0.1 * 3.0 / (3.0 + 1e-8)));
  CHECK(p[1] == (float)(-2.0 + 0.1 * 1e-3 / (1e-3 + 1e-8)));
  CHECK(p[2] == 0.5f);
  CHECK(a.steps() == 1);
  AdamOptions z;
  z.lr = 0;
  Adam b(2, z);
  std::vector<float> q = {1.25f, -3.5f};
  for (int i = 0; i < 5; ++i) b.step(q, {10.0, -7.0});
  CHECK(q[0] == 1.25f);
  CHECK(q[1] == -3.5f);
  CHECK_THROWS_WITH_AS(a.step(q, {1.0, 2.0}), doctest::Contains("optimizer holds 3 parameters"), Error);
  AdamOptions bad;
  bad.beta2 = 1.0;
  CHECK_THROWS_WITH_AS(Adam(1, bad), doctest::Contains("beta2 must be in [0, 1)"), Error);
  bad = AdamOptions{};
  bad.lr = -1;
  CHECK_THROWS_WITH_AS(Adam(1, bad), doctest::Contains("lr must be"), Error);
}

TEST_CASE("adam: converges to the optimum of an ill-conditioned convex quadratic") {
  // f(p) = ½ Σ a_i (p_i − c_i)², curvatures over four orders of magnitude
  const size_t n = 6;
  const Vec a = {1e-2, 0.1, 1, 10, 100, 3}, c = {0.5, -1.5, 2.0, -0.25, 1.0, -3.0};
  std::vector<float> p(n, 0.f);
  auto f = [&] {
    double s = 0;
    for (size_t i = 0; i < n; ++i) s += 0.5 * a[i] * (p[i] - c[i]) * (p[i] - c[i]);
    return s;
  };
  const double f0 = f();
  AdamOptions o;
  o.lr = 0.05;
  o.beta2 = 0.99;
  Adam adam(n, o);
  std::vector<double> g(n);
  for (int t = 0; t < 4000; ++t) {
    if (t == 2000) {  // a smaller step for the end game (a new optimizer: Adam's step is ~lr near the optimum)
      o.lr = 1e-3;
      adam = Adam(n, o);
    }
    for (size_t i = 0; i < n; ++i) g[i] = a[i] * (p[i] - c[i]);
    adam.step(p, g);
  }
  double worst = 0;
  for (size_t i = 0; i < n; ++i) worst = std::max(worst, std::abs(p[i] - c[i]));
  MESSAGE("adam on a quadratic: f " << f0 << " -> " << f() << ", max |p - c| = " << worst);
  CHECK(worst < 5e-3);
  CHECK(f() < 1e-5 * f0);
}

// ---------------------------------------------------------------- gradients

TEST_CASE("gradients: per-channel asymmetric uniform grid, q/k/v biases, norm gains, f64 finite differences") {
  Model m = tiny_model(1, true);
  quantize_block(m, 0, [](const Linear&) {
    GridSpec s;
    s.bits = 3;
    return s;
  });
  check_grads(m, 2, 8, 11, "uniform per-channel");
}

TEST_CASE("gradients: symmetric grouped grid with fp16 scales") {
  Model m = tiny_model(2);
  quantize_block(m, 0, [](const Linear&) {
    GridSpec s;
    s.bits = 4;
    s.sym = true;
    s.group = 8;
    s.f16_scales = true;
    return s;
  });
  check_grads(m, 2, 8, 12, "uniform sym g8");
}

TEST_CASE("gradients: row groups and mixed bits with pruned (0-bit) groups, outliers, one unquantized linear") {
  Model m = tiny_model(3);
  quantize_block(m, 0, [](const Linear& l) { return alloc_spec(l, GridKind::Uniform, 8, 3, {2, 0, 3, 1, 4}); });
  // frozen full-precision outliers on top of the grid values
  Linear& up = m.block_mut(0).linear("up");
  auto q = std::make_shared<QuantizedLinear>(*up.quant);
  q->outliers.row = {0, 5, 7};
  q->outliers.col = {3, 0, 15};
  q->outliers.val = {0.7f, -0.4f, 0.25f};
  up.weight.copy_(q->dequantize());
  up.quant = q;
  // o stays full precision: no grid parameters
  Linear& o = m.block_mut(0).linear("o");
  o.quant.reset();
  check_grads(m, 2, 8, 13, "uniform row groups + mixed bits + outliers");
}

TEST_CASE("gradients: companded grid with row groups, mixed bits and pruned groups") {
  Model m = tiny_model(4);
  quantize_block(m, 0, [](const Linear& l) { return alloc_spec(l, GridKind::Compand, 4, 5, {2, 3, 0, 1}); });
  // a constant group (b = 0): every level is μ, b is not trained
  Linear& v = m.block_mut(0).linear("v");
  auto q = std::make_shared<QuantizedLinear>(*v.quant);
  REQUIRE(q->grid.spec.group_bits[1] > 0);
  q->grid.scale[1] = 0.f;
  v.weight.copy_(q->dequantize());
  v.quant = q;
  check_grads(m, 2, 8, 14, "compand row groups + mixed bits");
}

TEST_CASE("grid_param_grads: hand-checked uniform and companded rows; shape errors") {
  // uniform: one row, 2 groups of 2; v = s(c − z)
  GridSpec s;
  s.bits = 2;
  s.group = 2;
  Grid g = grid_new(s, 1, 4);
  g.scale = {0.5f, 2.f};
  g.zero = {1.f, 2.f};
  QuantizedLinear q;
  q.grid = g;
  q.codes = Tensor::from_data({1, 4}, {0, 3, 1, 2}).to(DType::U8);
  const Tensor dW = Tensor::from_data({1, 4}, {1.f, 2.f, -1.f, 4.f});
  std::vector<double> ds, dz;
  grid_param_grads(q, dW, ds, dz);
  CHECK(ds == std::vector<double>{1 * (0 - 1.0) + 2 * (3 - 1.0), -1 * (1 - 2.0) + 4 * (2 - 2.0)});
  CHECK(dz == std::vector<double>{-0.5 * (1 + 2), -2.0 * (-1 + 4)});
  // companded 2-bit: t = F⁻¹((k + ½)/4) of Laplace(0, 1) = ±log 2 ∓ ... ; ∂v/∂μ = 1, ∂v/∂b = t
  s.kind = GridKind::Compand;
  q.grid = grid_new(s, 1, 4);
  q.grid.scale = {1.f, 3.f};
  q.grid.zero = {0.f, 1.f};
  grid_param_grads(q, dW, ds, dz);
  const double t0 = std::log(0.25), t3 = -std::log(0.25), t1 = std::log(0.75), t2 = -std::log(0.75);
  CHECK(compand_unit_level(0, 2) == doctest::Approx(t0));
  CHECK(compand_unit_level(2, 2) == doctest::Approx(t2));
  CHECK(ds[0] == doctest::Approx(1 * t0 + 2 * t3));
  CHECK(ds[1] == doctest::Approx(-1 * t1 + 4 * t2));
  CHECK(dz == std::vector<double>{3.0, 3.0});
  // the companded level really is μ + b·t(k)
  CHECK(compand_level(2, 1.f, 3.f, 2) == doctest::Approx(1.0 + 3.0 * t2));
  CHECK_THROWS_WITH_AS(grid_param_grads(q, Tensor::zeros({2, 4}), ds, dz), doctest::Contains("dW must be f32 [1, 4]"), Error);
}

// ---------------------------------------------------------------- the finetuning loop

// A tiny quantized block with its FP targets: the FP block on x, the quantized one trained on x.
struct Setup {
  Model fp, q;
  Tensor x, target;
  int B, T;
};
static Setup setup(uint64_t seed, int B, int T, const std::function<GridSpec(const Linear&)>& spec_for, bool bias = false) {
  Setup s{tiny_model(seed, bias), tiny_model(seed, bias), {}, {}, B, T};
  Rng rng(seed + 100);
  s.x = randn_tensor(rng, {(int64_t)B * T, s.fp.cfg.dim});
  s.target = block_forward(s.fp, 0, s.x, B, T);
  quantize_block(s.q, 0, spec_for);
  return s;
}
static GridSpec asym2(const Linear&) {
  GridSpec s;
  s.bits = 2;
  return s;
}

TEST_CASE("finetune with lr = 0 leaves the block bit-identical; every epoch loss equals the loss before") {
  for (int variant = 0; variant < 3; ++variant) {
    Setup s = variant == 0   ? setup(21, 4, 8, asym2, true)
              : variant == 1 ? setup(22, 4, 8, [](const Linear& l) { return alloc_spec(l, GridKind::Uniform, 8, 3, {2, 0, 3}); })
                             : setup(23, 4, 8, [](const Linear& l) { return alloc_spec(l, GridKind::Compand, 4, 5, {2, 0, 3}); });
    const Model before = s.q.clone();
    FinetuneOptions o;
    o.params = {"scales", "zeros", "norms", "biases"};
    o.lr = 0;
    o.epochs = 2;
    const FinetuneResult r = block_finetune(s.q, 0, s.x, s.target, s.B, s.T, o);
    CAPTURE(variant);
    CHECK(same_block(before, s.q, 0));
    REQUIRE(r.epoch_loss.size() == 2);
    CHECK(r.epoch_loss[0] == r.loss_before);
    CHECK(r.epoch_loss[1] == r.loss_before);
    CHECK(r.loss_after == r.loss_before);
    CHECK(r.steps == 8);
    CHECK(r.loss_before > 0);
  }
}

TEST_CASE("finetune lowers the block loss, never moves a code, keeps weight == dequantize()") {
  struct Case {
    const char* name;
    std::function<GridSpec(const Linear&)> spec;
    std::vector<std::string> params;
  };
  const std::vector<Case> cases = {
      {"asym 2-bit per-channel", asym2, {"scales", "zeros", "norms", "biases"}},
      {"row groups + mixed bits", [](const Linear& l) { return alloc_spec(l, GridKind::Uniform, 8, 3, {2, 0, 3}); }, {"scales", "zeros"}},
      {"compand", [](const Linear& l) { return alloc_spec(l, GridKind::Compand, 4, 5, {2, 0, 3}); }, {"scales", "zeros", "norms"}},
      {"norms only", asym2, {"norms"}},
  };
  for (const Case& c : cases) {
    const std::string name = c.name;
    CAPTURE(name);
    Setup s = setup(31, 6, 8, c.spec, true);
    const Model before = s.q.clone();
    FinetuneOptions o;
    o.params = c.params;
    o.lr = 2e-3;
    o.epochs = 4;
    o.batch = 2;
    std::vector<std::string> logged;
    const FinetuneResult r = block_finetune(s.q, 0, s.x, s.target, s.B, s.T, o,
                                            [&](const std::string& ev, const std::string& d) { logged.push_back(ev + ": " + d); });
    MESSAGE(name << ": loss " << r.loss_before << " -> epochs " << r.epoch_loss[0] << " .. " << r.epoch_loss.back()
                   << ", after " << r.loss_after << " (" << r.nparams << " floats)");
    CHECK(r.loss_after < 0.97 * r.loss_before);
    CHECK(r.epoch_loss.back() < r.epoch_loss.front());
    CHECK(r.steps == 4 * 3);
    CHECK(r.loss_after == doctest::Approx(block_mse(s.q, 0, s.x, s.target, s.B, s.T)).epsilon(1e-12));
    REQUIRE(logged.size() == 6);  // start, 4 epochs, done
    CHECK(logged[2].find("block 1: epoch 2/4 loss") != std::string::npos);
    const Block &a = before.block(0), &b = s.q.block(0);
    for (size_t i = 0; i < a.linears.size(); ++i) {
      const Linear &la = a.linears[i], &lb = b.linears[i];
      REQUIRE(lb.quant);
      CHECK(same_bits(la.quant->codes, lb.quant->codes));
      CHECK(same_bits(lb.weight, lb.quant->dequantize()));
      CHECK(la.quant->grid.spec.row_group == lb.quant->grid.spec.row_group);
      CHECK(la.quant->grid.spec.group_bits == lb.quant->grid.spec.group_bits);
      const bool grid_trained = c.params.size() > 1;
      CHECK(same_grid(la.quant->grid, lb.quant->grid) == !grid_trained);
      // pruned groups keep their (unused) zero scale
      for (size_t k = 0; k < lb.quant->grid.scale.size(); ++k)
        if (!lb.quant->grid.spec.group_bits.empty() && lb.quant->grid.spec.group_bits[k] == 0) CHECK(lb.quant->grid.scale[k] == 0.f);
      if (grid_trained && lb.quant->grid.spec.kind == GridKind::Uniform) CHECK(lb.quant->grid.spec.float_zero);
      if (la.bias.defined()) CHECK(same_bits(la.bias, lb.bias) == (std::find(c.params.begin(), c.params.end(), "biases") == c.params.end()));
      else CHECK(!lb.bias.defined());  // no bias is ever added
    }
    const bool norms = std::find(c.params.begin(), c.params.end(), "norms") != c.params.end();
    CHECK(same_bits(a.attn_norm, b.attn_norm) == !norms);
    CHECK(same_bits(a.ffn_norm, b.ffn_norm) == !norms);
  }
}

TEST_CASE("finetune: symmetric grids keep their zeros; trained grids drop f16_scales; zeros-only keeps scales") {
  Setup s = setup(41, 3, 8, [](const Linear&) {
    GridSpec g;
    g.bits = 3;
    g.sym = true;
    g.f16_scales = true;
    return g;
  });
  const Model before = s.q.clone();
  FinetuneOptions o;
  o.params = {"scales", "zeros"};
  o.lr = 1e-3;
  o.epochs = 1;
  block_finetune(s.q, 0, s.x, s.target, s.B, s.T, o);
  for (size_t i = 0; i < 7; ++i) {
    const Grid &a = before.block(0).linears[i].quant->grid, &b = s.q.block(0).linears[i].quant->grid;
    CHECK(a.zero == b.zero);
    CHECK(a.scale != b.scale);
    CHECK(!b.spec.f16_scales);
    CHECK(!b.spec.float_zero);
  }
  Setup z = setup(42, 3, 8, asym2);
  const Model zb = z.q.clone();
  o.params = {"zeros"};
  block_finetune(z.q, 0, z.x, z.target, z.B, z.T, o);
  for (size_t i = 0; i < 7; ++i) {
    const Grid &a = zb.block(0).linears[i].quant->grid, &b = z.q.block(0).linears[i].quant->grid;
    CHECK(a.scale == b.scale);
    CHECK(a.zero != b.zero);
    CHECK(b.spec.float_zero);
  }
}

TEST_CASE("finetune: bad options and shapes fail naming the culprit; nothing to train is an error") {
  Setup s = setup(51, 3, 8, asym2);
  const Model before = s.q.clone();
  auto run = [&](const std::function<void(FinetuneOptions&)>& edit, const Tensor* x = nullptr, int B = 3, int T = 8) {
    FinetuneOptions o;
    edit(o);
    block_finetune(s.q, 0, x ? *x : s.x, s.target, B, T, o);
  };
  CHECK_THROWS_WITH_AS(run([](FinetuneOptions& o) { o.params = {"scales", "gains"}; }),
                       doctest::Contains("option 'params': unknown parameter group 'gains'"), Error);
  CHECK_THROWS_WITH_AS(run([](FinetuneOptions& o) { o.params = {}; }), doctest::Contains("option 'params' is empty"), Error);
  CHECK_THROWS_WITH_AS(run([](FinetuneOptions& o) { o.lr = -1e-3; }), doctest::Contains("option 'lr' must be a finite number >= 0"), Error);
  CHECK_THROWS_WITH_AS(run([](FinetuneOptions& o) { o.lr = NAN; }), doctest::Contains("option 'lr'"), Error);
  CHECK_THROWS_WITH_AS(run([](FinetuneOptions& o) { o.lr = INFINITY; }), doctest::Contains("option 'lr'"), Error);
  CHECK_THROWS_WITH_AS(run([](FinetuneOptions& o) { o.epochs = 0; }), doctest::Contains("option 'epochs' must be >= 1, got 0"), Error);
  CHECK_THROWS_WITH_AS(run([](FinetuneOptions& o) { o.batch = 0; }), doctest::Contains("option 'batch'"), Error);
  CHECK_THROWS_WITH_AS(run([](FinetuneOptions& o) { o.batch = 4; }), doctest::Contains("option 'batch' (windows per step) must be in 1..3"), Error);
  CHECK_THROWS_WITH_AS(run([](FinetuneOptions& o) { o.beta1 = 1.0; }), doctest::Contains("option 'betas': beta1"), Error);
  CHECK_THROWS_WITH_AS(run([](FinetuneOptions& o) { o.eps = 0; }), doctest::Contains("option 'eps'"), Error);
  CHECK_THROWS_WITH_AS(run([](FinetuneOptions& o) { o.weight_decay = -1; }), doctest::Contains("option 'weight_decay'"), Error);
  const Tensor short_x = s.x.rows(0, 16);
  CHECK_THROWS_WITH_AS(run([](FinetuneOptions&) {}, &short_x), doctest::Contains("inputs is f32 [16, 16], expected f32 [B·T, dim] = [24, 16]"), Error);
  CHECK_THROWS_WITH_AS(run([](FinetuneOptions&) {}, nullptr, 3, 4), doctest::Contains("expected f32 [B·T, dim] = [12, 16]"), Error);
  FinetuneOptions o;
  CHECK_THROWS_WITH_AS(block_finetune(s.q, 0, s.x, s.target.cols(0, 8), 3, 8, o), doctest::Contains("targets is"), Error);
  CHECK_THROWS_WITH_AS(block_finetune(s.q, 1, s.x, s.target, 3, 8, o), doctest::Contains("block 2 out of range"), Error);
  CHECK(same_block(before, s.q, 0));  // nothing was touched by a failed call
  // an unquantized block has no scales or zeros
  o.params = {"scales", "zeros"};
  CHECK_THROWS_WITH_AS(block_finetune(s.fp, 0, s.x, s.target, 3, 8, o), doctest::Contains("nothing to train"), Error);
  o.params = {"biases"};
  CHECK_THROWS_WITH_AS(block_finetune(s.q, 0, s.x, s.target, 3, 8, o), doctest::Contains("nothing to train for params {biases}"), Error);
  // a learning rate so large that training diverges: the block is restored, the call fails
  o.params = {"scales", "zeros", "norms"};
  o.lr = 1e30;
  o.epochs = 3;
  CHECK_THROWS_WITH_AS(block_finetune(s.q, 0, s.x, s.target, 3, 8, o), doctest::Contains("restored"), Error);
  CHECK(same_block(before, s.q, 0));
}

TEST_CASE("finetune: shuffled order is reproducible from the seed and differs from the plain order") {
  auto train = [](bool shuffle, uint64_t seed) {
    Setup s = setup(61, 5, 8, asym2);
    FinetuneOptions o;
    o.lr = 1e-3;
    o.epochs = 2;
    o.batch = 2;
    o.shuffle = shuffle;
    o.seed = seed;
    const FinetuneResult r = block_finetune(s.q, 0, s.x, s.target, s.B, s.T, o);
    return std::make_pair(r.loss_after, s.q.block(0).linear("down").weight.clone());
  };
  const auto a = train(true, 7), b = train(true, 7), c = train(false, 7), d = train(true, 8);
  CHECK(a.first == b.first);
  CHECK(same_bits(a.second, b.second));
  CHECK(!same_bits(a.second, c.second));
  CHECK(!same_bits(a.second, d.second));
}

TEST_CASE("stories260K: finetuning is bit-identical for 1 and 2 threads and lowers the loss") {
  const Model& base = stories();
  const int B = 3, T = 96, l = 1;
  Rng rng(71);
  std::vector<int32_t> tok((size_t)B * T);
  for (auto& t : tok) t = (int32_t)rng.randint(0, base.cfg.vocab_size - 1);
  Tensor x = embed(base, tok);
  x = block_forward(base, 0, x, B, T);
  const Tensor target = block_forward(base, l, x, B, T);
  auto run = [&](int threads) {
    omp_set_num_threads(threads);
    Model m = base.clone();
    quantize_block(m, l, [](const Linear& lin) { return alloc_spec(lin, GridKind::Uniform, 16, 7, {2, 3, 0, 2}); });
    FinetuneOptions o;
    o.lr = 1e-3;
    o.epochs = 2;
    o.batch = 2;
    const FinetuneResult r = block_finetune(m, l, x, target, B, T, o);
    return std::make_pair(r, m);
  };
  const int nt = omp_get_max_threads();
  const auto a = run(1), b = run(std::max(nt, 2));
  // the pieces on sizes that take their parallel paths: the loss over 8 × 512 tokens, the chain
  // rule on a 640 × 512 weight (row groups; uniform and companded)
  Rng r2(72);
  std::vector<int32_t> tok2((size_t)8 * 512);
  for (auto& t : tok2) t = (int32_t)r2.randint(0, base.cfg.vocab_size - 1);
  const Tensor x2 = embed(base, tok2), t2 = randn_tensor(r2, {8 * 512, base.cfg.dim});
  Linear big;
  big.weight = randn_tensor(r2, {640, 512});
  const Tensor dW = randn_tensor(r2, {640, 512});
  std::vector<double> mse(2);
  std::vector<std::vector<double>> ds(4), dz(4);
  for (int k = 0; k < 2; ++k) {
    omp_set_num_threads(k == 0 ? 1 : std::max(nt, 2));
    mse[(size_t)k] = block_mse(base, 0, x2, t2, 8, 512);
    for (int kind = 0; kind < 2; ++kind) {
      const QuantizedLinear q = rtn(big.weight, alloc_spec(big, kind ? GridKind::Compand : GridKind::Uniform, 64, 48, {2, 3, 0}));
      grid_param_grads(q, dW, ds[(size_t)(2 * kind + k)], dz[(size_t)(2 * kind + k)]);
    }
  }
  omp_set_num_threads(nt);
  CHECK(mse[0] == mse[1]);
  CHECK(ds[0] == ds[1]);
  CHECK(dz[0] == dz[1]);
  CHECK(ds[2] == ds[3]);
  CHECK(dz[2] == dz[3]);
  MESSAGE("stories260K block 2: loss " << a.first.loss_before << " -> " << a.first.loss_after);
  CHECK(a.first.loss_before == b.first.loss_before);
  CHECK(a.first.epoch_loss == b.first.epoch_loss);
  CHECK(a.first.loss_after == b.first.loss_after);
  CHECK(same_block(a.second, b.second, l));
  CHECK(a.first.loss_after < a.first.loss_before);
}
