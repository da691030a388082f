#include "core/parallel.h"
#include "calib/sensitivity.h"

#include <omp.h>
#include <unistd.h>

#include <Eigen/Eigenvalues>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <exception>
#include <map>
#include <mutex>

#include "model/backward.h"
#include "calib/calibration.h"
#include "core/error.h"
#include "model/forward.h"

namespace qf {

static void check_windows(const Model& m, const std::vector<int32_t>& windows, int nwin, int T, const char* fn) {
  if (nwin < 1 || T < 1 || (int64_t)windows.size() != (int64_t)nwin * T)
    fail(fn, ": ", windows.size(), " tokens is not nwin·T = ", nwin, "·", T);
  if (T > m.cfg.seq_len) fail(fn, ": windows of ", T, " tokens exceed the model's context length ", m.cfg.seq_len);
}

HiddenPca hidden_pca(const Model& m, const std::vector<int32_t>& windows, int nwin, int T, int k, int chunk,
                     const GradStatsProgress& progress) {
  check_windows(m, windows, nwin, T, "hidden_pca");
  const int D = m.cfg.dim;
  if (k < 1 || k > D) fail("hidden_pca: components must be in 1..", D, " (the model width), got ", k);
  if (chunk < 1) fail("hidden_pca: chunk must be >= 1, got ", chunk);
  Eigen::MatrixXd S = Eigen::MatrixXd::Zero(D, D);
  Eigen::VectorXd sum = Eigen::VectorXd::Zero(D);
  const auto t0 = std::chrono::steady_clock::now();
  for (int w0 = 0; w0 < nwin; w0 += chunk) {
    const int nb = std::min(chunk, nwin - w0);
    const std::vector<int32_t> tok(windows.begin() + (int64_t)w0 * T, windows.begin() + (int64_t)(w0 + nb) * T);
    Tensor x = embed(m, tok);
    for (int l = 0; l < m.n_blocks(); ++l) {
      x = block_forward(m, l, x, nb, T);
      m.release_block(l);
    }
    Tensor hn;
    rmsnorm(x, m.final_norm, m.cfg.norm_eps, hn);
    accumulate_gram(S, hn);
    const float* h = hn.f32();
    for (int64_t i = 0; i < hn.size(0); ++i)
      for (int d = 0; d < D; ++d) sum[d] += h[i * D + d];
    if (progress) progress(w0 + nb, nwin, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  HiddenPca r;
  r.tokens = (int64_t)nwin * T;
  const Eigen::VectorXd mean = sum / (double)r.tokens;
  // Centred covariance: E[h hᵀ] − μ μᵀ.
  const Eigen::MatrixXd C = S / (double)r.tokens - mean * mean.transpose();
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(C);
  if (es.info() != Eigen::Success) fail("hidden_pca: the eigen-decomposition of the hidden-state covariance failed");
  r.total_variance = C.trace();
  r.components = Tensor::empty({k, D});
  for (int c = 0; c < k; ++c) {
    const int col = D - 1 - c;  // Eigen sorts eigenvalues increasingly
    Eigen::VectorXd v = es.eigenvectors().col(col);
    Eigen::Index imax = 0;
    v.cwiseAbs().maxCoeff(&imax);
    if (v[imax] < 0) v = -v;
    r.eigenvalues.push_back(es.eigenvalues()[col]);
    for (int d = 0; d < D; ++d) r.components.f32()[(int64_t)c * D + d] = (float)v[d];
  }
  return r;
}

// The stride grid of positions inside a window of T tokens.
static std::vector<int> stride_positions(int T, int stride) {
  std::vector<int> p;
  for (int t = stride - 1; t < T; t += stride) p.push_back(t);
  if (p.empty()) p.push_back(T - 1);
  return p;
}

void check_grad_stats_options(const GradStatsOptions& opt, int nwin) {
  const char* fn = "gradient_statistics";
  if (opt.batch < 1 || opt.batch > nwin) fail(fn, ": batch must be in 1..", nwin, " (the windows), got ", opt.batch);
  if (opt.stride < 1) fail(fn, ": stride must be >= 1, got ", opt.stride);
  if (opt.iters < 0) fail(fn, ": iters must be >= 0, got ", opt.iters);
}

// How many backward passes run at once. A pass of a small model is hundreds of short loops
// (stories260K: tens of microseconds each), too short to share among threads, and under passive
// waiting every loop would pay for waking them; whole passes in parallel keep every thread busy.
// A block of kSharedPassParams weights or more has loops long enough to share, and passes side
// by side would each stream every weight through the cache: SmolLM2-135M (3.5 M per block)
// ran its gradient statistics 10 % faster one pass at a time than two at once, stories260K
// (53 k) 1.7× slower (docs/benchmarks.md "OpenMP wait policy"); the default follows, an
// explicit max_concurrent_passes wins. Bounded by the threads, the passes, and memory: each
// pass in flight holds its activations and one block's dW (backward.h), at most an eighth of
// physical memory for all of them. A lazy model converts and frees blocks as passes reach them,
// which passes in parallel cannot share.
constexpr int64_t kSharedPassParams = int64_t(1) << 20;
struct PassPlan {
  int passes = 1;         // backward passes at once
  double park_bytes = 0;  // dW parked by passes ahead of their turn, at most
};
static PassPlan concurrent_passes(const Model& m, const GradStatsOptions& opt, int npasses, int T) {
  if (opt.max_concurrent_passes == 1 || m.is_lazy()) return {};
  int n = std::min(omp_get_max_threads(), npasses);
  if (opt.max_concurrent_passes > 0) n = std::min(n, opt.max_concurrent_passes);
  if (n <= 1) return {};
  const ModelConfig& c = m.cfg;
  const int64_t N = (int64_t)opt.batch * T, hd = c.head_dim(), kv = c.kv_dim();
  int64_t block_params = 0;
  for (const Linear& lin : m.block(0).linears) block_params += lin.out_features() * lin.in_features();
  if (opt.max_concurrent_passes == 0 && block_params >= kSharedPassParams) return {};
  const double pass_bytes =
      4.0 * ((double)N * ((double)c.dim * m.n_blocks() + 3.0 * c.dim + 2.0 * c.n_heads * hd + 2.0 * kv + 3.0 * c.hidden_dim) +
             (double)block_params);
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  const double budget = pages > 0 && page > 0 ? (double)pages * (double)page / 8 : 1e9;
  PassPlan plan;
  plan.passes = (int)std::max<double>(1, std::min<double>(n, std::floor(budget / pass_bytes)));
  // What is left parks dW; at least one block's, so a pass ahead can always go on one layer.
  plan.park_bytes = std::max(budget - plan.passes * pass_bytes, 4.0 * (double)block_params);
  return plan;
}

GradStats gradient_statistics(const Model& m, const std::vector<int32_t>& windows, int nwin, int T,
                              const HiddenPca& pca, const GradStatsOptions& opt, const GradStatsProgress& progress) {
  const char* fn = "gradient_statistics";
  check_windows(m, windows, nwin, T, fn);
  const int D = m.cfg.dim;
  if (!pca.components.defined() || pca.components.dim() != 2 || pca.components.size(1) != D || pca.components.size(0) < 1)
    fail(fn, ": the PCA basis must be [k, ", D, "] (hidden_pca of this model)");
  check_grad_stats_options(opt, nwin);
  const int K = (int)pca.components.size(0);
  const int nbatches = (nwin + opt.batch - 1) / opt.batch;
  const int iters = opt.iters > 0 ? opt.iters : nbatches;
  const std::vector<int> positions = stride_positions(T, opt.stride);
  const auto t0 = std::chrono::steady_clock::now();

  GradStats gs;
  gs.iters = iters;
  gs.g2.resize(m.n_blocks());
  gs.names.resize(m.n_blocks());
  BlockGradRequest req;
  for (int l = 0; l < m.n_blocks(); ++l) {
    const Block& b = m.block(l);
    for (const Linear& lin : b.linears) {
      gs.g2[l].push_back(Tensor::zeros({lin.out_features(), lin.in_features()}));
      gs.names[l].push_back(lin.name);
      if (l == 0) req.linears.push_back(lin.name);
    }
    m.release_block(l);
  }
  // Adds dW² of every linear into the running sums (elementwise: deterministic for any threads).
  // All of a block's linears in one parallel region: tasks of kAccChunk elements.
  auto accumulate = [&](int l, BlockGrads& g) {
    constexpr int64_t kAccChunk = int64_t(1) << 16;
    std::vector<Tensor> dW(g.names.size());
    std::vector<int64_t> first(g.names.size() + 1, 0);  // first task of each linear
    for (size_t j = 0; j < g.names.size(); ++j) {
      dW[j] = g.dW[j].contiguous();
      first[j + 1] = first[j] + (dW[j].numel() + kAccChunk - 1) / kAccChunk;
    }
    const int64_t total = first.back() * kAccChunk;
#pragma omp parallel for schedule(dynamic) if (worth_parallel_stream(total))
    for (int64_t t = 0; t < first.back(); ++t) {
      const size_t j = size_t(std::upper_bound(first.begin(), first.end(), t) - first.begin()) - 1;
      float* acc = gs.g2[l][j].f32();
      const float* d = dW[j].f32();
      const int64_t e0 = (t - first[j]) * kAccChunk, e1 = std::min(dW[j].numel(), e0 + kAccChunk);
      for (int64_t e = e0; e < e1; ++e) acc[e] += d[e] * d[e];
    }
  };

  // Every backward pass of the run, in order: iteration it's passes are one per position t (on
  // the windows' prefixes 0..t), or one for all positions.
  struct Pass {
    int it;
    std::vector<int> ts;
  };
  std::vector<Pass> passes;
  for (int it = 0; it < iters; ++it) {
    if (opt.joint_positions) passes.push_back({it, positions});
    else
      for (int t : positions) passes.push_back({it, {t}});
  }
  auto run_pass = [&](const Pass& ps, const BlockGradsFn& on_grads) {
    const int first = (ps.it % nbatches) * opt.batch, nb = std::min(opt.batch, nwin - first);
    const float* v = pca.components.f32() + (int64_t)(ps.it % K) * D;
    const int Tp = ps.ts.back() + 1;  // causal: tokens after the last scored position do not matter
    std::vector<int32_t> tok;
    tok.reserve((size_t)nb * Tp);
    for (int b = 0; b < nb; ++b) {
      const auto w = windows.begin() + (int64_t)(first + b) * T;
      tok.insert(tok.end(), w, w + Tp);
    }
    // dz/dhn: v_k at every scored position of every window of the batch, 0 elsewhere.
    auto dH = [&](const Tensor& hn) {
      Tensor d = Tensor::zeros(hn.shape());
      for (int b = 0; b < nb; ++b)
        for (int t : ps.ts) std::copy(v, v + D, d.f32() + ((int64_t)b * Tp + t) * D);
      return d;
    };
    model_backward_from_hidden(m, tok, nb, Tp, dH, [&](int) { return req; }, on_grads);
  };
  auto seconds = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  auto ends_iteration = [&](size_t p) { return p + 1 == passes.size() || passes[p + 1].it != passes[p].it; };

  const PassPlan plan = concurrent_passes(m, opt, (int)passes.size(), T);
  if (plan.passes <= 1) {
    for (size_t p = 0; p < passes.size(); ++p) {
      run_pass(passes[p], accumulate);
      if (ends_iteration(p) && progress) progress(passes[p].it + 1, iters, seconds());
    }
  } else {
    // Whole passes in parallel, each on one thread (its inner loops then run serially). The
    // running sums still take every pass's dW² in pass order, layer by layer, so the bits are
    // those of the serial loop: pass p adds into layer l when pass p − 1 has. A pass that
    // reaches layer l before its turn parks its dW there (moved, not copied) and goes on; the
    // thread that hands the turn on adds the parked dW of the next passes. Parking is bounded
    // (plan.park_bytes); a pass that finds no room waits for its turn. The lowest unfinished
    // pass always has its turn, so no wait can deadlock.
    std::vector<size_t> added(m.n_blocks(), 0);       // passes already added into each layer
    std::map<std::pair<int, size_t>, BlockGrads> parked;  // (layer, pass) → its dW, not yet added
    double parked_bytes = 0;
    std::mutex mu;
    std::condition_variable cv;
    std::atomic<size_t> next{0};
    bool failed = false;
    std::exception_ptr error;
    struct Abandoned {};
    auto grad_bytes = [](const BlockGrads& g) {
      double n = 0;
      for (const Tensor& t : g.dW) n += t.defined() ? 4.0 * (double)t.numel() : 0;
      return n;
    };
    // With the lock held and layer l's turn at pass p: add g, then every parked pass after it.
    auto add_in_turn = [&](std::unique_lock<std::mutex>& lock, int l, size_t p, BlockGrads& g) {
      for (;;) {
        lock.unlock();
        accumulate(l, g);
        lock.lock();
        added[l] = p + 1;
        // Layer 0 is a pass's last, added in pass order: progress is called in order.
        if (l == 0 && ends_iteration(p) && progress) progress(passes[p].it + 1, iters, seconds());
        auto it = parked.find({l, p + 1});
        if (it == parked.end()) break;
        ++p;
        g = std::move(it->second);
        parked.erase(it);
        parked_bytes -= grad_bytes(g);
      }
      cv.notify_all();
    };
#pragma omp parallel num_threads(plan.passes)
    for (;;) {
      const size_t p = next.fetch_add(1);
      if (p >= passes.size()) break;
      try {
        run_pass(passes[p], [&](int l, BlockGrads& g) {
          std::unique_lock<std::mutex> lock(mu);
          const double bytes = grad_bytes(g);
          cv.wait(lock, [&] { return failed || added[l] == p || parked_bytes + bytes <= plan.park_bytes; });
          if (failed) throw Abandoned{};
          if (added[l] == p) {
            add_in_turn(lock, l, p, g);
          } else {
            parked_bytes += bytes;
            parked.emplace(std::make_pair(l, p), std::move(g));
          }
        });
      } catch (const Abandoned&) {
        break;
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu);
        if (!error) error = std::current_exception();
        failed = true;
        cv.notify_all();
        break;
      }
    }
    if (error) std::rethrow_exception(error);
    if (!parked.empty()) fail(fn, ": internal error: ", parked.size(), " parked gradients were never added");
  }
  gs.samples = (int64_t)passes.size();
  const float inv = 1.f / (float)gs.samples;
  for (auto& layer : gs.g2)
    for (Tensor& t : layer) {
      float* p = t.f32();
      for (int64_t e = 0; e < t.numel(); ++e) p[e] *= inv;
    }
  gs.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return gs;
}

std::vector<double> row_means(const Tensor& g2_) {
  if (g2_.dim() != 2) fail("row_means: expected a 2-d tensor, got ", shape_str(g2_.shape()));
  const Tensor g2 = g2_.contiguous();
  const int64_t r = g2.size(0), c = g2.size(1);
  std::vector<double> out((size_t)r);
  for (int64_t i = 0; i < r; ++i) {
    double s = 0;
    for (int64_t j = 0; j < c; ++j) s += g2.f32()[i * c + j];
    out[(size_t)i] = s / (double)c;
  }
  return out;
}

}  // namespace qf
