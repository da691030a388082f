// qf.linalg timings (engine/core/linalg), each beside the plain computation it replaces or wraps,
// measured in the same run (machines here are noisy: compare ratios within a run).
//   build/bench_linalg             the transforms on 4096 rows (n = 4096, 1536, 576) and
//                                  cholesky/eigh at n = 1024, 2048
//   build/bench_linalg quick       smaller sizes (a smoke run)
// Transforms: random_hadamard (X·Tᵀ without forming T) against the dense f32 GEMM X·Tᵀ (Eigen,
// T from random_hadamard_matrix), and hadamard for powers of two. GFLOP/s count each method's own
// operations (fast: n·(log2 2^k + 2m) per row, dense: 2n² per row); "ratio" is dense time / fast time.
// Factorizations: qf's Tensor-in/Tensor-out wrappers (f32 read, checks, f64 factorization, sign
// fixes, f32 write) against Eigen's LLT / SelfAdjointEigenSolver on an f64 matrix already in place.
#include <omp.h>

#include <Eigen/Cholesky>
#include <Eigen/Eigenvalues>
#include <Eigen/LU>
#include <Eigen/QR>
#include <Eigen/SVD>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/linalg.h"
#include "core/omp_wait.h"
#include "core/rng.h"

using namespace qf;
using clk = std::chrono::steady_clock;

static double secs(clk::time_point a) { return std::chrono::duration<double>(clk::now() - a).count(); }

// The fastest of `reps` runs of f.
template <class F>
static double best_of(int reps, F&& f) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t = clk::now();
    f();
    best = std::min(best, secs(t));
  }
  return best;
}

static Tensor randn(int64_t r, int64_t c, Rng& g) {
  Tensor t = Tensor::empty({r, c});
  for (int64_t k = 0; k < r * c; ++k) t.f32()[k] = (float)g.normal();
  return t;
}

static void transforms(int64_t rows, int64_t n, int reps) {
  Rng g(rows * 7 + n);
  const Tensor X = randn(rows, n, g);
  const RandomHadamard p = random_hadamard_plan(n, 1);
  const double log2p = std::log2((double)p.pow2);
  const double fast_flops = (double)rows * n * (log2p + 2.0 * p.m);
  const double dense_flops = 2.0 * rows * n * n;

  Tensor Y;
  const double t_fast = best_of(reps, [&] { Y = random_hadamard(X, p); });
  const double t_inv = best_of(reps, [&] { Y = random_hadamard(X, p, true); });
  const Tensor T = random_hadamard_matrix(n, 1);
  Tensor D = Tensor::empty({rows, n});
  const double t_dense = best_of(reps, [&] { D.mat().noalias() = X.cmat() * T.cmat().transpose(); });
  char label[64];
  std::snprintf(label, sizeof label, "%lld x %lld (2^%d x %lld)", (long long)rows, (long long)n, (int)log2p,
                (long long)p.m);
  std::printf("| random_hadamard %-22s | %8.4f | %7.2f | %8.4f | %8.4f | %7.2f | %6.1fx |\n", label, t_fast,
              fast_flops / t_fast * 1e-9, t_inv, t_dense, dense_flops / t_dense * 1e-9, t_dense / t_fast);
  if (p.m == 1) {
    const double t_h = best_of(reps, [&] { Y = hadamard(X); });
    std::snprintf(label, sizeof label, "%lld x %lld", (long long)rows, (long long)n);
    std::printf("| hadamard %-29s | %8.4f | %7.2f | %8s | %8.4f | %7.2f | %6.1fx |\n", label, t_h,
                (double)rows * n * log2p / t_h * 1e-9, "", t_dense, dense_flops / t_dense * 1e-9, t_dense / t_h);
  }
}

static void factorizations(int64_t n, int reps_chol) {
  Rng g(n);
  const Tensor G = randn(n, n, g);
  Eigen::MatrixXd Gd = G.cmat().cast<double>();
  Eigen::MatrixXd Ad = Gd * Gd.transpose() + (double)n * Eigen::MatrixXd::Identity(n, n);
  Tensor A = Tensor::empty({n, n});
  A.mat() = Ad.cast<float>();
  Ad = A.cmat().cast<double>();  // the same numbers both sides

  Tensor L;
  const double t_qf = best_of(reps_chol, [&] { L = cholesky(A); });
  const double t_eig = best_of(reps_chol, [&] {
    Eigen::LLT<Eigen::MatrixXd> llt(Ad);
    if (llt.info() != Eigen::Success) std::abort();
  });
  const double chol_flops = (double)n * n * n / 3;
  std::printf("| cholesky n = %-5lld | %8.4f | %8.4f | %6.2f | %7.2f |\n", (long long)n, t_qf, t_eig, t_qf / t_eig,
              chol_flops / t_eig * 1e-9);

  EighResult r;
  const double e_qf = best_of(1, [&] { r = eigh(A); });
  const double e_eig = best_of(1, [&] { Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(Ad); });
  std::printf("| eigh n = %-9lld | %8.4f | %8.4f | %6.2f | %7s |\n", (long long)n, e_qf, e_eig, e_qf / e_eig, "");
  if (n > 1024) return;  // the rest at n = 1024 only (SVD at 2048 takes minutes here)
  const Tensor B = randn(n, 64, g);
  const Eigen::MatrixXd Bd = B.cmat().cast<double>();
  const double s_qf = best_of(reps_chol, [&] { (void)solve(A, B); });
  const double s_eig = best_of(reps_chol, [&] { Eigen::MatrixXd X = Eigen::PartialPivLU<Eigen::MatrixXd>(Ad).solve(Bd); });
  std::printf("| solve n = %-8lld | %8.4f | %8.4f | %6.2f | %7s |\n", (long long)n, s_qf, s_eig, s_qf / s_eig, "(64 rhs)");
  const double i_qf = best_of(reps_chol, [&] { (void)inv(A); });
  const double i_eig = best_of(reps_chol, [&] { Eigen::MatrixXd X = Eigen::PartialPivLU<Eigen::MatrixXd>(Ad).inverse(); });
  std::printf("| inv n = %-10lld | %8.4f | %8.4f | %6.2f | %7s |\n", (long long)n, i_qf, i_eig, i_qf / i_eig, "");
  const double q_qf = best_of(1, [&] { (void)qr(G); });
  const double q_eig = best_of(1, [&] {
    Eigen::HouseholderQR<Eigen::MatrixXd> h(Gd);
    Eigen::MatrixXd Q = h.householderQ() * Eigen::MatrixXd::Identity(n, n);
  });
  std::printf("| qr n = %-11lld | %8.4f | %8.4f | %6.2f | %7s |\n", (long long)n, q_qf, q_eig, q_qf / q_eig, "");
  const double v_qf = best_of(1, [&] { (void)svd(G); });
  const double v_eig = best_of(1, [&] { Eigen::BDCSVD<Eigen::MatrixXd> sv(Gd, Eigen::ComputeThinU | Eigen::ComputeThinV); });
  std::printf("| svd n = %-10lld | %8.4f | %8.4f | %6.2f | %7s |\n", (long long)n, v_qf, v_eig, v_qf / v_eig, "");
}

int main(int argc, char** argv) {
  qf::default_passive_wait(argv);
  const bool quick = argc > 1 && std::string(argv[1]) == "quick";
  if (argc > 2 || (argc == 2 && !quick)) {
    std::fprintf(stderr, "usage: bench_linalg [quick]\n");
    return 2;
  }
  try {
    std::printf("bench_linalg: %d threads, Eigen %d.%d.%d\n\n", omp_get_max_threads(), EIGEN_WORLD_VERSION,
                EIGEN_MAJOR_VERSION, EIGEN_MINOR_VERSION);
    std::printf("| transform (rows x n) | fast s | fast GFLOP/s | inverse s | dense X*T^T s | dense GFLOP/s | ratio |\n");
    std::printf("|---|---|---|---|---|---|---|\n");
    const int64_t rows = quick ? 512 : 4096;
    for (int64_t n : quick ? std::vector<int64_t>{576, 1024} : std::vector<int64_t>{4096, 1536, 576})
      transforms(rows, n, 3);
    std::printf("\n| factorization | qf s | Eigen s | qf/Eigen | Eigen GFLOP/s |\n|---|---|---|---|---|\n");
    for (int64_t n : quick ? std::vector<int64_t>{256} : std::vector<int64_t>{1024, 2048})
      factorizations(n, 3);
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
