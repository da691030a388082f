// OWQ (docs/methods.md#owq): the selection is exactly the top scores (brute force, ties), the
// scores against RTN computed apart, exactly n weak columns kept (every row, codes decoding to 0),
// the kept values equal the closed-form least-squares compensation of the rounded columns (f64)
// and the rounded columns' codes equal GPTQ's on the permuted problem (bitwise), the grid fitted
// without the weak columns, storage bits equal the hand formula, the objective at most plain
// GPTQ's when a few inputs dominate Σ, n = 0 is GPTQ bit-exactly, the budget rule's numbers, and
// errors.
#include <doctest/doctest.h>
#include <omp.h>

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "core/half.h"
#include "core/rng.h"
#include "layer_problems.h"
#include "quant/storage.h"
#include "solvers/gptq.h"
#include "solvers/owq.h"
#include "solvers/rtn.h"
#include "solvers/solver.h"

using namespace qf;
using Eigen::MatrixXd;

namespace {

using test::to_md;
using test::to_tensor;

GridSpec spec_of(int bits, int64_t group = -1, bool sym = false) {
  GridSpec s;
  s.bits = bits;
  s.group = group;
  s.sym = sym;
  return s;
}

// A correlated problem where `hot` inputs have a ×scale larger spread (a few huge Σ_jj).
test::Problem hot_problem(int64_t r, int64_t c, uint64_t seed, std::vector<int64_t> hot, double scale) {
  Rng g(seed);
  MatrixXd W(r, c), A = MatrixXd::Identity(c, c), Z(c, 3 * c);
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < c; ++j) W(i, j) = g.normal();
  for (int64_t i = 0; i < c; ++i)
    for (int64_t j = 0; j < c; ++j) A(i, j) += 0.8 * g.normal() / std::sqrt((double)c);
  for (int64_t i = 0; i < c; ++i) {
    double s = 0.3 + 2 * g.uniform();
    if (std::find(hot.begin(), hot.end(), i) != hot.end()) s *= scale;
    for (int64_t j = 0; j < 3 * c; ++j) Z(i, j) = s * g.normal();
  }
  const MatrixXd X = A * Z;
  MatrixXd S = X * X.transpose();
  S = 0.5 * (S + S.transpose()).eval();
  return {to_tensor(W), to_tensor(S)};
}

OwqOptions by_columns(int64_t n) {
  OwqOptions o;
  o.columns = n;
  return o;
}

bool same_u8(const Tensor& a, const Tensor& b) {
  return a.numel() == b.numel() && std::memcmp(a.data<uint8_t>(), b.data<uint8_t>(), (size_t)a.numel()) == 0;
}

}  // namespace

TEST_CASE("owq_select: exactly the n largest scores, ties to the lower index (brute force)") {
  Rng g(1);
  for (int trial = 0; trial < 200; ++trial) {
    const int64_t c = 1 + (int64_t)(g.uniform() * 30);
    std::vector<double> s((size_t)c);
    for (double& x : s) x = std::round(g.uniform() * (trial % 2 ? 5 : 1000));  // ties when trial is odd
    const int64_t n = (int64_t)(g.uniform() * (double)(c + 1));
    const std::vector<int64_t> sel = owq_select(s, n);
    REQUIRE((int64_t)sel.size() == n);
    // rank of j: columns with a larger score, or an equal one at a lower index
    for (int64_t j = 0; j < c; ++j) {
      int64_t rank = 0;
      for (int64_t k = 0; k < c; ++k) rank += s[(size_t)k] > s[(size_t)j] || (s[(size_t)k] == s[(size_t)j] && k < j);
      const bool chosen = std::find(sel.begin(), sel.end(), j) != sel.end();
      CHECK(chosen == (rank < n));
      if (chosen) CHECK(sel[(size_t)rank] == j);  // listed by rank
    }
  }
  CHECK_THROWS_WITH_AS(owq_select({1, 2}, 3), doctest::Contains("cannot select 3 of 2"), Error);
}

TEST_CASE("owq_scores: Σ_jj·‖W_j − RTN(W)_j‖² against rtn(), and Σ_jj alone") {
  const test::Problem pr = hot_problem(24, 40, 2, {3, 17}, 6);
  const LayerProblem p = LayerProblem::make(pr.W, pr.S);
  for (const GridSpec& spec : {spec_of(3), spec_of(4, 8, true)}) {
    const std::vector<float> imp = sigma_diag(pr.S);
    const MatrixXd R = to_md(rtn(pr.W, spec, imp.data()).dequantize()), W = to_md(pr.W), S = to_md(pr.S);
    const std::vector<double> sc = owq_scores(p, spec, OwqScore::RtnError);
    for (int64_t j = 0; j < 40; ++j) CHECK(sc[(size_t)j] == doctest::Approx(S(j, j) * (W.col(j) - R.col(j)).squaredNorm()).epsilon(1e-12));
    const std::vector<double> sd = owq_scores(p, spec, OwqScore::SigmaDiag);
    for (int64_t j = 0; j < 40; ++j) CHECK(sd[(size_t)j] == (double)pr.S.get({j, j}));
  }
}

TEST_CASE("owq: n weak columns = the top scores, kept in full precision at GPTQ's compensated values") {
  const int64_t r = 32, c = 48, n = 5;
  const test::Problem pr = hot_problem(r, c, 3, {2, 11, 30, 41}, 8);
  const LayerProblem p = LayerProblem::make(pr.W, pr.S);
  for (const bool act : {false, true})
    for (const int64_t B : {(int64_t)128, (int64_t)7}) {
      CAPTURE(act);
      CAPTURE(B);
      const GridSpec spec = spec_of(3);
      OwqOptions o = by_columns(n);
      o.gptq.act_order = act;
      o.gptq.blocksize = B;
      const OwqResult res = owq(p, spec, o);
      // the top-n of independently computed scores
      const std::vector<double> sc = owq_scores(p, spec, OwqScore::RtnError);
      std::vector<int64_t> order((size_t)c);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return sc[(size_t)a] > sc[(size_t)b]; });
      order.resize(n);
      CHECK(res.weak == order);
      // exactly n columns, every row once, codes decoding to 0, as storage sees them
      const QuantizedLinear& q = res.q;
      CHECK(q.outliers.nnz() == n * r);
      std::vector<int64_t> cols(q.outliers.col.begin(), q.outliers.col.end());
      std::sort(cols.begin(), cols.end());
      cols.erase(std::unique(cols.begin(), cols.end()), cols.end());
      std::vector<int64_t> weak_sorted = res.weak;
      std::sort(weak_sorted.begin(), weak_sorted.end());
      CHECK(cols == weak_sorted);
      CHECK(column_outliers(q) == weak_sorted);
      // the kept values: W_w + (W_q − Q)·H_qw·H_ww⁻¹ under the damped H (f64), rounded to fp16
      const MatrixXd W = to_md(pr.W), S = to_md(pr.S), D = to_md(q.dequantize());
      const double lam = 0.01 * S.diagonal().mean();
      const MatrixXd H = S + lam * MatrixXd::Identity(c, c);
      std::vector<int64_t> rest;
      for (int64_t j = 0; j < c; ++j)
        if (!std::binary_search(weak_sorted.begin(), weak_sorted.end(), j)) rest.push_back(j);
      MatrixXd Eq(r, c - n), Hqw(c - n, n), Hww(n, n), Ww(r, n);
      for (int64_t a = 0; a < c - n; ++a) {
        Eq.col(a) = W.col(rest[(size_t)a]) - D.col(rest[(size_t)a]);
        for (int64_t b = 0; b < n; ++b) Hqw(a, b) = H(rest[(size_t)a], weak_sorted[(size_t)b]);
      }
      for (int64_t a = 0; a < n; ++a) {
        Ww.col(a) = W.col(weak_sorted[(size_t)a]);
        for (int64_t b = 0; b < n; ++b) Hww(a, b) = H(weak_sorted[(size_t)a], weak_sorted[(size_t)b]);
      }
      const MatrixXd ref = Ww + Eq * Hqw * Hww.inverse();
      const double comp = (ref - Ww).cwiseAbs().maxCoeff(), scale = ref.cwiseAbs().maxCoeff();
      CHECK(comp > 0.05 * scale);  // the compensation is large: the check below can tell
      for (int64_t a = 0; a < n; ++a)
        for (int64_t i = 0; i < r; ++i) {
          const double kept = D(i, weak_sorted[(size_t)a]);
          CHECK(kept == (double)f16_to_f32(f32_to_f16((float)kept)));  // stored as fp16
          CHECK(std::fabs(kept - ref(i, a)) <= std::ldexp(std::fabs(ref(i, a)), -10) + 1e-4 * scale);
        }
      // the rounded columns: GPTQ on the permuted problem (weak columns last) with OWQ's grid, bitwise
      std::vector<int64_t> perm = rest;
      if (act)
        std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) { return S(a, a) > S(b, b); });
      perm.insert(perm.end(), res.weak.begin(), res.weak.end());
      MatrixXd Wp(r, c), Sp(c, c);
      for (int64_t a = 0; a < c; ++a) {
        Wp.col(a) = W.col(perm[(size_t)a]);
        for (int64_t b = 0; b < c; ++b) Sp(a, b) = pr.S.get({perm[(size_t)a], perm[(size_t)b]});
      }
      Grid gp = q.grid;
      for (int64_t a = 0; a < c; ++a) gp.g_idx[(size_t)a] = q.grid.g_idx[(size_t)perm[(size_t)a]];
      GptqOptions go;
      go.blocksize = B;
      const Tensor Wpt = to_tensor(Wp);
      Tensor Spt = Tensor::empty({c, c});
      for (int64_t a = 0; a < c; ++a)
        for (int64_t b = 0; b < c; ++b) Spt.f32()[a * c + b] = pr.S.get({perm[(size_t)a], perm[(size_t)b]});
      const GptqResult ref_run = gptq_on_grid(Wpt, Spt, gp, go);
      int64_t diff = 0;
      for (int64_t a = 0; a < c - n; ++a)
        for (int64_t i = 0; i < r; ++i) diff += q.codes.data<uint8_t>()[i * c + perm[(size_t)a]] != ref_run.q.codes.data<uint8_t>()[i * c + a];
      CHECK(diff == 0);
    }
}

TEST_CASE("owq: the grid is fitted without the weak columns (per channel, static groups)") {
  const int64_t r = 16, c = 40, n = 4;
  const test::Problem pr = hot_problem(r, c, 4, {5, 9, 22, 33}, 10);
  MatrixXd W = to_md(pr.W);
  // make the weak columns' weights huge: a grid that saw them would be far wider
  const LayerProblem p0 = LayerProblem::make(pr.W, pr.S);
  const std::vector<int64_t> weak = owq_select(owq_scores(p0, spec_of(4), OwqScore::SigmaDiag), n);
  for (int64_t j : weak) W.col(j) *= 20;
  const LayerProblem p = LayerProblem::make(to_tensor(W), pr.S);
  OwqOptions o = by_columns(n);
  o.score = OwqScore::SigmaDiag;
  std::vector<int64_t> rest;
  for (int64_t j = 0; j < c; ++j)
    if (std::find(weak.begin(), weak.end(), j) == weak.end()) rest.push_back(j);
  {
    const OwqResult res = owq(p, spec_of(4), o);
    CHECK(res.weak == weak);
    MatrixXd Wr(r, c - n);
    for (size_t a = 0; a < rest.size(); ++a) Wr.col((int64_t)a) = W.col(rest[a]);
    const Grid ref = grid_fit(to_tensor(Wr), spec_of(4));
    CHECK(res.q.grid.scale == ref.scale);
    CHECK(res.q.grid.zero == ref.zero);
  }
  {
    o.gptq.static_groups = true;
    const GridSpec spec = spec_of(4, 8);
    const OwqResult res = owq(p, spec, o);
    Grid ref = grid_new(spec, r, c);
    for (int64_t k = 0; k < 5; ++k) {
      std::vector<int64_t> cols;
      for (int64_t j = 8 * k; j < 8 * k + 8; ++j)
        if (std::find(weak.begin(), weak.end(), j) == weak.end()) cols.push_back(j);
      MatrixXd B(r, (int64_t)cols.size());
      for (size_t a = 0; a < cols.size(); ++a) B.col((int64_t)a) = W.col(cols[a]);
      grid_fit_group(ref, k, to_tensor(B));
    }
    CHECK(res.q.grid.scale == ref.scale);
    CHECK(res.q.grid.zero == ref.zero);
    for (int64_t j = 0; j < c; ++j) CHECK(res.q.grid.g_idx[(size_t)j] == j / 8);
  }
  {
    // dynamic groups over the processing order: no cell is as wide as the weak weights
    o.gptq.static_groups = false;
    const OwqResult res = owq(p, spec_of(4, 8), o);
    double wmax = 0;
    for (int64_t j : rest) wmax = std::max(wmax, W.col(j).cwiseAbs().maxCoeff());
    for (size_t k = 0; k < res.q.grid.scale.size(); ++k) CHECK(res.q.grid.scale[k] * 15 <= 4 * wmax);
    // the rounded columns' groups are consecutive runs of 8 in processing order (weak columns removed)
    for (size_t a = 0; a < rest.size(); ++a) CHECK(res.q.grid.g_idx[(size_t)rest[a]] == (int32_t)(a / 8));
  }
}

TEST_CASE("owq: storage bits are the hand formula") {
  const int64_t r = 24, c = 64, n = 6;
  const test::Problem pr = hot_problem(r, c, 5, {1, 2, 3}, 5);
  const LayerProblem p = LayerProblem::make(pr.W, pr.S);
  struct Case {
    GridSpec spec;
    double params_per_cell;
  };
  for (const Case& k : {Case{spec_of(3), 32}, Case{spec_of(3, -1, true), 16}, Case{spec_of(4, 16), 32}}) {
    CAPTURE(k.spec.str());
    const OwqResult res = owq(p, k.spec, by_columns(n));
    const StorageBits s = storage_bits(res.q);
    const int64_t ngroups = k.spec.group > 0 ? c / k.spec.group : 1;
    const double codes = (double)k.spec.bits * r * (c - n);
    const double params = k.params_per_cell * r * ngroups;
    const double outl = 16.0 * r * n + 16.0 * n;
    CHECK(s.codes == codes);
    CHECK(s.params == params);
    CHECK(s.outliers == outl);
    CHECK(s.per_weight() == doctest::Approx((codes + params + outl) / (double)(r * c)).epsilon(1e-15));
  }
  // one entry off a weak column makes it plain COO again: 48 bits per entry, codes counted
  OwqResult res = owq(p, spec_of(3), by_columns(n));
  const int64_t nnz = res.q.outliers.nnz();
  res.q.outliers.row.pop_back();
  res.q.outliers.col.pop_back();
  res.q.outliers.val.pop_back();
  const StorageBits s = storage_bits(res.q);
  CHECK(s.outliers == 48.0 * (double)r + (16.0 * r + 16.0) * (n - 1) - 48.0);
  CHECK(s.codes == 3.0 * r * (c - n + 1));
  CHECK(nnz == n * r);
  // a complete column whose codes do not all decode to 0 is COO as well (its codes carry values)
  OwqResult res2 = owq(p, spec_of(3), by_columns(n));
  const int64_t j = res2.weak[0];
  uint8_t& code = res2.q.codes.data<uint8_t>()[5 * c + j];
  code = (uint8_t)(code == 0 ? 1 : code - 1);
  const StorageBits s2 = storage_bits(res2.q);
  CHECK(s2.outliers == 48.0 * (double)r + (16.0 * r + 16.0) * (n - 1));
  CHECK(column_outliers(res2.q).size() == (size_t)(n - 1));
}

TEST_CASE("owq: objective at most plain GPTQ's when a few inputs dominate Σ") {
  for (uint64_t seed = 10; seed < 16; ++seed) {
    CAPTURE(seed);
    const test::Problem pr = hot_problem(48, 64, seed, {(int64_t)seed % 64, 20, 47}, 12);
    const LayerProblem p = LayerProblem::make(pr.W, pr.S);
    for (const GridSpec& spec : {spec_of(3), spec_of(2, 16)}) {
      const double g = objective(p, gptq(p, spec).q.dequantize()).value;
      const double w = objective(p, owq(p, spec, by_columns(4)).q.dequantize()).value;
      CHECK(w <= g);
      const double w2 = objective(p, owq(p, spec, [] { OwqOptions o = by_columns(4); o.score = OwqScore::SigmaDiag; return o; }()).q.dequantize()).value;
      CHECK(w2 <= g);
    }
  }
}

TEST_CASE("owq: no weak column is GPTQ bit-exactly") {
  const test::Problem pr = hot_problem(40, 48, 6, {4}, 4);
  const LayerProblem p = LayerProblem::make(pr.W, pr.S);
  for (const bool act : {false, true})
    for (const bool stat : {false, true})
      for (const GridSpec& spec : {spec_of(3), spec_of(4, 16), spec_of(3, 8, true)}) {
        GptqOptions go;
        go.act_order = act;
        go.static_groups = stat;
        go.blocksize = 16;
        OwqOptions o = by_columns(0);
        o.gptq = go;
        const OwqResult w = owq(p, spec, o);
        const GptqResult g = gptq(p, spec, go);
        CHECK(same_u8(w.q.codes, g.q.codes));
        CHECK(w.q.grid.scale == g.q.grid.scale);
        CHECK(w.q.grid.zero == g.q.grid.zero);
        CHECK(w.q.grid.g_idx == g.q.grid.g_idx);
        CHECK(w.q.outliers.nnz() == 0);
        CHECK(w.proxy_loss == g.proxy_loss);
      }
  // target_bits equal to the grid's bits gives no column either
  OwqOptions t;
  t.target_bits = 3;
  t.layer_kind = OwqLayerKind::Attention;
  CHECK(owq(p, spec_of(3), t).weak.empty());
}

TEST_CASE("owq: the budget rule") {
  // LLaMA-7B-like shapes at 3.01 bits: r = 12/13 · 0.01 / 7
  CHECK(owq_budget_columns(4096, 3, 3.01, 7, false) == 6);   // 5.40 → 5 → even 6
  CHECK(owq_budget_columns(4096, 3, 3.01, 7, true) == 2);    // 2.03 → 2
  CHECK(owq_budget_columns(11008, 3, 3.01, 7, true) == 6);   // 5.44 → 5 → 6
  CHECK(owq_budget_columns(64, 3, 3.01, 7, false) == 0);     // stories260K: 0.08 → 0
  CHECK(owq_budget_columns(4096, 4, 4.01, 7, false) == 6);   // 12/12·0.01/7·4096 = 5.85 → 6
  // round half to even (Python's round), then odd → +1: 12/12 · 0.25 / 1 · 10 = 2.5 → 2; 3.5 → 4
  CHECK(owq_budget_columns(10, 4, 4.25, 1, false) == 2);
  CHECK(owq_budget_columns(10, 4, 4.35, 1, false) == 4);
  CHECK(owq_budget_columns(10, 4, 4.15, 1, false) == 2);     // 1.5 → 2
  CHECK(owq_budget_columns(100, 4, 4.0, 7, false) == 0);
  CHECK_THROWS_WITH_AS(owq_budget_columns(100, 4, 3.5, 7, false), doctest::Contains("option 'target_bits' must be >= the grid's bits (4)"), Error);
  CHECK_THROWS_WITH_AS(owq_budget_columns(100, 4, 16, 7, false), doctest::Contains("< 16"), Error);
  bool known = true;
  CHECK(!owq_site_is_mlp("attn_out", &known));
  CHECK(known);
  CHECK(owq_site_is_mlp("ffn_mid", &known));
  CHECK(!owq_site_is_mlp("", &known));
  CHECK(!known);
}

TEST_CASE("owq: the rule through the solver, the kind from the site; errors name the option") {
  const test::Problem pr = hot_problem(16, 96, 7, {0}, 3);
  // 3.5 bits, 7 linears: r = 12/13·0.5/7 = 0.0659; attention 96·r = 6.33 → 6; mlp 2.37 → 2
  const LayerProblem pa = LayerProblem::make(pr.W, pr.S, {}, 0, "attn_in");
  const LayerProblem pm = LayerProblem::make(pr.W, pr.S, {}, 0, "ffn_mid");
  const LayerProblem pn = LayerProblem::make(pr.W, pr.S);
  OwqOptions o;
  o.target_bits = 3.5;
  CHECK(owq(pa, spec_of(3), o).weak.size() == 6);
  CHECK(owq(pm, spec_of(3), o).weak.size() == 2);
  CHECK_THROWS_WITH_AS(owq(pn, spec_of(3), o), doctest::Contains("option 'layer_kind' is 'auto' but the [16, 96] linear has no site"), Error);
  o.layer_kind = OwqLayerKind::Mlp;
  CHECK(owq(pn, spec_of(3), o).weak.size() == 2);
  o.columns = 3;
  CHECK_THROWS_WITH_AS(owq(pn, spec_of(3), o), doctest::Contains("give option 'columns' or option 'target_bits', not both"), Error);
  CHECK_THROWS_WITH_AS(owq(pn, spec_of(3), OwqOptions{}), doctest::Contains("give option 'columns'"), Error);
  CHECK_THROWS_WITH_AS(owq(pn, spec_of(3), by_columns(96)), doctest::Contains("96 weak columns leave no column of the [16, 96] linear to quantize"), Error);
  LayerProblem named = pm;
  named.block = 3;
  named.name = "down";
  CHECK_THROWS_WITH_AS(owq(named, spec_of(3), by_columns(96)),
                       doctest::Contains("leave no column of the block 3 linear down [16, 96] (site ffn_mid) to quantize"), Error);
  GridSpec comp = spec_of(3);
  comp.float_zero = true;
  CHECK_THROWS_WITH_AS(owq(pn, comp, by_columns(2)), doctest::Contains("needs a uniform grid with integer zeros"), Error);

  // the registry: qf.solve's path, options resolved and checked there
  const SolveResult sr = solve_layer("owq", pa, spec_of(3), {{"target_bits", 3.5}, {"blocksize", 16}});
  CHECK(sr.info.at("columns").get<int64_t>() == 6);
  CHECK(sr.info.at("weak_columns").size() == 6);
  CHECK(sr.info.at("weak_columns")[0].get<int64_t>() >= 1);
  CHECK_THROWS_WITH_AS(solve_layer("owq", pa, spec_of(3), {{"score", "hessian"}}), doctest::Contains("owq: option 'score' must be one of rtn_error, sigma_diag"), Error);
  CHECK_THROWS_WITH_AS(solve_layer("owq", pa, spec_of(3), {{"target_bits", 0.5}}), doctest::Contains("option 'target_bits'"), Error);
  CHECK_THROWS_WITH_AS(solve_layer("owq", pa, spec_of(3), {{"columns", -2}}), doctest::Contains("option 'columns'"), Error);
}

TEST_CASE("owq: bit-identical for 1 and 2 threads") {
  const test::Problem pr = hot_problem(300, 64, 8, {3, 9}, 6);  // > one 256-row GPTQ chunk
  const LayerProblem p = LayerProblem::make(pr.W, pr.S);
  const int nt = omp_get_max_threads();
  omp_set_num_threads(1);
  const OwqResult a = owq(p, spec_of(3, 16), by_columns(4));
  omp_set_num_threads(2);
  const OwqResult b = owq(p, spec_of(3, 16), by_columns(4));
  omp_set_num_threads(nt);
  CHECK(same_u8(a.q.codes, b.q.codes));
  CHECK(a.q.outliers.val == b.q.outliers.val);
  CHECK(a.q.grid.scale == b.q.grid.scale);
}
