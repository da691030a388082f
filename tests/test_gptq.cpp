// GPTQ (docs/methods.md#gptq) and the layer problem (methods.md#objective): lazy batches vs B = 1,
// the sequential OBS form with inverse downdating in f64 (methods.md#gptq-checks (b)), GPTQ ≤ RTN,
// act-order = permuted problem, static-group g_idx, exhaustive optimum on tiny problems, dead
// inputs, damping escalation, objective / damp_sigma / check_layer_problem, errors.
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "solvers/gptq.h"
#include "layer_problems.h"
#include "core/rng.h"
#include "solvers/rtn.h"
#include "solvers/solver.h"

using namespace qf;
using Eigen::MatrixXd;

namespace {

using test::Problem;
using test::to_md;
using test::to_tensor;

Problem make_problem(int64_t r, int64_t c, uint64_t seed, int64_t N = 0, double corr = 0.8) {
  return test::scaled_problem(r, c, seed, N == 0 ? 2 * c : N, corr);
}

double fobj(const MatrixXd& W, const MatrixXd& Wh, const MatrixXd& S) {
  const MatrixXd E = W - Wh;
  return (E * S).cwiseProduct(E).sum();
}

GridSpec spec_of(int bits, int64_t group = -1, bool sym = false) {
  GridSpec s;
  s.bits = bits;
  s.group = group;
  s.sym = sym;
  return s;
}

std::vector<int64_t> act_perm(const Tensor& S) {
  const int64_t c = S.size(0);
  std::vector<int64_t> p((size_t)c);
  std::iota(p.begin(), p.end(), 0);
  std::stable_sort(p.begin(), p.end(), [&](int64_t a, int64_t b) { return S.get({a, a}) > S.get({b, b}); });
  return p;
}

int64_t count_diff(const Tensor& a, const Tensor& b) {
  const std::vector<float> x = a.to_vector(), y = b.to_vector();
  int64_t n = 0;
  for (size_t k = 0; k < x.size(); ++k) n += x[k] != y[k];
  return n;
}

// ---- the reference: sequential OBS with inverse downdating, f64 (methods.md#gptq-checks (b)) ----
// Column p (processing order): q = Q(w_p); δ = (w_p − q)/[H⁻¹]_pp; W[:, >p] −= δ·H⁻¹[p, >p];
// H⁻¹ ← H⁻¹ − H⁻¹[:, p] H⁻¹[p, :]/[H⁻¹]_pp;  f = Σ_p Σ_rows (w_p − q)²/[H⁻¹]_pp.
// Grid as the reference code: per-channel from the original W, static groups from W up front,
// dynamic groups from the weights as of the start of the lazy block holding the group's first
// column (the staleness of methods.md#gptq-groups, reproduced with a snapshot every `blocksize`
// columns). Rounding decisions are compared with the tested codes; a disagreement within 1e-3 of a
// rounding tie follows the tested code (so one tie does not cascade), anything else is a mismatch.
struct RefResult {
  MatrixXd What;       // original column order
  double loss = 0;     // Σ (w − q)²/[H⁻¹]_pp  (= f under the damped H)
  MatrixXd Hdamped;    // damped H, original order
  int64_t ties = 0, mismatches = 0, param_diffs = 0;
  double max_scale_rel = 0;
};

RefResult ref_gptq(const Tensor& Wt, const Tensor& St, const GridSpec& spec, const GptqOptions& opt, const GptqResult& got) {
  const int64_t r = Wt.size(0), c = Wt.size(1), G = spec.group > 0 ? spec.group : c;
  const bool grouped = spec.group > 0, stat = grouped && opt.static_groups;
  MatrixXd W = to_md(Wt), H = to_md(St);
  Grid grid = grouped ? grid_new(spec, r, c) : grid_fit(Wt, spec);
  for (int64_t j = 0; j < c; ++j)
    if (H(j, j) == 0) {
      H(j, j) = 1;
      W.col(j).setZero();
    }
  if (stat) grid = grid_fit(to_tensor(W), spec);
  std::vector<int64_t> perm((size_t)c);
  std::iota(perm.begin(), perm.end(), 0);
  if (opt.act_order) std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) { return H(a, a) > H(b, b); });
  MatrixXd Wp(r, c), Hp(c, c);
  for (int64_t p = 0; p < c; ++p) {
    Wp.col(p) = W.col(perm[p]);
    for (int64_t q = 0; q < c; ++q) Hp(p, q) = H(perm[p], perm[q]);
  }
  Hp.diagonal().array() += opt.percdamp * Hp.diagonal().mean();
  RefResult res;
  res.Hdamped.resize(c, c);
  for (int64_t p = 0; p < c; ++p)
    for (int64_t q = 0; q < c; ++q) res.Hdamped(perm[p], perm[q]) = Hp(p, q);
  MatrixXd Hinv = Hp.llt().solve(MatrixXd::Identity(c, c));
  MatrixXd Wsnap;
  res.What.resize(r, c);
  const uint8_t* tc = got.q.codes.data<uint8_t>();
  const Grid& tg = got.q.grid;
  for (int64_t p = 0; p < c; ++p) {
    if (p % opt.blocksize == 0) Wsnap = Wp;
    if (grouped && !stat && p % G == 0) {
      const int64_t w = std::min(G, c - p);
      grid_fit_group(grid, p / G, to_tensor(Wsnap.middleCols(p, w)));
      for (int64_t i = 0; i < r; ++i) {
        const int64_t k = p / G;
        res.max_scale_rel = std::max(res.max_scale_rel, std::fabs((double)grid.s(i, k) / tg.s(i, k) - 1));
        res.param_diffs += grid.z(i, k) != tg.z(i, k);
      }
    }
    const int64_t g = stat ? perm[p] / G : grouped ? p / G : 0;
    const double h = Hinv(p, p);
    Eigen::VectorXd d(r);
    for (int64_t i = 0; i < r; ++i) {
      const double x = Wp(i, p), s = grid.s(i, g), z = grid.z(i, g);
      const double t = x / s;
      const int code = (int)std::clamp(std::nearbyint(t) + z, 0.0, (double)grid.maxq());
      const int tcode = tc[i * c + perm[p]];
      int use = code;
      if (tcode != code) {
        const bool tie = std::fabs(std::fabs(t - std::floor(t)) - 0.5) < 1e-3;
        (tie ? res.ties : res.mismatches) += 1;
        use = tcode;
      }
      const double q = (double)((float)s * ((float)use - (float)z));
      res.What(i, perm[p]) = q;
      d(i) = (x - q) / h;
      res.loss += (x - q) * (x - q) / h;
    }
    // OBS update of the remaining columns, then downdate the inverse (row/column p become 0).
    if (p + 1 < c) Wp.rightCols(c - p - 1) -= d * Hinv.row(p).tail(c - p - 1);
    const Eigen::VectorXd hc = Hinv.col(p);
    Hinv -= hc * hc.transpose() / h;
  }
  return res;
}

struct Case {
  int64_t r, c;
  GridSpec spec;
  GptqOptions opt;
  const char* name;
};

std::vector<Case> cases() {
  std::vector<Case> v;
  GptqOptions o;
  v.push_back({32, 300, spec_of(4), o, "4-bit per-channel, 300 cols"});
  v.push_back({24, 172, spec_of(3, 32), o, "3-bit g32 dynamic (stale groups), 172 cols"});
  v.push_back({24, 300, spec_of(3, 128), o, "3-bit g128 dynamic aligned, 300 cols"});
  o.static_groups = true;
  v.push_back({24, 172, spec_of(2, 32, true), o, "2-bit sym g32 static, 172 cols"});
  o.act_order = true;
  v.push_back({24, 172, spec_of(3, 32), o, "3-bit g32 static + act_order"});
  o.static_groups = false;
  v.push_back({24, 200, spec_of(4, 48), o, "4-bit g48 dynamic + act_order"});
  v.push_back({16, 130, spec_of(4), o, "4-bit per-channel + act_order, 130 cols"});
  return v;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
TEST_CASE("objective, damp_sigma and check_layer_problem") {
  const Problem P = make_problem(7, 19, 3);
  const Tensor D = rtn(P.W, spec_of(2)).dequantize();
  const MatrixXd W = to_md(P.W), S = to_md(P.S);
  const Objective o = objective(P.W, D, P.S);
  CHECK(o.value == doctest::Approx(fobj(W, to_md(D), S)).epsilon(1e-12));
  CHECK(o.relative == doctest::Approx(fobj(W, to_md(D), S) / (W * S).cwiseProduct(W).sum()).epsilon(1e-6));
  CHECK(o.value > 0);
  CHECK(objective(P.W, P.W, P.S).value == 0);
  CHECK(objective(P.W.t().contiguous().t(), D, P.S).value == doctest::Approx(o.value).epsilon(1e-12));  // strided W
  CHECK_THROWS_WITH_AS(objective(P.W, Tensor::zeros({7, 18}), P.S), doctest::Contains("What is [7, 18] but W is [7, 19]"), Error);

  Tensor S2 = P.S.clone();
  for (int64_t k = 0; k < 19; ++k) {
    S2.set({4, k}, 0.f);
    S2.set({k, 4}, 0.f);
    S2.set({11, k}, 0.f);
    S2.set({k, 11}, 0.f);
  }
  std::vector<int64_t> dead;
  const Tensor H = damp_sigma(S2, 0.05, &dead);
  CHECK(dead == std::vector<int64_t>{4, 11});
  double tr = 0;
  for (int64_t j = 0; j < 19; ++j) tr += j == 4 || j == 11 ? 1.0 : S2.get({j, j});
  const double lam = 0.05 * tr / 19;
  for (int64_t i = 0; i < 19; ++i)
    for (int64_t j = 0; j < 19; ++j) {
      const double want = i != j ? S2.get({i, j}) : (i == 4 || i == 11 ? 1.0 : S2.get({i, i})) + lam;
      CHECK(H.get({i, j}) == doctest::Approx(want).epsilon(1e-6));
    }
  CHECK(S2.get({4, 4}) == 0.f);  // a copy

  CHECK_NOTHROW(check_layer_problem("t", P.W, P.S));
  Tensor A = P.S.clone();
  A.set({2, 9}, A.get({2, 9}) + 1e-2f * A.get({0, 0}) + 1.f);
  CHECK_THROWS_WITH_AS(check_layer_problem("gptq", P.W, A), doctest::Contains("gptq: Sigma is not symmetric: (3, 10)"), Error);
  Tensor N = P.S.clone();
  N.set({3, 3}, -1.f);
  CHECK_THROWS_WITH_AS(check_layer_problem("gptq", P.W, N), doctest::Contains("negative diagonal"), Error);
}

TEST_CASE("gptq_inverse_cholesky: U upper, UᵀU = H⁻¹, equal to chol(H⁻¹) of the reference path") {
  for (int64_t n : {1, 5, 130, 300}) {
    const Problem P = make_problem(1, n, 40 + n);
    MatrixXd H = to_md(P.S);
    H.diagonal().array() += 0.01 * H.diagonal().mean();
    MatrixXd U;
    REQUIRE(gptq_inverse_cholesky(H, U));
    const MatrixXd Hinv = H.llt().solve(MatrixXd::Identity(n, n));
    const MatrixXd Uref = Hinv.llt().matrixU();  // reference: chol(H) → cholesky_inverse → chol(upper)
    CHECK((U.transpose() * U - Hinv).norm() <= 1e-9 * Hinv.norm());
    CHECK((U - Uref).norm() <= 1e-8 * Uref.norm());
    CHECK(U.triangularView<Eigen::StrictlyLower>().toDenseMatrix().norm() == 0);
    CHECK(U.diagonal().minCoeff() > 0);
  }
  MatrixXd U;
  MatrixXd bad = MatrixXd::Identity(4, 4);
  bad(2, 2) = -1;
  CHECK_FALSE(gptq_inverse_cholesky(bad, U));
  const MatrixXd X = MatrixXd::Random(6, 2);
  CHECK_FALSE(gptq_inverse_cholesky(X * X.transpose(), U));  // rank 2
}

TEST_CASE("diagonal Σ: GPTQ has nothing to propagate and equals RTN bitwise") {
  Problem P = make_problem(9, 150, 5);
  Tensor S = Tensor::zeros({150, 150});
  for (int64_t j = 0; j < 150; ++j) S.set({j, j}, 1.f + (float)j);
  for (const GridSpec& sp : {spec_of(4), spec_of(3, 32, true), spec_of(2, 64)}) {
    GptqOptions o;
    o.static_groups = true;
    const GptqResult g = gptq(P.W, S, sp, o);
    const QuantizedLinear q = rtn(P.W, sp);
    CHECK(g.q.codes.to_vector() == q.codes.to_vector());
    CHECK(g.q.dequantize().to_vector() == q.dequantize().to_vector());
  }
}

TEST_CASE("(1) lazy batches: blocksize 128 == blocksize 1") {
  int64_t total = 0, differing = 0;
  for (const Case& cs : cases()) {
    // Dynamic groups with g < B fit the later groups of a block on stale weights
    // (methods.md#gptq-groups), so B is part of that variant's definition: there B = g (fresh,
    // aligned) is compared with B = 1.
    const bool stale = cs.spec.group > 0 && !cs.opt.static_groups && cs.spec.group < 128;
    for (uint64_t seed = 1; seed <= 3; ++seed) {
      const Problem P = make_problem(cs.r, cs.c, 100 * seed + cs.c);
      GptqOptions a = cs.opt, b = cs.opt;
      a.blocksize = stale ? cs.spec.group : 128;
      b.blocksize = 1;
      const GptqResult ra = gptq(P.W, P.S, cs.spec, a), rb = gptq(P.W, P.S, cs.spec, b);
      const int64_t nd = count_diff(ra.q.codes, rb.q.codes);
      total += cs.r * cs.c;
      differing += nd;
      const MatrixXd Da = to_md(ra.q.dequantize()), Db = to_md(rb.q.dequantize());
      CHECK(nd <= cs.r * cs.c / 500);
      if (nd == 0) CHECK((Da - Db).norm() <= 1e-5 * Da.norm());
      const double fa = fobj(to_md(P.W), Da, to_md(P.S)), fb = fobj(to_md(P.W), Db, to_md(P.S));
      CHECK(fa == doctest::Approx(fb).epsilon(nd == 0 ? 1e-5 : 1e-2));
      CHECK(ra.proxy_loss == doctest::Approx(rb.proxy_loss).epsilon(nd == 0 ? 1e-4 : 1e-2));
    }
  }
  // Not bitwise: W[:, i2:] gets Σ_j e_j·U_jk from one GEMM (B = 128) instead of one rounded
  // rank-1 update per column (B = 1), so the f32 weights differ in the last bits and a weight
  // sitting on a rounding tie can flip (and then steer the rest of its row).
  MESSAGE("B=128 vs B=1: ", differing, " of ", total, " codes differ");
  CHECK(differing <= total / 1000);
}

TEST_CASE("(2) equals the sequential OBS form with inverse downdating (f64)") {
  int64_t ties = 0, total = 0;
  for (const Case& cs : cases())
    for (int64_t B : {(int64_t)128, (int64_t)1, (int64_t)50})
      for (uint64_t seed = 1; seed <= 2; ++seed) {
        const Problem P = make_problem(cs.r, cs.c, 7 * seed + cs.c);
        GptqOptions o = cs.opt;
        o.blocksize = B;
        const GptqResult got = gptq(P.W, P.S, cs.spec, o);
        const RefResult ref = ref_gptq(P.W, P.S, cs.spec, o, got);
        INFO(cs.name, " B=", B, " seed=", seed);
        CHECK(ref.mismatches == 0);
        CHECK(ref.ties <= 2);
        CHECK(ref.param_diffs == 0);
        CHECK(ref.max_scale_rel <= 1e-5);
        ties += ref.ties;
        total += cs.r * cs.c;
        const MatrixXd W = to_md(P.W), S = to_md(P.S), D = to_md(got.q.dequantize());
        // Same weights as the reference, same objective (undamped Σ and damped H).
        CHECK((D - ref.What).norm() <= 1e-5 * D.norm());
        CHECK(fobj(W, D, S) == doctest::Approx(fobj(W, ref.What, S)).epsilon(1e-6));
        // OBS identity: the summed step losses are the objective under the damped H; GPTQ's
        // bookkeeping Σ(w − q)²/U_pp²/2 is half of it.
        CHECK(ref.loss == doctest::Approx(fobj(W, ref.What, ref.Hdamped)).epsilon(1e-6));
        CHECK(2 * got.proxy_loss == doctest::Approx(ref.loss).epsilon(1e-4));
        // The codes dequantize to the weights the algorithm chose (on-grid round trip).
        CHECK(quantize_to_grid(got.q.dequantize(), got.q.grid).codes.to_vector() == got.q.codes.to_vector());
      }
  MESSAGE("OBS reference: ", ties, " rounding ties decided differently out of ", total, " codes");

  // The staleness (methods.md#gptq-groups) is real: with g32 dynamic groups, B = 128 and B = 32
  // give different grids.
  const Problem P = make_problem(24, 172, 9);
  GptqOptions a, b;
  b.blocksize = 32;
  const GptqResult ra = gptq(P.W, P.S, spec_of(3, 32), a), rb = gptq(P.W, P.S, spec_of(3, 32), b);
  CHECK(ra.q.grid.scale != rb.q.grid.scale);
  for (int64_t i = 0; i < 24; ++i) CHECK(ra.q.grid.s(i, 0) == rb.q.grid.s(i, 0));  // group 0 is fit on W either way
}

TEST_CASE("(3) GPTQ's objective is at most RTN's") {
  int n = 0;
  double ratio = 0;
  for (const Case& cs : cases())
    for (uint64_t seed = 1; seed <= 3; ++seed) {
      const Problem P = make_problem(cs.r, cs.c, 31 * seed + cs.c);
      const double fg = objective(P.W, gptq(P.W, P.S, cs.spec, cs.opt).q.dequantize(), P.S).value;
      const double fr = objective(P.W, rtn(P.W, cs.spec).dequantize(), P.S).value;
      INFO(cs.name, " seed=", seed);
      CHECK(fg <= fr);
      ratio += fg / fr;
      ++n;
    }
  MESSAGE("mean objective GPTQ / RTN over ", n, " problems: ", ratio / n);
  CHECK(ratio / n < 0.9);
}

TEST_CASE("(4) act_order = plain GPTQ on the permuted problem, un-permuted; static groups keep g_idx = j/g") {
  for (const GridSpec& sp : {spec_of(4), spec_of(3, 32), spec_of(4, 48, true)})
    for (int64_t B : {(int64_t)128, (int64_t)16}) {
      const Problem P = make_problem(20, 172, 77 + B);
      const int64_t c = 172;
      const std::vector<int64_t> perm = act_perm(P.S);
      REQUIRE(perm != std::vector<int64_t>([&] { std::vector<int64_t> v((size_t)c); std::iota(v.begin(), v.end(), 0); return v; }()));
      Tensor Wp = Tensor::empty({20, c}), Sp = Tensor::empty({c, c});
      for (int64_t p = 0; p < c; ++p) {
        for (int64_t i = 0; i < 20; ++i) Wp.set({i, p}, P.W.get({i, perm[p]}));
        for (int64_t q = 0; q < c; ++q) Sp.set({p, q}, P.S.get({perm[p], perm[q]}));
      }
      GptqOptions oa, op;
      oa.act_order = true;
      oa.blocksize = op.blocksize = B;
      const GptqResult ra = gptq(P.W, P.S, sp, oa), rp = gptq(Wp, Sp, sp, op);
      const Tensor Da = ra.q.dequantize(), Dp = rp.q.dequantize();
      int64_t diff = 0;
      for (int64_t p = 0; p < c; ++p)
        for (int64_t i = 0; i < 20; ++i) diff += Da.get({i, perm[p]}) != Dp.get({i, p});
      CHECK(diff == 0);
      CHECK(ra.proxy_loss == rp.proxy_loss);
      // g_idx of the GPTQ format: original column → group in processing order.
      const int64_t G = sp.group > 0 ? sp.group : c;
      for (int64_t p = 0; p < c; ++p) CHECK(ra.q.grid.g_idx[perm[p]] == p / G);
      if (sp.group > 0) {
        bool contiguous = true;
        for (int64_t j = 0; j < c; ++j) contiguous &= ra.q.grid.g_idx[j] == j / G;
        CHECK_FALSE(contiguous);  // the permutation really scattered the groups
      }
    }
  // static_groups + act_order: groups stay contiguous in the original order, params = grid_fit(W).
  const Problem P = make_problem(20, 172, 5);
  GptqOptions o;
  o.act_order = o.static_groups = true;
  const GridSpec sp = spec_of(3, 32);
  const GptqResult r = gptq(P.W, P.S, sp, o);
  const Grid g = grid_fit(P.W, sp);
  for (int64_t j = 0; j < 172; ++j) CHECK(r.q.grid.g_idx[j] == j / 32);
  CHECK(r.q.grid.scale == g.scale);
  CHECK(r.q.grid.zero == g.zero);
  CHECK(r.q.grid.ngroups == 6);
}

TEST_CASE("(5) tiny 1×8 problems at 2 bits: GPTQ gets closer to the exhaustive optimum than RTN") {
  const int c = 8, n = 20;
  double gap_rtn = 0, gap_gptq = 0, worst_gptq = 1, worst_rtn = 1;
  int gptq_opt = 0, rtn_opt = 0;
  for (int t = 0; t < n; ++t) {
    const Problem P = make_problem(1, c, 500 + t, 12, 1.5);
    const GridSpec sp = spec_of(2);
    const Grid g = grid_fit(P.W, sp);  // the grid RTN and GPTQ both use (per-channel from W)
    const MatrixXd W = to_md(P.W), S = to_md(P.S);
    double best = INFINITY;
    MatrixXd Wh(1, c);
    for (int code = 0; code < (1 << (2 * c)); ++code) {
      for (int j = 0; j < c; ++j) Wh(0, j) = g.s(0, 0) * ((float)((code >> (2 * j)) & 3) - g.z(0, 0));
      best = std::min(best, fobj(W, Wh, S));
    }
    const GptqResult gr = gptq(P.W, P.S, sp);
    CHECK(gr.q.grid.scale == g.scale);
    const double fg = fobj(W, to_md(gr.q.dequantize()), S), fr = fobj(W, to_md(rtn(P.W, sp).dequantize()), S);
    CHECK(fg >= best * (1 - 1e-9));  // nothing beats the enumeration
    CHECK(fr >= best * (1 - 1e-9));
    gap_gptq += fg / best;
    gap_rtn += fr / best;
    worst_gptq = std::max(worst_gptq, fg / best);
    worst_rtn = std::max(worst_rtn, fr / best);
    gptq_opt += fg <= best * (1 + 1e-9);
    rtn_opt += fr <= best * (1 + 1e-9);
  }
  MESSAGE("objective / optimum over ", n, " problems: GPTQ mean ", gap_gptq / n, " worst ", worst_gptq, " (optimal in ", gptq_opt,
          "); RTN mean ", gap_rtn / n, " worst ", worst_rtn, " (optimal in ", rtn_opt, ")");
  CHECK(gap_gptq <= gap_rtn);
}

TEST_CASE("(6) dead input columns: weights 0, no NaN") {
  Problem P = make_problem(16, 140, 12);
  for (int64_t k = 0; k < 140; ++k)
    for (int64_t j : {3, 77, 139}) {
      P.S.set({j, k}, 0.f);
      P.S.set({k, j}, 0.f);
    }
  for (bool act : {false, true})
    for (const GridSpec& sp : {spec_of(4), spec_of(3, 32), spec_of(4, 32, true)}) {
      GptqOptions o;
      o.act_order = act;
      o.static_groups = sp.sym;
      const GptqResult r = gptq(P.W, P.S, sp, o);
      const Tensor D = r.q.dequantize();
      for (float v : D.to_vector()) CHECK(std::isfinite(v));
      for (int64_t i = 0; i < 16; ++i)
        for (int64_t j : {3, 77, 139}) CHECK(D.get({i, j}) == 0.f);
      CHECK(std::isfinite(r.proxy_loss));
      CHECK(std::isfinite(objective(P.W, D, P.S).value));
      CHECK(objective(P.W, D, P.S).value <= objective(P.W, rtn(P.W, sp).dequantize(), P.S).value);
    }
}

TEST_CASE("(7) singular Σ with percdamp 0: damping escalates, logged, finite result") {
  const int64_t c = 64;
  Rng g(4);
  MatrixXd X(c, 16);  // rank 16
  for (int64_t i = 0; i < c; ++i)
    for (int64_t j = 0; j < 16; ++j) X(i, j) = g.normal();
  const MatrixXd Sd = X * X.transpose();
  const Tensor S = to_tensor(0.5 * (Sd + Sd.transpose()));
  const Tensor W = make_problem(8, c, 4).W;
  std::vector<std::string> events, details;
  GptqOptions o;
  o.percdamp = 0;
  const GptqResult r = gptq(W, S, spec_of(3), o, [&](const std::string& e, const std::string& d) {
    events.push_back(e);
    details.push_back(d);
  });
  REQUIRE(!events.empty());
  CHECK(events[0] == "damping");
  CHECK(details[0].find("percdamp") != std::string::npos);
  CHECK(r.percdamp_used > 0);
  MESSAGE("escalations: ", events.size(), ", percdamp used ", r.percdamp_used, " (", details.back(), ")");
  for (float v : r.q.dequantize().to_vector()) CHECK(std::isfinite(v));
  CHECK(objective(W, r.q.dequantize(), S).value <= objective(W, rtn(W, spec_of(3)).dequantize(), S).value);
  // No retries allowed: an error naming the problem.
  o.max_damp_tries = 0;
  CHECK_THROWS_WITH_AS(gptq(W, S, spec_of(3), o), doctest::Contains("not positive definite"), Error);
  // A healthy Σ never logs.
  events.clear();
  const Problem P = make_problem(8, c, 5);
  gptq(P.W, P.S, spec_of(3), {}, [&](const std::string& e, const std::string&) { events.push_back(e); });
  CHECK(events.empty());
}

TEST_CASE("(8) errors name the problem") {
  const Problem P = make_problem(8, 172, 6);
  const Problem Q = make_problem(8, 64, 6);
  CHECK_THROWS_WITH_AS(gptq(P.W, Q.S, spec_of(4)), doctest::Contains("gptq: Sigma is [64, 64] but W has 172 columns"), Error);
  Tensor Wn = P.W.clone();
  Wn.set({3, 7}, NAN);
  CHECK_THROWS_WITH_AS(gptq(Wn, P.S, spec_of(4)), doctest::Contains("gptq: NaN/Inf in W at (4, 8) (1-based)"), Error);
  Tensor Sn = P.S.clone();
  Sn.set({5, 2}, INFINITY);
  CHECK_THROWS_WITH_AS(gptq(P.W, Sn, spec_of(4)), doctest::Contains("gptq: NaN/Inf in Sigma at (6, 3) (1-based)"), Error);
  CHECK_THROWS_WITH_AS(gptq(P.W, P.S, spec_of(9)), doctest::Contains("bits must be in 1..8, got 9"), Error);
  CHECK_THROWS_WITH_AS(gptq(P.W, P.S, spec_of(4, 0)), doctest::Contains("group"), Error);
  GptqOptions o;
  o.blocksize = 0;
  CHECK_THROWS_WITH_AS(gptq(P.W, P.S, spec_of(4), o), doctest::Contains("blocksize"), Error);
  o = {};
  o.percdamp = -1;
  CHECK_THROWS_WITH_AS(gptq(P.W, P.S, spec_of(4), o), doctest::Contains("percdamp"), Error);
  CHECK_THROWS_WITH_AS(gptq(Tensor::zeros({8}), P.S, spec_of(4)), doctest::Contains("gptq: W must be 2-d"), Error);
  CHECK_THROWS_WITH_AS(gptq(P.W, P.S.to(DType::F16), spec_of(4)), doctest::Contains("gptq: Sigma must be f32"), Error);
}

TEST_CASE("strided (non-contiguous) W and Σ give the same result as contiguous copies") {
  const Problem P = make_problem(12, 90, 21);
  const Tensor Wt = P.W.t().contiguous().t(), St = P.S.t().contiguous().t();  // column-major views
  REQUIRE_FALSE(Wt.is_contiguous());
  GptqOptions o;
  o.act_order = true;
  const GptqResult a = gptq(P.W, P.S, spec_of(3, 32), o), b = gptq(Wt, St, spec_of(3, 32), o);
  CHECK(a.q.codes.to_vector() == b.q.codes.to_vector());
  CHECK(a.q.grid.scale == b.q.grid.scale);
  CHECK(a.q.grid.g_idx == b.q.grid.g_idx);
}

// Grid importance (methods.md#grid-importance) through the registry: every fixed-grid solver
// passes diag Σ to the fit. On inputs whose scales spread over an order of magnitude, weighing the
// scale search by Σ_jj lowers RTN's layer objective clearly, and the solvers that start from or
// fit the same grids do no worse than on min/max grids; a solver that cannot weigh its grid
// refuses the option.
TEST_CASE("grid importance diag: every solver gets diag Σ; RTN's objective falls; outliers refuse it") {
  const test::Problem pr = test::scaled_problem(48, 128, 21, 512, 0.3);
  const LayerProblem p = LayerProblem::make(pr.W, pr.S);
  GridSpec a;
  a.bits = 3;
  a.sym = true;
  a.group = 32;
  a.mapping = GridMapping::Llamacpp;
  GridSpec b = a;
  b.importance = GridImportance::Diag;
  for (const char* solver : {"rtn", "gptq", "quantease"}) {
    nlohmann::json o = nlohmann::json::object();
    if (std::string(solver) == "gptq") o = {{"act_order", true}};
    const double ea = solve_layer(solver, p, a, o).info["objective"].get<double>();
    const double eb = solve_layer(solver, p, b, o).info["objective"].get<double>();
    MESSAGE(std::string(solver), ": objective with importance / min-max = ", eb / ea);
    if (std::string(solver) == "rtn") CHECK(eb < 0.9 * ea);
    else CHECK(eb < ea);
  }
  CHECK_THROWS_WITH_AS(solve_layer("quantease_outliers", p, b, {{"ratio", 0.01}}), doctest::Contains("does not apply to the outlier grid"), Error);
}
