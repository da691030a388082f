// qforge — dense linear algebra on tensors (docs/api/linalg.md).
//
// Every function reads its inputs as f32 values in logical order (any dtype a Tensor holds,
// any strides), computes in f64 and rounds to f32 once: results are always new contiguous f32
// tensors, never views. Errors name the function, what was wrong and the shapes; indices in
// messages are 1-based, since recipes see them. Non-finite inputs are refused.
//
// Factorizations are Eigen's (LLT, PartialPivLU, SelfAdjointEigenSolver, BDCSVD,
// HouseholderQR) with sign conventions fixed so the same input gives the same output on one
// machine and build. The Walsh–Hadamard transforms are our own O(n log n) butterflies.
#pragma once
#include <Eigen/Core>
#include <cstdint>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"

namespace qf {

// A = L·Lᵀ for a symmetric positive-definite A [n, n] (symmetrized as (A + Aᵀ)/2 after a
// symmetry check). upper: returns U = Lᵀ (A = Uᵀ·U). 0×0 gives 0×0. A pivot ≤ 0 is an error
// naming it (1-based).
Tensor cholesky(const Tensor& A, bool upper = false);

struct TriangularOpts {
  bool upper = false;      // A is upper triangular (else lower); only that triangle is read
  bool left = true;        // solve op(A)·X = B (else X·op(A) = B)
  bool transpose = false;  // op(A) = Aᵀ (else A)
  bool unit = false;       // the diagonal is taken as ones and not read
};
// X with op(A)·X = B (left) or X·op(A) = B (right). B is [n, k] (left) / [k, n] (right), or a
// 1-d [n] vector; X has B's shape.
Tensor solve_triangular(const Tensor& A, const Tensor& B, const TriangularOpts& o = {});

// X with A·X = B by LU with partial pivoting; B is [n, k] or [n]. A numerically singular A
// (reciprocal condition estimate ≤ f64 epsilon) is an error.
Tensor solve(const Tensor& A, const Tensor& B);
Tensor inv(const Tensor& A);

// Symmetric eigendecomposition A = V·diag(w)·Vᵀ: w ascending [n], V's columns the eigenvectors
// [n, n], each with its largest-magnitude component positive (the first such on ties).
struct EighResult {
  Tensor values, vectors;
};
EighResult eigh(const Tensor& A);

// A [m, n] = U·diag(S)·Vᵀ with S descending [k], k = min(m, n). Reduced: U [m, k], V [n, k];
// full: U [m, m], V [n, n]. Each column of U has its largest-magnitude component positive
// (the paired column of V flips with it); the extra columns of a full U or V are fixed alone.
struct SvdResult {
  Tensor U, S, V;
};
SvdResult svd(const Tensor& A, bool full = false);

// A [m, n] = Q·R by Householder reflections, R's diagonal made ≥ 0. Reduced: Q [m, k],
// R [k, n], k = min(m, n); complete: Q [m, m], R [m, n].
struct QrResult {
  Tensor Q, R;
};
QrResult qr(const Tensor& A, bool complete = false);

// A Haar-distributed orthogonal matrix: G [n, n] filled row-major with rng.normal(), G = Q·R by
// Householder QR, returned Q·diag(sign(diag R)) (sign(0) = +1). Draws n² normals from rng.
Eigen::MatrixXd random_orthogonal_f64(int64_t n, Rng& rng);
Tensor random_orthogonal(int64_t n, Rng& rng);

// ---- Walsh–Hadamard transforms, along one dimension `dim` (0-based; -1 = the last) ----
// Each slice x (length n along dim) becomes H_n·x with H_n the Sylvester Hadamard matrix
// (H_1 = [1], H_2n = [[H, H], [H, -H]]; entry (i, j) = (-1)^popcount(i & j)), divided by √n
// when normalize (orthonormal, its own inverse). n must be a power of two.
Tensor hadamard(const Tensor& X, int dim = -1, bool normalize = true);

// The randomized Hadamard transform of size n = 2^k·m (m odd) drawn from `seed`:
//   T = (H_{2^k}/√2^k ⊗ Q_m)·diag(s),   orthogonal.
// Seed expansion (bit for bit): Rng g(seed); s_i = (g.next_u64() >> 63) ? -1 : +1 for
// i = 0..n-1; then, when m > 1, Q_m = random_orthogonal_f64(m, g) (m = 1: Q_1 = [1], no draw,
// so a power of two n gives the usual randomized Hadamard H_n/√n·diag(s)).
// An index i = a·m + b splits into a (the Hadamard index) and b (the Q_m index).
struct RandomHadamard {
  int64_t n = 0, pow2 = 1, m = 1;  // n = pow2·m
  std::vector<double> signs;       // s, n values ±1
  Eigen::MatrixXd Q;               // Q_m [m, m]
};
RandomHadamard random_hadamard_plan(int64_t n, uint64_t seed);
// Each slice x along dim becomes T·x (inverse: Tᵀ·x); for a matrix X and dim = last, X·Tᵀ.
// O(n log n + n·m) per slice, parallel over slices; the same bits for any thread count.
Tensor random_hadamard(const Tensor& X, uint64_t seed, bool inverse = false, int dim = -1);
Tensor random_hadamard(const Tensor& X, const RandomHadamard& plan, bool inverse = false, int dim = -1);
// The dense T [n, n], built entry by entry (independently of the fast transform).
Tensor random_hadamard_matrix(int64_t n, uint64_t seed);

// QuIP's Kronecker ("butterfly") random orthogonal transform of size n drawn from `seed`
// (docs/methods.md#quip): n = a·b with a the largest divisor of n not above √n (a prime n: a = 1),
//   T = P_out·(Q_a ⊗ Q_b)·P_in,   orthogonal,
// (P x)_i = x_perm[i] for the two random permutations, Q_a, Q_b Haar random orthogonal.
// An index i = α·b + β splits into α (the Q_a index) and β (the Q_b index).
// Seed expansion (bit for bit): Rng g(seed); perm_in then perm_out, each the identity shuffled
// by Fisher–Yates from the top (for i = n−1 … 1: swap entries i and g.randint(0, i)); then
// Q_a = random_orthogonal_f64(a, g) when a > 1 (Q_1 = [1], no draw), then Q_b likewise.
struct RandomButterfly {
  int64_t n = 0, a = 1, b = 1;              // n = a·b, a ≤ b
  std::vector<int64_t> perm_in, perm_out;   // 0-based
  Eigen::MatrixXd A, B;                     // Q_a [a, a], Q_b [b, b]
};
RandomButterfly random_butterfly_plan(int64_t n, uint64_t seed);
// Each slice x along dim becomes T·x (inverse: Tᵀ·x); for a matrix X and dim = last, X·Tᵀ.
// O(n·(a + b)) per slice, parallel over slices; the same bits for any thread count.
Tensor random_butterfly(const Tensor& X, uint64_t seed, bool inverse = false, int dim = -1);
Tensor random_butterfly(const Tensor& X, const RandomButterfly& plan, bool inverse = false, int dim = -1);
// The dense T [n, n], built entry by entry (independently of the fast transform).
Tensor random_butterfly_matrix(int64_t n, uint64_t seed);

}  // namespace qf
