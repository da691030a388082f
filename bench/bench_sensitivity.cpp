// Time and memory of CVXQ's two sensitivity statistics on the same calibration windows:
//   proxy    — the layer-input Gram matrices Σ of every block (the diag-Σ Hessian proxy and μ_x come
//              from them): one calibration pass, block by block, forward only;
//   gradient — hidden_pca (one more forward) + gradient_statistics (per iteration one backward
//              per strided position, every linear's dW squared into a per-weight running mean).
// Both run in one process (so the time ratio is measured on one machine state); peak RSS of each
// needs its own process: pass the mode.
//   build/bench_sensitivity [model] [both|proxy|gradient] [nsamples] [seqlen] [iters] [stride]
//                           [resident|lazy] [concurrent passes]
// resident (default, as the recipes load) or lazy (blocks converted on use; passes then run one at
// a time); concurrent passes: GradStatsOptions::max_concurrent_passes (0 auto, 1 one at a time).
// Windows are random token ids (statistics cost does not depend on the text).
#include <omp.h>
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "core/omp_wait.h"
#include "calib/calibration.h"
#include "formats/loader.h"
#include "core/rng.h"
#include "calib/sensitivity.h"

using namespace qf;
using clk = std::chrono::steady_clock;

static double secs(clk::time_point a) { return std::chrono::duration<double>(clk::now() - a).count(); }
static double peak_rss_mb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss / 1024.0;
}

int main(int argc, char** argv) {
  qf::default_passive_wait(argv);  // same OpenMP wait policy as qforge
  const std::string path = argc > 1 ? argv[1] : "../shared/models/stories260K";
  const std::string mode = argc > 2 ? argv[2] : "both";
  const int nsamples = argc > 3 ? std::atoi(argv[3]) : 128;
  const int T0 = argc > 4 ? std::atoi(argv[4]) : 256;
  const int iters = argc > 5 ? std::atoi(argv[5]) : 0;
  const int stride = argc > 6 ? std::atoi(argv[6]) : 128;
  const std::string load = argc > 7 ? argv[7] : "resident";
  const int concurrent = argc > 8 ? std::atoi(argv[8]) : 0;
  if (load != "resident" && load != "lazy") {
    std::fprintf(stderr, "bench_sensitivity: argument 7 must be resident or lazy, got '%s'\n", load.c_str());
    return 2;
  }
  try {
    const Model m = load_model(resolve_model_files(path), load == "lazy");
    const int T = std::min(T0, m.cfg.seq_len);
    Rng rng(7);
    std::vector<int32_t> windows((size_t)nsamples * T);
    for (auto& t : windows) t = (int32_t)rng.randint(0, m.cfg.vocab_size - 1);
    std::printf("model %s (%s): %d blocks, dim %d, hidden %d; %d windows x %d tokens; %d threads, concurrent passes %d; RSS after load %.0f MB\n",
                path.c_str(), load.c_str(), m.n_blocks(), m.cfg.dim, m.cfg.hidden_dim, nsamples, T, omp_get_max_threads(),
                concurrent, peak_rss_mb());
    double t_proxy = 0, t_grad = 0;
    if (mode == "both" || mode == "proxy") {
      const auto t0 = clk::now();
      Calibration cal(m, windows, nsamples, T, /*fp_chain=*/false);  // Σ only, as the CVXQ recipes run it
      for (int b = 0; b < cal.nblocks(); ++b) {
        cal.capture(m);
        cal.advance(m);
        m.release_block(b);
      }
      t_proxy = secs(t0);
      std::printf("proxy (Σ of every site, all blocks): %.2f s; peak RSS %.0f MB\n", t_proxy, peak_rss_mb());
    }
    if (mode == "both" || mode == "gradient") {
      auto t0 = clk::now();
      const HiddenPca pca = hidden_pca(m, windows, nsamples, T, std::min(1024, m.cfg.dim));
      const double t_pca = secs(t0);
      GradStatsOptions o;
      o.iters = iters;
      o.stride = stride;
      o.max_concurrent_passes = concurrent;
      t0 = clk::now();
      const GradStats gs = gradient_statistics(m, windows, nsamples, T, pca, o);
      const double t_g = secs(t0);
      t_grad = t_pca + t_g;
      std::printf("gradient: PCA %.2f s + %d iterations (%lld backward passes) %.2f s = %.2f s (%.3f s per iteration); peak RSS %.0f MB\n",
                  t_pca, gs.iters, (long long)gs.samples, t_g, t_grad, t_g / gs.iters, peak_rss_mb());
    }
    if (t_proxy > 0 && t_grad > 0) std::printf("gradient / proxy time: %.1fx\n", t_grad / t_proxy);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_sensitivity: %s\n", e.what());
    return 1;
  }
  return 0;
}
