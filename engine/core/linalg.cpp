// qforge — dense linear algebra on tensors: f64 inside, f32 out (docs/api/linalg.md).
#include "core/linalg.h"

#include <Eigen/Cholesky>
#include <Eigen/Eigenvalues>
#include <Eigen/LU>
#include <Eigen/QR>
#include <Eigen/SVD>
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <vector>

#include "core/parallel.h"

namespace qf {

using MatD = Eigen::MatrixXd;  // column-major f64: what Eigen's decompositions are tuned for
using VecD = Eigen::VectorXd;

// Relative symmetry tolerance: |A(i,j) − A(j,i)| ≤ kSymTol·max|A|. f32 inputs computed in two
// orders (a Gram XᵀX) differ by a few ulps (≈1e-7 relative); a real asymmetry is far larger.
constexpr double kSymTol = 1e-5;

// ---- reading and writing ------------------------------------------------------------

// The 1-based multi-index of flat element k of shape s, "(2, 3)".
static std::string index_str(const Shape& s, int64_t k) {
  std::vector<int64_t> idx(s.size());
  for (int d = (int)s.size() - 1; d >= 0; --d) {
    idx[d] = s[d] ? k % s[d] : 0;
    k = s[d] ? k / s[d] : 0;
  }
  std::string r = "(";
  for (size_t d = 0; d < idx.size(); ++d) r += (d ? ", " : "") + std::to_string(idx[d] + 1);
  return r + ")";
}

// Error path: the first non-finite value of t, named.
[[noreturn]] static void fail_nonfinite(const Tensor& t, const char* fn, const char* name) {
  const std::vector<float> v = t.to_vector();
  for (size_t k = 0; k < v.size(); ++k)
    if (!std::isfinite(v[k]))
      fail(fn, ": ", name, " holds a non-finite value (", v[k], ") at ", index_str(t.shape(), (int64_t)k),
           " of shape ", shape_str(t.shape()));
  fail(fn, ": ", name, " holds a non-finite value");
}

static void check_defined(const Tensor& t, const char* fn, const char* name) {
  if (!t.defined()) fail(fn, ": ", name, " is an undefined tensor");
}

// Row-major values ↔ a column-major matrix is a transpose: done in square tiles so both sides
// stay in cache (a plain double loop misses on every element of one side for n in the 1000s).
constexpr int64_t kTile = 32;

// A 2-d tensor as an f64 matrix (any dtype, any strides), finite values only.
static MatD read_matrix(const Tensor& A, const char* fn, const char* name) {
  check_defined(A, fn, name);
  if (A.dim() != 2) fail(fn, ": ", name, " must be a 2-d matrix, got shape ", shape_str(A.shape()));
  const int64_t r = A.size(0), c = A.size(1);
  // A contiguous f32 matrix is read in place; anything else through one converting copy.
  std::vector<float> copy;
  const float* v = nullptr;
  if (A.is_contiguous() && A.dtype() == DType::F32) {
    v = r > 0 && c > 0 ? A.f32() : nullptr;
  } else {
    copy = A.to_vector();
    v = copy.data();
  }
  bool finite = true;
  MatD M(r, c);
  for (int64_t i0 = 0; i0 < r; i0 += kTile)
    for (int64_t j0 = 0; j0 < c; j0 += kTile)
      for (int64_t j = j0; j < std::min(c, j0 + kTile); ++j)
        for (int64_t i = i0; i < std::min(r, i0 + kTile); ++i) {
          const float x = v[i * c + j];
          finite &= std::isfinite(x);
          M(i, j) = x;
        }
  if (!finite) fail_nonfinite(A, fn, name);
  return M;
}

static MatD read_square(const Tensor& A, const char* fn, const char* name) {
  check_defined(A, fn, name);
  if (A.dim() != 2 || A.size(0) != A.size(1))
    fail(fn, ": ", name, " must be a square 2-d matrix, got shape ", shape_str(A.shape()));
  return read_matrix(A, fn, name);
}

// A right-hand side for an n×n system: [n, k] or a 1-d [n] (read as [n, 1]).
static MatD read_rhs(const Tensor& B, int64_t n, const char* fn, const Shape& a_shape) {
  check_defined(B, fn, "B");
  if (B.dim() == 1) {
    if (B.size(0) != n)
      fail(fn, ": B of shape ", shape_str(B.shape()), " does not match A of shape ", shape_str(a_shape),
           " (expected ", n, " values)");
    return read_matrix(B.contiguous().view({n, 1}), fn, "B");
  }
  if (B.dim() != 2 || B.size(0) != n)
    fail(fn, ": B of shape ", shape_str(B.shape()), " does not match A of shape ", shape_str(a_shape), " (expected [",
         n, ", k] or [", n, "])");
  return read_matrix(B, fn, "B");
}

template <class Derived>
static Tensor write_matrix(const Eigen::MatrixBase<Derived>& M) {
  const int64_t r = M.rows(), c = M.cols();
  Tensor t = Tensor::empty({r, c});
  float* p = t.f32();
  for (int64_t i0 = 0; i0 < r; i0 += kTile)
    for (int64_t j0 = 0; j0 < c; j0 += kTile)
      for (int64_t i = i0; i < std::min(r, i0 + kTile); ++i)
        for (int64_t j = j0; j < std::min(c, j0 + kTile); ++j) p[i * c + j] = (float)M(i, j);
  return t;
}

static Tensor write_vector(const VecD& v) {
  Tensor t = Tensor::empty({(int64_t)v.size()});
  for (Eigen::Index i = 0; i < v.size(); ++i) t.f32()[i] = (float)v(i);
  return t;
}

// Checks symmetry to kSymTol relative to max|A| (naming the worst pair), then A = (A + Aᵀ)/2.
static void symmetrize(MatD& a, const char* fn) {
  const int64_t n = a.rows();
  const double scale = a.size() ? a.cwiseAbs().maxCoeff() : 0.0;
  double worst = 0, w_ij = 0, w_ji = 0;  // the worst pair (the first in column order on ties)
  int64_t wi = 0, wj = 0;
  // Tile pairs (I, J), J ≤ I, so a(i, j) and a(j, i) both stay in cache.
  for (int64_t i0 = 0; i0 < n; i0 += kTile)
    for (int64_t j0 = 0; j0 <= i0; j0 += kTile)
      for (int64_t j = j0; j < std::min(n, j0 + kTile); ++j)
        for (int64_t i = std::max(i0, j + 1); i < std::min(n, i0 + kTile); ++i) {
          const double d = std::abs(a(i, j) - a(j, i));
          if (d > worst || (d == worst && d > 0 && (j < wj || (j == wj && i < wi))))
            worst = d, wi = i, wj = j, w_ij = a(i, j), w_ji = a(j, i);
          a(i, j) = a(j, i) = 0.5 * (a(i, j) + a(j, i));
        }
  if (worst > kSymTol * scale)
    fail(fn, ": A is not symmetric: A(", wi + 1, ", ", wj + 1, ") = ", w_ij, " but A(", wj + 1, ", ", wi + 1, ") = ", w_ji,
         " (tolerance ", kSymTol, " x max|A| = ", kSymTol * scale, ")");
}

// Flips column j of M (and of P, if given) so its largest-magnitude component (the first on
// ties) is positive: singular and eigenvectors are defined up to sign; this picks one.
static void fix_sign(MatD& M, Eigen::Index j, MatD* P = nullptr) {
  Eigen::Index at = 0;
  double best = -1;
  for (Eigen::Index i = 0; i < M.rows(); ++i)
    if (std::abs(M(i, j)) > best) best = std::abs(M(i, j)), at = i;
  if (M.rows() && M(at, j) < 0) {
    M.col(j) *= -1;
    if (P) P->col(j) *= -1;
  }
}

// ---- Cholesky -------------------------------------------------------------------------

// Error path after Eigen's LLT failed: the unblocked left-looking factorization, to name the
// first pivot that is not positive (LLT reports only that one failed).
[[noreturn]] static void fail_cholesky_pivot(const Tensor& A) {
  MatD a = read_square(A, "cholesky", "A");  // read again: the failed factorization ran in place
  symmetrize(a, "cholesky");
  const Eigen::Index n = a.rows();
  MatD L = MatD::Zero(n, n);
  for (Eigen::Index j = 0; j < n; ++j) {
    double d = a(j, j);
    for (Eigen::Index k = 0; k < j; ++k) d -= L(j, k) * L(j, k);
    if (!(d > 0))
      fail("cholesky: A [", n, ", ", n, "] is not positive definite: pivot ", j + 1, " of ", n, " is ", d,
           " (<= 0); add damping to the diagonal first, e.g. A + lambda*I with lambda ~ 1e-2*mean(diag(A))");
    L(j, j) = std::sqrt(d);
    for (Eigen::Index i = j + 1; i < n; ++i) {
      double s = a(i, j);
      for (Eigen::Index k = 0; k < j; ++k) s -= L(i, k) * L(j, k);
      L(i, j) = s / L(j, j);
    }
  }
  fail("cholesky: A [", n, ", ", n, "] is not positive definite (numerically: the blocked factorization failed); "
       "add damping to the diagonal first");
}

Tensor cholesky(const Tensor& A, bool upper) {
  MatD a = read_square(A, "cholesky", "A");
  symmetrize(a, "cholesky");
  const Eigen::Index n = a.rows();
  if (n == 0) return Tensor::empty({0, 0});
  Eigen::LLT<Eigen::Ref<MatD>> llt(a);  // in place: a becomes L (below its diagonal)
  if (llt.info() != Eigen::Success) fail_cholesky_pivot(A);
  // L is a's lower triangle; the strict upper triangle still holds A's values: zero it.
  for (Eigen::Index j = 1; j < n; ++j) a.col(j).head(j).setZero();
  return upper ? write_matrix(a.transpose()) : write_matrix(a);
}

// ---- triangular solve -----------------------------------------------------------------

template <int Mode>
static void tri_solve(const MatD& a, MatD& b, bool left) {
  if (left) a.triangularView<Mode>().solveInPlace(b);
  else a.triangularView<Mode>().template solveInPlace<Eigen::OnTheRight>(b);
}

Tensor solve_triangular(const Tensor& A, const Tensor& B, const TriangularOpts& o) {
  const char* fn = "solve_triangular";
  MatD a = read_square(A, fn, "A");
  const int64_t n = a.rows();
  check_defined(B, fn, "B");
  // B: [n, k] (left), [k, n] (right) or a 1-d [n], which is a column (left) or a row (right).
  const bool vec = B.dim() == 1;
  const bool ok = vec ? B.size(0) == n : B.dim() == 2 && (o.left ? B.size(0) : B.size(1)) == n;
  if (!ok) {
    if (o.left)
      fail(fn, ": B of shape ", shape_str(B.shape()), " does not match A of shape ", shape_str(A.shape()),
           " (expected [", n, ", k] or [", n, "] for op(A)*X = B)");
    fail(fn, ": B of shape ", shape_str(B.shape()), " does not match A of shape ", shape_str(A.shape()),
         " (expected [k, ", n, "] or [", n, "] for X*op(A) = B)");
  }
  const Tensor B2 = vec ? B.contiguous().view(o.left ? Shape{n, 1} : Shape{1, n}) : B;
  MatD b = read_matrix(B2, fn, "B");
  if (!o.unit)
    for (int64_t k = 0; k < n; ++k)
      if (a(k, k) == 0) fail(fn, ": A is singular: its diagonal is 0 at (", k + 1, ", ", k + 1, ")");
  if (n > 0 && b.size() > 0) {
    // op(A) = Aᵀ reads the other triangle of the transposed copy.
    bool upper = o.upper;
    if (o.transpose) a = a.transpose().eval(), upper = !upper;
    if (upper) o.unit ? tri_solve<Eigen::UnitUpper>(a, b, o.left) : tri_solve<Eigen::Upper>(a, b, o.left);
    else o.unit ? tri_solve<Eigen::UnitLower>(a, b, o.left) : tri_solve<Eigen::Lower>(a, b, o.left);
  }
  Tensor X = write_matrix(b);
  return vec ? X.view({n}) : X;
}

// ---- LU: solve, inv -------------------------------------------------------------------

// Refuses a singular A: an exactly zero pivot (named) or a reciprocal condition estimate
// at or below f64 epsilon, where the f64 solution has no correct digit left.
static void check_lu(const Eigen::PartialPivLU<MatD>& lu, const char* fn) {
  const MatD& f = lu.matrixLU();
  const Eigen::Index n = f.rows();
  for (Eigen::Index k = 0; k < n; ++k)
    if (f(k, k) == 0)
      fail(fn, ": A [", n, ", ", n, "] is singular (LU with partial pivoting: pivot ", k + 1, " of ", n, " is 0)");
  const double rc = lu.rcond();
  if (!(rc > DBL_EPSILON))
    fail(fn, ": A [", n, ", ", n, "] is numerically singular (reciprocal condition estimate ", rc,
         " <= f64 epsilon)");
}

Tensor solve(const Tensor& A, const Tensor& B) {
  const MatD a = read_square(A, "solve", "A");
  const int64_t n = a.rows();
  const MatD b = read_rhs(B, n, "solve", A.shape());
  MatD x = b;
  if (n > 0) {
    Eigen::PartialPivLU<MatD> lu(a);
    check_lu(lu, "solve");
    x = lu.solve(b);
  }
  Tensor X = write_matrix(x);
  return B.dim() == 1 ? X.view({n}) : X;
}

Tensor inv(const Tensor& A) {
  const MatD a = read_square(A, "inv", "A");
  if (a.rows() == 0) return Tensor::empty({0, 0});
  Eigen::PartialPivLU<MatD> lu(a);
  check_lu(lu, "inv");
  return write_matrix(MatD(lu.inverse()));  // evaluated once (coefficient access on the expression would not be)
}

// ---- eigh, svd, qr --------------------------------------------------------------------

EighResult eigh(const Tensor& A) {
  MatD a = read_square(A, "eigh", "A");
  symmetrize(a, "eigh");
  const Eigen::Index n = a.rows();
  if (n == 0) return {Tensor::empty({0}), Tensor::empty({0, 0})};
  Eigen::SelfAdjointEigenSolver<MatD> es(a);
  if (es.info() != Eigen::Success) fail("eigh: the eigensolver did not converge for A [", n, ", ", n, "]");
  MatD V = es.eigenvectors();
  for (Eigen::Index j = 0; j < n; ++j) fix_sign(V, j);
  return {write_vector(es.eigenvalues()), write_matrix(V)};  // Eigen sorts eigenvalues ascending
}

SvdResult svd(const Tensor& A, bool full) {
  const MatD a = read_matrix(A, "svd", "A");
  const Eigen::Index m = a.rows(), n = a.cols(), k = std::min(m, n);
  MatD U, V;
  VecD S;
  if (k == 0) {
    U = full ? MatD::Identity(m, m) : MatD(m, 0);
    V = full ? MatD::Identity(n, n) : MatD(n, 0);
  } else {
    const unsigned opts = full ? Eigen::ComputeFullU | Eigen::ComputeFullV : Eigen::ComputeThinU | Eigen::ComputeThinV;
    Eigen::BDCSVD<MatD> sv(a, opts);
    if (sv.info() != Eigen::Success) fail("svd: the SVD did not converge for A of shape [", m, ", ", n, "]");
    U = sv.matrixU(), V = sv.matrixV(), S = sv.singularValues();  // S descending
  }
  for (Eigen::Index j = 0; j < k; ++j) fix_sign(U, j, &V);  // u_j, v_j flip together
  for (Eigen::Index j = k; j < U.cols(); ++j) fix_sign(U, j);
  for (Eigen::Index j = k; j < V.cols(); ++j) fix_sign(V, j);
  return {write_matrix(U), write_vector(S), write_matrix(V)};
}

QrResult qr(const Tensor& A, bool complete) {
  const MatD a = read_matrix(A, "qr", "A");
  const Eigen::Index m = a.rows(), n = a.cols(), k = std::min(m, n), kq = complete ? m : k;
  MatD Q = MatD::Identity(m, kq), R = MatD::Zero(kq, n);
  if (k > 0) {
    Eigen::HouseholderQR<MatD> h(a);
    Q = h.householderQ() * MatD::Identity(m, kq);
    R = h.matrixQR().topRows(kq).triangularView<Eigen::Upper>();
    for (Eigen::Index i = 0; i < k; ++i)
      if (R(i, i) < 0) R.row(i) *= -1, Q.col(i) *= -1;  // Q·R unchanged: D·D = I
  }
  return {write_matrix(Q), write_matrix(R)};
}

// ---- random orthogonal ----------------------------------------------------------------

MatD random_orthogonal_f64(int64_t n, Rng& rng) {
  if (n < 0) fail("random_orthogonal: n must be >= 0, got ", n);
  if (n > (int64_t)1 << 15) fail("random_orthogonal: n = ", n, " is too large (at most 32768)");
  MatD G(n, n);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) G(i, j) = rng.normal();
  if (n == 0) return G;
  Eigen::HouseholderQR<MatD> h(G);
  MatD Q = h.householderQ() * MatD::Identity(n, n);
  // Householder QR leaves R's diagonal signs arbitrary; Q·diag(sign(diag R)) makes the
  // factorization unique and the distribution of Q Haar (Mezzadri 2007).
  for (int64_t j = 0; j < n; ++j)
    if (h.matrixQR()(j, j) < 0) Q.col(j) *= -1;
  return Q;
}

Tensor random_orthogonal(int64_t n, Rng& rng) { return write_matrix(random_orthogonal_f64(n, rng)); }

// ---- Walsh–Hadamard -------------------------------------------------------------------

// x ← H_n·x (unnormalized Sylvester order) on n rows of w contiguous values each: the
// butterflies act on whole rows, so w > 1 is H_n ⊗ I_w. n a power of two.
// Rows j..j+h−1 of a block are adjacent, so each butterfly stage is one contiguous loop of h·w
// values against the h·w values after them (vectorizes for any w).
static void fwht_rows(double* x, int64_t n, int64_t w) {
  int64_t h = 1;
  if (w == 1 && n >= 4) {
    // The first two stages (h = 1, 2) fused per group of 4: the same additions in the same
    // order (so the same bits), without two passes of 1- and 2-element inner loops.
    for (int64_t i = 0; i < n; i += 4) {
      const double a0 = x[i] + x[i + 1], a1 = x[i] - x[i + 1];
      const double a2 = x[i + 2] + x[i + 3], a3 = x[i + 2] - x[i + 3];
      x[i] = a0 + a2, x[i + 1] = a1 + a3, x[i + 2] = a0 - a2, x[i + 3] = a1 - a3;
    }
    h = 4;
  }
  for (; h < n; h *= 2)
    for (int64_t i = 0; i < n; i += 2 * h) {
      double* a = x + i * w;
      double* b = x + (i + h) * w;
      for (int64_t t = 0; t < h * w; ++t) {
        const double u = a[t], v = b[t];
        a[t] = u + v, b[t] = u - v;
      }
    }
}

static bool is_pow2(int64_t n) { return n > 0 && (n & (n - 1)) == 0; }

// Runs row_fn(in, out) (f64 buffers of n values) on every slice of X along dim, in parallel
// over slices: each slice is computed by the same code whichever thread takes it, so the bits
// do not depend on the thread count. Returns the result with X's shape.
template <class RowFn>
static Tensor map_slices(const Tensor& X, int dim, const char* fn, int64_t work_per_slice, RowFn&& row_fn) {
  check_defined(X, fn, "X");
  const int nd = X.dim();
  if (nd == 0) fail(fn, ": X must have at least 1 dimension, got a 0-d tensor");
  if (dim < 0) dim += nd;
  if (dim < 0 || dim >= nd) fail(fn, ": dimension ", dim + 1, " out of range for X of shape ", shape_str(X.shape()));
  const Tensor Xt = dim == nd - 1 ? X : X.transpose(dim, nd - 1);
  const Tensor src = Xt.is_contiguous() && Xt.dtype() == DType::F32 ? Xt : Xt.to(DType::F32);
  const int64_t n = Xt.size(nd - 1), rows = n ? src.numel() / n : 0;
  Tensor out = Tensor::empty(Xt.shape());
  const float* in = rows ? src.f32() : nullptr;
  float* po = out.f32();
  int64_t bad = -1;  // the first slice holding a non-finite value
  constexpr int64_t kChunk = 16;
  const int64_t nchunks = (rows + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (worth_parallel(rows * work_per_slice))
  for (int64_t c = 0; c < nchunks; ++c) {
    std::vector<double> a(n), b(n);
    for (int64_t r = c * kChunk; r < std::min(rows, (c + 1) * kChunk); ++r) {
      const float* x = in + r * n;
      bool finite = true;
      for (int64_t i = 0; i < n; ++i) {
        finite &= std::isfinite(x[i]);
        a[i] = x[i];
      }
      if (!finite) {
#pragma omp critical(qf_linalg_bad)
        if (bad < 0 || r < bad) bad = r;
        continue;
      }
      row_fn(a.data(), b.data());
      float* y = po + r * n;
      for (int64_t i = 0; i < n; ++i) y[i] = (float)b[i];
    }
  }
  if (bad >= 0) fail_nonfinite(X, fn, "X");
  return dim == nd - 1 ? out : out.transpose(dim, nd - 1).contiguous();
}

static int64_t log2_of(int64_t p) {
  int64_t k = 0;
  while (((int64_t)1 << k) < p) ++k;
  return k;
}

Tensor hadamard(const Tensor& X, int dim, bool normalize) {
  check_defined(X, "hadamard", "X");
  const int nd = X.dim();
  const int d = dim < 0 ? dim + nd : dim;
  if (nd > 0 && d >= 0 && d < nd && !is_pow2(X.size(d)))
    fail("hadamard: the size ", X.size(d), " of dimension ", d + 1, " of X ", shape_str(X.shape()),
         " is not a power of two (use random_hadamard for any size)");
  const int64_t n = nd > 0 && d >= 0 && d < nd ? X.size(d) : 1;
  const double scale = normalize ? 1.0 / std::sqrt((double)n) : 1.0;
  return map_slices(X, dim, "hadamard", n * (log2_of(n) + 1), [&](double* a, double* b) {
    fwht_rows(a, n, 1);
    for (int64_t i = 0; i < n; ++i) b[i] = a[i] * scale;
  });
}

RandomHadamard random_hadamard_plan(int64_t n, uint64_t seed) {
  if (n < 1) fail("random_hadamard: n must be >= 1, got ", n);
  RandomHadamard p;
  p.n = n;
  while (n % (2 * p.pow2) == 0) p.pow2 *= 2;
  p.m = n / p.pow2;
  if (p.m > (int64_t)1 << 15)
    fail("random_hadamard: n = ", n, " = ", p.pow2, " x ", p.m, " has an odd factor above 32768 (Q_m would be dense)");
  Rng g(seed);
  p.signs.resize(n);
  for (int64_t i = 0; i < n; ++i) p.signs[i] = (g.next_u64() >> 63) ? -1.0 : 1.0;
  p.Q = p.m > 1 ? random_orthogonal_f64(p.m, g) : MatD::Ones(1, 1);  // Q_1 = [1]: no draw
  return p;
}

Tensor random_hadamard(const Tensor& X, const RandomHadamard& p, bool inverse, int dim) {
  check_defined(X, "random_hadamard", "X");
  const int nd = X.dim();
  const int d = dim < 0 ? dim + nd : dim;
  if (nd > 0 && d >= 0 && d < nd && X.size(d) != p.n)
    fail("random_hadamard: the size ", X.size(d), " of dimension ", d + 1, " of X ", shape_str(X.shape()),
         " does not match the transform's n = ", p.n);
  const int64_t n = p.n, P = p.pow2, m = p.m;
  const double scale = 1.0 / std::sqrt((double)P);
  // Row-major copies of Qᵀ (forward: y_a = Q·x_a) and Q (inverse: y_a = Qᵀ·x_a), so the
  // product is a sum of scaled contiguous rows: out_a = Σ_j x_a[j]·M[j, :].
  std::vector<double> M(m * m);
  for (int64_t j = 0; j < m; ++j)
    for (int64_t i = 0; i < m; ++i) M[j * m + i] = inverse ? p.Q(j, i) : p.Q(i, j);
  // x (P rows of m) ← x·M, i.e. each length-m row a multiplied by Q (forward) or Qᵀ (inverse).
  auto apply_q = [&](const double* x, double* y) {
    if (m == 1) {
      for (int64_t i = 0; i < n; ++i) y[i] = x[i] * M[0];
      return;
    }
    for (int64_t a = 0; a < P; ++a) {
      const double* xa = x + a * m;
      double* ya = y + a * m;
      std::fill(ya, ya + m, 0.0);
      for (int64_t j = 0; j < m; ++j) {
        const double v = xa[j];
        const double* Mj = M.data() + j * m;
        for (int64_t i = 0; i < m; ++i) ya[i] += v * Mj[i];
      }
    }
  };
  const int64_t work = n * (log2_of(P) + 2 * m);
  return map_slices(X, dim, "random_hadamard", work, [&](double* a, double* b) {
    if (!inverse) {  // T·x = (H ⊗ Q)·(s ⊙ x)
      for (int64_t i = 0; i < n; ++i) a[i] *= p.signs[i];
      apply_q(a, b);
      fwht_rows(b, P, m);
      for (int64_t i = 0; i < n; ++i) b[i] *= scale;
    } else {  // Tᵀ·x = s ⊙ ((H ⊗ Qᵀ)·x), H symmetric
      fwht_rows(a, P, m);
      for (int64_t i = 0; i < n; ++i) a[i] *= scale;
      apply_q(a, b);
      for (int64_t i = 0; i < n; ++i) b[i] *= p.signs[i];
    }
  });
}

Tensor random_hadamard(const Tensor& X, uint64_t seed, bool inverse, int dim) {
  check_defined(X, "random_hadamard", "X");
  const int nd = X.dim();
  if (nd == 0) fail("random_hadamard: X must have at least 1 dimension, got a 0-d tensor");
  const int d = dim < 0 ? dim + nd : dim;
  if (d < 0 || d >= nd)
    fail("random_hadamard: dimension ", d + 1, " out of range for X of shape ", shape_str(X.shape()));
  return random_hadamard(X, random_hadamard_plan(X.size(d), seed), inverse, dim);
}

Tensor random_hadamard_matrix(int64_t n, uint64_t seed) {
  if (n < 1) fail("random_hadamard_matrix: n must be >= 1, got ", n);
  if (n > (int64_t)1 << 14) fail("random_hadamard_matrix: n = ", n, " is too large for a dense matrix (at most 16384)");
  const RandomHadamard p = random_hadamard_plan(n, seed);
  const double scale = 1.0 / std::sqrt((double)p.pow2);
  // T[(a·m + i), (b·m + j)] = H[a, b]/√P · Q[i, j] · s[b·m + j], H[a, b] = (-1)^popcount(a & b).
  Tensor T = Tensor::empty({n, n});
  float* t = T.f32();
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < n; ++c) {
      const int64_t a = r / p.m, i = r % p.m, b = c / p.m, j = c % p.m;
      const double h = (__builtin_popcountll((unsigned long long)(a & b)) & 1) ? -scale : scale;
      t[r * n + c] = (float)(h * p.Q(i, j) * p.signs[c]);
    }
  return T;
}


// ---- QuIP's Kronecker ("butterfly") random orthogonal transform (methods.md#quip) ----

RandomButterfly random_butterfly_plan(int64_t n, uint64_t seed) {
  if (n < 1) fail("random_butterfly: n must be >= 1, got ", n);
  RandomButterfly p;
  p.n = n;
  for (int64_t d = 1; d * d <= n; ++d)
    if (n % d == 0) p.a = d;
  p.b = n / p.a;
  if (p.b > (int64_t)1 << 15)
    fail("random_butterfly: n = ", n, " = ", p.a, " x ", p.b, " has a factor above 32768 (its orthogonal factor would be dense)");
  Rng g(seed);
  for (std::vector<int64_t>* perm : {&p.perm_in, &p.perm_out}) {
    perm->resize((size_t)n);
    for (int64_t i = 0; i < n; ++i) (*perm)[(size_t)i] = i;
    for (int64_t i = n - 1; i >= 1; --i) std::swap((*perm)[(size_t)i], (*perm)[(size_t)g.randint(0, i)]);
  }
  p.A = p.a > 1 ? random_orthogonal_f64(p.a, g) : MatD::Ones(1, 1);
  p.B = p.b > 1 ? random_orthogonal_f64(p.b, g) : MatD::Ones(1, 1);
  return p;
}

Tensor random_butterfly(const Tensor& X, const RandomButterfly& p, bool inverse, int dim) {
  check_defined(X, "random_butterfly", "X");
  const int nd = X.dim();
  const int d = dim < 0 ? dim + nd : dim;
  if (nd > 0 && d >= 0 && d < nd && X.size(d) != p.n)
    fail("random_butterfly: the size ", X.size(d), " of dimension ", d + 1, " of X ", shape_str(X.shape()),
         " does not match the transform's n = ", p.n);
  const int64_t n = p.n, a = p.a, b = p.b;
  // Row-major copies: forward Y = A·U·Bᵀ, inverse U = Aᵀ·Y·B, with U, Y the [a, b] views of a slice.
  // MA[i, k] multiplies row k into row i; MB[j, l] is the right factor's entry for column l ← j.
  std::vector<double> MA(a * a), MB(b * b);
  for (int64_t i = 0; i < a; ++i)
    for (int64_t k = 0; k < a; ++k) MA[i * a + k] = inverse ? p.A(k, i) : p.A(i, k);
  for (int64_t j = 0; j < b; ++j)
    for (int64_t l = 0; l < b; ++l) MB[j * b + l] = inverse ? p.B(j, l) : p.B(l, j);
  return map_slices(X, dim, "random_butterfly", n * (a + b) * 2, [&](double* x, double* y) {
    // y (as scratch) ← the permuted input; then x ← y·MB (each row), y ← MA·x; then the permuted output.
    const std::vector<int64_t>& first = inverse ? p.perm_out : p.perm_in;
    const std::vector<int64_t>& last = inverse ? p.perm_in : p.perm_out;
    if (!inverse)
      for (int64_t i = 0; i < n; ++i) y[i] = x[first[(size_t)i]];  // (P_in x)_i = x_perm_in[i]
    else
      for (int64_t i = 0; i < n; ++i) y[first[(size_t)i]] = x[i];  // P_outᵀ x
    for (int64_t r = 0; r < a; ++r) {  // x[r, :] = y[r, :]·MB
      double* xr = x + r * b;
      const double* yr = y + r * b;
      std::fill(xr, xr + b, 0.0);
      for (int64_t j = 0; j < b; ++j) {
        const double v = yr[j];
        const double* Mj = MB.data() + j * b;
        for (int64_t l = 0; l < b; ++l) xr[l] += v * Mj[l];
      }
    }
    std::vector<double> u((size_t)n, 0.0);  // u = MA·x (rows combined)
    for (int64_t i = 0; i < a; ++i) {
      double* ui = u.data() + i * b;
      for (int64_t k = 0; k < a; ++k) {
        const double m = MA[i * a + k];
        const double* xk = x + k * b;
        for (int64_t l = 0; l < b; ++l) ui[l] += m * xk[l];
      }
    }
    if (!inverse)
      for (int64_t i = 0; i < n; ++i) y[i] = u[(size_t)last[(size_t)i]];  // (P_out u)_i = u_perm_out[i]
    else
      for (int64_t i = 0; i < n; ++i) y[last[(size_t)i]] = u[(size_t)i];  // P_inᵀ u
  });
}

Tensor random_butterfly(const Tensor& X, uint64_t seed, bool inverse, int dim) {
  check_defined(X, "random_butterfly", "X");
  const int nd = X.dim();
  if (nd == 0) fail("random_butterfly: X must have at least 1 dimension, got a 0-d tensor");
  const int d = dim < 0 ? dim + nd : dim;
  if (d < 0 || d >= nd)
    fail("random_butterfly: dimension ", d + 1, " out of range for X of shape ", shape_str(X.shape()));
  return random_butterfly(X, random_butterfly_plan(X.size(d), seed), inverse, dim);
}

Tensor random_butterfly_matrix(int64_t n, uint64_t seed) {
  if (n < 1) fail("random_butterfly_matrix: n must be >= 1, got ", n);
  if (n > (int64_t)1 << 14) fail("random_butterfly_matrix: n = ", n, " is too large for a dense matrix (at most 16384)");
  const RandomButterfly p = random_butterfly_plan(n, seed);
  // (T x)_r = (K u)_{perm_out[r]}, u_k = x_{perm_in[k]}: T[r, perm_in[k]] = K[perm_out[r], k],
  // K[(α·b + β), (α'·b + β')] = Q_a[α, α']·Q_b[β, β'].
  Tensor T = Tensor::empty({n, n});
  float* t = T.f32();
  for (int64_t r = 0; r < n; ++r) {
    const int64_t row = p.perm_out[(size_t)r], al = row / p.b, be = row % p.b;
    for (int64_t k = 0; k < n; ++k)
      t[r * n + p.perm_in[(size_t)k]] = (float)(p.A(al, k / p.b) * p.B(be, k % p.b));
  }
  return T;
}
}  // namespace qf
