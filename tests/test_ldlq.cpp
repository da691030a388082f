// LDLQ (docs/methods.md#ldlq): the UDU factor, the closed-form objective it minimises term by
// term, and QuIP's theorem that LDLQ rounds exactly as GPTQ (OPTQ) does — our ldlq() (written from
// the factor) against our gptq() (the lazy-batch Cholesky form), per-channel and grouped grids,
// GPTQ's lazy batch 1 and 128 (methods.md#gptq-checks); the registry entry; thread invariance.
#include <doctest/doctest.h>
#include <omp.h>

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "layer_problems.h"
#include "solvers/gptq.h"
#include "solvers/ldlq.h"
#include "solvers/rtn.h"
#include "solvers/solver.h"

using namespace qf;
using Eigen::MatrixXd;
using test::to_md;
using test::to_tensor;

namespace {

GridSpec spec_of(int bits, int64_t group = -1, bool sym = false) {
  GridSpec s;
  s.bits = bits;
  s.group = group;
  s.sym = sym;
  return s;
}

// Row-by-row comparison of LDLQ's codes with GPTQ's. The two compute the same rounding in
// different arithmetic (f64 feedback from the factor vs f32 lazy-batch updates), so an entry
// whose value sits within 1e-3 of a rounding boundary (in code units, from LDLQ's own target
// and grid) may round the other way; after that the row's feedback differs and its later codes
// may too. So: a row either matches entirely, or its first mismatch is at such a tie (counted);
// a first mismatch anywhere else is a failure. Group parameters must agree to 1e-5.
struct Compare {
  int64_t rows_equal = 0, rows_tie = 0, rows_bad = 0, codes_differ = 0;
  double max_scale_rel = 0;
};

Compare compare(const LdlqResult& L, const GptqResult& G) {
  const Grid& g = L.q.grid;
  const int64_t r = g.rows, c = g.cols;
  Compare out;
  const uint8_t* a = L.q.codes.data<uint8_t>();
  const uint8_t* b = G.q.codes.data<uint8_t>();
  const float* t = L.target.f32();
  REQUIRE(G.q.grid.g_idx == g.g_idx);
  for (int64_t i = 0; i < r; ++i)
    for (int64_t k = 0; k < g.ngroups; ++k)
      out.max_scale_rel = std::max(out.max_scale_rel, std::fabs((double)g.s(i, k) / G.q.grid.s(i, k) - 1));
  // Columns in processing order: identity here (act_order tests pass the permutation).
  for (int64_t i = 0; i < r; ++i) {
    int64_t first = -1;
    for (int64_t j = 0; j < c; ++j)
      if (a[i * c + j] != b[i * c + j]) {
        ++out.codes_differ;
        if (first < 0) first = j;
      }
    if (first < 0) {
      ++out.rows_equal;
      continue;
    }
    const int64_t gi = g.g_idx[(size_t)first];
    const double x = (double)t[i * c + first] / g.s(i, gi);
    const bool tie = std::fabs(std::fabs(x - std::floor(x)) - 0.5) < 1e-3;
    (tie ? out.rows_tie : out.rows_bad) += 1;
  }
  return out;
}

int64_t count_diff(const Tensor& a, const Tensor& b) {
  const uint8_t* x = a.data<uint8_t>();
  const uint8_t* y = b.data<uint8_t>();
  int64_t n = 0;
  for (int64_t k = 0; k < a.numel(); ++k) n += x[k] != y[k];
  return n;
}

}  // namespace

TEST_CASE("udu_factor: H = M·D·Mᵀ, M unit upper triangular, D > 0; not positive definite → false") {
  const test::Problem P = test::scaled_problem(4, 37, 5, 80, 0.8);
  const MatrixXd H = to_md(P.S) + 0.01 * to_md(P.S).diagonal().mean() * MatrixXd::Identity(37, 37);
  MatrixXd M;
  Eigen::VectorXd D;
  REQUIRE(udu_factor(H, M, D));
  for (int64_t i = 0; i < 37; ++i) {
    CHECK(M(i, i) == 1.0);
    for (int64_t j = 0; j < i; ++j) CHECK(M(i, j) == 0.0);
    CHECK(D(i) > 0);
  }
  const MatrixXd R = M * D.asDiagonal() * M.transpose();
  CHECK((R - H).cwiseAbs().maxCoeff() <= 1e-10 * H.cwiseAbs().maxCoeff());
  // The last diagonal entry is H's own (nothing after it to eliminate): D_{n−1} = H_{n−1,n−1}.
  CHECK(D(36) == doctest::Approx(H(36, 36)).epsilon(1e-12));
  MatrixXd Bad = H;
  Bad(3, 3) = -1;
  CHECK_FALSE(udu_factor(Bad, M, D));
  MatrixXd Sing = MatrixXd::Ones(5, 5);  // rank 1
  CHECK_FALSE(udu_factor(Sing, M, D));
}

TEST_CASE("LDLQ minimises its closed form term by term: f = Σ_k D_k‖((W − Ŵ)·M)_{:,k}‖² under the damped H") {
  const test::Problem P = test::scaled_problem(9, 40, 21, 90, 0.9);
  LdlqOptions o;
  o.percdamp = 0.05;
  const LdlqResult L = ldlq(P.W, P.S, spec_of(3), o);
  MatrixXd H = to_md(P.S);
  H.diagonal().array() += 0.05 * H.diagonal().mean();
  MatrixXd M;
  Eigen::VectorXd D;
  REQUIRE(udu_factor(H, M, D));
  const MatrixXd W = to_md(P.W), Wh = to_md(L.q.dequantize()), E = W - Wh;
  const double direct = (E * H).cwiseProduct(E).sum();
  const MatrixXd EM = E * M;
  double closed = 0;
  for (int64_t k = 0; k < 40; ++k) closed += D(k) * EM.col(k).squaredNorm();
  CHECK(closed == doctest::Approx(direct).epsilon(1e-9));
  // Term k: column k of (W − Ŵ)·M is w_k − ŵ_k + E_{<k}·M_{<k,k} = target_k − ŵ_k, and ŵ_k is the
  // nearest grid value of target_k — every row's term is the least its grid allows.
  const Tensor T = L.target;
  for (int64_t i = 0; i < 9; ++i)
    for (int64_t k = 0; k < 40; ++k) {
      const double tk = T.get({i, k});
      CHECK(EM(i, k) == doctest::Approx(tk - Wh(i, k)).epsilon(1e-6).scale(1.0));
      const int code = L.q.codes.data<uint8_t>()[i * 40 + k];
      for (int alt : {code - 1, code + 1})
        if (alt >= 0 && alt <= 7) CHECK(std::fabs(tk - L.q.grid.value(alt, i, 0)) >= std::fabs(tk - Wh(i, k)) - 1e-6);
    }
}

TEST_CASE("QuIP's theorem: LDLQ rounds as GPTQ (per-channel and grouped, lazy batch 1 and 128)") {
  struct Case {
    int64_t r, c;
    GridSpec spec;
    int64_t gptq_block, ldlq_block;
    bool act_order;
    const char* name;
  };
  const Case cases[] = {
      {48, 96, spec_of(4), 1, 128, false, "4-bit per-channel, GPTQ B=1"},
      {48, 300, spec_of(4), 128, 128, false, "4-bit per-channel, GPTQ B=128 (3 lazy blocks)"},
      {40, 200, spec_of(3), 128, 1, false, "3-bit per-channel, GPTQ B=128 (LDLQ's blocksize is irrelevant per channel)"},
      {40, 172, spec_of(2, -1, true), 32, 32, false, "2-bit sym per-channel, B=32"},
      {32, 160, spec_of(3, 32), 1, 1, false, "3-bit g32: fully updated groups (GPTQ B=1, LDLQ blocksize 1)"},
      {32, 256, spec_of(3, 128), 128, 128, false, "3-bit g128 aligned with GPTQ's lazy batch"},
      {32, 172, spec_of(4, 32), 128, 128, false, "4-bit g32 inside B=128: GPTQ's stale groups, reproduced by LDLQ blocksize 128"},
      {24, 150, spec_of(4, 48), 64, 64, true, "4-bit g48, B=64, act_order"},
  };
  for (const Case& cs : cases) {
    const std::string cname = cs.name;
    CAPTURE(cname);
    for (uint64_t seed : {1ull, 2ull, 3ull}) {
      CAPTURE(seed);
      const test::Problem P = test::scaled_problem(cs.r, cs.c, 100 * seed + (uint64_t)cs.c, 2 * cs.c, 0.8);
      GptqOptions go;
      go.blocksize = cs.gptq_block;
      go.act_order = cs.act_order;
      LdlqOptions lo;
      lo.blocksize = cs.ldlq_block;
      lo.act_order = cs.act_order;
      const GptqResult G = gptq(P.W, P.S, cs.spec, go);
      const LdlqResult L = ldlq(P.W, P.S, cs.spec, lo);
      CHECK(L.percdamp_used == G.percdamp_used);
      Compare cmp;
      if (!cs.act_order) {
        cmp = compare(L, G);
      } else {  // compare in processing order: permute the columns of both and of the target
        std::vector<int64_t> perm((size_t)cs.c);
        std::iota(perm.begin(), perm.end(), 0);
        std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) { return P.S.get({a, a}) > P.S.get({b, b}); });
        auto permute = [&](const Tensor& X) {
          Tensor Y = Tensor::empty(X.shape(), X.dtype());
          for (int64_t i = 0; i < cs.r; ++i)
            for (int64_t p = 0; p < cs.c; ++p) Y.set({i, p}, X.get({i, perm[(size_t)p]}));
          return Y;
        };
        LdlqResult Lp = L;
        GptqResult Gp = G;
        Lp.q.codes = permute(L.q.codes);
        Gp.q.codes = permute(G.q.codes);
        Lp.target = permute(L.target);
        std::vector<int32_t> gi((size_t)cs.c);
        for (int64_t p = 0; p < cs.c; ++p) gi[(size_t)p] = L.q.grid.g_idx[(size_t)perm[(size_t)p]];
        Lp.q.grid.g_idx = gi;
        Gp.q.grid.g_idx = gi;
        CHECK(G.q.grid.g_idx == L.q.grid.g_idx);
        cmp = compare(Lp, Gp);
      }
      MESSAGE(cname << " seed " << seed << ": rows equal " << cmp.rows_equal << ", first mismatch at a tie " << cmp.rows_tie
                      << ", codes differing " << cmp.codes_differ << ", max scale rel " << cmp.max_scale_rel);
      CHECK(cmp.rows_bad == 0);
      CHECK(cmp.rows_equal >= cs.r * 95 / 100);
      CHECK(cmp.max_scale_rel <= 1e-5);
      // Not vacuous: error feedback moved many codes away from round-to-nearest on the same grid.
      if (cs.spec.group < 0) CHECK(count_diff(L.q.codes, rtn(P.W, cs.spec).codes) > cs.r * cs.c / 20);
    }
  }
}

TEST_CASE("the comparison can fail: LDLQ with fully updated groups against GPTQ's stale ones (g32 inside B=128)") {
  const test::Problem P = test::scaled_problem(32, 172, 372, 344, 0.8);
  GptqOptions go;  // blocksize 128: groups 2..4 of each block fitted on stale weights
  LdlqOptions lo;
  lo.blocksize = 1;
  const Compare cmp = compare(ldlq(P.W, P.S, spec_of(4, 32), lo), gptq(P.W, P.S, spec_of(4, 32), go));
  MESSAGE("rows equal " << cmp.rows_equal << ", bad " << cmp.rows_bad << ", max scale rel " << cmp.max_scale_rel);
  CHECK(cmp.max_scale_rel > 1e-3);
  CHECK(cmp.rows_bad > 0);
}

TEST_CASE("LDLQ: dead inputs as GPTQ (column zeroed), static groups, registry entry, thread count") {
  test::Problem P = test::scaled_problem(20, 64, 9, 150, 0.7);
  for (int64_t k = 0; k < 64; ++k) {
    P.S.set({5, k}, 0.f), P.S.set({k, 5}, 0.f);
    P.S.set({40, k}, 0.f), P.S.set({k, 40}, 0.f);
  }
  GptqOptions go;
  go.static_groups = true;
  go.blocksize = 16;
  LdlqOptions lo;
  lo.static_groups = true;
  const GridSpec sp = spec_of(3, 16);
  const GptqResult G = gptq(P.W, P.S, sp, go);
  const LdlqResult L = ldlq(P.W, P.S, sp, lo);
  const Compare cmp = compare(L, G);
  CHECK(cmp.rows_bad == 0);
  CHECK(cmp.rows_equal >= 19);
  CHECK(cmp.max_scale_rel == 0);  // static groups: both fitted from the same dead-zeroed W
  for (int64_t i = 0; i < 20; ++i) {
    CHECK(L.target.get({i, 5}) == doctest::Approx(0.0).scale(1.0).epsilon(1e-6));
    CHECK(L.q.dequantize().get({i, 40}) == doctest::Approx(0.0).scale(1.0).epsilon(0.5 * L.q.grid.s(i, 2)));
  }

  // The registry runs the same function with the declared defaults.
  const LayerProblem lp = LayerProblem::make(P.W, P.S);
  const SolveResult sr = solve_layer("ldlq", lp, sp, {{"static_groups", true}});
  CHECK(count_diff(sr.q.codes, L.q.codes) == 0);
  CHECK(sr.info["objective"].get<double>() == doctest::Approx(objective(lp, L.q.dequantize()).value).epsilon(1e-12));
  CHECK(sr.info["options"]["blocksize"].get<int64_t>() == 128);
  CHECK_THROWS_WITH_AS(solve_layer("ldlq", lp, sp, {{"blocksize", 0}}), doctest::Contains("ldlq: option 'blocksize' must be an integer >= 1, got 0"), Error);
  CHECK_THROWS_WITH_AS(ldlq(P.W, Tensor::zeros({3, 3}), sp), doctest::Contains("ldlq"), Error);

  // The same bits on one thread and on all of them (rows run in fixed chunks, sums in a fixed order).
  const test::Problem Q = test::scaled_problem(300, 200, 17, 400, 0.8);
  const int nt = omp_get_max_threads();
  omp_set_num_threads(1);
  const LdlqResult one = ldlq(Q.W, Q.S, spec_of(3, 32));
  omp_set_num_threads(std::max(2, nt));
  const LdlqResult many = ldlq(Q.W, Q.S, spec_of(3, 32));
  omp_set_num_threads(nt);
  CHECK(count_diff(one.q.codes, many.q.codes) == 0);
  CHECK(std::memcmp(one.target.f32(), many.target.f32(), sizeof(float) * one.target.numel()) == 0);
  CHECK(one.q.grid.scale == many.q.grid.scale);
}
