// Qronos, GPFQ (docs/methods.md#qronos) and stochastic rounding (methods.md#stochastic-rounding):
// the mismatched objective against explicit activations; Qronos with X̃ = X is GPTQ; its first step
// is the closed form; Qronos ≤ GPTQ on the mismatched objective; GPFQ against a plain f64
// implementation of its formula; stochastic rounding is unbiased, seeded, thread-count independent.
#include <doctest/doctest.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include <Eigen/Dense>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/rng.h"
#include "layer_problems.h"
#include "solvers/gptq.h"
#include "solvers/qronos.h"
#include "solvers/solver.h"

using namespace qf;
using Eigen::MatrixXd;
using test::to_md;
using test::to_tensor;

namespace {

GridSpec spec_of(int bits, int64_t group = -1) {
  GridSpec s;
  s.bits = bits;
  s.group = group;
  return s;
}

// A mismatched problem from explicit activations: X [N, c] (full precision, rows = tokens) and
// X̃ = X + noise·E (the quantized prefix's), W [r, c].
struct Mismatched {
  MatrixXd X, Xt, W;
  LayerProblem p;
};

Mismatched make_mismatched(int64_t r, int64_t c, int64_t N, double noise, uint64_t seed) {
  Rng g(seed);
  Mismatched m;
  m.X.resize(N, c);
  m.Xt.resize(N, c);
  m.W.resize(r, c);
  MatrixXd A = MatrixXd::Identity(c, c);
  for (int64_t i = 0; i < c; ++i)
    for (int64_t j = 0; j < c; ++j) A(i, j) += 0.6 * g.normal() / std::sqrt((double)c);
  MatrixXd Z(N, c);
  for (int64_t t = 0; t < N; ++t)
    for (int64_t j = 0; j < c; ++j) Z(t, j) = g.normal() * (0.4 + 0.3 * (double)(j % 5));
  m.X = Z * A;
  for (int64_t t = 0; t < N; ++t)
    for (int64_t j = 0; j < c; ++j) m.Xt(t, j) = m.X(t, j) + noise * g.normal();
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < c; ++j) m.W(i, j) = g.normal();
  const MatrixXd H = m.Xt.transpose() * m.Xt, G = m.X.transpose() * m.Xt, F = m.X.transpose() * m.X;
  m.p = LayerProblem::make(to_tensor(m.W), to_tensor(0.5 * (H + H.transpose())), {}, N, "", "test");
  set_cross_statistics(m.p, to_tensor(G), to_tensor(0.5 * (F + F.transpose())), "test");
  return m;
}

double direct_mismatched(const Mismatched& m, const Tensor& What) {
  const MatrixXd Q = to_md(What);
  return (m.X * m.W.transpose() - m.Xt * Q.transpose()).squaredNorm();
}

int64_t count_diff(const Tensor& a, const Tensor& b) {
  const std::vector<float> x = a.to_vector(), y = b.to_vector();
  int64_t n = 0;
  for (size_t k = 0; k < x.size(); ++k) n += x[k] != y[k];
  return n;
}

}  // namespace

TEST_CASE("mismatched objective equals ||X W^T - X~ Q^T||^2 from explicit activations") {
  const Mismatched m = make_mismatched(6, 10, 200, 0.3, 1);
  Rng g(2);
  MatrixXd Q = m.W;
  for (int64_t i = 0; i < Q.rows(); ++i)
    for (int64_t j = 0; j < Q.cols(); ++j) Q(i, j) += 0.1 * g.normal();
  const Tensor Qt = to_tensor(Q);
  const double want = direct_mismatched(m, Qt);
  const Objective o = mismatched_objective(m.p, Qt);
  CHECK(o.value == doctest::Approx(want).epsilon(1e-5));
  CHECK(o.relative == doctest::Approx(want / (m.X * m.W.transpose()).squaredNorm()).epsilon(1e-5));
  // Without cross statistics it is an error, and a wrong shape is named.
  LayerProblem plain = LayerProblem::make(m.p.W, m.p.sigma, {}, 0, "", "t");
  CHECK_THROWS_WITH_AS(mismatched_objective(plain, Qt), doctest::Contains("no cross statistics"), std::runtime_error);
  CHECK_THROWS_WITH_AS(set_cross_statistics(plain, to_tensor(MatrixXd::Zero(3, 3)), m.p.sigma_fp, "t"), doctest::Contains("cross must be f32 [10, 10]"),
                       std::runtime_error);
  CHECK_THROWS_WITH_AS(qronos(plain, spec_of(3)), doctest::Contains("no cross statistics"), std::runtime_error);
}

TEST_CASE("Qronos with X~ = X is GPTQ (same damping, per-channel and static groups, act-order)") {
  for (int64_t group : {-1, 8}) {
    for (bool act : {false, true}) {
      const test::Problem pr = test::scaled_problem(24, 32, 7 + (uint64_t)group + act, 96, 0.8);
      LayerProblem p = LayerProblem::make(pr.W, pr.S, {}, 0, "", "t");
      set_cross_statistics(p, pr.S, pr.S, "t");
      QronosOptions qo;
      qo.percdamp = 0.01;
      qo.lambda_damp = 0;
      qo.act_order = act;
      qo.blocksize = 8;
      const QronosResult qr = qronos(p, spec_of(3, group), qo);
      GptqOptions go;
      go.percdamp = 0.01;
      go.act_order = act;
      go.blocksize = 8;
      go.static_groups = group > 0;
      const GptqResult gr = gptq(p, spec_of(3, group), go);
      // Same grid parameters, and the same codes up to f32/f64 rounding of near-ties.
      CHECK(qr.q.grid.scale == gr.q.grid.scale);
      const int64_t diff = count_diff(qr.q.codes.to(DType::F32), gr.q.codes.to(DType::F32));
      CHECK(diff <= 2);
      const double oq = objective(p, qr.q.dequantize()).value, og = objective(p, gr.q.dequantize()).value;
      CHECK(oq == doctest::Approx(og).epsilon(2e-3));
    }
  }
}

TEST_CASE("Qronos step 1 rounds the closed form; later columns follow its least-squares update") {
  const Mismatched m = make_mismatched(5, 6, 60, 0.5, 3);
  QronosOptions qo;
  qo.lambda_damp = 0;
  qo.percdamp = 0;
  const QronosResult qr = qronos(m.p, spec_of(4), qo);
  // q₁ = Q( [ (W G)_{:,1} − Σ_{k>1} W_{:,k} H_{k,1} ] / H_11 ), in f64 here.
  const MatrixXd G = to_md(m.p.cross), H = to_md(m.p.sigma);
  const MatrixXd u = (m.W * G.col(0) - m.W.rightCols(5) * H.col(0).tail(5)) / H(0, 0);
  const Tensor Wq = qr.q.dequantize();
  for (int64_t i = 0; i < 5; ++i) {
    const float want = qr.q.grid.quantize((float)u(i), i, 0);
    CHECK(Wq.get({i, 0}) == want);
  }
  // The unrounded target differs from w₁ (the past is corrected), unlike GPTQ's first column.
  CHECK((u - m.W.col(0)).norm() > 1e-3 * m.W.col(0).norm());
}

TEST_CASE("Qronos beats GPTQ on the mismatched objective; GPFQ beats RTN") {
  int qronos_wins = 0, trials = 0;
  for (uint64_t seed = 10; seed < 16; ++seed) {
    const Mismatched m = make_mismatched(32, 24, 240, 0.4, seed);
    for (int bits : {2, 3, 4}) {
      QronosOptions qo;
      const double q = mismatched_objective(m.p, qronos(m.p, spec_of(bits), qo).q.dequantize()).value;
      const double gp = mismatched_objective(m.p, gptq(m.p, spec_of(bits)).q.dequantize()).value;
      const double gf = mismatched_objective(m.p, gpfq(m.p, spec_of(bits), qo).q.dequantize()).value;
      const double rt = mismatched_objective(m.p, solve_layer("rtn", m.p, spec_of(bits)).q.dequantize()).value;
      CHECK(q < gp);
      CHECK(gf < rt);
      qronos_wins += q < gp;
      ++trials;
    }
  }
  CHECK(qronos_wins == trials);
}

TEST_CASE("GPFQ equals a plain f64 implementation of its formula (blocked GEMMs, act-order)") {
  const Mismatched m = make_mismatched(7, 13, 80, 0.3, 21);
  for (bool act : {false, true}) {
    QronosOptions qo;
    qo.blocksize = 4;
    qo.act_order = act;
    qo.lambda_damp = 0;
    qo.percdamp = 0.01;
    const QronosResult r = gpfq(m.p, spec_of(3), qo);
    const MatrixXd H0 = to_md(m.p.sigma), G0 = to_md(m.p.cross);
    const int64_t c = 13;
    std::vector<int64_t> perm(c);
    std::iota(perm.begin(), perm.end(), 0);
    if (act) std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) { return H0(a, a) > H0(b, b); });
    const double lam = 0.01 * H0.diagonal().mean();
    MatrixXd Q = MatrixXd::Zero(7, c);
    for (int64_t t = 0; t < c; ++t) {
      const int64_t jt = perm[t];
      for (int64_t i = 0; i < 7; ++i) {
        double a = (G0(jt, jt) + lam) * m.W(i, jt);
        for (int64_t k = 0; k < t; ++k) a += m.W(i, perm[k]) * G0(perm[k], jt) - Q(i, perm[k]) * H0(perm[k], jt);
        Q(i, jt) = r.q.grid.quantize((float)(a / (H0(jt, jt) + lam)), i, 0);
      }
    }
    const MatrixXd got = to_md(r.q.dequantize());
    CHECK((got - Q).cwiseAbs().maxCoeff() == 0.0);
  }
}

TEST_CASE("stochastic rounding: unbiased, on the two neighbours, seeded, thread-count independent") {
  // The grid's own draw: mean over many draws ≈ x, and only the two neighbouring values occur.
  GridSpec s = spec_of(3);
  const Tensor W = to_tensor(MatrixXd::Constant(1, 4, 1.0));
  Grid grid = grid_fit(to_tensor((MatrixXd(1, 4) << -1.0, 0.0, 0.5, 2.5).finished()), s);
  for (float x : {0.13f, 0.71f, -0.4f, 1.99f}) {
    const int q0 = grid.code(x, 0, 0);
    double mean = 0;
    const int n = 20000;
    for (int k = 0; k < n; ++k) {
      const int q = grid.stochastic_code(x, 0, 0, counter_uniform(99, (uint64_t)k));
      CHECK(std::abs(q - q0) <= 1);
      mean += grid.value(q, 0, 0);
    }
    mean /= n;
    const double step = grid.s(0, 0);
    CHECK(std::abs(mean - x) < 4 * 0.5 * step / std::sqrt((double)n));
  }
  // Beyond the range: clamped, never a random jump.
  CHECK(grid.stochastic_code(100.f, 0, 0, 0.0) == grid.maxq());
  // GPTQ with one column is rounding: the mean over rows of the same weight ≈ the weight.
  const int64_t r = 4000;
  MatrixXd Wc(r, 2);
  for (int64_t i = 0; i < r; ++i) {
    Wc(i, 0) = 0.37;
    Wc(i, 1) = (i % 2 ? 1.0 : -1.0);  // the grid's range [-1, 1]
  }
  MatrixXd S = MatrixXd::Identity(2, 2);
  GptqOptions go;
  go.stochastic = true;
  go.seed = 5;
  const GptqResult a = gptq(to_tensor(Wc), to_tensor(S), spec_of(2), go);
  const MatrixXd D = to_md(a.q.dequantize());
  CHECK(D.col(0).mean() == doctest::Approx(0.37).epsilon(0.02));
  // Same seed: identical codes (for any thread count); another seed: different codes.
  const test::Problem pr = test::scaled_problem(64, 48, 3, 128, 0.8);
  auto codes = [&](uint64_t seed, int threads) {
#ifdef _OPENMP
    omp_set_num_threads(threads);
#endif
    GptqOptions o;
    o.stochastic = true;
    o.seed = seed;
    o.blocksize = 16;
    return gptq(pr.W, pr.S, spec_of(3), o).q.codes.to(DType::F32).to_vector();
  };
  const std::vector<float> c1 = codes(1, 1), c2 = codes(1, 2), c3 = codes(2, 2);
#ifdef _OPENMP
  omp_set_num_threads(omp_get_num_procs());
#endif
  CHECK(c1 == c2);
  CHECK(c1 != c3);
  // The layer's block and name are part of the key: the same problem in another layer draws differently.
  LayerProblem p1 = LayerProblem::make(pr.W, pr.S, {}, 0, "", "t"), p2 = p1;
  p1.block = 1;
  p1.name = "q";
  p2.block = 2;
  p2.name = "q";
  GptqOptions o;
  o.stochastic = true;
  CHECK(count_diff(gptq(p1, spec_of(3), o).q.codes.to(DType::F32), gptq(p2, spec_of(3), o).q.codes.to(DType::F32)) > 0);
  // Qronos's stochastic option is seeded too.
  const Mismatched m = make_mismatched(16, 12, 60, 0.3, 4);
  QronosOptions qo;
  qo.stochastic = true;
  qo.seed = 3;
  CHECK(count_diff(qronos(m.p, spec_of(3), qo).q.codes.to(DType::F32), qronos(m.p, spec_of(3), qo).q.codes.to(DType::F32)) == 0);
}

TEST_CASE("qronos and gpfq are registered solvers; solve_layer reports the mismatched objective") {
  const Mismatched m = make_mismatched(8, 8, 40, 0.3, 9);
  const SolveResult r = solve_layer("qronos", m.p, spec_of(3), nlohmann::json{{"act_order", true}});
  CHECK(r.info.contains("mismatched"));
  CHECK(r.info.at("mismatched").get<double>() == doctest::Approx(direct_mismatched(m, r.q.dequantize())).epsilon(1e-4));
  const SolveResult g = solve_layer("gptq", m.p, spec_of(3));
  CHECK(g.info.contains("mismatched"));
  CHECK_THROWS_WITH_AS(solve_layer("gpfq", m.p, spec_of(3), nlohmann::json{{"lambda_damp", -1}}), doctest::Contains("lambda_damp"), std::runtime_error);
}
