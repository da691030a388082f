// decoupleQ's layer stage (docs/methods.md#decoupleq): the closed-form (s, z) against a generic
// least-squares solve (per channel, grouped, ragged, sym, singular), the per-row accept rule
// (history and every row never worse than the init), alt_min ≤ RTN and ≤ GPTQ, the integer step
// against exhaustive search on tiny problems, the float_zero grid dequantizing exactly to the
// reported Ŵ, early stopping, determinism across OpenMP thread counts, gptq_on_grid = gptq on
// gptq's own grid, errors.
#include <doctest/doctest.h>
#include <omp.h>

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "solvers/decoupleq.h"
#include "solvers/gptq.h"
#include "layer_problems.h"
#include "core/rng.h"
#include "solvers/rtn.h"

using namespace qf;
using Eigen::MatrixXd;
using Eigen::VectorXd;

namespace {

using test::Problem;
using test::to_md;
using test::to_tensor;

Problem make_problem(int64_t r, int64_t c, uint64_t seed, int64_t N = 0, double corr = 0.8) {
  return test::scaled_problem(r, c, seed, N == 0 ? 3 * c : N, corr);
}

GridSpec spec_of(int bits, int64_t group = -1, bool sym = false) {
  GridSpec s;
  s.bits = bits;
  s.group = group;
  s.sym = sym;
  return s;
}

double fobj(const Tensor& W, const Tensor& What, const Tensor& S) { return objective(W, What, S).value; }

double sum(const std::vector<double>& v) { return std::accumulate(v.begin(), v.end(), 0.0); }

Tensor random_codes(int64_t r, int64_t c, int maxq, uint64_t seed) {
  Rng g(seed);
  Tensor t = Tensor::empty({r, c}, DType::U8);
  for (int64_t k = 0; k < r * c; ++k) t.data<uint8_t>()[k] = (uint8_t)g.randint(0, maxq);
  return t;
}

// decoupleQ's Init A done independently: per (row, group) s = (max − min)/maxq, z = min (sym:
// s = 2·max|x|/maxq, zero (maxq+1)/2), codes by RTN, on a float_zero grid (scale = s, zero = −z/s
// as f32), as alt_min documents it.
QuantizedLinear minmax_rtn(const Tensor& W, const GridSpec& spec) {
  GridSpec fz = spec;
  fz.float_zero = true;
  Grid g = grid_new(fz, W.size(0), W.size(1));
  const MatrixXd M = to_md(W);
  const int maxq = (1 << spec.bits) - 1;
  for (int64_t i = 0; i < g.rows; ++i)
    for (int64_t k = 0; k < g.ngroups; ++k) {
      const int64_t j0 = k * g.group_size(), w = std::min(g.group_size(), g.cols - j0);
      const double lo = M.row(i).segment(j0, w).minCoeff(), hi = M.row(i).segment(j0, w).maxCoeff();
      const double amax = M.row(i).segment(j0, w).cwiseAbs().maxCoeff();
      const float s = (float)(spec.sym ? 2 * amax / maxq : (hi - lo) / maxq);  // sym: the range of methods.md#grid, zero (maxq+1)/2
      g.scale[g.pidx(i, k)] = s;
      g.zero[g.pidx(i, k)] = spec.sym ? (float)(maxq + 1) / 2.f : (float)(-lo / (double)s);
    }
  return quantize_to_grid(W, g);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
TEST_CASE("float step: the closed-form (s, z) equals least squares on the explicit design matrix") {
  struct C {
    int64_t r, c;
    GridSpec spec;
    const char* name;
  };
  const std::vector<C> cases = {{6, 24, spec_of(2), "2-bit per channel"},     {5, 40, spec_of(3, 8), "3-bit g8"},
                                {4, 24, spec_of(2, 10), "2-bit g10 ragged"},  {5, 32, spec_of(4, -1, true), "4-bit sym"},
                                {4, 30, spec_of(2, 8, true), "2-bit sym g8 ragged"}};
  uint64_t seed = 11;
  for (const C& cs : cases) {
    CAPTURE(cs.name);
    const Problem P = make_problem(cs.r, cs.c, seed++);
    const int maxq = (1 << cs.spec.bits) - 1;
    const Tensor codes = random_codes(cs.r, cs.c, maxq, seed++);
    const AffineFit f = alt_min_fit_affine(P.W, P.S, codes, cs.spec);
    CHECK(f.damped_rows == 0);
    const int64_t G = cs.spec.group > 0 ? cs.spec.group : cs.c, ng = (cs.c + G - 1) / G;
    REQUIRE(f.ngroups == ng);
    // Generic solve: min ‖Lᵀ(w − Dθ)‖ with Σ = LLᵀ, D built column by column.
    const MatrixXd S = to_md(P.S), W = to_md(P.W);
    const MatrixXd Lt = S.llt().matrixL().transpose();
    const double z0 = (maxq + 1) / 2.0;
    const int64_t k = cs.spec.sym ? ng : 2 * ng;
    double maxerr = 0;
    for (int64_t i = 0; i < cs.r; ++i) {
      MatrixXd D = MatrixXd::Zero(cs.c, k);
      for (int64_t j = 0; j < cs.c; ++j) {
        const int64_t g = j / G;
        const double a = codes.data<uint8_t>()[i * cs.c + j];
        if (cs.spec.sym) {
          D(j, g) = a - z0;
        } else {
          D(j, 2 * g) = a;
          D(j, 2 * g + 1) = 1;
        }
      }
      const VectorXd th = (Lt * D).colPivHouseholderQr().solve(Lt * W.row(i).transpose());
      for (int64_t g = 0; g < ng; ++g) {
        const double s = cs.spec.sym ? th(g) : th(2 * g), z = cs.spec.sym ? -th(g) * z0 : th(2 * g + 1);
        const double gs = f.s[(size_t)(i * ng + g)], gz = f.z[(size_t)(i * ng + g)];
        maxerr = std::max(maxerr, std::fabs(gs - s) / (std::fabs(s) + 1e-3));
        maxerr = std::max(maxerr, std::fabs(gz - z) / (std::fabs(z) + 1e-3));
      }
    }
    CHECK(maxerr < 1e-8);
  }
}

TEST_CASE("float step: singular normal equations (a group's codes all equal) are damped, finite, near optimal") {
  const Problem P = make_problem(3, 16, 4);
  Tensor codes = random_codes(3, 16, 3, 5);
  for (int64_t j = 0; j < 8; ++j) codes.data<uint8_t>()[16 + j] = 2;  // row 1, group 0: a ∝ 1
  const AffineFit f = alt_min_fit_affine(P.W, P.S, codes, spec_of(2, 8));
  CHECK(f.damped_rows == 1);
  for (double v : f.s) CHECK(std::isfinite(v));
  for (double v : f.z) CHECK(std::isfinite(v));
  // row 1's loss with the damped (s, z) against the rank-deficient least-squares minimum
  const MatrixXd S = to_md(P.S), W = to_md(P.W);
  const MatrixXd Lt = S.llt().matrixL().transpose();
  MatrixXd D = MatrixXd::Zero(16, 4);
  VectorXd wh(16);
  for (int64_t j = 0; j < 16; ++j) {
    const int64_t g = j / 8;
    const double a = codes.data<uint8_t>()[16 + j];
    D(j, 2 * g) = a;
    D(j, 2 * g + 1) = 1;
    wh(j) = f.s[(size_t)(2 + g)] * a + f.z[(size_t)(2 + g)];
  }
  const VectorXd w = W.row(1).transpose();
  const VectorXd th = (Lt * D).colPivHouseholderQr().solve(Lt * w);
  const double best = (Lt * (w - D * th)).squaredNorm(), got = (Lt * (w - wh)).squaredNorm();
  CHECK(got >= best * (1 - 1e-9));
  CHECK(got <= best * 1.05);
}

TEST_CASE("accept rule: history and steps never increase; every row ends at most at its init loss") {
  for (auto round : {AltMinOptions::Round::Gptq, AltMinOptions::Round::Pgd})
    for (const GridSpec& spec : {spec_of(2), spec_of(3, 16), spec_of(2, -1, true)}) {
      CAPTURE(spec.str());
      CAPTURE((int)round);
      const Problem P = make_problem(20, 48, 21 + spec.bits);
      AltMinOptions o;
      o.iters = 6;
      o.round = round;
      o.min_improved = 0;  // run every round
      const AltMinResult res = alt_min(P.W, P.S, spec, o);
      REQUIRE(res.history.size() == 6);
      CHECK(res.iters == 6);
      for (size_t k = 1; k < res.history.size(); ++k) CHECK(res.history[k] <= res.history[k - 1]);
      for (size_t k = 1; k < res.steps.size(); ++k) CHECK(res.steps[k].loss <= res.steps[k - 1].loss);
      CHECK(res.history.back() < res.history.front());  // the alternation did something
      // Per row: the init (min/max + RTN), recomputed independently, bounds the final row loss.
      const QuantizedLinear init = minmax_rtn(P.W, spec);
      const std::vector<double> l0 = alt_min_row_losses(P.W, init.dequantize(), P.S);
      CHECK(sum(l0) == doctest::Approx(res.steps.front().loss).epsilon(1e-12));
      const std::vector<double> l1 = alt_min_row_losses(P.W, res.q.dequantize(), P.S);
      for (size_t i = 0; i < l0.size(); ++i) CHECK(l1[i] <= l0[i]);
      CHECK(res.rows_improved.size() == res.history.size());
      for (double f : res.rows_improved) CHECK((f >= 0 && f <= 1));
    }
}

TEST_CASE("alt_min's loss is at most RTN's and GPTQ's on the same bits") {
  uint64_t seed = 40;
  for (auto round : {AltMinOptions::Round::Gptq, AltMinOptions::Round::Pgd})
    for (const GridSpec& spec : {spec_of(2), spec_of(3), spec_of(4), spec_of(2, 16), spec_of(3, 16), spec_of(3, -1, true)}) {
      CAPTURE(spec.str());
      CAPTURE((int)round);
      const Problem P = make_problem(32, 64, seed++);
      AltMinOptions o;
      o.round = round;
      const AltMinResult res = alt_min(P.W, P.S, spec, o);
      const double a = fobj(P.W, res.q.dequantize(), P.S);
      const double r = fobj(P.W, rtn(P.W, spec).dequantize(), P.S);
      const double g = fobj(P.W, gptq(P.W, P.S, spec).q.dequantize(), P.S);
      CHECK(a <= r);
      CHECK(a <= g);
    }
}

TEST_CASE("tiny 1×4 problems at 2 bits: exhaustive search over codes on alt_min's (s, z)") {
  for (uint64_t seed = 1; seed <= 12; ++seed) {
    CAPTURE(seed);
    for (bool diag : {false, true}) {
      Problem P = make_problem(1, 4, 100 + seed, 12);
      if (diag) {  // separable problem: nearest codes are optimal, GPTQ rounding must find them
        MatrixXd S = to_md(P.S);
        P.S = to_tensor(MatrixXd(S.diagonal().asDiagonal()));
      }
      const AltMinResult res = alt_min(P.W, P.S, spec_of(2));
      const Grid& g = res.q.grid;
      const Tensor What = res.q.dequantize();
      // the output lies on the grid: every weight is one of the 4 levels of its (row, group)
      for (int64_t j = 0; j < 4; ++j) {
        bool on = false;
        for (int k = 0; k <= 3; ++k) on = on || What.get({0, j}) == g.value(k, 0, 0);
        CHECK(on);
      }
      // brute force over all 4^4 codes with (s, z) fixed: a lower bound for alt_min's loss
      double best = INFINITY;
      Tensor Wb = Tensor::empty({1, 4});
      for (int m = 0; m < 256; ++m) {
        for (int64_t j = 0; j < 4; ++j) Wb.f32()[j] = g.value((m >> (2 * j)) & 3, 0, 0);
        best = std::min(best, alt_min_row_losses(P.W, Wb, P.S)[0]);
      }
      CHECK(res.history.back() >= best);
      if (diag) CHECK(res.history.back() == doctest::Approx(best).epsilon(1e-12));
    }
  }
}

TEST_CASE("the float_zero grid dequantizes exactly to the reported Ŵ") {
  for (const GridSpec& spec : {spec_of(2), spec_of(3, 16), spec_of(2, 20, true)}) {
    CAPTURE(spec.str());
    const Problem P = make_problem(40, 64, 7);
    const AltMinResult res = alt_min(P.W, P.S, spec);
    const QuantizedLinear& q = res.q;
    CHECK(q.grid.spec.float_zero);
    CHECK(q.grid.spec.str().find("float-zero") != std::string::npos);
    const Tensor What = q.dequantize();
    // bit-exact: the reported loss is the loss of dequantize()'s values
    CHECK(sum(alt_min_row_losses(P.W, What, P.S)) == res.history.back());
    CHECK(fobj(P.W, What, P.S) == doctest::Approx(res.history.back()).epsilon(1e-10));
    // value = scale·(code − zero) with codes in 0..maxq
    const uint8_t* c = q.codes.data<uint8_t>();
    int64_t bad = 0;
    for (int64_t i = 0; i < 40; ++i)
      for (int64_t j = 0; j < 64; ++j) {
        const int64_t g = q.grid.g_idx[(size_t)j];
        bad += c[i * 64 + j] > q.grid.maxq();
        bad += What.get({i, j}) != q.grid.s(i, g) * ((float)c[i * 64 + j] - q.grid.z(i, g));
      }
    CHECK(bad == 0);
    // re-rounding Ŵ onto its own grid reproduces the codes' values (the grid is self-consistent)
    CHECK(fobj(P.W, quantize_to_grid(What, q.grid).dequantize(), P.S) == doctest::Approx(res.history.back()).epsilon(1e-9));
    if (spec.sym)
      for (float z : q.grid.zero) CHECK(z == 2.f);  // sym: decoupleQ's signed integers, no offset
  }
}

TEST_CASE("early stop: fewer than min_improved of the rows improve in a round") {
  const Problem P = make_problem(24, 32, 9);
  AltMinOptions o;
  o.iters = 50;
  const AltMinResult a = alt_min(P.W, P.S, spec_of(3), o);
  CHECK(a.iters < 50);  // converges: a round with no improvement stops it
  CHECK(a.history.size() == (size_t)a.iters);
  CHECK(a.rows_improved.back() < 1e-4);
  o.min_improved = 1.0;  // stop after the first round in which not every row improved
  const AltMinResult b = alt_min(P.W, P.S, spec_of(3), o);
  REQUIRE(b.iters >= 2);
  CHECK(b.iters < a.iters);
  for (int k = 1; k + 1 < b.iters; ++k) CHECK(b.rows_improved[(size_t)k] == 1.0);
  CHECK(b.rows_improved.back() < 1.0);
  o.iters = 1;  // the init only
  const AltMinResult c = alt_min(P.W, P.S, spec_of(3), o);
  CHECK(c.iters == 1);
  CHECK(c.steps.size() == 2);
}

TEST_CASE("bit-identical for 1 and 2 OpenMP threads") {
  const int nt = omp_get_max_threads();
  const Problem P = make_problem(96, 384, 13);  // 3 row chunks, 3 GPTQ lazy blocks, depth > 320
  for (auto round : {AltMinOptions::Round::Gptq, AltMinOptions::Round::Pgd}) {
    CAPTURE((int)round);
    AltMinOptions o;
    o.round = round;
    o.pgd_steps = 20;
    o.pgd_inner_steps = 1;
    o.shrink_steps = 40;
    o.iters = 3;
    AltMinResult r[2];
    for (int t = 0; t < 2; ++t) {
      omp_set_num_threads(t + 1);
      r[t] = alt_min(P.W, P.S, spec_of(2, 64), o);
    }
    omp_set_num_threads(nt);
    CHECK(r[0].history == r[1].history);
    CHECK(std::memcmp(r[0].q.codes.data<uint8_t>(), r[1].q.codes.data<uint8_t>(), 96 * 384) == 0);
    CHECK(r[0].q.grid.scale == r[1].q.grid.scale);
    CHECK(r[0].q.grid.zero == r[1].q.grid.zero);
  }
}

TEST_CASE("gptq_on_grid on gptq's own grid reproduces gptq bit for bit") {
  const Problem P = make_problem(24, 172, 17);
  for (bool ao : {false, true}) {
    CAPTURE(ao);
    GptqOptions o;
    o.act_order = ao;
    const GptqResult a = gptq(P.W, P.S, spec_of(3), o);
    const GptqResult b = gptq_on_grid(P.W, P.S, grid_fit(P.W, spec_of(3)), o);
    CHECK(std::memcmp(a.q.codes.data<uint8_t>(), b.q.codes.data<uint8_t>(), 24 * 172) == 0);
    CHECK(a.proxy_loss == b.proxy_loss);
    o.static_groups = true;  // static groups: gptq's grid is grid_fit(W) too
    const GptqResult c = gptq(P.W, P.S, spec_of(2, 32), o);
    const GptqResult d = gptq_on_grid(P.W, P.S, grid_fit(P.W, spec_of(2, 32)), o);
    CHECK(std::memcmp(c.q.codes.data<uint8_t>(), d.q.codes.data<uint8_t>(), 24 * 172) == 0);
    CHECK(c.q.grid.g_idx == d.q.grid.g_idx);
  }
  Grid g = grid_fit(P.W, spec_of(3));
  CHECK_THROWS_WITH_AS(gptq_on_grid(P.W.cols(0, 100).contiguous(), make_problem(24, 100, 1).S, g),
                       doctest::Contains("gptq_on_grid: the grid is [24, 172] but W is [24, 100]"), Error);
  g.g_idx[3] = 7;
  CHECK_THROWS_WITH_AS(gptq_on_grid(P.W, P.S, g), doctest::Contains("g_idx"), Error);
}

TEST_CASE("errors name the option") {
  const Problem P = make_problem(8, 16, 3);
  AltMinOptions o;
  o.iters = 0;
  CHECK_THROWS_WITH_AS(alt_min(P.W, P.S, spec_of(2), o), doctest::Contains("alt_min: option 'iters' must be >= 1, got 0"), Error);
  o = {};
  o.shrink_steps = 300;
  CHECK_THROWS_WITH_AS(alt_min(P.W, P.S, spec_of(2), o), doctest::Contains("'shrink_steps'"), Error);
  o = {};
  o.pgd_lr = 0;
  CHECK_THROWS_WITH_AS(alt_min(P.W, P.S, spec_of(2), o), doctest::Contains("'pgd_lr'"), Error);
  o = {};
  o.percdamp = -1;
  CHECK_THROWS_WITH_AS(alt_min(P.W, P.S, spec_of(2), o), doctest::Contains("'percdamp'"), Error);
  GridSpec s = spec_of(2);
  s.mse = true;
  CHECK_THROWS_WITH_AS(alt_min(P.W, P.S, s), doctest::Contains("'mse'"), Error);
  s = spec_of(2);
  s.f16_scales = true;
  CHECK_THROWS_WITH_AS(alt_min(P.W, P.S, s), doctest::Contains("'f16_scales'"), Error);
  s = spec_of(2);
  s.kind = GridKind::Compand;
  CHECK_THROWS_WITH_AS(alt_min(P.W, P.S, s), doctest::Contains("uniform grid"), Error);
  CHECK_THROWS_WITH_AS(alt_min(P.W, P.S, spec_of(9)), doctest::Contains("bits must be in 1..8"), Error);
  CHECK_THROWS_WITH_AS(alt_min(P.W, make_problem(8, 12, 1).S, spec_of(2)), doctest::Contains("alt_min: Sigma is [12, 12] but W has 16 columns"),
                       Error);
  Tensor codes = random_codes(8, 16, 3, 1);
  codes.data<uint8_t>()[5] = 9;
  CHECK_THROWS_WITH_AS(alt_min_fit_affine(P.W, P.S, codes, spec_of(2)), doctest::Contains("exceeds maxq 3"), Error);
}

TEST_CASE("dead inputs and a constant row: finite result, never worse than the init") {
  Problem P = make_problem(6, 20, 31);
  MatrixXd S = to_md(P.S), W = to_md(P.W);
  S.row(4).setZero();
  S.col(4).setZero();  // a dead input
  W.row(2).setConstant(0.25);  // a constant row: exactly representable
  W.row(3).setZero();
  P.S = to_tensor(S);
  P.W = to_tensor(W);
  const AltMinResult res = alt_min(P.W, P.S, spec_of(2, 8));
  const Tensor What = res.q.dequantize();
  for (float v : What.to_vector()) CHECK(std::isfinite(v));
  const std::vector<double> l = alt_min_row_losses(P.W, What, P.S);
  CHECK(l[2] == 0);
  CHECK(l[3] == 0);
  CHECK(res.history.back() <= res.history.front());
}
