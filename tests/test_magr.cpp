// MagR (docs/methods.md#magr): the sort-based ℓ1-ball projection against a bisection reference
// (inside the ball, ties, zeros), the ℓ∞ prox against a direct 1-D minimisation and its
// subgradient condition, the composite objective non-increasing and recomputed independently,
// α = 0 bit-exact, the ℓ∞ drop on heavy-tailed weights (per row and per group) at a small layer
// objective — far below clipping each row to the same maxima —, the fixed point after many
// iterations, bit-identical results for 1 and 2 threads, and option errors.
#include <doctest/doctest.h>
#include <omp.h>

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/rng.h"
#include "layer_problems.h"
#include "solvers/magr.h"
#include "solvers/quantease_outliers.h"
#include "solvers/solver.h"

using namespace qf;
using Eigen::MatrixXd;

namespace {

using test::to_md;
using test::to_tensor;

// θ with Σ max(|v_i| − θ, 0) = z by bisection (f64, 200 halvings of [0, max|v|]).
double bisect_theta(const std::vector<double>& v, double z) {
  double lo = 0, hi = 0;
  for (double x : v) hi = std::max(hi, std::fabs(x));
  for (int it = 0; it < 200; ++it) {
    const double mid = 0.5 * (lo + hi);
    double s = 0;
    for (double x : v) s += std::max(std::fabs(x) - mid, 0.0);
    (s > z ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

double l1(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += std::fabs(x);
  return s;
}

std::vector<double> random_vec(Rng& g, int64_t n, int kind) {
  std::vector<double> v((size_t)n);
  for (int64_t i = 0; i < n; ++i) {
    double x = g.normal();
    if (kind == 1) x = std::round(2 * x) / 2;  // many ties in |v|
    if (kind == 2 && g.uniform() < 0.3) x = 0;  // zeros
    if (kind == 3) x /= std::sqrt(std::max(g.uniform(), 1e-3));  // heavy tail
    v[(size_t)i] = x;
  }
  return v;
}

// Student-t (ν = 3) weights and a correlated Σ with a spread diagonal.
test::Problem heavy_problem(int64_t r, int64_t c, uint64_t seed) {
  test::Problem p = test::scaled_problem(r, c, seed, 3 * c, 0.7);
  Rng g(seed + 100);
  MatrixXd W(r, c);
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < c; ++j) {
      double chi = 0;
      for (int k = 0; k < 3; ++k) {
        const double z = g.normal();
        chi += z * z;
      }
      W(i, j) = 0.05 * g.normal() / std::sqrt(chi / 3);
    }
  p.W = to_tensor(W);
  return p;
}

// F of methods.md#magr, independently: ½ tr(EΣEᵀ)/λ + α Σ_cells max|·| (f64, symmetric Σ).
double composite(const MatrixXd& W, const MatrixXd& Wp, const MatrixXd& S, double lam, double alpha, int64_t G) {
  const MatrixXd E = Wp - W;
  const MatrixXd Ss = 0.5 * (S + S.transpose());
  double f = 0.5 * (E * Ss).cwiseProduct(E).sum() / lam;
  const int64_t c = W.cols();
  if (G <= 0) G = c;
  for (int64_t i = 0; i < W.rows(); ++i)
    for (int64_t a = 0; a < c; a += G) f += alpha * Wp.row(i).segment(a, std::min(G, c - a)).cwiseAbs().maxCoeff();
  return f;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.numel() == b.numel() && std::memcmp(a.f32(), b.f32(), (size_t)a.numel() * 4) == 0;
}

}  // namespace

TEST_CASE("project_l1_ball: the sort rule equals the bisection reference; inside the ball, ties, zeros") {
  Rng g(3);
  int projected = 0, inside = 0;
  for (int trial = 0; trial < 400; ++trial) {
    const int64_t n = 1 + (int64_t)(g.uniform() * 40);
    const int kind = trial % 4;
    const std::vector<double> v = random_vec(g, n, kind);
    const double s = l1(v);
    // radii below and above ‖v‖₁ (the last ones keep v)
    const double radius = trial % 5 == 4 ? s * (1 + g.uniform()) : s * (0.02 + 0.9 * g.uniform());
    std::vector<double> out((size_t)n);
    const double theta = project_l1_ball(v.data(), n, radius, out.data());
    CAPTURE(trial);
    CAPTURE(n);
    if (s <= radius) {
      ++inside;
      CHECK(theta == 0);
      CHECK(std::memcmp(out.data(), v.data(), (size_t)n * 8) == 0);  // exactly v
      continue;
    }
    ++projected;
    const double ref = bisect_theta(v, radius);
    CHECK(std::fabs(theta - ref) <= 1e-12 * (1 + ref));
    CHECK(std::fabs(l1(out) - radius) <= 1e-12 * (1 + radius));
    for (int64_t i = 0; i < n; ++i) {
      const double want = std::copysign(std::max(std::fabs(v[(size_t)i]) - ref, 0.0), v[(size_t)i]);
      CHECK(std::fabs(out[(size_t)i] - want) <= 1e-12 * (1 + std::fabs(v[(size_t)i])));
    }
    // The projection is the closest point of the ball: no random point of the ball is closer.
    double dist = 0;
    for (int64_t i = 0; i < n; ++i) dist += (v[(size_t)i] - out[(size_t)i]) * (v[(size_t)i] - out[(size_t)i]);
    for (int k = 0; k < 20; ++k) {
      std::vector<double> y = random_vec(g, n, 0);
      const double sy = l1(y);
      double d = 0;
      for (int64_t i = 0; i < n; ++i) {
        y[(size_t)i] *= radius * g.uniform() / sy;
        d += (v[(size_t)i] - y[(size_t)i]) * (v[(size_t)i] - y[(size_t)i]);
      }
      CHECK(dist <= d + 1e-12);
    }
  }
  CHECK(projected > 250);
  CHECK(inside > 50);

  SUBCASE("ties: equal magnitudes share the threshold") {
    const std::vector<double> v{3, -3, 3, 1, -1};
    std::vector<double> out(5);
    const double theta = project_l1_ball(v.data(), 5, 3.0, out.data());
    CHECK(theta == doctest::Approx(2.0));  // 3 × (3 − 2) = 3
    CHECK(out == std::vector<double>{1, -1, 1, 0, 0});
  }
  SUBCASE("radius 0 projects onto 0; bad radii are errors") {
    const std::vector<double> v{1, -2};
    std::vector<double> out(2, 7.0);
    CHECK(project_l1_ball(v.data(), 2, 0.0, out.data()) == 2.0);
    CHECK(out == std::vector<double>{0, 0});
    CHECK_THROWS_WITH_AS(project_l1_ball(v.data(), 2, -1.0, out.data()), doctest::Contains("radius must be a finite number >= 0"), Error);
    CHECK_THROWS_WITH_AS(project_l1_ball(v.data(), 2, NAN, out.data()), doctest::Contains("radius"), Error);
  }
}

TEST_CASE("prox_linf: direct 1-D minimisation and the subgradient condition") {
  // prox_{τ‖·‖∞}(v) = sign(v)·min(|v|, t*) with t* = argmin_t≥0 ½Σ max(|v_i| − t, 0)² + τt (convex
  // in t): a golden-section search on t is the independent reference.
  Rng g(5);
  for (int trial = 0; trial < 300; ++trial) {
    const int64_t n = 1 + (int64_t)(g.uniform() * 30);
    const std::vector<double> v = random_vec(g, n, trial % 4);
    const double tau = l1(v) * (trial % 6 == 5 ? 1.5 : 0.9 * g.uniform());
    std::vector<double> out((size_t)n);
    const double theta = prox_linf(v.data(), n, tau, out.data());
    CAPTURE(trial);
    auto h = [&](double t) {
      double s = tau * t;
      for (double x : v) s += 0.5 * std::pow(std::max(std::fabs(x) - t, 0.0), 2);
      return s;
    };
    double lo = 0, hi = 0;
    for (double x : v) hi = std::max(hi, std::fabs(x));
    for (int it = 0; it < 300; ++it) {
      const double a = lo + 0.381966011250105 * (hi - lo), b = hi - 0.381966011250105 * (hi - lo);
      (h(a) <= h(b) ? hi : lo) = h(a) <= h(b) ? b : a;
    }
    const double tstar = 0.5 * (lo + hi);
    CHECK(std::fabs(theta - tstar) <= 1e-7 * (1 + tstar));
    // the prox objective ½‖x − v‖² + τ‖x‖∞ at out is not above the 1-D optimum, nor above nearby points
    auto P = [&](const std::vector<double>& x) {
      double s = 0, m = 0;
      for (int64_t i = 0; i < n; ++i) s += 0.5 * std::pow(x[(size_t)i] - v[(size_t)i], 2), m = std::max(m, std::fabs(x[(size_t)i]));
      return s + tau * m;
    };
    const double Pout = P(out);
    CHECK(Pout <= h(tstar) + 1e-12 * (1 + Pout));
    for (int k = 0; k < 10; ++k) {
      std::vector<double> y = out;
      for (double& x : y) x += 1e-3 * g.normal();
      CHECK(Pout <= P(y) + 1e-15);
    }
    // Subgradient: v − x ∈ τ·∂‖x‖∞. x ≠ 0: ‖v − x‖₁ = τ and v_i − x_i ≠ 0 only where |x_i| = ‖x‖∞,
    // with the sign of x_i. x = 0: ‖v‖₁ <= τ.
    double m = 0, r1 = 0;
    for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(out[(size_t)i])), r1 += std::fabs(v[(size_t)i] - out[(size_t)i]);
    if (m == 0) {
      CHECK(l1(v) <= tau * (1 + 1e-12));
    } else {
      CHECK(std::fabs(r1 - tau) <= 1e-10 * (1 + tau));
      for (int64_t i = 0; i < n; ++i) {
        const double d = v[(size_t)i] - out[(size_t)i];
        if (d != 0) {
          CHECK(std::fabs(std::fabs(out[(size_t)i]) - m) <= 1e-12 * m);
          CHECK(d * out[(size_t)i] > 0);
        }
      }
    }
  }
  SUBCASE("tau 0 is the identity; ‖v‖₁ <= τ gives 0") {
    const std::vector<double> v{0.5, -2, 1};
    std::vector<double> out(3);
    CHECK(std::isinf(prox_linf(v.data(), 3, 0.0, out.data())));
    CHECK(out == v);
    prox_linf(v.data(), 3, 3.5, out.data());
    CHECK(out == std::vector<double>{0, 0, 0});
    CHECK_THROWS_WITH_AS(prox_linf(v.data(), 3, -0.1, out.data()), doctest::Contains("tau must be a finite number >= 0"), Error);
  }
}

TEST_CASE("magr: composite objective non-increasing, equal to an independent evaluation; alpha 0 is bit-exact") {
  const test::Problem pr = heavy_problem(40, 48, 7);
  const LayerProblem p = LayerProblem::make(pr.W, pr.S);
  const MatrixXd W = to_md(pr.W), S = to_md(pr.S);
  for (const int64_t group : {(int64_t)-1, (int64_t)16}) {
    CAPTURE(group);
    MagrOptions o;
    o.alpha = 5e-3;
    o.iters = 60;
    o.group = group;
    const MagrResult r = magr(p, o);
    REQUIRE(r.objective.size() == 61);
    CHECK(r.iters == 60);
    for (size_t k = 1; k < r.objective.size(); ++k) CHECK(r.objective[k] <= r.objective[k - 1] * (1 + 1e-13));
    CHECK(r.objective.back() < 0.9 * r.objective.front());
    const double lam = lambda_max(pr.S);
    CHECK(r.lambda_max == lam);
    CHECK(r.objective.front() == doctest::Approx(composite(W, W, S, lam, o.alpha, group)).epsilon(1e-12));
    // the last entry is F of the returned weight (up to its f32 rounding)
    CHECK(r.objective.back() == doctest::Approx(composite(W, to_md(r.W), S, lam, o.alpha, group)).epsilon(1e-6));
    const Objective ob = objective(p, r.W);
    CHECK(r.fidelity == ob.value);
    CHECK(r.relative == ob.relative);
  }
  MagrOptions z;
  z.alpha = 0;
  z.iters = 50;
  const MagrResult r0 = magr(p, z);
  CHECK(same_bits(r0.W, pr.W));
  CHECK(r0.fidelity == 0);
  CHECK(r0.linf_ratio == 1);
}

TEST_CASE("magr: heavy-tailed weights lose their row (and group) maxima at a small layer objective") {
  const test::Problem pr = heavy_problem(64, 64, 11);
  const LayerProblem p = LayerProblem::make(pr.W, pr.S);
  const MatrixXd W = to_md(pr.W), S = to_md(pr.S);
  for (const int64_t group : {(int64_t)-1, (int64_t)16}) {
    CAPTURE(group);
    MagrOptions o;
    o.alpha = group > 0 ? 2e-3 : 5e-3;
    o.iters = 200;
    o.group = group;
    const MagrResult r = magr(p, o);
    const MatrixXd Wp = to_md(r.W);
    const int64_t G = group > 0 ? group : 64;
    // every cell's maximum falls (none grows) and the mean ratio clearly drops
    double ratio = 0;
    int64_t cells = 0;
    for (int64_t i = 0; i < 64; ++i)
      for (int64_t a = 0; a < 64; a += G) {
        const double before = W.row(i).segment(a, G).cwiseAbs().maxCoeff(), after = Wp.row(i).segment(a, G).cwiseAbs().maxCoeff();
        CHECK(after <= before * (1 + 1e-6));
        ratio += after / before;
        ++cells;
      }
    ratio /= (double)cells;
    CHECK(ratio == doctest::Approx(r.linf_group_ratio).epsilon(1e-9));
    CHECK(ratio < 0.85);
    MESSAGE("group " << group << ": linf ratio " << r.linf_ratio << " group ratio " << r.linf_group_ratio << ", relative objective " << r.relative);
    CHECK(r.relative < 0.02);
    // Clipping every cell at the same maxima without Σ costs far more.
    MatrixXd C = W;
    for (int64_t i = 0; i < 64; ++i)
      for (int64_t a = 0; a < 64; a += G) {
        const double m = Wp.row(i).segment(a, G).cwiseAbs().maxCoeff();
        for (int64_t j = a; j < a + G; ++j) C(i, j) = std::clamp(C(i, j), -m, m);
      }
    const double clip = objective(p, to_tensor(C)).value;
    CHECK(r.fidelity < 0.5 * clip);
  }
}

TEST_CASE("magr: converges to a fixed point of the proximal-gradient map") {
  const test::Problem pr = heavy_problem(6, 12, 13);
  const LayerProblem p = LayerProblem::make(pr.W, pr.S);
  MagrOptions o;
  o.alpha = 0.02;
  o.iters = 5000;
  const MagrResult r = magr(p, o);
  const MatrixXd W = to_md(pr.W), S = to_md(pr.S), Wp = to_md(r.W);
  const double lam = r.lambda_max;
  const MatrixXd V = Wp - (Wp - W) * (0.5 * (S + S.transpose())) / lam;
  double res = 0;
  for (int64_t i = 0; i < 6; ++i) {
    std::vector<double> v(V.row(i).data(), V.row(i).data() + 0);
    v.resize(12);
    for (int64_t j = 0; j < 12; ++j) v[(size_t)j] = V(i, j);
    std::vector<double> out(12);
    prox_linf(v.data(), 12, o.alpha, out.data());
    for (int64_t j = 0; j < 12; ++j) res = std::max(res, std::fabs(out[(size_t)j] - Wp(i, j)));
  }
  CHECK(res < 1e-6 * W.cwiseAbs().maxCoeff());
  // and random perturbations never lower F
  Rng g(2);
  const double F = composite(W, Wp, S, lam, o.alpha, -1);
  for (int k = 0; k < 50; ++k) {
    MatrixXd Y = Wp;
    for (int64_t i = 0; i < 6; ++i)
      for (int64_t j = 0; j < 12; ++j) Y(i, j) += 1e-4 * g.normal();
    CHECK(F <= composite(W, Y, S, lam, o.alpha, -1) + 1e-12);
  }
}

TEST_CASE("magr: bit-identical for 1 and 2 threads; group = cols is per row; dead inputs and Σ = 0") {
  const test::Problem pr = heavy_problem(100, 40, 17);  // 4 row chunks
  const LayerProblem p = LayerProblem::make(pr.W, pr.S);
  MagrOptions o;
  o.alpha = 3e-3;
  o.iters = 30;
  o.group = 8;
  const int nt = omp_get_max_threads();
  omp_set_num_threads(1);
  const MagrResult a = magr(p, o);
  omp_set_num_threads(2);
  const MagrResult b = magr(p, o);
  omp_set_num_threads(nt);
  CHECK(same_bits(a.W, b.W));
  CHECK(a.objective == b.objective);

  MagrOptions rowwise = o, whole = o;
  rowwise.group = -1;
  whole.group = 40;
  CHECK(same_bits(magr(p, rowwise).W, magr(p, whole).W));

  // Σ = 0: W is returned as is (no step can be normalised), 0 iterations.
  const LayerProblem pz = LayerProblem::make(pr.W, Tensor::zeros({40, 40}));
  const MagrResult rz = magr(pz, o);
  CHECK(rz.iters == 0);
  CHECK(same_bits(rz.W, pr.W));
  CHECK(rz.lambda_max == 0);

  // A dead input (zero row/column of Σ): only the ℓ∞ term acts on it; everything stays finite.
  MatrixXd S = to_md(pr.S);
  S.row(3).setZero();
  S.col(3).setZero();
  const MagrResult rd = magr(LayerProblem::make(pr.W, to_tensor(S)), o);
  for (float x : rd.W.to_vector()) CHECK(std::isfinite(x));
}

TEST_CASE("magr: options are checked, and the registry fields map group 0 to the grid's") {
  const test::Problem pr = heavy_problem(4, 8, 19);
  const LayerProblem p = LayerProblem::make(pr.W, pr.S);
  MagrOptions o;
  o.alpha = -1;
  CHECK_THROWS_WITH_AS(magr(p, o), doctest::Contains("magr: option 'alpha' must be a finite number >= 0"), Error);
  o = MagrOptions{};
  o.group = 0;
  CHECK_THROWS_WITH_AS(magr(p, o), doctest::Contains("option 'group' must be -1 (per row) or >= 1"), Error);
  o = MagrOptions{};
  o.iters = -2;
  CHECK_THROWS_WITH_AS(magr(p, o), doctest::Contains("option 'iters'"), Error);

  const auto resolved = resolve_options("magr", magr_option_fields(), {{"alpha", 1e-4}});
  CHECK(magr_options(resolved, 128).group == 128);
  CHECK(magr_options(resolved, -1).group == -1);
  CHECK(magr_options(resolve_options("magr", magr_option_fields(), {{"group", 32}}), 128).group == 32);
  CHECK_THROWS_WITH_AS(resolve_options("magr", magr_option_fields(), {{"group", -2}}), doctest::Contains("option 'group'"), Error);
  CHECK_THROWS_WITH_AS(resolve_options("magr", magr_option_fields(), {{"alpa", 1}}), doctest::Contains("unknown option 'alpa'"), Error);
}

TEST_CASE("magr_problem: W replaced by magr's W′ with the grid's group; Σ, μ, site kept") {
  const test::Problem pr = heavy_problem(12, 32, 23);
  Tensor mu = Tensor::zeros({32});
  const LayerProblem p = LayerProblem::make(pr.W, pr.S, mu, 77, "ffn_in");
  GridSpec g;
  g.bits = 3;
  g.group = 8;
  nlohmann::ordered_json info;
  const auto resolved = resolve_options("magr", magr_option_fields(), {{"alpha", 4e-3}, {"iters", 25}});
  const LayerProblem q = magr_problem(p, g, resolved, nullptr, &info);
  MagrOptions o;
  o.alpha = 4e-3;
  o.iters = 25;
  o.group = 8;
  const MagrResult r = magr(p, o);
  CHECK(same_bits(q.W, r.W));
  CHECK(q.sigma.f32() == p.sigma.f32());
  CHECK(q.mu.f32() == p.mu.f32());
  CHECK(q.tokens == 77);
  CHECK(q.site == "ffn_in");
  CHECK(info.at("linf_group_ratio").get<double>() == r.linf_group_ratio);
  CHECK(info.at("fidelity").get<double>() == r.fidelity);
  g.group = -1;
  o.group = -1;
  CHECK(same_bits(magr_problem(p, g, resolved).W, magr(p, o).W));
}
