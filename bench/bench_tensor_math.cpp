// Elementwise tensor math (engine/core/tensor_math) against the equivalent Eigen array expression on
// a 4096×4096 f32 tensor: the same work, so the ratio says what the generic strided, broadcasting
// loop costs. Eigen's array expressions run on one thread; qforge's loop is timed on one thread
// (the fair ratio) and on all threads. Best of `reps` runs each; memory-bound ops move 64–192 MB.
//   build/bench_tensor_math [n=4096] [reps=5]
// GCC 12 reports -Wuninitialized inside its own AVX-512 intrinsics when Eigen's floor/sign/cast
// kernels inline here (the same false positive CMakeLists.txt silences as -Wmaybe-uninitialized).
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>

#include "core/omp_wait.h"
#include "core/rng.h"
#include "core/tensor_math.h"

using namespace qf;
using clk = std::chrono::steady_clock;
using Arr = Eigen::Array<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

static double best_ms(int reps, const std::function<void()>& f) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = clk::now();
    f();
    best = std::min(best, std::chrono::duration<double, std::milli>(clk::now() - t0).count());
  }
  return best;
}

int main(int argc, char** argv) {
  qf::default_passive_wait(argv);  // same OpenMP wait policy as qforge
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : 4096;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 5;
  Rng rng(1);
  Tensor a = Tensor::empty({n, n}), b = Tensor::empty({n, n}), col = Tensor::empty({n, 1}), row = Tensor::empty({n});
  for (Tensor* t : {&a, &b, &col, &row})
    for (int64_t i = 0; i < t->numel(); ++i) t->f32()[i] = (float)(rng.normal() + (t == &col ? 3.0 : 0.0));
  const Tensor at = a.t();  // a transposed view: the strided path
  Eigen::Map<const Arr> A(a.f32(), n, n), B(b.f32(), n, n);
  Eigen::Map<const Eigen::Array<float, Eigen::Dynamic, 1>> C(col.f32(), n);
  Eigen::Map<const Eigen::Array<float, 1, Eigen::Dynamic>> R(row.f32(), n);
  Arr out(n, n);
  const int threads = omp_get_max_threads();

  // Three Eigen forms: into a preallocated array (`out = expr`), into a fresh array (`Arr o = expr`,
  // what an out-of-place op must do: a fresh 64 MB buffer costs its page faults), and qforge's
  // in-place form on a preallocated copy where it has one.
  struct Case {
    const char* name;
    std::function<void()> ours, eigen, ours_inplace;
  };
  Tensor work = a.clone();
  const Tensor pa = unary(a, UnaryOp::Abs);  // positive bases for pow
  Eigen::Map<const Arr> PA(pa.f32(), n, n);
  const Case cases[] = {
      {"abs", [&] { unary(a, UnaryOp::Abs); }, [&] { out = A.abs(); }, [&] { unary_(work, UnaryOp::Abs); }},
      {"exp", [&] { unary(a, UnaryOp::Exp); }, [&] { out = A.exp(); }, [&] { work.copy_(a); unary_(work, UnaryOp::Exp); }},
      {"sqrt(abs) in place", [&] { Tensor c = unary(a, UnaryOp::Abs); unary_(c, UnaryOp::Sqrt); }, [&] { out = A.abs(); out = out.sqrt(); }, {}},
      {"round", [&] { unary(a, UnaryOp::Round); }, [&] { out = A.unaryExpr([](float x) { return std::nearbyint(x); }); }, {}},
      {"a + b", [&] { binary(a, b, BinaryOp::Add); }, [&] { out = A + B; }, {}},
      {"a / col [n,1]", [&] { binary(a, col, BinaryOp::Div); }, [&] { out = A.colwise() / C; }, [&] { binary_(work, col, BinaryOp::Div); }},
      {"a * row [n]", [&] { binary(a, row, BinaryOp::Mul); }, [&] { out = A.rowwise() * R; }, {}},
      {"cmax(a, b)", [&] { binary(a, b, BinaryOp::Max); }, [&] { out = A.max(B); }, {}},
      {"a > b (u8 mask)", [&] { binary(a, b, BinaryOp::Gt); }, [&] { out = (A > B).cast<float>(); }, {}},
      {"where(a > 0, a, b)", [&] { where(binary(a, 0.f, BinaryOp::Gt), a, b); }, [&] { out = (A > 0).select(A, B); }, {}},
      {"clamp(a, -1, 1)", [&] { clamp(a, -1.f, 1.f); }, [&] { out = A.min(1.f).max(-1.f); }, [&] { clamp_(work, -1.f, 1.f); }},
      {"aᵀ + b (strided)", [&] { binary(at, b, BinaryOp::Add); }, [&] { out = A.transpose() + B; }, {}},
      // the rest of the unary and binary ops, each against its Eigen array expression
      {"sign", [&] { unary(a, UnaryOp::Sign); }, [&] { out = A.sign(); }, {}},
      {"rsqrt(abs)", [&] { Tensor c = unary(a, UnaryOp::Abs); unary_(c, UnaryOp::Rsqrt); }, [&] { out = A.abs(); out = out.rsqrt(); }, {}},
      {"log(abs)", [&] { Tensor c = unary(a, UnaryOp::Abs); unary_(c, UnaryOp::Log); }, [&] { out = A.abs(); out = out.log(); }, {}},
      {"floor", [&] { unary(a, UnaryOp::Floor); }, [&] { out = A.floor(); }, {}},
      {"ceil", [&] { unary(a, UnaryOp::Ceil); }, [&] { out = A.ceil(); }, {}},
      {"neg", [&] { unary(a, UnaryOp::Neg); }, [&] { out = -A; }, {}},
      {"square", [&] { unary(a, UnaryOp::Square); }, [&] { out = A.square(); }, {}},
      {"reciprocal", [&] { unary(a, UnaryOp::Reciprocal); }, [&] { out = A.inverse(); }, {}},
      {"sigmoid", [&] { unary(a, UnaryOp::Sigmoid); }, [&] { out = A.logistic(); }, {}},
      {"tanh", [&] { unary(a, UnaryOp::Tanh); }, [&] { out = A.tanh(); }, {}},
      {"a - b", [&] { binary(a, b, BinaryOp::Sub); }, [&] { out = A - B; }, {}},
      {"a * b", [&] { binary(a, b, BinaryOp::Mul); }, [&] { out = A * B; }, {}},
      {"a / b", [&] { binary(a, b, BinaryOp::Div); }, [&] { out = A / B; }, {}},
      {"pow(|a|, b)", [&] { binary(pa, b, BinaryOp::Pow); }, [&] { out = PA.pow(B); }, {}},
      {"cmin(a, b)", [&] { binary(a, b, BinaryOp::Min); }, [&] { out = A.min(B); }, {}},
      {"a == b", [&] { binary(a, b, BinaryOp::Eq); }, [&] { out = (A == B).cast<float>(); }, {}},
      {"a <= b", [&] { binary(a, b, BinaryOp::Le); }, [&] { out = (A <= B).cast<float>(); }, {}},
      {"logical_and(a, b)", [&] { binary(a, b, BinaryOp::And); }, [&] { out = ((A != 0) && (B != 0)).cast<float>(); }, {}},
  };
  std::printf("elementwise ops on a %lld×%lld f32 tensor, best of %d (ms); Eigen array expressions on 1 thread\n", (long long)n,
              (long long)n, reps);
  Arr fresh;
  std::printf("| op | Eigen, fresh output | qforge 1 thread | ratio | qforge %d threads | Eigen, preallocated | qforge in place (1 thread) | ratio |\n"
              "|---|---|---|---|---|---|---|---|\n", threads);
  for (const Case& c : cases) {
    omp_set_num_threads(1);
    const double te = best_ms(reps, c.eigen);
    const double tf = best_ms(reps, [&] { Arr().swap(out); c.eigen(); });  // out starts empty: a fresh buffer each time
    out.resize(n, n);
    const double t1 = best_ms(reps, c.ours);
    const double ti = c.ours_inplace ? best_ms(reps, c.ours_inplace) : 0;
    omp_set_num_threads(threads);
    const double tn = best_ms(reps, c.ours);
    if (c.ours_inplace) std::printf("| %s | %.1f | %.1f | %.2f | %.1f | %.1f | %.1f | %.2f |\n", c.name, tf, t1, t1 / tf, tn, te, ti, ti / te);
    else std::printf("| %s | %.1f | %.1f | %.2f | %.1f | %.1f | | |\n", c.name, tf, t1, t1 / tf, tn, te);
  }
  return 0;
}
