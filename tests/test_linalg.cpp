// Dense linear algebra (engine/core/linalg): each factorization against closed forms worked by
// hand or an independent f64 computation written here (plain loops, Gram–Schmidt, the dense
// Sylvester matrix by Kronecker recursion), orthogonality, triangularity, sign conventions,
// bit-determinism (also across thread counts) and named errors.
#include <doctest/doctest.h>
#include <omp.h>

#include <Eigen/Dense>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>

#include "core/linalg.h"
#include "core/rng.h"
#include "core/tensor.h"

using namespace qf;
using MatD = Eigen::MatrixXd;

// ---- helpers --------------------------------------------------------------------------
static MatD md(const Tensor& t) {  // a 2-d tensor (or 1-d as a column) in f64
  const std::vector<float> v = t.to_vector();
  const int64_t r = t.size(0), c = t.dim() == 2 ? t.size(1) : 1;
  MatD M(r, c);
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < c; ++j) M(i, j) = v[i * c + j];
  return M;
}
static Tensor tensor(const MatD& M) {
  Tensor t = Tensor::empty({(int64_t)M.rows(), (int64_t)M.cols()});
  for (int64_t i = 0; i < M.rows(); ++i)
    for (int64_t j = 0; j < M.cols(); ++j) t.f32()[i * M.cols() + j] = (float)M(i, j);
  return t;
}
static Tensor tensor(int64_t r, int64_t c, std::initializer_list<double> v) {
  std::vector<float> f(v.begin(), v.end());
  return Tensor::from_data({r, c}, f);
}
static MatD randn(int64_t r, int64_t c, uint64_t seed) {
  Rng g(seed);
  MatD M(r, c);
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < c; ++j) M(i, j) = (float)g.normal();  // f32-representable
  return M;
}
// A well-conditioned SPD matrix, f32-representable: round(G·Gᵀ + n·I).
static MatD spd(int64_t n, uint64_t seed) {
  const MatD G = randn(n, n, seed);
  MatD A = G * G.transpose() + (double)n * MatD::Identity(n, n);
  return md(tensor(A));
}
static double maxabs(const MatD& M) { return M.size() ? M.cwiseAbs().maxCoeff() : 0.0; }
static bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.f32(), b.f32(), a.numel() * 4) == 0;
}
static std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}
#define CHECK_ERROR(expr, text) CHECK_MESSAGE(error_of([&] { (void)(expr); }).find(text) != std::string::npos, \
                                              error_of([&] { (void)(expr); }))
// The column's largest-magnitude component (first on ties) is positive.
static bool sign_ok(const MatD& M, int64_t j) {
  int64_t at = 0;
  for (int64_t i = 0; i < M.rows(); ++i)
    if (std::abs(M(i, j)) > std::abs(M(at, j))) at = i;
  return M(at, j) > 0;
}

// ---- cholesky -------------------------------------------------------------------------
TEST_CASE("cholesky: a known L, the 2x2 closed form, reconstruction, upper") {
  // L chosen by hand; A = L·Lᵀ worked out by hand.
  const Tensor A = tensor(3, 3, {4, 2, -2, 2, 10, 2, -2, 2, 21});  // L = [[2,0,0],[1,3,0],[-1,1,√19]]
  const MatD L = md(cholesky(A));
  const MatD want = (MatD(3, 3) << 2, 0, 0, 1, 3, 0, -1, 1, std::sqrt(19.0)).finished();
  CHECK(maxabs(L - want) < 1e-6);
  CHECK(L(0, 1) == 0);
  CHECK(L(0, 2) == 0);
  CHECK(L(1, 2) == 0);
  // [[a, b], [b, c]] -> [[√a, 0], [b/√a, √(c − b²/a)]]
  const double a = 3, b = -1.5, c = 2;
  const MatD L2 = md(cholesky(tensor(2, 2, {a, b, b, c})));
  CHECK(std::abs(L2(0, 0) - std::sqrt(a)) < 1e-6);
  CHECK(std::abs(L2(1, 0) - b / std::sqrt(a)) < 1e-6);
  CHECK(std::abs(L2(1, 1) - std::sqrt(c - b * b / a)) < 1e-6);

  const MatD S = spd(40, 7);
  const Tensor Lt = cholesky(tensor(S));
  const MatD Lm = md(Lt);
  CHECK(maxabs(Lm * Lm.transpose() - S) < 2e-6 * maxabs(S));
  for (int i = 0; i < 40; ++i) {
    CHECK(Lm(i, i) > 0);
    for (int j = i + 1; j < 40; ++j) CHECK(Lm(i, j) == 0);
  }
  const Tensor U = cholesky(tensor(S), true);
  CHECK(same_bits(U, Lt.t().contiguous()));
  CHECK(same_bits(cholesky(tensor(S)), Lt));  // deterministic
}

TEST_CASE("cholesky: any dtype and strides; 0x0; errors name the pivot") {
  const MatD S = spd(6, 3);
  const Tensor A = tensor(S);
  CHECK(same_bits(cholesky(A.t()), cholesky(A)));  // symmetric: the transposed view is A
  Tensor big = Tensor::zeros({6, 9});
  big.narrow(1, 2, 6).copy_(A);
  CHECK(same_bits(cholesky(big.narrow(1, 2, 6)), cholesky(A)));
  const Tensor A16 = tensor(3, 3, {4, 2, -2, 2, 10, 2, -2, 2, 21}).to(DType::F16);
  CHECK(maxabs(md(cholesky(A16)) - md(cholesky(A16.to(DType::F32)))) == 0);

  CHECK(cholesky(Tensor::empty({0, 0})).shape() == Shape{0, 0});
  CHECK_ERROR(cholesky(tensor(2, 2, {1, 2, 2, 1})), "pivot 2 of 2 is -3");
  CHECK_ERROR(cholesky(tensor(3, 3, {1, 0, 0, 0, 2, 0, 0, 0, -1})), "pivot 3 of 3");
  CHECK_ERROR(cholesky(tensor(3, 3, {1, 0, 0, 0, 2, 0, 0, 0, -1})), "add damping");
  CHECK_ERROR(cholesky(tensor(2, 2, {0, 0, 0, 1})), "pivot 1 of 2 is 0");
  CHECK_ERROR(cholesky(tensor(2, 3, {1, 0, 0, 0, 1, 0})), "cholesky: A must be a square 2-d matrix, got shape [2, 3]");
  CHECK_ERROR(cholesky(Tensor::empty({4})), "got shape [4]");
  CHECK_ERROR(cholesky(tensor(2, 2, {1, 0.5, 0.4, 1})), "cholesky: A is not symmetric: A(2, 1) = 0.4 but A(1, 2) = 0.5");
  Tensor nan = tensor(2, 2, {1, 0, 0, 1});
  nan.set({1, 0}, NAN);
  CHECK_ERROR(cholesky(nan), "cholesky: A holds a non-finite value (nan) at (2, 1)");
  CHECK_ERROR(cholesky(Tensor()), "cholesky: A is an undefined tensor");
}

// ---- solve_triangular -----------------------------------------------------------------
TEST_CASE("solve_triangular: every option combination satisfies its equation") {
  const int n = 6, k = 3;
  MatD A = randn(n, n, 11);
  for (int i = 0; i < n; ++i) A(i, i) = 4 + i;  // well conditioned
  const Tensor At = tensor(A);
  for (int mask = 0; mask < 16; ++mask) {
    TriangularOpts o;
    o.upper = mask & 1, o.left = mask & 2, o.transpose = mask & 4, o.unit = mask & 8;
    CAPTURE(mask);
    // The matrix the solver should use: the chosen triangle, unit diagonal if asked.
    MatD T = o.upper ? MatD(A.triangularView<Eigen::Upper>()) : MatD(A.triangularView<Eigen::Lower>());
    if (o.unit) T.diagonal().setOnes();
    const MatD opT = o.transpose ? MatD(T.transpose()) : T;
    const MatD B = o.left ? randn(n, k, 12) : randn(k, n, 12);
    const MatD X = md(solve_triangular(At, tensor(B), o));
    const MatD R = o.left ? MatD(opT * X - B) : MatD(X * opT - B);
    CHECK(maxabs(R) < 1e-5);
    // a 1-d B: a column (left) or a row (right)
    const MatD b = randn(n, 1, 13);
    Tensor bv = Tensor::empty({n});
    for (int i = 0; i < n; ++i) bv.f32()[i] = (float)b(i, 0);
    const Tensor xv = solve_triangular(At, bv, o);
    REQUIRE(xv.shape() == Shape{n});
    const MatD x = md(xv);
    CHECK(maxabs(o.left ? MatD(opT * x - b) : MatD(x.transpose() * opT - b.transpose())) < 1e-5);
  }
}

TEST_CASE("solve_triangular: by hand, views, errors") {
  // [[2, 0], [1, 4]]·x = [4, 6] -> x = [2, 1]
  const Tensor L = tensor(2, 2, {2, 0, 1, 4});
  const Tensor x = solve_triangular(L, Tensor::from_data({2}, {4, 6}));
  CHECK(x.to_vector() == std::vector<float>{2, 1});
  // upper with transpose on the transposed view reads the same numbers: Lᵀ upper, (Lᵀ)ᵀ = L
  TriangularOpts up;
  up.upper = true, up.transpose = true;
  CHECK(solve_triangular(L.t(), Tensor::from_data({2}, {4, 6}), up).to_vector() == std::vector<float>{2, 1});
  // the other triangle is not read
  CHECK(solve_triangular(tensor(2, 2, {2, 99, 1, 4}), Tensor::from_data({2}, {4, 6})).to_vector() ==
        std::vector<float>{2, 1});
  CHECK_ERROR(solve_triangular(tensor(2, 2, {2, 0, 1, 0}), Tensor::from_data({2}, {4, 6})),
              "solve_triangular: A is singular: its diagonal is 0 at (2, 2)");
  TriangularOpts unit;
  unit.unit = true;
  CHECK(solve_triangular(tensor(2, 2, {0, 0, 1, 0}), Tensor::from_data({2}, {4, 6}), unit).to_vector() ==
        std::vector<float>{4, 2});
  CHECK_ERROR(solve_triangular(L, Tensor::empty({3, 2})), "B of shape [3, 2] does not match A of shape [2, 2]");
  TriangularOpts right;
  right.left = false;
  CHECK_ERROR(solve_triangular(L, Tensor::empty({2, 3}), right), "expected [k, 2]");
  CHECK(solve_triangular(L, Tensor::empty({3, 2}), right).shape() == Shape{3, 2});
  CHECK(solve_triangular(Tensor::empty({0, 0}), Tensor::empty({0, 2})).shape() == Shape{0, 2});
}

// ---- solve, inv -----------------------------------------------------------------------
TEST_CASE("solve and inv: Cramer's rule, residuals, singular matrices") {
  // [[3, 1], [2, 4]]·x = [5, 6]: det 10, x = [(5·4 − 1·6)/10, (3·6 − 2·5)/10] = [1.4, 0.8]
  const Tensor A = tensor(2, 2, {3, 1, 2, 4});
  const MatD x = md(solve(A, Tensor::from_data({2}, {5, 6})));
  CHECK(std::abs(x(0) - 1.4) < 1e-6);
  CHECK(std::abs(x(1) - 0.8) < 1e-6);
  CHECK(solve(A, Tensor::from_data({2}, {5, 6})).shape() == Shape{2});
  // inverse of [[a, b], [c, d]] = [[d, −b], [−c, a]] / det
  const MatD Ai = md(inv(A));
  CHECK(maxabs(Ai - (MatD(2, 2) << 0.4, -0.1, -0.2, 0.3).finished()) < 1e-7);

  const MatD R = randn(20, 20, 5) + 5 * MatD::Identity(20, 20);
  const MatD B = randn(20, 4, 6);
  const MatD X = md(solve(tensor(R), tensor(B)));
  CHECK(maxabs(R * X - B) < 1e-5);
  CHECK(maxabs(R * md(inv(tensor(R))) - MatD::Identity(20, 20)) < 1e-5);
  CHECK(same_bits(solve(tensor(R), tensor(B)), solve(tensor(R), tensor(B))));
  // a transposed view solves Aᵀ
  const MatD Xt = md(solve(tensor(R).t(), tensor(B)));
  CHECK(maxabs(R.transpose() * Xt - B) < 1e-5);

  CHECK_ERROR(solve(tensor(2, 2, {1, 2, 2, 4}), Tensor::from_data({2}, {1, 1})),
              "solve: A [2, 2] is singular (LU with partial pivoting: pivot 2 of 2 is 0)");
  CHECK_ERROR(inv(tensor(3, 3, {1, 0, 0, 0, 0, 0, 0, 0, 1})), "inv: A [3, 3] is singular");
  CHECK_ERROR(inv(tensor(3, 3, {1, 2, 3, 4, 5, 6, 7, 8, 9})), "inv: A [3, 3] is");  // singular or numerically so
  CHECK_ERROR(solve(A, Tensor::empty({3})), "solve: B of shape [3] does not match A of shape [2, 2]");
  CHECK_ERROR(solve(A, Tensor::empty({3, 1})), "solve: B of shape [3, 1] does not match A of shape [2, 2]");
  CHECK_ERROR(inv(Tensor::empty({2, 3})), "inv: A must be a square 2-d matrix, got shape [2, 3]");
  CHECK(inv(Tensor::empty({0, 0})).shape() == Shape{0, 0});
}

// ---- eigh -----------------------------------------------------------------------------
TEST_CASE("eigh: 2x2 closed form, 3x3 characteristic equation, random reconstruction, signs") {
  // [[a, b], [b, c]]: (a + c)/2 ∓ √(((a − c)/2)² + b²)
  const double a = 2, b = 1, c = -1;
  const EighResult r2 = eigh(tensor(2, 2, {a, b, b, c}));
  const double m = (a + c) / 2, d = std::sqrt((a - c) * (a - c) / 4 + b * b);
  CHECK(std::abs(r2.values.get({0}) - (m - d)) < 1e-6);
  CHECK(std::abs(r2.values.get({1}) - (m + d)) < 1e-6);

  // 3x3: each λ solves det(A − λI) = 0 (the determinant by cofactors, in f64)
  const double A3[3][3] = {{4, 1, -2}, {1, 3, 0.5}, {-2, 0.5, 1}};
  const EighResult r3 = eigh(tensor(3, 3, {4, 1, -2, 1, 3, 0.5, -2, 0.5, 1}));
  auto det = [&](double l) {
    double M[3][3];
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) M[i][j] = A3[i][j] - (i == j ? l : 0);
    return M[0][0] * (M[1][1] * M[2][2] - M[1][2] * M[2][1]) - M[0][1] * (M[1][0] * M[2][2] - M[1][2] * M[2][0]) +
           M[0][2] * (M[1][0] * M[2][1] - M[1][1] * M[2][0]);
  };
  double tr = 0;
  for (int i = 0; i < 3; ++i) {
    CHECK(std::abs(det(r3.values.get({i}))) < 1e-4);
    tr += r3.values.get({i});
  }
  CHECK(std::abs(tr - 8) < 1e-5);
  CHECK(r3.values.get({0}) < r3.values.get({1}));
  CHECK(r3.values.get({1}) < r3.values.get({2}));

  const MatD G = randn(30, 30, 21);
  const MatD S = md(tensor(MatD(G + G.transpose())));
  const EighResult r = eigh(tensor(S));
  const MatD w = md(r.values), V = md(r.vectors);
  CHECK(maxabs(S * V - V * w.asDiagonal()) < 1e-5 * maxabs(S));
  CHECK(maxabs(V.transpose() * V - MatD::Identity(30, 30)) < 1e-6);
  for (int j = 0; j < 30; ++j) {
    CHECK(sign_ok(V, j));
    if (j) CHECK(w(j - 1) <= w(j));
  }
  CHECK(same_bits(eigh(tensor(S)).vectors, r.vectors));
  CHECK(eigh(Tensor::empty({0, 0})).values.shape() == Shape{0});
  CHECK_ERROR(eigh(tensor(2, 2, {1, 2, 3, 4})), "eigh: A is not symmetric");
  CHECK_ERROR(eigh(Tensor::empty({2, 3})), "eigh: A must be a square 2-d matrix, got shape [2, 3]");
}

// ---- svd ------------------------------------------------------------------------------
TEST_CASE("svd: closed form, reconstruction, orthogonality, signs, full mode") {
  // [[3, 0], [4, 5]]: AᵀA = [[25, 20], [20, 25]], eigenvalues 45 and 5 -> S = [√45, √5]
  const SvdResult s2 = svd(tensor(2, 2, {3, 0, 4, 5}));
  CHECK(std::abs(s2.S.get({0}) - std::sqrt(45.0)) < 1e-5);
  CHECK(std::abs(s2.S.get({1}) - std::sqrt(5.0)) < 1e-6);

  for (auto [m, n] : {std::pair{7, 4}, std::pair{4, 7}, std::pair{5, 5}, std::pair{1, 3}}) {
    CAPTURE(m);
    CAPTURE(n);
    const int k = std::min(m, n);
    const MatD A = randn(m, n, 31 + m);
    const SvdResult r = svd(tensor(A));
    const MatD U = md(r.U), S = md(r.S), V = md(r.V);
    REQUIRE(r.U.shape() == Shape{m, k});
    REQUIRE(r.S.shape() == Shape{k});
    REQUIRE(r.V.shape() == Shape{n, k});
    CHECK(maxabs(U * S.asDiagonal() * V.transpose() - A) < 1e-5);
    CHECK(maxabs(U.transpose() * U - MatD::Identity(k, k)) < 1e-6);
    CHECK(maxabs(V.transpose() * V - MatD::Identity(k, k)) < 1e-6);
    for (int j = 0; j < k; ++j) {
      CHECK(sign_ok(U, j));
      if (j) CHECK(S(j - 1) >= S(j));
      CHECK(S(j) >= 0);
    }
    const SvdResult f = svd(tensor(A), true);
    REQUIRE(f.U.shape() == Shape{m, m});
    REQUIRE(f.V.shape() == Shape{n, n});
    const MatD Uf = md(f.U), Vf = md(f.V);
    CHECK(maxabs(Uf.transpose() * Uf - MatD::Identity(m, m)) < 1e-6);
    CHECK(maxabs(Vf.transpose() * Vf - MatD::Identity(n, n)) < 1e-6);
    CHECK(maxabs(Uf.leftCols(k) * md(f.S).asDiagonal() * Vf.leftCols(k).transpose() - A) < 1e-5);
    for (int j = 0; j < m; ++j) CHECK(sign_ok(Uf, j));
  }
  const SvdResult e = svd(Tensor::empty({3, 0}));
  CHECK(e.U.shape() == Shape{3, 0});
  CHECK(e.S.shape() == Shape{0});
  CHECK(e.V.shape() == Shape{0, 0});
  CHECK_ERROR(svd(Tensor::empty({2, 2, 2})), "svd: A must be a 2-d matrix, got shape [2, 2, 2]");
}

// ---- qr -------------------------------------------------------------------------------
TEST_CASE("qr: by hand, reconstruction, R's diagonal non-negative, complete mode") {
  // [[3, 1], [4, 2]]: q1 = (0.6, 0.8), R = [[5, 2.2], [0, 0.4]], q2 = (−0.8, 0.6)
  const QrResult h = qr(tensor(2, 2, {3, 1, 4, 2}));
  CHECK(maxabs(md(h.Q) - (MatD(2, 2) << 0.6, -0.8, 0.8, 0.6).finished()) < 1e-6);
  CHECK(maxabs(md(h.R) - (MatD(2, 2) << 5, 2.2, 0, 0.4).finished()) < 1e-6);
  // a column both ways: a Householder reflection gives −5 for one of them; R11 = +5 for both
  const QrResult pos = qr(tensor(2, 1, {3, 4})), neg = qr(tensor(2, 1, {-3, -4}));
  CHECK(std::abs(pos.R.get({0, 0}) - 5) < 1e-6);
  CHECK(std::abs(pos.Q.get({0, 0}) - 0.6) < 1e-6);
  CHECK(std::abs(neg.R.get({0, 0}) - 5) < 1e-6);
  CHECK(std::abs(neg.Q.get({0, 0}) + 0.6) < 1e-6);

  for (auto [m, n] : {std::pair{7, 4}, std::pair{4, 7}, std::pair{6, 6}}) {
    CAPTURE(m);
    CAPTURE(n);
    const int k = std::min(m, n);
    const MatD A = randn(m, n, 41 + n);
    const QrResult r = qr(tensor(A));
    REQUIRE(r.Q.shape() == Shape{m, k});
    REQUIRE(r.R.shape() == Shape{k, n});
    const MatD Q = md(r.Q), R = md(r.R);
    CHECK(maxabs(Q * R - A) < 1e-5);
    CHECK(maxabs(Q.transpose() * Q - MatD::Identity(k, k)) < 1e-6);
    for (int i = 0; i < k; ++i) {
      CHECK(R(i, i) >= 0);
      for (int j = 0; j < i; ++j) CHECK(R(i, j) == 0);
    }
    const QrResult c = qr(tensor(A), true);
    REQUIRE(c.Q.shape() == Shape{m, m});
    REQUIRE(c.R.shape() == Shape{m, n});
    const MatD Qc = md(c.Q), Rc = md(c.R);
    CHECK(maxabs(Qc * Rc - A) < 1e-5);
    CHECK(maxabs(Qc.transpose() * Qc - MatD::Identity(m, m)) < 1e-6);
    CHECK(maxabs(Qc.leftCols(k) - Q) < 1e-6);  // the same first k columns
  }
  CHECK(qr(Tensor::empty({3, 0}), true).Q.shape() == Shape{3, 3});
}

// ---- random orthogonal ----------------------------------------------------------------
TEST_CASE("random_orthogonal: orthogonal, Gram–Schmidt of the same draws, same seed same bits") {
  const int n = 24;
  Rng g1(5), g2(5), g3(6);
  const Tensor Q = random_orthogonal(n, g1);
  CHECK(same_bits(Q, random_orthogonal(n, g2)));
  CHECK(!same_bits(Q, random_orthogonal(n, g3)));
  const MatD Qm = md(Q);
  CHECK(maxabs(Qm.transpose() * Qm - MatD::Identity(n, n)) < 1e-6);
  // Independently: classical Gram–Schmidt (twice, for orthogonality) on the columns of the
  // same Gaussian draws gives the unique QR with R's diagonal > 0, which Q must equal.
  Rng g(5);
  MatD G(n, n);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) G(i, j) = g.normal();
  MatD E = G;
  for (int j = 0; j < n; ++j) {
    for (int pass = 0; pass < 2; ++pass)
      for (int k = 0; k < j; ++k) E.col(j) -= E.col(k).dot(E.col(j)) * E.col(k);
    E.col(j) /= E.col(j).norm();
  }
  CHECK(maxabs(Qm - E) < 1e-6);
  // the stream continues where it left off: the next draw follows n² normals
  Rng h(5);
  for (int i = 0; i < n * n; ++i) h.normal();
  CHECK(g1.next_u64() == h.next_u64());
  Rng g0(1);
  CHECK(random_orthogonal(0, g0).shape() == Shape{0, 0});
  CHECK_ERROR(random_orthogonal(-1, g0), "random_orthogonal: n must be >= 0, got -1");
}

// ---- Walsh–Hadamard -------------------------------------------------------------------
// The Sylvester matrix by its recursion H_2n = [[H, H], [H, −H]], unnormalized.
static MatD sylvester(int64_t n) {
  MatD H = MatD::Ones(1, 1);
  while (H.rows() < n) {
    const int64_t k = H.rows();
    MatD N(2 * k, 2 * k);
    N << H, H, H, -H;
    H = N;
  }
  return H;
}

TEST_CASE("hadamard: equals the dense Sylvester matrix, involution, dims, errors") {
  for (int64_t n : {1, 2, 4, 8, 64, 256}) {
    CAPTURE(n);
    const MatD X = randn(5, n, 50 + n);
    const MatD H = sylvester(n);
    CHECK(maxabs(md(hadamard(tensor(X))) - X * H.transpose() / std::sqrt((double)n)) < 1e-5);
    CHECK(maxabs(md(hadamard(tensor(X), -1, false)) - X * H.transpose()) < 1e-4);
    CHECK(maxabs(md(hadamard(hadamard(tensor(X)))) - X) < 1e-5);
    // along dimension 0: the columns
    const MatD Y = randn(n, 3, 60 + n);
    CHECK(maxabs(md(hadamard(tensor(Y), 0)) - H * Y / std::sqrt((double)n)) < 1e-5);
  }
  // integers stay exact unnormalized
  const Tensor v = Tensor::from_data({4}, {1, 2, 3, 4});
  CHECK(hadamard(v, -1, false).to_vector() == std::vector<float>{10, -2, -4, 0});
  // a 3-d tensor along its last dimension = each [.., .., n] row; a non-contiguous view
  Tensor X3 = tensor(randn(6, 8, 70)).view({2, 3, 8});
  const Tensor Y3 = hadamard(X3);
  CHECK(Y3.shape() == Shape{2, 3, 8});
  CHECK(same_bits(Y3.view({6, 8}), hadamard(X3.view({6, 8}))));
  const Tensor Xt = tensor(randn(8, 5, 71));
  CHECK(same_bits(hadamard(Xt.t()), hadamard(Xt, 0).t().contiguous()));
  CHECK(hadamard(Tensor::empty({0, 4})).shape() == Shape{0, 4});

  CHECK_ERROR(hadamard(Tensor::empty({3, 6})), "hadamard: the size 6 of dimension 2 of X [3, 6] is not a power of two");
  CHECK_ERROR(hadamard(Tensor::empty({3, 0})), "is not a power of two");
  CHECK_ERROR(hadamard(Tensor::empty({3, 4}), 2), "hadamard: dimension 3 out of range for X of shape [3, 4]");
  Tensor bad = Tensor::zeros({2, 4});
  bad.set({1, 2}, INFINITY);
  CHECK_ERROR(hadamard(bad), "hadamard: X holds a non-finite value (inf) at (2, 3)");
}

TEST_CASE("random_hadamard: the plan follows the seed bit for bit") {
  const RandomHadamard p = random_hadamard_plan(576, 42);
  CHECK(p.pow2 == 64);
  CHECK(p.m == 9);
  Rng g(42);
  bool signs_ok = true;
  for (int i = 0; i < 576; ++i) signs_ok &= p.signs[i] == ((g.next_u64() >> 63) ? -1.0 : 1.0);
  CHECK(signs_ok);
  CHECK(p.Q == random_orthogonal_f64(9, g));
  CHECK(random_hadamard_plan(1536, 1).pow2 == 512);
  CHECK(random_hadamard_plan(1536, 1).m == 3);
  CHECK(random_hadamard_plan(7, 1).pow2 == 1);
  CHECK(random_hadamard_plan(1, 1).m == 1);
  CHECK(random_hadamard_plan(1, 1).Q(0, 0) == 1.0);
}

TEST_CASE("random_hadamard: orthogonal, equals the dense T, inverse, any n") {
  for (int64_t n : {576, 1536, 64, 1, 15, 7, 12, 2}) {
    CAPTURE(n);
    const uint64_t seed = 1000 + n;
    const Tensor T = random_hadamard_matrix(n, seed);
    const MatD Tm = md(T);
    CHECK(maxabs(Tm * Tm.transpose() - MatD::Identity(n, n)) < 1e-6);
    CHECK(maxabs(Tm.transpose() * Tm - MatD::Identity(n, n)) < 1e-6);
    const MatD X = randn(9, n, seed + 1);
    const Tensor Y = random_hadamard(tensor(X), seed);
    const double tol = 1e-5 * std::max(1.0, maxabs(X));
    CHECK(maxabs(md(Y) - X * Tm.transpose()) < tol);
    CHECK(maxabs(md(random_hadamard(tensor(X), seed, true)) - X * Tm) < tol);
    CHECK(maxabs(md(random_hadamard(Y, seed, true)) - X) < tol);
    // along dimension 0 = the transposed problem
    CHECK(same_bits(random_hadamard(tensor(X).t(), seed, false, 0), Y.t().contiguous()));
  }
  // k = 0 (n prime): T = Q_7·diag(s), no Hadamard part
  const RandomHadamard p = random_hadamard_plan(7, 3);
  const MatD T7 = md(random_hadamard_matrix(7, 3));
  CHECK(maxabs(T7 - p.Q * Eigen::Map<const Eigen::VectorXd>(p.signs.data(), 7).asDiagonal().toDenseMatrix()) < 1e-7);
  // m = 1: T = H/√n · diag(s)
  const RandomHadamard q = random_hadamard_plan(64, 9);
  const MatD T64 = md(random_hadamard_matrix(64, 9));
  CHECK(maxabs(T64 - sylvester(64) / 8.0 * Eigen::Map<const Eigen::VectorXd>(q.signs.data(), 64).asDiagonal().toDenseMatrix()) < 1e-7);
}

TEST_CASE("random_hadamard: same seed same bits, other seeds differ, thread count changes nothing") {
  const Tensor X = tensor(randn(300, 576, 77));
  const Tensor a = random_hadamard(X, 5), b = random_hadamard(X, 5), c = random_hadamard(X, 6);
  CHECK(same_bits(a, b));
  CHECK(!same_bits(a, c));
  const int nt = omp_get_max_threads();
  omp_set_num_threads(1);
  const Tensor one = random_hadamard(X, 5), one_inv = random_hadamard(X, 5, true), h1 = hadamard(tensor(randn(300, 1024, 3)));
  omp_set_num_threads(std::max(nt, 2));
  const Tensor two = random_hadamard(X, 5), two_inv = random_hadamard(X, 5, true), h2 = hadamard(tensor(randn(300, 1024, 3)));
  omp_set_num_threads(nt);
  CHECK(same_bits(one, two));
  CHECK(same_bits(one_inv, two_inv));
  CHECK(same_bits(h1, h2));
  // a row transformed alone has the bits it has inside the batch
  CHECK(same_bits(random_hadamard(X.rows(123, 1), 5), a.rows(123, 1).contiguous()));
}

TEST_CASE("random_hadamard: errors") {
  CHECK_ERROR(random_hadamard(Tensor::empty({2, 0}), 1), "random_hadamard: n must be >= 1, got 0");
  CHECK_ERROR(random_hadamard_matrix(0, 1), "random_hadamard_matrix: n must be >= 1, got 0");
  const RandomHadamard p = random_hadamard_plan(12, 1);
  CHECK_ERROR(random_hadamard(Tensor::empty({2, 10}), p), "random_hadamard: the size 10 of dimension 2 of X [2, 10] does not match the transform's n = 12");
  Tensor bad = Tensor::zeros({3, 12});
  bad.set({2, 11}, NAN);
  CHECK_ERROR(random_hadamard(bad, 1), "random_hadamard: X holds a non-finite value (nan) at (3, 12)");
  CHECK_ERROR(random_hadamard(Tensor::empty({3}), 1, false, 1), "random_hadamard: dimension 2 out of range");
  CHECK_ERROR(random_hadamard_plan((int64_t)1 << 16 | 1, 1), "odd factor above 32768");
}
