// Layer-solver timings on synthetic layers, next to this machine's Eigen SGEMM rate measured in
// the same run (machines here are noisy: compare ratios within a run, not absolutes across runs).
//   build/bench_solvers                 1024×1024 and 4096×4096
//   build/bench_solvers big             11008×4096 only
//   build/bench_solvers 1024 4096 big   any list; "sweeps=N" sets the full-QuantEase sweep count (30)
// Σ = X Xᵀ from correlated inputs X = A·Z (c × N, N = 2c), accumulated as token activations are
// (accumulate_gram on X stored as [N, c] token rows). The CD sweep is counted as 2·rows·cols² flops.
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "core/omp_wait.h"
#include "calib/calibration.h"
#include "solvers/gptq.h"
#include "solvers/quantease_outliers.h"
#include "solvers/quantease.h"
#include "core/rng.h"

using namespace qf;
using clk = std::chrono::steady_clock;

static double secs(clk::time_point a) { return std::chrono::duration<double>(clk::now() - a).count(); }

static Tensor randn(int64_t r, int64_t c, Rng& g, float scale = 1.f) {
  Tensor t = Tensor::empty({r, c});
  float* p = t.f32();
  for (int64_t k = 0; k < r * c; ++k) p[k] = scale * (float)g.normal();
  return t;
}

struct Row {
  std::string name;
  double value;
  std::string unit;
};

static void bench_size(int64_t rows, int64_t cols, int sweeps) {
  std::printf("\n== layer %lld x %lld (rows x cols), %d threads ==\n", (long long)rows, (long long)cols, omp_get_max_threads());
  std::vector<Row> out;
  Rng g(rows * 131 + cols);

  // Correlated inputs: X = A·Z with A = I + 0.5·randn/√c (mixing), stored as N token rows [N, c] = (A Z)ᵀ.
  const int64_t N = 2 * cols;
  Tensor A = randn(cols, cols, g, 0.5f / std::sqrt((float)cols));
  for (int64_t j = 0; j < cols; ++j) A.mat()(j, j) += 1.f;
  Tensor Z = randn(N, cols, g);
  Tensor X = Tensor::empty({N, cols});
  X.mat().noalias() = Z.cmat() * A.cmat().transpose();
  Eigen::MatrixXd Sd = Eigen::MatrixXd::Zero(cols, cols);
  auto t = clk::now();
  accumulate_gram(Sd, X);
  out.push_back({"Sigma = X^T X (accumulate_gram, N = 2c)", secs(t), "s"});
  Tensor S = Tensor::empty({cols, cols});
  S.mat() = Sd.cast<float>();
  Tensor W = randn(rows, cols, g, 0.02f);
  GridSpec spec;
  spec.bits = 4;

  t = clk::now();
  GptqResult gr = gptq(W, S, spec);
  out.push_back({"GPTQ (4-bit, B = 128)", secs(t), "s"});

  // CD sweep and SGEMM (n = cols) alternate, best of 3 each: both see the same machine load.
  const Grid grid = grid_fit(W, spec);
  Tensor What = gr.q.dequantize();
  MatRM A1 = MatRM::Random(cols, cols), B1 = MatRM::Random(cols, cols), C1(cols, cols);
  cd_sweep(W, S, What, grid);  // warm up
  C1.noalias() = A1 * B1;
  double best = 1e30, best_gemm = 1e30;
  for (int r = 0; r < 3; ++r) {
    t = clk::now();
    cd_sweep(W, S, What, grid);
    best = std::min(best, secs(t));
    t = clk::now();
    C1.noalias() = A1 * B1;
    best_gemm = std::min(best_gemm, secs(t));
  }
  const double sg = 2.0 * (double)cols * cols * cols / best_gemm / 1e9;
  const double cd_gf = 2.0 * (double)rows * cols * cols / best / 1e9;
  out.insert(out.begin(), {"Eigen SGEMM " + std::to_string(cols) + "^3", sg, "GFLOP/s"});
  out.push_back({"CD sweep (quantized)", best, "s"});
  out.push_back({"CD sweep rate (2 rows cols^2 flops)", cd_gf, "GFLOP/s"});
  out.push_back({"CD sweep / SGEMM", 100.0 * cd_gf / sg, "%"});

  Tensor Hs = Tensor::empty({rows, cols});
  Hs.mat() = W.cmat() - What.cmat();
  IhtOptions io;
  io.k = (int64_t)(0.005 * rows * cols);
  t = clk::now();
  io.lambda_max = lambda_max(S);
  out.push_back({"lambda_max (power iteration, f64)", secs(t), "s"});
  t = clk::now();
  iht_step(W, S, What, Hs, io);
  out.push_back({"IHT step (0.5% entries)", secs(t), "s"});

  QuantEaseOptions qo;
  qo.iters = sweeps;
  t = clk::now();
  QuantEaseResult qr = quantease(W, S, spec, qo);
  out.push_back({"QuantEase (" + std::to_string(sweeps) + " sweeps, init w)", secs(t), "s"});

  std::printf("| %-44s | %12s | %-8s |\n|%s|%s|%s|\n", "measure", "value", "unit", std::string(46, '-').c_str(),
              std::string(14, '-').c_str(), std::string(10, '-').c_str());
  for (const Row& r : out) std::printf("| %-44s | %12.3f | %-8s |\n", r.name.c_str(), r.value, r.unit.c_str());
  std::printf("relative objective: GPTQ %.5f, QuantEase %.5f\n",
              objective(W, gr.q.dequantize(), S).relative, objective(W, qr.q.dequantize(), S).relative);
}

int main(int argc, char** argv) {
  qf::default_passive_wait(argv);  // same OpenMP wait policy as qforge
  std::vector<std::pair<int64_t, int64_t>> sizes;
  int sweeps = 30;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("sweeps=", 0) == 0) sweeps = std::atoi(a.c_str() + 7);
    else if (a == "big") sizes.push_back({11008, 4096});
    else if (std::atoll(a.c_str()) > 0) sizes.push_back({std::atoll(a.c_str()), std::atoll(a.c_str())});
    else {
      std::fprintf(stderr, "usage: bench_solvers [1024] [4096] [big] [N] [sweeps=30]\n");
      return 2;
    }
  }
  if (sizes.empty()) sizes = {{1024, 1024}, {4096, 4096}};
  try {
    for (auto [r, c] : sizes) bench_size(r, c, sweeps);
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
