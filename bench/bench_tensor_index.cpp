// The toolkit's selection kernels against plain baselines on a [N, N] f32 tensor (N = 4096 by
// default): sort along rows vs std::sort of each row's values (no indices), sort along columns (a
// strided input), topk(32) vs std::partial_sort, quantile(0.9) per row vs std::nth_element, and var
// along rows vs an Eigen two-pass expression. Ratio = toolkit time / baseline time (the toolkit
// also returns indices, handles NaN and any strides, and uses the OpenMP threads; the baselines run
// on one thread: set OMP_NUM_THREADS=1 for a like-for-like ratio). Each timing is the best of `reps`.
// usage: bench_tensor_index [N] [reps]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#include "core/omp_wait.h"
#include "core/rng.h"
#include "core/tensor_index.h"

using namespace qf;
using Clock = std::chrono::steady_clock;

static double best_of(int reps, const std::function<void()>& f) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return best;
}

int main(int argc, char** argv) {
  qf::default_passive_wait(argv);  // same OpenMP wait policy as qforge
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : 4096;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 3;
  Rng g(1);
  Tensor x = Tensor::empty({n, n});
  for (int64_t i = 0; i < x.numel(); ++i) x.f32()[i] = (float)g.normal();
  const float* px = x.f32();
  volatile float sink = 0;

  std::printf("| op on [%lld, %lld] f32 | toolkit s | baseline | baseline s | ratio |\n|---|---|---|---|---|\n",
              (long long)n, (long long)n);
  auto row = [&](const char* op, double a, const char* base, double b) {
    std::printf("| %s | %.3f | %s | %.3f | %.2f |\n", op, a, base, b, a / b);
  };

  {
    const double a = best_of(reps, [&] { sink = sort(x, 1).values.f32()[0]; });
    const double b = best_of(reps, [&] {
      std::vector<float> buf((size_t)n);
      for (int64_t r = 0; r < n; ++r) {
        std::copy(px + r * n, px + (r + 1) * n, buf.begin());
        std::sort(buf.begin(), buf.end());
        sink = buf[0];
      }
    });
    row("sort(2) values+indices", a, "std::sort per row (values only, 1 thread)", b);
  }
  {
    const Tensor xt = x.t();
    const double a = best_of(reps, [&] { sink = sort(xt, 1).values.f32()[0]; });
    const double b = best_of(reps, [&] {
      std::vector<float> buf((size_t)n);
      for (int64_t c = 0; c < n; ++c) {
        for (int64_t r = 0; r < n; ++r) buf[(size_t)r] = px[r * n + c];
        std::sort(buf.begin(), buf.end());
        sink = buf[0];
      }
    });
    row("sort of the transposed view", a, "gather column + std::sort (1 thread)", b);
  }
  {
    const double a = best_of(reps, [&] { sink = topk(x, 32, 1).values.f32()[0]; });
    const double b = best_of(reps, [&] {
      std::vector<float> buf((size_t)n);
      for (int64_t r = 0; r < n; ++r) {
        std::copy(px + r * n, px + (r + 1) * n, buf.begin());
        std::partial_sort(buf.begin(), buf.begin() + 32, buf.end(), std::greater<float>());
        sink = buf[0];
      }
    });
    row("topk(32, 2)", a, "std::partial_sort per row (1 thread)", b);
  }
  {
    const double a = best_of(reps, [&] { sink = quantile_dim(x, {0.9}, 1).f32()[0]; });
    const double b = best_of(reps, [&] {
      std::vector<float> buf((size_t)n);
      for (int64_t r = 0; r < n; ++r) {
        std::copy(px + r * n, px + (r + 1) * n, buf.begin());
        const int64_t k = (int64_t)(0.9 * (double)(n - 1));
        std::nth_element(buf.begin(), buf.begin() + k, buf.end());
        sink = buf[(size_t)k];
      }
    });
    row("quantile(0.9, 2) (f64 selection + lerp)", a, "std::nth_element per row (no lerp, 1 thread)", b);
  }
  {
    const double a = best_of(reps, [&] { sink = var_dim(x, 1).f32()[0]; });
    const double b = best_of(reps, [&] {
      const auto m = x.cmat().cast<double>();
      const Eigen::VectorXd mean = m.rowwise().mean();
      const Eigen::VectorXd v = (m.colwise() - mean).rowwise().squaredNorm() / (double)(n - 1);
      sink = (float)v[0];
    });
    row("var(2) (two f64 passes)", a, "Eigen f64 two-pass expression", b);
  }
  using Arr = Eigen::Array<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Eigen::Map<const Arr> X(px, n, n);
  {
    const double a = best_of(reps, [&] { sink = cumsum(x, 1).f32()[n - 1]; });
    const double b = best_of(reps, [&] {
      Arr c(n, n);
      for (int64_t r = 0; r < n; ++r) {
        double acc = 0;
        for (int64_t j = 0; j < n; ++j) c(r, j) = (float)(acc += X(r, j));
      }
      sink = c(0, n - 1);
    });
    row("cumsum(2) (f64 running sums)", a, "a plain f64 running-sum loop", b);
  }
  Rng pg(2);
  const Tensor perm = randperm(pg, n);  // 1-based? base 0 below
  std::vector<int64_t> pv(n);
  for (int64_t i = 0; i < n; ++i) pv[i] = (int64_t)perm.get({i});
  const int64_t pbase = *std::min_element(pv.begin(), pv.end());
  {
    const double a = best_of(reps, [&] { sink = index_select(x, 1, perm, pbase).f32()[0]; });
    const double b = best_of(reps, [&] {
      Arr c(n, n);
      for (int64_t r = 0; r < n; ++r)
        for (int64_t j = 0; j < n; ++j) c(r, j) = X(r, pv[j] - pbase);
      sink = c(0, 0);
    });
    row("index_select(2, a permutation)", a, "a plain gather loop", b);
  }
  {
    Tensor idx = Tensor::empty({n, n}, DType::I32);
    for (int64_t r = 0; r < n; ++r)
      for (int64_t j = 0; j < n; ++j) idx.data<int32_t>()[r * n + j] = (int32_t)(pv[(j + r) % n]);
    const double a = best_of(reps, [&] { sink = gather(x, 1, idx, pbase).f32()[0]; });
    const int32_t* ip = idx.data<int32_t>();
    const double b = best_of(reps, [&] {
      Arr c(n, n);
      for (int64_t r = 0; r < n; ++r)
        for (int64_t j = 0; j < n; ++j) c(r, j) = X(r, ip[r * n + j] - pbase);
      sink = c(0, 0);
    });
    row("gather(2, idx [n, n])", a, "a plain gather loop", b);
  }
  {
    const double a = best_of(reps, [&] { sink = cat({x, x}, 0).f32()[0]; });
    const double b = best_of(reps, [&] {
      Arr c(2 * n, n);
      c.topRows(n) = X;
      c.bottomRows(n) = X;
      sink = c(0, 0);
    });
    row("cat({x, x}, 1)", a, "Eigen block copies", b);
  }
  {
    const double a = best_of(reps, [&] { sink = flip(x, 1).f32()[0]; });
    const double b = best_of(reps, [&] { Arr c = X.rowwise().reverse(); sink = c(0, 0); });
    row("flip(2)", a, "Eigen rowwise().reverse()", b);
  }
  return 0;
}
