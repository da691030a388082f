// Grids with allocations (docs/methods.md#allocated-grids): per-group bits, row groups (CVXQ row
// clusters), 0-bit groups collapsing to the median, and the Laplace compander — semantics against
// hand values and brute force, and the solvers (RTN, GPTQ, cd_sweep, QuantEase) on such grids.
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <vector>

#include "solvers/gptq.h"
#include "quant/grid.h"
#include "core/half.h"
#include "quant/layer_problem.h"
#include "solvers/quantease.h"
#include "core/rng.h"
#include "solvers/rtn.h"

using namespace qf;

namespace {

Tensor randn(int64_t r, int64_t c, uint64_t seed, double scale = 1.0) {
  Rng g(seed);
  Tensor t = Tensor::empty({r, c});
  for (int64_t k = 0; k < r * c; ++k) t.f32()[k] = (float)(scale * g.normal());
  return t;
}

// Σ = XXᵀ of correlated inputs.
Tensor sigma(int64_t c, uint64_t seed) {
  Rng g(seed);
  Eigen::MatrixXd A = Eigen::MatrixXd::Identity(c, c), Z(c, 3 * c);
  for (int64_t i = 0; i < c; ++i)
    for (int64_t j = 0; j < c; ++j) A(i, j) += 0.6 * g.normal() / std::sqrt((double)c);
  for (int64_t i = 0; i < c; ++i)
    for (int64_t j = 0; j < 3 * c; ++j) Z(i, j) = g.normal();
  const Eigen::MatrixXd X = A * Z;
  Tensor S = Tensor::empty({c, c});
  S.mat() = (X * X.transpose()).cast<float>();
  return S;
}

GridSpec compand_spec(int bits, int64_t group = 1) {
  GridSpec s;
  s.bits = bits;
  s.group = group;
  s.kind = GridKind::Compand;
  return s;
}

// Every representable value of (row i, column j).
std::vector<float> levels(const Grid& g, int64_t i, int64_t j) {
  std::vector<float> v;
  const int64_t k = g.g_idx[j];
  for (int q = 0; q <= g.maxq_at(i, k); ++q) v.push_back(g.value(q, i, k));
  return v;
}

}  // namespace

TEST_CASE("compander: increasing levels, exact round trip, nearest level by brute force") {
  const float mu = 0.3f, b = 0.7f;
  for (int bits : {1, 2, 3, 4, 8}) {
    const int n = 1 << bits;
    for (int k = 0; k < n; ++k) {
      CHECK(compand_code(compand_level(k, mu, b, bits), mu, b, bits) == k);
      if (k > 0) CHECK(compand_level(k, mu, b, bits) > compand_level(k - 1, mu, b, bits));
    }
    // Hand value: level k = F⁻¹((k + ½)/2^B); for B = 1 the levels are μ ∓ b·ln 2.
    if (bits == 1) {
      CHECK(compand_level(0, mu, b, 1) == doctest::Approx(mu - b * std::log(2.0)));
      CHECK(compand_level(1, mu, b, 1) == doctest::Approx(mu + b * std::log(2.0)));
    }
    Rng g(bits);
    int prev = 0;
    std::vector<float> xs;
    for (int t = 0; t < 400; ++t) xs.push_back((float)(mu + 4 * b * (2 * g.uniform() - 1)));
    std::sort(xs.begin(), xs.end());
    for (float x : xs) {
      const int c = compand_code(x, mu, b, bits);
      CHECK(c >= prev);  // monotone in x
      prev = c;
      float best = INFINITY;
      for (int k = 0; k < n; ++k) best = std::min(best, std::fabs(x - compand_level(k, mu, b, bits)));
      CHECK(std::fabs(x - compand_level(c, mu, b, bits)) == best);
    }
  }
  CHECK(compand_level(3, mu, 0.f, 2) == mu);  // a constant group: every level is μ
}

TEST_CASE("companded grid fit: μ = median, b = 3/√2 · RMS about it (hand-checked group)") {
  // One row, one group of 5 values: median 1, deviations {-1, 0, 0, 1, 3} → RMS √(11/5).
  const Tensor W = Tensor::from_data({1, 5}, {0.f, 1.f, 1.f, 2.f, 4.f});
  GridSpec s = compand_spec(2, -1);
  const Grid g = grid_fit(W, s);
  CHECK(g.z(0, 0) == doctest::Approx(1.0));
  CHECK(g.s(0, 0) == doctest::Approx(3.0 / std::sqrt(2.0) * std::sqrt(11.0 / 5.0)).epsilon(1e-6));
  s.compand_mult = 1.f;
  s.compand_bias = 0.5f;  // μ = m + bias·s·2^mult, b = 3/√2·s·2^mult
  const Grid g2 = grid_fit(W, s);
  CHECK(g2.z(0, 0) == doctest::Approx(1.0 + 0.5 * std::sqrt(11.0 / 5.0) * 2).epsilon(1e-6));
  CHECK(g2.s(0, 0) == doctest::Approx(3.0 / std::sqrt(2.0) * std::sqrt(11.0 / 5.0) * 2).epsilon(1e-6));
  // The search never does worse than the default (mult 0, bias 0 are on its grid).
  const Tensor W3 = randn(8, 64, 5, 0.02);
  GridSpec sd = compand_spec(3, -1), ss = sd;
  ss.compand_search = true;
  const auto err = [&](const GridSpec& sp) {
    const Tensor D = rtn(W3, sp).dequantize();
    double e = 0;
    for (int64_t k = 0; k < W3.numel(); ++k) e += std::pow((double)D.f32()[k] - W3.f32()[k], 2);
    return e;
  };
  CHECK(err(ss) <= err(sd));
}

TEST_CASE("0-bit groups collapse to their median; mixed bits use each group's own range") {
  // 2 rows × 6 columns, groups of 3: bits {row0: 0, 2}, {row1: 3, 1}.
  const Tensor W = Tensor::from_data({2, 6}, {5.f, -1.f, 2.f, 0.1f, 0.4f, -0.3f,  //
                                              1.f, 2.f, 3.f, -2.f, 0.5f, 1.5f});
  GridSpec s;
  s.bits = 8;  // ignored when group_bits is set
  s.group = 3;
  s.group_bits = {0, 2, 3, 1};
  const QuantizedLinear q = rtn(W, s);
  const Tensor D = q.dequantize();
  // row 0, group 0 pruned to median(5, −1, 2) = 2
  CHECK(D.get({0, 0}) == 2.f);
  CHECK(D.get({0, 1}) == 2.f);
  CHECK(D.get({0, 2}) == 2.f);
  // every other (row, group) equals a plain RTN of that slice at its bits
  const struct { int64_t r, g; int bits; } cells[] = {{0, 1, 2}, {1, 0, 3}, {1, 1, 1}};
  for (auto c : cells) {
    GridSpec one;
    one.bits = c.bits;
    const Tensor slice = W.narrow(0, c.r, 1).narrow(1, c.g * 3, 3).contiguous();
    const Tensor ref = rtn(slice, one).dequantize();
    for (int64_t j = 0; j < 3; ++j) CHECK(D.get({c.r, c.g * 3 + j}) == ref.get({0, j}));
    for (int64_t j = 0; j < 3; ++j) CHECK((int)q.codes.data<uint8_t>()[c.r * 6 + c.g * 3 + j] <= (1 << c.bits) - 1);
  }
  CHECK(s.mean_bits(2, 6) == doctest::Approx((0 + 2 + 3 + 1) / 4.0));
  GridSpec rag = s;  // ragged: 7 columns, groups of 3 → widths 3, 3, 1
  rag.group_bits = {4, 2, 8, 4, 2, 8};
  CHECK(rag.mean_bits(2, 7) == doctest::Approx((4 * 3 + 2 * 3 + 8 * 1) * 2 / 14.0));
}

TEST_CASE("row groups share parameters fitted on their pooled rows") {
  const Tensor W = randn(6, 10, 9);
  GridSpec s;
  s.bits = 3;
  s.group = 5;
  s.row_group = {0, 1, 0, 2, 1, 0};
  s.nrowgroups = 3;
  const Grid g = grid_fit(W, s);
  CHECK(g.scale.size() == 3 * 2);
  // Row group 0 = rows {0, 2, 5}: its params equal a per-channel fit of those rows laid end to end.
  for (int64_t grp = 0; grp < 2; ++grp) {
    std::vector<float> pooled;
    for (int64_t r : {0, 2, 5})
      for (int64_t j = 0; j < 5; ++j) pooled.push_back(W.get({r, grp * 5 + j}));
    GridSpec one;
    one.bits = 3;
    const Grid ref = grid_fit(Tensor::from_data({1, 15}, pooled), one);
    for (int64_t r : {0, 2, 5}) {
      CHECK(g.s(r, grp) == ref.s(0, 0));
      CHECK(g.z(r, grp) == ref.z(0, 0));
    }
  }
  CHECK(g.s(1, 0) == g.s(4, 0));
  CHECK(g.s(1, 0) != g.s(3, 0));
}

TEST_CASE("cd_sweep on companded and mixed-bit grids: each update is the brute-force best value") {
  const int64_t r = 4, c = 12;
  const Tensor W = randn(r, c, 21, 0.5), S = sigma(c, 22);
  GridSpec cs = compand_spec(2, 3);
  GridSpec ms;
  ms.group = 4;
  ms.group_bits = {0, 1, 3, 2, 2, 4, 1, 3, 4, 0, 2, 1};
  for (const GridSpec& sp : {cs, ms}) {
    const Grid g = grid_fit(W, sp);
    Tensor What = W.clone();
    const auto T = W.cmat().cast<double>();
    const auto Sd = S.cmat().cast<double>();
    for (int64_t j = 0; j < c; ++j) {
      const Eigen::MatrixXd before = What.cmat().cast<double>();
      CdSweepOptions o;
      o.order = {j};
      cd_sweep(W, S, What, g, o);
      for (int64_t i = 0; i < r; ++i) {
        auto rowf = [&](double v) {
          Eigen::RowVectorXd e = T.row(i) - before.row(i);
          e(j) = T(i, j) - v;
          return (double)(e * Sd * e.transpose());
        };
        double best = INFINITY;
        for (float v : levels(g, i, j)) best = std::min(best, rowf(v));
        CHECK(rowf(What.get({i, j})) <= best + 1e-9 * std::max(1.0, best));
      }
    }
  }
}

TEST_CASE("RTN, GPTQ and QuantEase consume an allocation and stay on its grid") {
  const int64_t r = 16, c = 32;
  const Tensor W = randn(r, c, 31, 0.1), S = sigma(c, 32);
  GridSpec sp;
  sp.group = 1;  // CVXQ groups: row cluster × one column
  sp.row_group.resize(r);
  for (int64_t i = 0; i < r; ++i) sp.row_group[i] = (int32_t)(i % 4);
  sp.nrowgroups = 4;
  Rng g(33);
  for (int64_t k = 0; k < 4 * c; ++k) sp.group_bits.push_back((uint8_t)g.randint(0, 4));
  for (GridKind kind : {GridKind::Uniform, GridKind::Compand}) {
    sp.kind = kind;
    const QuantizedLinear qr = rtn(W, sp);
    const GptqResult qg = gptq(W, S, sp);
    QuantEaseOptions qo;
    qo.iters = 8;
    qo.init = "rtn";
    const QuantEaseResult qe = quantease(W, S, sp, qo);
    const double fr = objective(W, qr.dequantize(), S).value, fg = objective(W, qg.q.dequantize(), S).value,
                 fe = objective(W, qe.q.dequantize(), S).value;
    MESSAGE((kind == GridKind::Uniform ? "uniform" : "compand"), ": RTN ", fr, " GPTQ ", fg, " QuantEase(init rtn) ", fe);
    CHECK(fe <= fr * (1 + 1e-9));  // never worse than its initialization
    CHECK(fg < fr);
    for (const QuantizedLinear* q : {&qr, &qg.q, &qe.q}) {
      const Tensor D = q->dequantize();
      CHECK(quantize_to_grid(D, q->grid).dequantize().to_vector() == D.to_vector());  // on the grid
      for (int64_t i = 0; i < r; ++i)
        for (int64_t j = 0; j < c; ++j)
          if (q->grid.bits_at(i, j) == 0) CHECK(D.get({i, j}) == q->grid.z(i, j));
    }
  }
}

TEST_CASE("allocation errors name the field") {
  GridSpec s;
  s.group = 4;
  s.group_bits = {1, 2, 9};
  CHECK_THROWS_WITH_AS(s.validate(), doctest::Contains("allocated bits must be in 0..8, got 9 at group 3"), Error);
  s.group_bits = {1, 2, 3};
  CHECK_THROWS_WITH_AS(grid_fit(randn(2, 8, 1), s), doctest::Contains("bit allocation has 3 entries, expected 2 row groups × 2 column groups = 4"), Error);
  GridSpec rg;
  rg.row_group = {0, 3};
  rg.nrowgroups = 2;
  CHECK_THROWS_WITH_AS(grid_fit(randn(2, 8, 1), rg), doctest::Contains("row 2 is in row group 4, outside 1..2"), Error);
  rg.row_group = {0};
  CHECK_THROWS_WITH_AS(grid_fit(randn(2, 8, 1), rg), doctest::Contains("row_group has 1 entries, the weight has 2 rows"), Error);
  GridSpec cm = compand_spec(3);
  cm.mse = true;
  CHECK_THROWS_WITH_AS(cm.validate(), doctest::Contains("mse (clip search) applies to uniform grids"), Error);
}

TEST_CASE("f16_scales: every scale (and scale·zero for asym grids) is exact in fp16") {
  const Tensor W = randn(24, 96, 41, 0.03);
  for (bool sym : {true, false})
    for (int bits : {3, 4, 8}) {
      GridSpec s;
      s.bits = bits;
      s.group = 32;
      s.sym = sym;
      s.f16_scales = true;
      const Grid g = grid_fit(W, s);
      for (size_t k = 0; k < g.scale.size(); ++k) {
        const float sc = g.scale[k], m = -sc * g.zero[k];
        CHECK(f16_to_f32(f32_to_f16(sc)) == sc);
        if (!sym && bits <= 4) CHECK(f16_to_f32(f32_to_f16(m)) == m);
      }
      // the rounding costs little: RTN error within 5 % of the f32-scale grid's
      GridSpec f = s;
      f.f16_scales = false;
      auto err = [&](const GridSpec& sp) {
        const Tensor D = rtn(W, sp).dequantize();
        double e = 0;
        for (int64_t k = 0; k < W.numel(); ++k) e += std::pow((double)D.f32()[k] - W.f32()[k], 2);
        return e;
      };
      CHECK(err(s) <= 1.05 * err(f));
    }
  GridSpec c = compand_spec(3);
  c.f16_scales = true;
  CHECK_THROWS_WITH_AS(c.validate(), doctest::Contains("f16_scales applies to uniform grids"), Error);
}
