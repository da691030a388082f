// Forward-pass throughput on a real model, next to this machine's Eigen SGEMM rate
// measured in the same run (machines here are noisy: compare the ratio, not the absolute).
//   build/bench_forward [model_path] [windows] [seqlen]
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "core/omp_wait.h"
#include "model/forward.h"
#include "formats/loader.h"

using namespace qf;
using clk = std::chrono::steady_clock;

static double secs(clk::time_point a) { return std::chrono::duration<double>(clk::now() - a).count(); }

static double gemm_gflops(int n, int reps) {
  MatRM A = MatRM::Random(n, n), B = MatRM::Random(n, n), C(n, n);
  C.noalias() = A * B;  // warm up
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    auto t = clk::now();
    C.noalias() = A * B;
    best = std::min(best, secs(t));
  }
  std::printf("  (checksum %g)\n", (double)C(0, 0));
  return 2.0 * n * n * n / best / 1e9;
}

int main(int argc, char** argv) {
  qf::default_passive_wait(argv);  // same OpenMP wait policy as qforge
  const std::string path = argc > 1 ? argv[1] : "../shared/models/stories260K";
  const int B = argc > 2 ? std::atoi(argv[2]) : 8;
  try {
    Model m = load_model(resolve_model_files(path));
    const int T = argc > 3 ? std::atoi(argv[3]) : m.cfg.seq_len;
    std::printf("model %s: dim %d, hidden %d, layers %d, heads %d/%d, vocab %d; %lld params\n", path.c_str(), m.cfg.dim,
                m.cfg.hidden_dim, m.cfg.n_layers, m.cfg.n_heads, m.cfg.n_kv_heads, m.cfg.vocab_size,
                (long long)m.n_params());
    std::printf("threads: %d\n", omp_get_max_threads());
    const double g = gemm_gflops(1024, 5);
    std::printf("Eigen SGEMM 1024^3: %.1f GFLOP/s\n", g);

    std::vector<int32_t> ids((size_t)B * T);
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = (int32_t)((i * 7919 + 13) % (size_t)m.cfg.vocab_size);
    // flops actually executed: linears + classifier (2·out·in per token) + attention (full T×T squares)
    double lin = 0;
    for (auto& b : m.blocks)
      for (auto& l : b.linears) lin += 2.0 * (double)l.weight.numel();
    lin += 2.0 * m.cfg.vocab_size * m.cfg.dim;
    // attention as executed: query blocks of 128 rows against keys [0, block end), QKᵀ and PV
    double keys = 0;
    for (int i0 = 0; i0 < T; i0 += 128) keys += (double)std::min(128, T - i0) * std::min(T, i0 + 128);
    const double att = 4.0 * keys / T * m.cfg.head_dim() * m.cfg.n_heads * m.cfg.n_layers;  // per token
    const double flops = ((double)B * T) * (lin + att);
    forward(m, ids, B, T);  // warm up
    double best = 1e30;
    for (int r = 0; r < 3; ++r) {
      auto t = clk::now();
      Tensor lg = forward(m, ids, B, T);
      best = std::min(best, secs(t));
    }
    std::printf("forward %d x %d tokens: %.3f s (best of 3) = %.0f tokens/s, %.2f GFLOP/s = %.1f%% of SGEMM\n", B, T, best,
                B * T / best, flops / best / 1e9, 100.0 * flops / best / 1e9 / g);
    omp_set_num_threads(1);
    auto t = clk::now();
    forward(m, ids, B, T);
    const double one = secs(t);
    std::printf("forward on 1 thread: %.3f s -> parallel speedup %.2fx\n", one, one / best);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_forward: %s\n", e.what());
    return 1;
  }
  return 0;
}
